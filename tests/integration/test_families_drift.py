"""`benchmarks.families --drift`: the per-family drift table, the CLI glue, and one real
export + drift run on a tiny random-init checkpoint (no training: the trainer only splits)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from edgescreen.benchmarks import families

EXPORT_TESTS = Path(__file__).resolve().parents[1] / "export"


def _row(precision: str, **extra) -> dict:
    """A row shaped as benchmarks/drift.py drift_row writes it."""
    return {
        "precision": precision,
        "metric_name": "accuracy",
        "metric": 0.75,
        "delta": 0.0,
        "ci_low": 0.0,
        "ci_high": 0.0,
        "flips": 0,
        "flip_rate": 0.0,
        "flip_rate_ci95": [0.0, 0.1],
        "median_abs_dp": 0.0,
        "p95_abs_dp": 0.0,
        "images": 40,
        **extra,
    }


def _drift(rows: list[dict], violations: list[str] | None = None) -> dict:
    return {
        "test_images": 40,
        "int8_search": False,
        "gate": {"passed": not violations, "violations": violations or []},
        "rows": rows,
    }


def _cells(line: str) -> list[str]:
    """A markdown table line's cells, honouring escaped pipes as GitHub does."""
    return [c.strip() for c in line.replace("\\|", "¦").strip().strip("|").split("|")]


def test_drift_table_has_one_row_per_precision_and_aligned_columns():
    rows = [
        _row("fp32", label_changes=0, flips_in_fp16_band=0),
        _row(
            "int8",
            metric=0.7,
            delta=-0.05,
            ci_low=-0.1,
            ci_high=0.0,
            flips=3,
            flip_rate=0.075,
            flip_rate_ci95=[0.026, 0.199],
            median_abs_dp=0.004,
            p95_abs_dp=0.03,
        ),  # no label_changes / FP16 band (a CXR row, or no FP16 in the bundle): dashes
    ]
    text = families.drift_table("ran", _drift(rows, ["int8: decision flip rate 7.50%"]))
    table = [line for line in text.splitlines() if line.startswith("|")]
    header, rule, fp32, int8 = table
    assert len(_cells(header)) == len(_cells(rule)) == len(_cells(fp32)) == len(_cells(int8)) == 9
    assert _cells(fp32) == [
        "fp32",
        "accuracy",
        "0.7500",
        "+0.0000 (+0.0000, +0.0000)",
        "0/40 (0.0-10.0%)",
        "0",
        "0",
        "0.0000 / 0.0000",
        "40",
    ]
    assert _cells(int8)[3:7] == ["-0.0500 (-0.1000, +0.0000)", "3/40 (2.6-19.9%)", "–", "–"]
    assert "40 held-out test images" in text and "drift gate missed" in text
    assert "int8: decision flip rate 7.50%" in text


def test_cli_appends_drift_only_when_asked(monkeypatch, tmp_path):
    seen = {}

    def fake_train(family, work, images=None):
        seen["images"] = images
        row = {
            "family": family,
            "images": images or 8,
            "side": 64,
            "seconds": 1.0,
            "cpu_seconds": 1.0,
        }
        return {**row, "metric": "accuracy", "val_metric": 0.5, "stages": []}, work / "model.pt"

    def fake_drift(checkpoint, bundle, *, int8_search=False):
        seen.update(checkpoint=checkpoint, bundle=bundle, int8_search=int8_search)
        return _drift([_row("fp32"), _row("fp16"), _row("int8"), _row("int8-cpu")])

    monkeypatch.setattr(families, "_train", fake_train)
    monkeypatch.setattr(families, "drift_family", fake_drift)
    common = ["--families", "ran", "--work", str(tmp_path / "w")]

    families.main([*common, "--out", str(tmp_path / "plain")])
    [md] = (tmp_path / "plain").glob("*.md")
    [js] = (tmp_path / "plain").glob("*.json")
    assert "drift against FP32" not in md.read_text()
    assert "drift" not in json.loads(js.read_text())["families"][0]
    assert seen == {"images": None}  # trained with the table's count, not exported

    families.main(
        [*common, "--out", str(tmp_path / "drift"), "--drift", "--int8-search", "--images", "900"]
    )
    [md] = (tmp_path / "drift").glob("*.md")
    [js] = (tmp_path / "drift").glob("*.json")
    assert seen == {
        "images": 900,
        "checkpoint": tmp_path / "w" / "model.pt",
        "bundle": tmp_path / "w" / "bundle-ran",
        "int8_search": True,
    }
    entry = json.loads(js.read_text())["families"][0]
    assert [r["precision"] for r in entry["drift"]["rows"]] == ["fp32", "fp16", "int8", "int8-cpu"]
    assert "## ran: drift against FP32" in md.read_text()

    with pytest.raises(SystemExit):  # a search without an export to search is a mistake
        families.main([*common, "--int8-search"])


@pytest.mark.slow
def test_drift_family_exports_every_precision_and_measures_the_test_split(monkeypatch, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime.quantization")
    from edgescreen.train.config import load_config
    from edgescreen.train.data.loaders import load_generic_csv
    from edgescreen.train.data.synth import synthesize
    from edgescreen.train.loop import Trainer

    if str(EXPORT_TESTS) not in sys.path:
        sys.path.insert(0, str(EXPORT_TESTS))
    from export_helpers import make_checkpoint

    monkeypatch.setenv("EDGESCREEN_CACHE", str(tmp_path / "cache"))  # private calibration cache
    synthesize("oct", 48, tmp_path / "data", seed=11, size=64)
    run = tmp_path / "run"
    # The trainer's constructor writes splits.json exactly as a real run does; no epoch runs.
    Trainer(
        load_config("ran-tiny"),
        load_generic_csv(tmp_path / "data" / "labels.csv", "oct"),
        run,
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    checkpoint = make_checkpoint(run, "ran")  # run/model.pt, beside splits.json
    test_size = len(json.loads((run / "splits.json").read_text())["test"])
    assert test_size > 0

    drift = families.drift_family(checkpoint, tmp_path / "bundle", int8_search=False)

    rows = {r["precision"]: r for r in drift["rows"]}
    assert list(rows) == ["fp32", "fp16", "int8", "int8-cpu"]  # reference first
    assert drift["test_images"] == test_size
    assert all(r["images"] == test_size for r in rows.values())
    fp32 = rows["fp32"]
    assert fp32["delta"] == 0 and fp32["flips"] == 0 and fp32["label_changes"] == 0
    for r in rows.values():
        assert r["flips"] == len(r["flipped_images"]) and 0 <= r["flips"] <= test_size
        assert 0 <= r["flips_in_fp16_band"] <= r["flips"]
        assert 0 <= r["median_abs_dp"] <= r["p95_abs_dp"] <= 1
        lo, hi = r["flip_rate_ci95"]
        assert 0 <= lo <= r["flip_rate"] <= hi <= 1
    assert "passed" in drift["gate"] and "violations" in drift["gate"]
    json.dumps(drift)  # the rows go into the benchmark's JSON as they are
    table = families.drift_table("ran", drift)
    assert sum(line.startswith("| int8") for line in table.splitlines()) == 2
