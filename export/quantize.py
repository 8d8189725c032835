"""Explicit-quantization INT8 ONNX (QuantizeLinear/DequantizeLinear) in two forms.

- `tensorrt`: S8 activations with symmetric ranges, S8 per-channel symmetric weights, float
  biases, Q/DQ only around the ops TensorRT fuses into INT8 kernels. What TensorRT's
  explicit-quantization path expects (zero points 0). Its input convs stay float too
  (`input_convs`: a symmetric scale fits the preprocessed image badly).
- `cpu`: U8 activations (asymmetric), S8 per-channel weights, int32 biases, every op ORT has
  a QDQ kernel for: what x86 ONNX Runtime's fused QLinear kernels run fast.

Both read the same cached activation ranges (calibration.py), so they share one
calibration; only how the ranges become scales differs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import onnx

from .calibration import ort_method

TARGETS = ("tensorrt", "cpu")
TRT_OPS = [
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "Add",
    "GlobalAveragePool",
    "AveragePool",
    "MaxPool",
    "Concat",
]


WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# TensorRT form: no Q/DQ on these ops' outputs. ORT's QDQ quantizer otherwise quantizes a
# Conv's output *before* its activation (Conv -> Q/DQ -> Clip -> Q/DQ -> next Conv): a second
# rounding of the wide pre-activation range, symmetric, half of it thrown away by the ReLU6.
# TensorRT fuses Conv + activation and wants the Q after the activation, which the next
# op's input Q/DQ already provides. Measured on the demo DR model (diagnose.py): the
# pre-activation tensors were the 20 worst local SQNRs of the TensorRT form.
TRT_NO_OUTPUT_QDQ = ["Conv", "ConvTranspose", "Gemm", "MatMul"]


def _downstream(
    model: onnx.ModelProto, tensors: list[str], stop_ops: tuple[str, ...] = ()
) -> list[onnx.NodeProto]:
    """Nodes reached from `tensors` in graph order of discovery; `stop_ops` nodes end a path."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    seen: dict[str, onnx.NodeProto] = {}
    todo = list(tensors)
    while todo:
        for node in consumers.get(todo.pop(), []):
            if node.name not in seen:
                seen[node.name] = node
                if node.op_type not in stop_ops:
                    todo.extend(node.output)
    return list(seen.values())


def head_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes after global pooling: the heads (classifier, regression, ordinal, combiner).

    They cost nothing next to the backbone, and quantizing them clips the grade value and
    logits to calibrated ranges (measured on the demo DR model: CPU-form INT8 ΔQWK -0.26
    with the heads quantized, -0.02 with them in float). They stay in float.
    """
    pooled = [
        n
        for n in model.graph.node
        if n.op_type in ("GlobalAveragePool", "GlobalMaxPool")
        or (
            n.op_type in ("ReduceMean", "ReduceMax")
            and not any(a.name == "keepdims" and a.i for a in n.attribute)
        )
    ]
    return [n.name for n in _downstream(model, [out for n in pooled for out in n.output])]


def input_convs(model: onnx.ModelProto) -> list[str]:
    """The first Conv on every path from the graph input (the stem, and a crop branch's stem).

    For the TensorRT form only. Its activations are symmetric per-tensor S8, and the stem's
    input is the preprocessed image, whose range a symmetric scale fits badly. Keeping
    these convs in float (FP16 in the engine) costs one small layer per branch. Measured on
    the demo DR model: TensorRT-form INT8 QWK went from 0.258 to 0.534 (FP32 0.589). The
    CPU form's asymmetric U8 input needs no such help: there it measured 0.570 without, 0.525 with.
    """
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    # A path stops at its first weighted op: what follows sees features, not pixels.
    reached = _downstream(model, inputs, stop_ops=WEIGHTED_OPS)
    return [n.name for n in reached if n.op_type in WEIGHTED_OPS]


def _float_inputs(model: onnx.ModelProto, src: onnx.ModelProto, names: set[str]) -> None:
    """Make the nodes in `names` read their activations unquantized.

    ORT's nodes_to_exclude only stops a node quantizing itself: a tensor that its producer
    (the CPU form quantizes every op's output) or another consumer quantizes still reaches
    it through Q/DQ. A node kept float must run on float inputs (TensorRT then runs it in
    FP16), so those inputs are rewired to the tensor before its QuantizeLinear. Where the
    CPU form folded a ReLU6/ReLU into that Q range (the tensor is then the raw conv output),
    the activation is put back in front of the node.
    """
    from onnx import helper, numpy_helper

    prod = {o: n for n in model.graph.node for o in n.output}
    src_prod = {o: n for n in src.graph.node for o in n.output}
    src_consts = {n.output[0]: n.attribute[0].t for n in src.graph.node if n.op_type == "Constant"}
    src_consts.update({i.name: i for i in src.graph.initializer})
    nodes = list(model.graph.node)
    out_nodes = []
    for node in nodes:
        if node.name in names:
            for k, name in enumerate(node.input):
                dq = prod.get(name)
                q = (
                    prod.get(dq.input[0])
                    if dq is not None and dq.op_type == "DequantizeLinear"
                    else None
                )
                if q is None or q.op_type != "QuantizeLinear":
                    continue
                tensor = q.input[0]
                fp = src_prod.get(tensor)
                here = prod.get(tensor)
                if (
                    fp is not None
                    and fp.op_type in ("Clip", "Relu")
                    and (here is None or here.op_type != fp.op_type)
                ):
                    act_out = f"{tensor}_float_for_{node.name}"
                    inputs = [tensor]
                    for j, bound in enumerate(fp.input[1:], 1):
                        if not bound:
                            inputs.append("")
                            continue
                        bname = f"{act_out}_bound{j}"
                        arr = numpy_helper.to_array(src_consts[bound])
                        model.graph.initializer.append(numpy_helper.from_array(arr, bname))
                        inputs.append(bname)
                    out_nodes.append(
                        helper.make_node(fp.op_type, inputs, [act_out], name=f"{act_out}_act")
                    )
                    tensor = act_out
                node.input[k] = tensor
        out_nodes.append(node)
    # Drop the Q/DQ pairs nobody reads any more.
    graph_outputs = {o.name for o in model.graph.output}
    while True:
        used = {i for n in out_nodes for i in n.input} | graph_outputs
        keep = [
            n
            for n in out_nodes
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
            or any(o in used for o in n.output)
        ]
        if len(keep) == len(out_nodes):
            break
        out_nodes = keep
    del model.graph.node[:]
    model.graph.node.extend(out_nodes)
    used = {i for n in out_nodes for i in n.input}
    unused = [i for i in model.graph.initializer if i.name not in used]
    for init in unused:
        model.graph.initializer.remove(init)


def default_exclusions(model: onnx.ModelProto, target: str) -> list[str]:
    """Nodes that stay float before any search: the heads, and the TensorRT form's input convs."""
    return head_nodes(model) + (input_convs(model) if target == "tensorrt" else [])


def quantize(
    fp32_onnx: str | Path,
    out: str | Path,
    *,
    target: str,
    method: str,
    cache_file: Path,
    nodes_to_exclude: Sequence[str] | None = None,
    keep_float: Sequence[str] = (),
) -> Path:
    """Write the INT8 Q/DQ model for `target` from the ranges in `cache_file`.

    Heads stay float in both forms; the TensorRT form also keeps its input convs in float
    (`default_exclusions`). `keep_float` adds nodes to those (the accuracy-aware search's
    choice, ptq_search.py); `nodes_to_exclude` replaces them all.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}")
    trt = target == "tensorrt"
    extra = {
        "ActivationSymmetric": trt,
        "WeightSymmetric": True,
        "QuantizeBias": not trt,  # TensorRT keeps biases in float and fuses them itself
        "ForceQuantizeNoInputCheck": False,
    }
    if trt:
        extra["OpTypesToExcludeOutputQuantization"] = TRT_NO_OUTPUT_QDQ
    src = onnx.load(str(fp32_onnx))
    if nodes_to_exclude is None:
        nodes_to_exclude = default_exclusions(src, target)
    nodes_to_exclude = list(dict.fromkeys([*nodes_to_exclude, *keep_float]))
    props = [(p.key, p.value) for p in src.metadata_props]
    level = logging.getLogger().level
    logging.getLogger().setLevel(
        logging.ERROR
    )  # ORT warns about optional pre-processing on every call
    try:
        quantize_static(
            str(fp32_onnx),
            str(out),
            calibration_data_reader=None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=TRT_OPS if trt else None,
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QInt8 if trt else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(nodes_to_exclude),
            calibrate_method=ort_method(method),
            extra_options=extra,
            calibration_cache_path=str(cache_file),
        )
    finally:
        logging.getLogger().setLevel(level)
    model = onnx.load(str(out))
    if keep_float:
        _float_inputs(model, src, set(keep_float))
    del model.metadata_props[:]
    for key, value in (
        *props,
        ("edgescreen.quantization", f"int8 qdq target={target} method={method}"),
    ):
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return Path(out)
