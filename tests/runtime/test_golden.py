"""Golden set round trip and the device self-test, for real on ONNX Runtime (CPU)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from edgescreen.export.golden import write_golden
from edgescreen.runtime.card import load_card
from edgescreen.runtime.errors import CardError
from edgescreen.runtime.golden import (
    add_selftest_command,
    golden_dir,
    load_golden,
    selftest,
)


def _fp32_outputs(bundle, inputs):
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": inputs}), strict=True))


def _inputs(bundle, n=12, seed=0):
    c, h, w = load_card(bundle).input.shape
    return np.random.default_rng(seed).normal(0, 1, (n, c, h, w)).astype(np.float32)


@pytest.fixture
def golden_bundle(tmp_path):
    from conftest import make_bundle

    bundle = make_bundle(tmp_path / "dr", size=64)
    inputs = _inputs(bundle)
    write_golden(
        bundle, inputs, _fp32_outputs(bundle, inputs), [f"img{i}.jpg" for i in range(len(inputs))]
    )
    return bundle


def test_round_trip(golden_bundle, tmp_path):
    g = load_golden(golden_bundle)
    assert g.inputs.shape == (12, 3, 64, 64) and g.inputs.dtype == np.float32
    assert set(g.outputs) == {"scores", "heatmap"}
    m = g.manifest
    assert m["count"] == 12 and g.names[0] == "img0.jpg"
    assert m["source_model_sha256"] == load_card(golden_bundle).artifacts["onnx-fp32"].sha256
    assert set(m["tolerances"]) == {"fp32", "fp16", "int8"}
    # A real file is hashed.
    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"not really a jpeg")
    write_golden(golden_bundle, g.inputs[:1], {k: v[:1] for k, v in g.outputs.items()}, [photo])
    assert load_golden(golden_bundle).manifest["images"][0]["sha256"] is not None


def test_write_refuses_mismatched_shapes(golden_bundle):
    g = load_golden(golden_bundle)
    with pytest.raises(CardError, match="golden inputs must be"):
        write_golden(golden_bundle, g.inputs[:, :1], g.outputs, g.names)
    with pytest.raises(CardError, match="names"):
        write_golden(golden_bundle, g.inputs, g.outputs, g.names[:3])
    with pytest.raises(CardError, match="lack"):
        write_golden(golden_bundle, g.inputs, {"scores": g.outputs["scores"]}, g.names)


def test_selftest_on_onnxruntime_is_ready(golden_bundle):
    report = selftest(golden_bundle, "fp32", "onnxruntime")
    assert report.ready, report.summary()
    assert report.reasons == [] and report.count == 12
    assert report.decision_agreement == 1.0
    assert report.errors["scores"]["max_rel"] < 1e-5
    assert "heatmap" not in report.errors  # heatmaps are not gated
    assert report.device == "cpu" and report.backend == "onnxruntime"


def test_selftest_auto_backend_falls_back_to_onnxruntime(golden_bundle):
    report = selftest(golden_bundle, "fp32", "auto")
    assert report.backend in ("onnxruntime", "tensorrt") and report.ready


def test_perturbed_stored_outputs_are_not_ready(golden_bundle):
    g = load_golden(golden_bundle)
    shifted = dict(g.outputs)
    scores = shifted["scores"].copy()
    # Swap the top two classes of every image: same scale, every decision moves.
    order = np.argsort(scores, axis=1)
    rows = np.arange(len(scores))
    scores[rows, order[:, -1]], scores[rows, order[:, 0]] = (
        scores[rows, order[:, 0]],
        scores[rows, order[:, -1]],
    )
    shifted["scores"] = scores
    write_golden(golden_bundle, g.inputs, shifted, g.names)
    report = selftest(golden_bundle, "fp32", "onnxruntime")
    assert not report.ready
    text = " ".join(report.reasons)
    assert "max relative error" in text and "another decision or label" in text
    assert report.flips and report.flips[0]["image"].startswith("img")


def test_small_noise_within_fp16_tolerance_but_not_fp32(golden_bundle):
    g = load_golden(golden_bundle)
    noisy = {k: v * np.float32(1.015) for k, v in g.outputs.items()}
    write_golden(golden_bundle, g.inputs, noisy, g.names)
    # The ORT CPU model stands in for a device: 1.5 % scale error fails fp32's 1 % bound.
    report = selftest(golden_bundle, "fp32", "onnxruntime")
    assert not report.ready and "fp32 tolerance" in report.reasons[0]


def test_perturbed_model_is_not_ready(golden_bundle, tmp_path):
    from conftest import make_bundle

    other = make_bundle(tmp_path / "other", size=64, seed=7)  # same card, other weights
    shutil.copytree(golden_dir(golden_bundle), golden_dir(other))
    report = selftest(other, "fp32", "onnxruntime")
    assert not report.ready
    text = " ".join(report.reasons)
    assert "golden set and model disagree" in text
    assert "max relative error" in text


def test_missing_golden_and_missing_precision(golden_bundle, tmp_path):
    from conftest import make_bundle

    bare = make_bundle(tmp_path / "bare", size=64)
    report = selftest(bare, "fp32", "onnxruntime")
    assert not report.ready and "golden set is missing" in report.reasons[0]
    report = selftest(golden_bundle, "int8", "onnxruntime")
    assert not report.ready and "no int8 ONNX model" in report.reasons[-1]


def test_int8_flip_allowance_comes_from_the_card(golden_bundle):
    g = load_golden(golden_bundle)
    card = load_card(golden_bundle)
    from edgescreen.runtime.golden import compare

    # One flipped image of 12 exceeds a 1 % flip-rate limit; a 10 % limit allows it.
    got = {k: v.copy() for k, v in g.outputs.items()}
    row = got["scores"][0]
    row[np.argmax(row)], row[np.argmin(row)] = row[np.argmin(row)], row[np.argmax(row)]
    reasons, *_ = compare(card, g, got, "int8")
    assert any("another decision or label" in r for r in reasons)
    g.manifest["tolerances"]["int8"]["max_flip_rate"] = 0.1
    reasons, _, agreement, flips, _ = compare(card, g, got, "int8")
    assert not any("another decision" in r for r in reasons) and len(flips) == 1
    assert agreement == pytest.approx(11 / 12)


def test_cli_exit_codes(golden_bundle, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    add_selftest_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["selftest", str(golden_bundle), "--backend", "onnxruntime", "--json"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["ready"] is True
    g = load_golden(golden_bundle)
    write_golden(golden_bundle, g.inputs, {k: -v for k, v in g.outputs.items()}, g.names)
    args = parser.parse_args(["selftest", str(golden_bundle), "--backend", "onnxruntime"])
    assert args.func(args) == 1
    assert "NOT READY" in capsys.readouterr().out
