"""QAT mechanics on a tiny model: ModelOpt fake quantization, fine-tune, both Q/DQ forms."""

from __future__ import annotations

import numpy as np
import pytest
from export_helpers import export_cache, make_checkpoint, qdq_summary, synth_set  # noqa: F401

pytest.importorskip("modelopt.torch.quantization")
pytestmark = pytest.mark.usefixtures("export_cache")


def test_qat_finetune_returns_a_float_module_with_tuned_weights():
    import torch

    from edgescreen.export.graph_crop import export_view
    from edgescreen.export.qat import qat_finetune
    from edgescreen.train.models import build_model

    torch.manual_seed(0)
    view = export_view(build_model("multitask", tiny=True).eval(), (3, 64, 64)).eval()
    x = np.random.default_rng(0).normal(size=(8, 3, 64, 64)).astype(np.float32)
    tuned, record = qat_finetune(view, x, epochs=2, batch=4, lr=1e-3)
    assert record["epochs"] == 2 and len(record["loss_per_epoch"]) == 2
    assert not any("quantizer" in k for k in tuned.state_dict())
    changed = [
        k
        for k, v in tuned.state_dict().items()
        if v.dtype.is_floating_point and not torch.equal(v, view.state_dict()[k])
    ]
    assert changed, "fine-tuning changed no weight"
    with torch.no_grad():
        out = tuned(torch.from_numpy(x))
    assert all(torch.isfinite(o).all() for o in (out if isinstance(out, tuple) else [out]))


def test_export_qat_writes_both_forms_tensorrt_symmetric(tmp_path):
    from edgescreen.export import export_bundle
    from edgescreen.runtime.card import load_card

    ckpt = make_checkpoint(tmp_path / "run", "multitask")
    report = export_bundle(
        ckpt,
        tmp_path / "b",
        calib=synth_set(tmp_path / "calib", "dr_grading", 8, seed=31),
        eval=synth_set(tmp_path / "eval", "dr_grading", 6, seed=32),
        calib_size=8,
        calib_method="minmax",
        qat_epochs=1,
        allow_drift=True,
        allow_synthetic_calibration=True,
        progress=False,
    )
    qat = report.card.calibration["qat"]
    assert qat["epochs"] == 1 and "modelopt" in qat["tool"]
    trt = qdq_summary(tmp_path / "b" / "model.int8.onnx")
    cpu = qdq_summary(tmp_path / "b" / "model.int8-cpu.onnx")
    assert trt["quantize"] and trt["zero_point_types"] == ["int8"]
    assert "uint8" in cpu["zero_point_types"]
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(tmp_path / "b" / "model.int8.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    zps = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert zps and all(not z.any() for z in zps)  # TensorRT: symmetric, zero points 0
    assert not (tmp_path / "b" / ".qat-source.onnx").exists()
    load_card(tmp_path / "b")  # the card still loads (schema unchanged)


def test_qat_exports_the_scales_it_trained_on(tmp_path):
    """No re-calibration after fine-tuning: every TensorRT-form Q/DQ on a conv input carries
    the PTQ calibration's own scale (absmax / 127, the grid the student trained on)."""
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization.calibrate import load_tensors_data

    from edgescreen.export import export_bundle

    ckpt = make_checkpoint(tmp_path / "run", "multitask")
    report = export_bundle(
        ckpt,
        tmp_path / "b",
        calib=synth_set(tmp_path / "calib", "dr_grading", 8, seed=31),
        eval=synth_set(tmp_path / "eval", "dr_grading", 6, seed=32),
        calib_size=8,
        calib_method="minmax",
        qat_epochs=1,
        allow_drift=True,
        allow_synthetic_calibration=True,
        progress=False,
    )
    qat = report.card.calibration["qat"]
    assert qat["activation_ranges"].startswith("the PTQ calibration")
    assert qat["forms"]["tensorrt"]["convs_float"], "the TensorRT form's input convs train float"
    ranges = load_tensors_data(report.calibration_cache).data
    model = onnx.load(str(tmp_path / "b" / "model.int8.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    prod = {o: n for n in model.graph.node for o in n.output}
    checked = 0
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        dq = prod.get(conv.input[0])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = prod[dq.input[0]]
        absmax = np.abs(np.concatenate([np.ravel(v) for v in ranges[q.input[0]].range_value]))
        assert float(inits[q.input[1]]) == pytest.approx(float(absmax.max()) / 127, rel=1e-5)
        checked += 1
    assert checked >= 3


def test_qat_quantizes_same_padding_convs_and_aligns_with_onnx():
    """timm's Conv2dSame (EfficientNet-Lite's stem and strided depthwise convs) gets fake
    quantizers like any conv; a model that does not line up with the ONNX is refused."""
    import torch
    from timm.layers import Conv2dSame

    from edgescreen.export.qat import ConvRange, _align, _quantize_same_padding_convs
    from edgescreen.runtime.errors import EdgescreenError

    mtq = pytest.importorskip("modelopt.torch.quantization")
    _quantize_same_padding_convs(mtq)
    net = torch.nn.Sequential(
        Conv2dSame(3, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1)
    )
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    mtq.quantize(net, mtq.INT8_DEFAULT_CFG, forward_loop=lambda m: m(torch.from_numpy(x)))
    assert hasattr(net[0], "input_quantizer") and net[0].input_quantizer.is_enabled
    good = [ConvRange("a", (4, 3, 3, 3), 1.0), ConvRange("b", (2, 4, 1, 1), 2.0)]
    assert [r.node for _, r in _align(net, x[:1], good)] == ["a", "b"]
    with pytest.raises(EdgescreenError, match="do not line up"):
        _align(net, x[:1], good[::-1])
