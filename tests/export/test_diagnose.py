"""Per-layer INT8 diagnosis of both forms, on a tiny exported model."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from export_helpers import export_cache, export_tiny_bundle  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("export_cache")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return export_tiny_bundle(tmp_path_factory.mktemp("diag"))


def test_report_covers_both_forms_with_reasons(tiny, tmp_path):
    from edgescreen.export.diagnose import diagnose_bundle
    from edgescreen.runtime.card import load_card

    _, bundle = tiny
    card = load_card(bundle)
    x = np.random.default_rng(0).normal(size=(6, *card.input.shape)).astype(np.float32)
    payload = diagnose_bundle(bundle, x, tmp_path / "out", source="random")
    for name in ("diagnose.md", "diagnose.json", "diagnose.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert set(payload["forms"]) == {"tensorrt", "cpu"}
    for rows in payload["forms"].values():
        assert rows, "no quantized tensor found"
        sqnr = [r["local_sqnr_db"] for r in rows]
        assert sqnr == sorted(sqnr)  # worst first
        assert all(r["reason"] and r["op_type"] and r["consumers"] for r in rows)
        assert all(0.0 <= r["clipped"] <= 1.0 for r in rows)
    # The CPU form folds ReLU6 into the Q range: the activation's own clipping is not error.
    folded = [r for r in payload["forms"]["cpu"] if r["op_type"] in ("Clip", "Relu")]
    assert all(r["clipped"] < 0.5 for r in folded)
    assert "| # | tensor |" in (tmp_path / "out" / "diagnose.md").read_text()
    json.loads((tmp_path / "out" / "diagnose.json").read_text())


def test_tensorrt_form_quantizes_after_the_activation_not_before(tiny):
    """No Q/DQ between a Conv and its ReLU6: TensorRT fuses them; a second rounding of the
    pre-activation range was the TensorRT form's worst error on the demo model."""
    _, bundle = tiny
    model = onnx.load(str(bundle / "model.int8.onnx"))
    producer = {o: n for n in model.graph.node for o in n.output}
    activations = [n for n in model.graph.node if n.op_type in ("Clip", "Relu", "Sigmoid")]
    assert activations
    for n in activations:
        assert producer[n.input[0]].op_type != "DequantizeLinear", n.name
