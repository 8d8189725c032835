"""Every family exports; the bundle screens like PyTorch; INT8 files are Q/DQ and run."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from export_helpers import FAMILIES, export_cache, make_checkpoint, synth_set  # noqa: F401 (fixture)

from edgescreen.export import export_bundle
from edgescreen.export.quantize import input_convs
from edgescreen.export.verify import run_shipped
from edgescreen.runtime.card import load_card
from edgescreen.runtime.screen import Screener

pytestmark = pytest.mark.usefixtures("export_cache")  # calibration cache private to the session


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_exports_and_screens_like_pytorch(family, tmp_path, tmp_path_factory):
    import torch

    from edgescreen.export.data import resolve, sources_of
    from edgescreen.export.graph_crop import export_view
    from edgescreen.runtime.prepare import prepare_batch
    from edgescreen.train.checkpoint import load_trained

    task = FAMILIES[family][0]
    data = tmp_path_factory.getbasetemp() / f"data-{task}"
    calib = synth_set(data / "calib", task, 12, seed=1)
    evaluation = synth_set(data / "eval", task, 10, seed=2)
    ckpt = make_checkpoint(tmp_path / "run", family)
    bundle = tmp_path / "bundle"
    report = export_bundle(
        ckpt,
        bundle,
        calib=calib,
        eval=evaluation,
        calib_size=8,
        allow_drift=True,
        allow_synthetic_calibration=True,
        progress=False,
    )
    card = load_card(bundle)
    assert set(card.artifacts) == {
        "onnx-fp32",
        "onnx-fp16",
        "onnx-int8",
        "onnx-int8-cpu",
        "torchscript",
    }
    assert {r["precision"] for r in report.rows} == {"fp32", "fp16", "int8", "int8-cpu"}
    assert (bundle / "golden" / "inputs.npy").is_file()
    assert card.metrics["fp32"]["parity_vs_pytorch"]["fp32"]["max_rel_err"] < 1e-4

    # FP32 bundle decisions == PyTorch decisions through the same postprocessing
    samples = resolve(evaluation, what="eval").samples
    x = prepare_batch(sources_of(samples), card)
    trained = load_trained(ckpt)
    with torch.no_grad():
        ref = export_view(trained.model)(torch.from_numpy(x))
    from edgescreen.runtime.postprocess import interpret_batch

    torch_decisions = [
        i.decision
        for i in interpret_batch(
            card, dict(zip([o.name for o in card.outputs], [r.numpy() for r in ref], strict=True))
        )
    ]
    with Screener(bundle, precision="fp32") as screener:
        results = list(screener.screen_many([s.path for s in samples]))
    for r, want in zip(results, torch_decisions, strict=True):
        if r.status == "ok":
            assert r.decision == want, r.image

    for key in ("onnx-int8", "onnx-int8-cpu"):
        model = onnx.load(str(bundle / card.artifacts[key].file))
        ops = {n.op_type for n in model.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops, key
        out = run_shipped(bundle, card, "int8", x[:3], target=card.artifacts[key].target)
        assert all(np.isfinite(v).all() for v in out.values())

    # The TensorRT form keeps its input convs in float (symmetric S8 fits the image badly);
    # the CPU form quantizes the main stem (asymmetric U8).
    stems = input_convs(onnx.load(str(bundle / card.artifacts["onnx-fp32"].file)))
    assert stems, family
    fed_by_dq = {}
    for key in ("onnx-int8", "onnx-int8-cpu"):
        model = onnx.load(str(bundle / card.artifacts[key].file))
        made_by = {out: n.op_type for n in model.graph.node for out in n.output}
        fed_by_dq[key] = [
            made_by.get(n.input[0]) == "DequantizeLinear"
            for n in model.graph.node
            if n.name in stems
        ]
    assert len(fed_by_dq["onnx-int8"]) == len(stems) and not any(fed_by_dq["onnx-int8"])
    assert fed_by_dq["onnx-int8-cpu"][0], family
