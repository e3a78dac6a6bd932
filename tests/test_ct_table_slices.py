"""The CT table on real slices and image files: groups, per-group means and watched criteria."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from benchmarks import ct_table


@pytest.mark.long
def test_ct_table_reports_phantoms_real_slices_and_files_separately(tmp_path, monkeypatch):
    monkeypatch.setenv("DIP_LIGHTNING_CACHE", str(tmp_path / "cache"))
    ramp = np.linspace(0, 255, 48 * 48).reshape(48, 48).astype(np.uint8)
    image = tmp_path / "tuning_slice.png"
    Image.fromarray(ramp).save(image)
    out = tmp_path / "t.csv"
    args = [
        *("--size", "32", "--angles", "8", "--ellipses", "1", "--no-shepp-logan", "--model", "skip_tiny"),
        *("--slices", "ct_small", "--files", str(image), "--watch", "oracle", "wmv"),
        *("--methods", "fbp", "dip_tv", "--steps", "4"),
        *("--out-dir", str(tmp_path / "table"), "--csv", str(out)),
    ]
    rows = ct_table.main(args)

    groups = {(r["group"], r["image"]) for r in rows}
    assert {("phantoms", "ellipses_0"), ("real", "ct_small"), ("files", "tuning_slice")} <= groups
    for group in ("phantoms", "real", "files"):  # every group has its own mean rows
        means = {r["method"] for r in rows if r["group"] == group and r["image"] == "mean"}
        assert means == {"FBP", "DIP+TV", "DIP+TV @oracle", "DIP+TV @wmv"}
    real = {r["method"]: r for r in rows if r["image"] == "ct_small"}
    assert real["FBP"]["steps"] == 0 and real["DIP+TV"]["steps"] == 4
    oracle = real["DIP+TV @oracle"]  # the best raw output of the run, found without stopping it
    assert 0 <= oracle["detected_step"] <= 3 and np.isclose(oracle["psnr"], oracle["peak_psnr"])
    assert real["DIP+TV @wmv"]["detected_step"] is None  # its window of 100 never filled
    assert (tmp_path / "table" / "ct_small" / "dip_tv" / "monitor.json").exists()
    with out.open() as handle:
        written = list(csv.DictReader(handle))
    assert len(written) == len(rows) and written[0]["group"] == "phantoms"
