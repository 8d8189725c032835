"""`benchmarks.int8_paths`: INT8 bundles of one model judged side by side on the same photos."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from edgescreen.benchmarks import int8_paths

EXPORT_TESTS = Path(__file__).resolve().parents[1] / "export"


def test_two_paths_of_one_model_are_judged_on_the_same_photos(monkeypatch, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("modelopt.torch.quantization")
    if str(EXPORT_TESTS) not in sys.path:
        sys.path.insert(0, str(EXPORT_TESTS))
    from export_helpers import make_checkpoint, synth_set

    from edgescreen.export import export_bundle
    from edgescreen.export.data import resolve
    from edgescreen.runtime.errors import EdgescreenError

    monkeypatch.setenv("EDGESCREEN_CACHE", str(tmp_path / "cache"))
    ckpt = make_checkpoint(tmp_path / "run", "multitask")
    calib = synth_set(tmp_path / "calib", "dr_grading", 8, seed=51)
    val = synth_set(tmp_path / "val", "dr_grading", 6, seed=52)
    common = dict(
        calib=calib, eval=val, calib_size=8, calib_method="minmax", allow_drift=True,
        allow_synthetic_calibration=True, progress=False,
    )  # fmt: skip
    export_bundle(ckpt, tmp_path / "ptq", **common)
    export_bundle(ckpt, tmp_path / "qat", qat_epochs=1, **common)
    photos = resolve(val, what="v").samples
    rows = int8_paths.judge_bundles(
        {"ptq": tmp_path / "ptq", "qat": tmp_path / "qat"}, {"held-out": photos}
    )
    assert [(r["bundle"], r["form"]) for r in rows] == [
        ("ptq", "tensorrt"), ("ptq", "cpu"), ("qat", "tensorrt"), ("qat", "cpu"),
    ]  # fmt: skip
    assert [r["path"] for r in rows[::2]] == ["PTQ", "QAT 1 epochs"]
    for r in rows:
        assert r["images"] == len(photos) and 0 <= r["flips"] <= len(photos)
        lo, hi = r["flip_rate_ci95"]
        assert 0 <= lo <= r["flips"] / r["images"] <= hi <= 1
        assert 0 <= r["median_dp"] <= r["p95_dp"] <= 1
    json.dumps(rows)
    table = int8_paths.markdown(rows, machine="test cpu", source="src")
    assert sum(line.startswith("| held-out") for line in table.splitlines()) == 4

    other = tmp_path / "other"
    shutil.copytree(tmp_path / "qat", other)
    with open(other / "model.onnx", "ab") as f:
        f.write(b"\0")  # a different FP32 model: not comparable
    with pytest.raises(EdgescreenError, match="FP32 model differs"):
        int8_paths.judge_bundles({"ptq": tmp_path / "ptq", "x": other}, {"held-out": photos})

    lat = int8_paths.cpu_latencies({"ptq": tmp_path / "ptq", "qat": tmp_path / "qat"}, rounds=2,
                                   runs=3)  # fmt: skip
    assert list(lat) == ["fp32", "ptq", "qat"]  # FP32 first, then each bundle's CPU form
    assert lat["fp32"]["boundaries"] is None
    for label in ("ptq", "qat"):  # full INT8: Q at the input, DQ before the float heads
        assert lat[label]["boundaries"] >= 2 and len(lat[label]["rounds_ms"]) == 2
        assert lat[label]["median_ms"] == pytest.approx(
            np.median(lat[label]["rounds_ms"]), abs=1e-3
        )
    assert "| ptq |" in int8_paths.latency_markdown(lat, threads=2)
