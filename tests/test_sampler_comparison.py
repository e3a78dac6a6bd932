"""The sampler comparison's replay on a made-up cache (no training): exact, seeded, and sane."""

from __future__ import annotations

import csv
import itertools
import json
import math

import pytest

from benchmarks.sampler_comparison import grid, main, nearest, replay, searchers


def write_cache(path, image="xray"):
    """A smooth PSNR curve over log sigma with its peak at 0.1, heldout_mse lowest at 0.05."""
    rows = []
    for sigma in grid(16):
        psnr = 30.0 - 2.0 * (math.log(sigma) - math.log(0.1)) ** 2
        mse = 0.004 + 0.001 * (math.log(sigma) - math.log(0.05)) ** 2
        rows.append({"image": image, "sigma": sigma, "status": "completed", "psnr": psnr, "heldout_mse": mse})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {r["sigma"]: r for r in rows}


def test_grid_and_nearest_point():
    points = grid(16)
    assert points[0] == 0.01 and points[-1] == 0.5 and len(points) == 16
    cached = {s: {} for s in points}
    assert nearest(cached, 0.0101) == 0.01 and nearest(cached, 0.49) == 0.5


@pytest.mark.long
def test_replays_are_seeded_and_the_paper_protocol_starts_with_its_four_points(tmp_path):
    cached = write_cache(tmp_path / "cache.jsonl")
    searches = searchers()
    for name, make in searches.items():
        curve = replay(make, 0, cached, 8)
        assert curve == replay(make, 0, cached, 8), name  # the same seed, the same search
        assert all(a <= b for a, b in itertools.pairwise(curve)) and curve[-1] <= 30.0
    first_four = replay(searches["gp_paper"], 0, cached, 4)
    expected = max(cached[nearest(cached, s)]["psnr"] for s in (0.075, 0.175, 0.275, 0.375))
    assert first_four[-1] == expected


@pytest.mark.long
def test_compare_and_objective_steps_write_their_tables(tmp_path, capsys):
    write_cache(tmp_path / "cache.jsonl")
    main(["compare", "--cache", str(tmp_path / "cache.jsonl"), "--out", str(tmp_path), "--seeds", "2"])
    rows = list(csv.DictReader((tmp_path / "sampler_comparison_xray.csv").open()))
    assert {r["search"] for r in rows} == {"gp", "tpe", "random", "gp_paper"}
    assert {r["trials"] for r in rows} == {"4", "8", "12"}
    main(
        [
            "objective",
            "--cache",
            str(tmp_path / "cache.jsonl"),
            "--images",
            "xray",
            "--points",
            "16",
            "--out",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert "| xray | 0.1" in out and "| gp |" in out
    (row,) = csv.DictReader((tmp_path / "objective_comparison_16.csv").open())
    # The made-up heldout_mse is lowest at 0.05, PSNR highest at 0.1: the PSNR lost is positive.
    assert float(row["sigma_by_psnr"]) == 0.1046 and float(row["psnr_lost"]) > 0
