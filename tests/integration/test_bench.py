"""Smoke runs of the benchmark suites (tiny bundle, few images, no timing assertions)."""

from __future__ import annotations

import json

import numpy as np
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
        "pipeline": {
            "runtime_vs_naive": 3.0,
            "runtime_vs_bound": 0.5,
            "runtime_vs_shared_bound": 0.9,
        },
        "drift": [
            {
                "precision": "int8",
                "metric_name": "qwk",
                "delta": -0.02,
                "flip_rate": 0.0,
                "median_abs_dp": 0.004,
                "p95_abs_dp": 0.03,
            },
            {"precision": "fp16", "metric_name": "qwk", "delta": 0.001, "flip_rate": 0.0},
        ],
    }
    floors = {f["name"]: f["passed"] for f in evaluate_floors(data)}
    assert floors["INT8 CPU-form vs PyTorch eager FP32, batch 1"] is True
    assert floors["runtime pipeline vs naive pipeline"] is False
    assert floors["INT8 (TensorRT form) |ΔQWK|"] is False  # |-0.02| > 0.01
    assert floors["INT8 (TensorRT form) decision flips"] is True
    assert floors["INT8 (TensorRT form) median |Δ referral p|"] is True  # 0.004 <= 0.005
    assert floors["INT8 (TensorRT form) p95 |Δ referral p|"] is False  # 0.03 > 0.02
    assert floors["FP16 |ΔQWK|"] is True
    # On the CPU the pipeline is judged against the summed-work bound, not the slower stage.
    assert floors["runtime pipeline vs its bound (summed work, shared CPU cores)"] is True


def test_fp16_band_marks_results_near_a_threshold(dr_bundle):
    """A flip on an image whose FP32 value sits within FP16's error of a threshold is marked."""
    from edgescreen.benchmarks.drift import fp16_band, within_band
    from edgescreen.runtime.card import load_card
    from edgescreen.runtime.postprocess import thresholded_values

    card = load_card(dr_bundle)
    rng = np.random.default_rng(0)
    n = 6
    shapes = {"scores": (n, len(card.labels)), "grade_value": (n, 1), "heatmap": (n, 4, 4)}
    fp32 = {s.name: rng.normal(size=shapes[s.role]).astype(np.float32) for s in card.outputs}
    values = thresholded_values(card, fp32)
    assert values, "a DR card thresholds at least one value"
    fp16 = {k: v.copy() for k, v in fp32.items()}
    band = fp16_band(card, fp32, fp16)
    assert all(w == 0.0 for w in band.values())  # identical outputs: no band
    # Widen every band to 10: every image is then within it of some threshold.
    near = within_band(card, fp32, {k: 10.0 for k in values})
    assert near.shape == (n,) and near.all()
    assert not within_band(card, fp32, {k: -1.0 for k in values}).any()


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


def test_the_demo_says_which_floor_it_missed_and_by_how_much():
    from edgescreen.benchmarks.demo import missed_floors

    floors = evaluate_floors(
        {
            "ratios": {},
            "drift": [
                {
                    "precision": "fp16",
                    "metric_name": "qwk",
                    "delta": 0.008,
                    "flip_rate": 0.0,
                    "flips": 0,
                    "images": 118,
                    "label_changes": 1,
                    "label_changes_in_fp16_band": 1,
                },
            ],
        }
    )
    (line,) = missed_floors(floors)
    assert line.startswith("FP16 |ΔQWK|: 0.008, limit <= 0.002, missed by 0.006")
    assert "1 of 118 grades changed, 1 of them within FP16's band" in line


def test_batching_bound_is_amdahls_over_the_network_share():
    from edgescreen.benchmarks.triton_load import batching_bound

    one = {"images_per_s": 50.0, "stage_ms": {"decode": 2.0, "quality": 4.0, "infer": 4.0}}
    many = {"images_per_s": 60.0, "stage_ms": {"decode": 2.5, "quality": 4.5, "infer": 2.0}}
    got = batching_bound(one, many)
    assert got["network_share_batch1"] == pytest.approx(0.4)
    # Only the network gets cheaper: 10 ms of work per image becomes 8 ms at best.
    assert got["amdahl_bound"] == pytest.approx(10.0 / 8.0)
    assert got["in_process_gain"] == pytest.approx(1.2)


def test_seeds_judge_each_floor_on_the_median():
    from edgescreen.benchmarks.seeds import combine

    def run(flips: float) -> dict:
        passed = flips <= 0.01
        floor = {"value": flips, "required": "<= 0.01", "passed": passed}
        return {"floors": {"flips": floor}}

    # One seed misses badly; the median of three still passes, and the range shows the miss.
    (f,) = combine([run(0.0), run(0.034), run(0.008)])["floors"]
    assert f["median"] == 0.008 and f["median_passed"] is True
    assert f["range"] == [0.0, 0.034] and f["seeds_passed"] == 2
    (f,) = combine([run(0.02), run(0.034), run(0.008)])["floors"]
    assert f["median"] == 0.02 and f["median_passed"] is False
