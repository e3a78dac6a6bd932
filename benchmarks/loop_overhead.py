"""The Lightning loop's cost per step against a plain PyTorch loop: DIP denoising at 64x64.

The headline case of ``step_speed.py`` (goal: at most 1.10x on a CPU with the default W&B offline
logging), with more repeats for a steadier median. Extra arguments go to ``step_speed.py``:

    python benchmarks/loop_overhead.py
    python benchmarks/loop_overhead.py --sizes 64 128 --repeats 3

Writes ``benchmarks/results/loop_overhead_<device>.csv``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import step_speed

RESULTS = Path(__file__).resolve().parent / "results"
HEADLINE = ["--methods", "dip", "--tasks", "denoising", "--sizes", "64", "--repeats", "5"]


def main(argv: list[str] | None = None) -> list[dict]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--out" not in argv:
        device = argv[argv.index("--device") + 1] if "--device" in argv else "cpu"
        argv += ["--out", str(RESULTS / f"loop_overhead_{device}.csv")]
    return step_speed.main([*HEADLINE, *argv])


if __name__ == "__main__":
    main()
