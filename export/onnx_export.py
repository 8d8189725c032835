"""FP32 ONNX (dynamic batch, card in metadata_props) and its FP16 twin."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import onnx
import torch

from edgescreen.runtime.card import ModelCard, card_bytes

OPSET = 17
CARD_KEY = "edgescreen.card"


def model_card_fragment(card: ModelCard) -> ModelCard:
    """The card as the model file mirrors it: without artifacts, metrics or calibration,
    which are only known after this file exists (its hash must not depend on them)."""
    return card.replace(artifacts={}, metrics={}, calibration=None)


def export_onnx(
    view: torch.nn.Module,
    card: ModelCard,
    path: str | Path,
    *,
    opset: int = OPSET,
    simplify: bool = False,
) -> Path:
    """Trace `view` (forward -> tuple of export_outputs) to ONNX, check it, mirror the card."""
    path = Path(path)
    names = [o.name for o in card.outputs]
    if tuple(names) != tuple(view.names):
        raise ValueError(
            f"card outputs {names} differ from the model's export_outputs {list(view.names)}"
        )
    example = torch.zeros(2, *card.input.shape)
    axes = {card.input.name: {0: "batch"}, **{n: {0: "batch"} for n in names}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter(
            "ignore"
        )  # tracer warnings about constant shapes: batch is dynamic by dynamic_axes
        torch.onnx.export(
            view.eval(),
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[card.input.name],
            output_names=names,
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    model = onnx.load(str(path))
    if simplify:
        model = _simplify(model)
    set_metadata(model, card)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def set_metadata(model: onnx.ModelProto, card: ModelCard) -> None:
    fragment = model_card_fragment(card)
    props = {
        CARD_KEY: card_bytes(fragment).decode(),
        "name": card.name,
        "task": card.task,
        "family": card.family,
        "labels": json.dumps(list(card.labels)),
    }
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "edgescreen"


def _simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        import onnxsim
    except ImportError:  # optional: the legacy exporter already folds constants
        return model
    simplified, ok = onnxsim.simplify(model)
    return simplified if ok else model


def convert_fp16(src: str | Path, dst: str | Path) -> Path:
    """FP16 weights and compute, FP32 inputs/outputs (the runtime feeds and reads float32)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    props = [(p.key, p.value) for p in model.metadata_props]
    half = convert_float_to_float16(model, keep_io_types=True)
    _toposort(half.graph)  # the converter appends its input casts after their consumers
    del half.metadata_props[:]
    for key, value in props:
        half.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(half)
    onnx.save(half, str(dst))
    return Path(dst)


def _toposort(graph: onnx.GraphProto) -> None:
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            raise ValueError("the FP16 graph has a cycle or an undefined input")
        for n in ready:
            ordered.append(n)
            known.update(n.output)
        pending = [n for n in pending if n not in ready]
    del graph.node[:]
    graph.node.extend(ordered)
