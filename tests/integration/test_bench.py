"""Smoke runs of the benchmark suites (tiny bundle, few images, no timing assertions)."""

from __future__ import annotations

import json

import pytest

from edgescreen.benchmarks.cli import evaluate_floors, run_bench
from edgescreen.benchmarks.report import validate_results
from edgescreen.train.data.loaders import load_srahim_fundus


def test_bench_writes_a_valid_results_file(dr_bundle, fundus_dir, tmp_path):
    samples = load_srahim_fundus(fundus_dir).samples[::50]  # 8 real photos, every grade
    data = run_bench(
        dr_bundle,
        eval_samples=samples,
        out=tmp_path,
        batches=(1, 2),
        min_seconds=0.05,
        min_iters=3,
        progress=False,
    )
    written = {k: tmp_path / v.split("/")[-1] for k, v in data["written"].items()}
    assert {"json", "markdown", "latency_plot"} <= set(written)
    results = json.loads(written["json"].read_text())
    validate_results(results)  # the schema a reader relies on
    rows = {(r["config"], r["batch"]) for r in results["latency"]}
    assert rows == {("onnxruntime-fp32", 1), ("onnxruntime-fp32", 2)}
    assert all(
        r["error"] is None and r["median_ms"] > 0 and r["peak_rss_mb"] > 0
        for r in results["latency"]
    )
    pipeline = results["pipeline"]
    assert pipeline["runtime"]["ok"] == len(samples)
    assert pipeline["decode_only"]["images"] == pipeline["infer_only"]["images"] == len(samples)
    [fp32] = results["drift"]  # the tiny bundle has one precision: its drift against itself is zero
    assert fp32["precision"] == "fp32" and fp32["delta"] == 0 and fp32["flips"] == 0
    assert 0.0 <= fp32["ece"] <= 1.0
    assert "| onnxruntime-fp32 | 1 |" in written["markdown"].read_text()


def test_results_schema_names_the_broken_field(dr_bundle, tmp_path):
    data = run_bench(
        dr_bundle, out=None, batches=(1,), min_seconds=0.02, min_iters=2, progress=False
    )
    validate_results(data)
    del data["latency"][0]["median_ms"]
    with pytest.raises(ValueError, match=r"latency\[0\]\.median_ms is missing"):
        validate_results(data)
    data["schema"] = "other/9"
    with pytest.raises(ValueError, match="schema"):
        validate_results({**data, "latency": []})


def test_floors_compare_the_right_way():
    data = {
        "ratios": {"onnxruntime-int8-cpu-form_vs_eager_fp32_b1": 4.2},
        "pipeline": {"runtime_vs_naive": 3.0, "runtime_vs_bound": 0.9},
        "drift": [
            {"precision": "int8", "metric_name": "qwk", "delta": -0.02, "flip_rate": 0.0},
            {"precision": "fp16", "metric_name": "qwk", "delta": 0.001, "flip_rate": 0.0},
        ],
    }
    floors = {f["name"]: f["passed"] for f in evaluate_floors(data)}
    assert floors["INT8 CPU-form vs PyTorch eager FP32, batch 1"] is True
    assert floors["runtime pipeline vs naive pipeline"] is False
    assert floors["INT8 (TensorRT form) |ΔQWK|"] is False  # |-0.02| > 0.01
    assert floors["INT8 (TensorRT form) decision flips"] is True
    assert floors["FP16 |ΔQWK|"] is True


def test_camera_resolution_beside_the_copies(dr_bundle):
    """Originals and their 768 px copies in one run: stage times, both bounds, agreement."""
    from conftest import shared_set

    from edgescreen.benchmarks.camera import bounds, run_camera
    from edgescreen.benchmarks.report import markdown

    fullres = shared_set("fundus-dr-srahim-fullres")
    cam = run_camera(dr_bundle, fullres, precision="fp32", limit=3, batch_size=2)
    assert cam["photos"] == 3 and cam["agreement"]["of"] == 3
    for key in ("originals", "copies_768"):
        run = cam[key]
        assert run["images"] == 3 and set(run["ms_per_image"]) == {
            "decode",
            "quality",
            "preprocess",
            "infer",
        }
        assert run["bounds"]["shared_cores"] <= run["bounds"]["separate_devices"]
    # 100 and 50 images/s of prepare and inference sharing cores: 1 / (1/100 + 1/50).
    assert bounds(100.0, 50.0) == pytest.approx({"shared_cores": 100 / 3, "separate_devices": 50.0})
    page = markdown(
        {
            "machine": {},
            "bundle": {},
            "date": "today",
            "latency": [],
            "ratios": {},
            "floors": [],
            "camera": cam,
        }
    )
    assert "Camera-resolution uploads (3 originals" in page
