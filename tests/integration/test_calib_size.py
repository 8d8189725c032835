"""`benchmarks.calib_size`: the calibration-size sweep on a tiny exported bundle, and its table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from edgescreen.benchmarks import calib_size

EXPORT_TESTS = Path(__file__).resolve().parents[1] / "export"


def test_summary_takes_median_and_range_over_draws():
    rows = [
        {"form": "cpu", "plan": "PTQ", "size": 32, "flips": f, "images": 50, "delta_qwk": d,
         "median_dp": m, "p95_dp": p}
        for f, d, m, p in ((1, -0.02, 0.01, 0.05), (3, 0.01, 0.03, 0.07), (2, 0.0, 0.02, 0.06))
    ]  # fmt: skip
    (entry,) = calib_size.summarise(rows)
    assert entry["draws"] == 3 and entry["images"] == 50
    assert entry["flips"] == {"median": 2, "min": 1, "max": 3}
    assert entry["delta_qwk"] == {"median": 0.01, "min": 0.0, "max": 0.02}  # |ΔQWK|
    table = calib_size.markdown([entry], machine="test cpu", source="src")
    (line,) = [ln for ln in table.splitlines() if ln.startswith("| cpu")]
    assert "2.0 [1.0-3.0] of 50" in line and "0.0200 [0.0100-0.0300]" in line


def test_sweep_recalibrates_each_size_and_judges_both_forms(monkeypatch, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime.quantization")
    if str(EXPORT_TESTS) not in sys.path:
        sys.path.insert(0, str(EXPORT_TESTS))
    from export_helpers import make_checkpoint, synth_set

    from edgescreen.export import export_bundle
    from edgescreen.export.data import resolve

    monkeypatch.setenv("EDGESCREEN_CACHE", str(tmp_path / "cache"))
    calib = synth_set(tmp_path / "calib", "dr_grading", 10, seed=41)
    val = synth_set(tmp_path / "val", "dr_grading", 6, seed=42)
    export_bundle(
        make_checkpoint(tmp_path / "run", "multitask"),
        tmp_path / "b",
        calib=calib,
        eval=val,
        calib_method="minmax",
        allow_drift=True,
        allow_synthetic_calibration=True,
        progress=False,
    )
    rows = calib_size.sweep(
        tmp_path / "b",
        resolve(calib, what="c").samples,
        resolve(val, what="v").samples,
        sizes=(4, None),
        draws=2,
        log=lambda s: None,
    )
    # 2 draws of 4 images + all 10, for each form; no searched plan in this bundle.
    assert sorted({(r["size"], r["draw"]) for r in rows}) == [(4, 0), (4, 1), (10, 0)]
    assert {r["form"] for r in rows} == {"tensorrt", "cpu"} and len(rows) == 6
    for r in rows:
        assert r["images"] == 6 and 0 <= r["flips"] <= 6
        assert 0 <= r["median_dp"] <= r["p95_dp"] <= 1
    json.dumps(rows)
    with pytest.raises(Exception, match="disjoint|overlap|share"):
        calib_size.sweep(
            tmp_path / "b",
            resolve(calib, what="c").samples,
            resolve(calib, what="c").samples,
            sizes=(None,),
            log=lambda s: None,
        )
