"""Calibration governance, the range cache, the drift gate, tampering, the INT8 forms."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from export_helpers import (  # noqa: F401 (fixture)
    export_cache,
    make_checkpoint,
    qdq_summary,
    spread_cutpoints,
    synth_set,
)

from edgescreen.export import DriftGateError, export_bundle
from edgescreen.export.calibration import CalibrationError, select
from edgescreen.runtime.card import load_card

pytestmark = pytest.mark.usefixtures("export_cache")  # calibration cache private to the session


@pytest.fixture(scope="module")
def dr(tmp_path_factory):
    root = tmp_path_factory.mktemp("dr")
    out = {
        "ckpt": make_checkpoint(root / "run", "multitask"),
        "calib": synth_set(root / "calib", "dr_grading", 16, seed=11),
        "eval": synth_set(root / "eval", "dr_grading", 12, seed=12),
        "root": root,
    }
    spread_cutpoints(out["ckpt"], out["eval"])
    return out


def test_overlapping_calibration_is_refused_naming_the_file(dr, tmp_path):
    with pytest.raises(
        CalibrationError, match=r"calibration image .*\.png is byte-identical to evaluation"
    ):
        export_bundle(
            dr["ckpt"],
            tmp_path / "b",
            calib=dr["eval"],
            eval=dr["eval"],
            allow_synthetic_calibration=True,
            progress=False,
        )
    assert not (tmp_path / "b").exists()


def test_synthetic_calibration_needs_the_flag(dr, tmp_path):
    with pytest.raises(CalibrationError, match="allow-synthetic-calibration"):
        export_bundle(
            dr["ckpt"], tmp_path / "b", calib=dr["calib"], eval=dr["eval"], progress=False
        )
    with pytest.raises(CalibrationError, match="needs calibration images"):
        export_bundle(dr["ckpt"], tmp_path / "b", eval=dr["eval"], progress=False)


def test_manifest_cache_and_int8_forms(dr, tmp_path):
    kw = dict(
        calib=dr["calib"],
        eval=dr["eval"],
        calib_size=10,
        calib_method="minmax",
        allow_drift=True,
        allow_synthetic_calibration=True,
        progress=False,
    )
    first = export_bundle(dr["ckpt"], tmp_path / "a", **kw)
    second = export_bundle(dr["ckpt"], tmp_path / "b", **kw)
    print(
        "calibration seconds: first",
        first.seconds.get("calibrate"),
        "second",
        second.seconds.get("calibrate"),
    )
    assert first.calibration_cache_hit is False and second.calibration_cache_hit is True
    for key in ("model.int8.onnx", "model.int8-cpu.onnx"):
        assert (
            qdq_summary(tmp_path / "a" / key)["activation_scales"]
            == qdq_summary(tmp_path / "b" / key)["activation_scales"]
        )

    card = load_card(tmp_path / "a")
    cal = card.calibration
    assert (
        cal["method"] == "minmax"
        and cal["size"] == 10
        and cal["synthetic"]
        and cal["allowed_by_flag"]
    )
    assert sum(cal["class_counts"].values()) == 10 and len(cal["images"]) == 10
    assert all(len(i["sha256"]) == 64 and i["path"] for i in cal["images"])
    assert (
        card.artifacts["onnx-int8"].target == "tensorrt"
        and card.artifacts["onnx-int8-cpu"].target == "cpu"
    )
    assert {"int8", "int8-cpu", "fp16", "fp32", "drift_gate"} <= set(card.metrics)
    trt, cpu = (
        qdq_summary(tmp_path / "a" / "model.int8.onnx"),
        qdq_summary(tmp_path / "a" / "model.int8-cpu.onnx"),
    )
    assert trt["zero_point_types"] == ["int8"] and "uint8" in cpu["zero_point_types"]


def test_stratified_selection_keeps_every_class():
    from edgescreen.train.data.records import Sample

    samples = [
        Sample(None, k % 5 if i % 4 else 0, f"p{i}", array=np.full((4, 4), i, np.uint8))
        for i, k in enumerate(range(100))
    ]
    chosen = select(samples, 10)
    assert len(chosen) == 10 and {s.label for s in chosen} == {0, 1, 2, 3, 4}
    assert select(samples, 10) == chosen


def test_broken_calibration_fails_the_gate_and_allow_drift_records_it(dr, tmp_path):
    import cv2

    black = tmp_path / "black"
    (black / "images").mkdir(parents=True)
    rows = ["path,label,patient"]
    for i in range(4):
        cv2.imwrite(str(black / "images" / f"b{i}.png"), np.full((64, 64, 3), i, np.uint8))
        rows.append(f"images/b{i}.png,{i % 2},black{i}")
    (black / "labels.csv").write_text("\n".join(rows) + "\n")
    kw = dict(calib=f"csv-dr:{black}", eval=dr["eval"], calib_method="minmax", progress=False)
    with pytest.raises(DriftGateError, match="drift gate failed"):
        export_bundle(dr["ckpt"], tmp_path / "bundle", **kw)
    assert not (tmp_path / "bundle").exists()
    report = export_bundle(dr["ckpt"], tmp_path / "bundle", allow_drift=True, **kw)
    gate = load_card(tmp_path / "bundle").metrics["drift_gate"]
    assert gate["passed"] is False and gate["allowed_by_flag"] is True and gate["violations"]
    assert report.gate == gate


def test_cli_exit_codes_and_tamper(dr, tmp_path, capsys):
    from edgescreen.runtime import cli

    def run(*argv):
        import argparse

        from edgescreen.export.cli import add_export_command

        parser = cli.build_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        if "export" not in sub.choices:
            add_export_command(sub)
        args = parser.parse_args([str(a) for a in argv])
        try:
            return args.func(args)
        except Exception as exc:  # what main() does with EdgescreenError
            print(f"error: {exc}")
            return 2

    bundle = tmp_path / "bundle"
    assert (
        run(
            "export",
            dr["ckpt"],
            "--out",
            bundle,
            "--calib",
            dr["calib"],
            "--eval",
            dr["eval"],
            "--calib-size",
            "6",
            "--allow-synthetic-calibration",
            "--allow-drift",
            "--json",
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert [r["precision"] for r in report["rows"]] == ["fp32", "fp16", "int8", "int8-cpu"]
    assert cli.main(["info", str(bundle), "--verify"]) == 0

    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    data = bytearray((tampered / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (tampered / "model.onnx").write_bytes(bytes(data))
    capsys.readouterr()
    assert cli.main(["info", str(tampered), "--verify"]) == 2
    assert "model.onnx" in capsys.readouterr().err
    image = next(
        (tampered.parent / "bundle" / "golden").glob("*.json")
    )  # any file: refused before decoding
    assert cli.main(["screen", str(image), "--bundle", str(tampered)]) == 2
    err = capsys.readouterr().err
    assert "model.onnx" in err and "sha256 mismatch" in err
