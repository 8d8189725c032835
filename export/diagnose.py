"""Per-layer INT8 error: which quantized tensors lose the most against FP32, and why.

The same measurement as ONNX Runtime's `onnxruntime.quantization.qdq_loss_debug`
(modify_model_output_intermediate_tensors / collect_activations / create_activation_matching /
compute_activation_error), done by hand in streaming form: that module keeps every
activation of every image in memory, this keeps running sums, so a whole validation split
fits in a few MB. For every activation tensor T the Q/DQ file quantizes:

- `local_sqnr_db`: T before vs after its own QuantizeLinear/DequantizeLinear in the INT8
  model (rounding plus clipping of this one tensor: qdq_loss_debug's "qdq_err");
- `cumulative_sqnr_db`: FP32 model's T vs the INT8 model's dequantized T (everything
  upstream as well: qdq_loss_debug's "xmodel_err");
- `clipped`: share of values beyond the quantized range; `outlier_ratio`: max|T| over its
  99.9th percentile; `codes_used`: share of the integer range the values span;
- `reason`: what the producer is (depthwise conv output, residual add, pooling, sigmoid or
  swish, the input image, a pre-activation conv output) and what the range did.

The TensorRT form runs with Q/DQ unfused (as TensorRT computes it), the CPU form with ORT's
graph optimisations, as each ships. Inputs are prepared with the runtime's `prepare` path.

    python -m edgescreen.export.diagnose BUNDLE --data split:RUN/splits.json:val --out DIR
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

CHUNK = 8
SAMPLE_PER_CHUNK = 4096  # values kept per tensor per chunk for the percentile estimate


@dataclass
class LayerError:
    tensor: str
    producer: str
    op_type: str
    consumers: list[str]
    local_sqnr_db: float
    cumulative_sqnr_db: float
    rel_err: float  # ||fp32 - int8|| / ||fp32|| (cumulative)
    clipped: float
    outlier_ratio: float
    codes_used: float
    reason: str


def _sqnr(signal: float, noise: float) -> float:
    if noise <= 0:
        return float("inf")
    return float(10 * np.log10(max(signal, 1e-30) / noise))


def _quantized_tensors(qdq: onnx.ModelProto) -> dict[str, dict[str, Any]]:
    """Activation tensor -> its QuantizeLinear parameters and the DequantizeLinear output."""
    inits = {i.name: i for i in qdq.graph.initializer}
    consts = {
        n.output[0]: next(a.t for a in n.attribute if a.name == "value")
        for n in qdq.graph.node
        if n.op_type == "Constant"
    }

    def value(name: str) -> np.ndarray:
        t = inits.get(name) or consts.get(name)
        return numpy_helper.to_array(t)

    dq_of = {n.input[0]: n for n in qdq.graph.node if n.op_type == "DequantizeLinear"}
    out = {}
    for n in qdq.graph.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in inits:
            continue
        dq = dq_of.get(n.output[0])
        if dq is None:
            continue
        zp = value(n.input[2]) if len(n.input) > 2 and n.input[2] else np.array(0, np.uint8)
        info = np.iinfo(zp.dtype)
        out[n.input[0]] = {
            "dq_output": dq.output[0],
            "scale": float(np.ravel(value(n.input[1]))[0]),
            "zero_point": int(np.ravel(zp)[0]),
            "qmin": int(info.min),
            "qmax": int(info.max),
        }
    return out


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def _is_depthwise(node: onnx.NodeProto, model: onnx.ModelProto) -> bool:
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    if group <= 1:
        return False
    weights = {i.name: i for i in model.graph.initializer}
    w = weights.get(node.input[1])
    return w is None or (len(w.dims) == 4 and w.dims[1] == 1)


def _folded_clip(tensor: str, fp32: onnx.ModelProto, qdq: onnx.ModelProto):
    """(lo, hi) of the FP32 model's Clip/Relu producing `tensor` when the Q/DQ file removed it
    (ORT folds an activation into the following Q range): its pre-Q/DQ tensor then is the raw
    conv output, and only the activation's range is quantization error."""
    fp_node, q_node = _producers(fp32).get(tensor), _producers(qdq).get(tensor)
    if fp_node is None or q_node is None or q_node.op_type == fp_node.op_type:
        return None
    if fp_node.op_type == "Relu":
        return (0.0, np.inf)
    if fp_node.op_type != "Clip":
        return None
    wanted = set(fp_node.input[1:])
    consts = {
        n.output[0]: float(np.ravel(numpy_helper.to_array(n.attribute[0].t))[0])
        for n in fp32.graph.node
        if n.op_type == "Constant" and n.output[0] in wanted
    }
    consts.update(
        {
            i.name: float(np.ravel(numpy_helper.to_array(i))[0])
            for i in fp32.graph.initializer
            if i.name in wanted
        }
    )
    lo = consts.get(fp_node.input[1], -np.inf) if len(fp_node.input) > 1 else -np.inf
    hi = consts.get(fp_node.input[2], np.inf) if len(fp_node.input) > 2 else np.inf
    return (lo, hi)


def _kind(tensor: str, fp32: onnx.ModelProto, producers, graph_inputs) -> tuple[str, str]:
    """(producer node, what it is) for the reason column, looking through activations."""
    if tensor in graph_inputs:
        return "<input>", "input image"
    node = producers.get(tensor)
    if node is None:
        return "?", "?"
    op = node.op_type
    if op in ("Clip", "Relu", "HardSwish", "HardSigmoid") and node.input[0] in producers:
        inner = producers[node.input[0]]
        if inner.op_type == "Conv":
            dw = "depthwise conv" if _is_depthwise(inner, fp32) else "conv"
            return node.name, f"{dw} + {op} output"
        return node.name, f"{op} output"
    if op == "Conv":
        dw = "depthwise conv" if _is_depthwise(node, fp32) else "conv"
        consumers = [n for n in fp32.graph.node if tensor in n.input]
        if any(c.op_type in ("Clip", "Relu") for c in consumers):
            return node.name, f"{dw} output before its activation"
        return node.name, f"{dw} output"
    if op == "Add":
        return node.name, "residual add"
    if op in ("GlobalAveragePool", "AveragePool", "MaxPool", "GlobalMaxPool", "ReduceMean"):
        return node.name, "pooling"
    if op in ("Sigmoid", "Mul", "Softmax"):
        return node.name, "sigmoid/swish/attention"
    return node.name, op


def _reason(kind: str, clipped: float, outlier: float, codes: float, symmetric: bool) -> str:
    parts = [kind]
    if clipped > 1e-4:
        parts.append(f"range clipped ({clipped:.2%} of values)")
    if outlier > 8:
        parts.append(f"outliers (max {outlier:.0f}x p99.9)")
    if codes < 0.6:
        parts.append(f"only {codes:.0%} of the codes used" + (" (symmetric)" if symmetric else ""))
    return "; ".join(parts)


def _with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> bytes:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for name in names:
        if name not in have:
            m.graph.output.add(name=name)  # type/shape left to ORT's inference
            have.add(name)
    return m.SerializeToString()


def _session(model_bytes: bytes, *, unfused: bool, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if unfused
        else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def diagnose(
    fp32_onnx: str | Path,
    qdq_onnx: str | Path,
    inputs: np.ndarray,
    *,
    input_name: str = "input",
    unfused: bool | None = None,
    threads: int | None = None,
) -> list[LayerError]:
    """Per quantized activation tensor, its error against FP32 on `inputs`, worst first."""
    fp32 = onnx.load(str(fp32_onnx))
    qdq = onnx.load(str(qdq_onnx))
    if unfused is None:
        unfused = "target=tensorrt" in {p.value for p in qdq.metadata_props} or any(
            "tensorrt" in p.value for p in qdq.metadata_props if p.key == "edgescreen.quantization"
        )
    quant = _quantized_tensors(qdq)
    float_names = {o for n in fp32.graph.node for o in n.output} | {
        i.name for i in fp32.graph.input
    }
    tensors = [t for t in quant if t in float_names]
    graph_inputs = {i.name for i in fp32.graph.input}
    s_fp = _session(_with_outputs(fp32, tensors), unfused=False, threads=threads)
    qdq_out = [*tensors, *(quant[t]["dq_output"] for t in tensors)]
    s_q = _session(_with_outputs(qdq, qdq_out), unfused=unfused, threads=threads)
    bounds = {t: _folded_clip(t, fp32, qdq) for t in tensors}
    fp_names = [o.name for o in s_fp.get_outputs()]
    q_names = [o.name for o in s_q.get_outputs()]
    acc = {
        t: {"sig": 0.0, "pre": 0.0, "loc": 0.0, "cum": 0.0, "clip": 0, "n": 0, "lo": np.inf,
            "hi": -np.inf, "samples": []}
        for t in tensors
    }  # fmt: skip
    rng = np.random.default_rng(0)
    for start in range(0, len(inputs), CHUNK):
        feed = {input_name: np.ascontiguousarray(inputs[start : start + CHUNK], np.float32)}
        f = dict(zip(fp_names, s_fp.run(fp_names, feed), strict=True))
        q = dict(zip(q_names, s_q.run(q_names, feed), strict=True))
        for t in tensors:
            a = acc[t]
            ref = f[t].astype(np.float64)
            pre = q[t].astype(np.float64)
            if bounds[t] is not None:  # the CPU form folded this Clip/Relu into the Q range
                pre = np.clip(pre, *bounds[t])
            post = q[quant[t]["dq_output"]].astype(np.float64)
            p = quant[t]
            lo = (p["qmin"] - p["zero_point"]) * p["scale"]
            hi = (p["qmax"] - p["zero_point"]) * p["scale"]
            a["sig"] += float(np.sum(ref**2))
            a["pre"] += float(np.sum(pre**2))
            a["loc"] += float(np.sum((pre - post) ** 2))
            a["cum"] += float(np.sum((ref - post) ** 2))
            a["clip"] += int(
                np.count_nonzero((pre < lo - p["scale"] / 2) | (pre > hi + p["scale"] / 2))
            )
            a["n"] += pre.size
            a["lo"], a["hi"] = min(a["lo"], float(ref.min())), max(a["hi"], float(ref.max()))
            flat = np.abs(ref.ravel())
            a["samples"].append(rng.choice(flat, min(SAMPLE_PER_CHUNK, flat.size), replace=False))
    producers = _producers(fp32)
    consumers: dict[str, list[str]] = {}
    for n in fp32.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.name)
    rows = []
    for t in tensors:
        a, p = acc[t], quant[t]
        absmax = max(abs(a["lo"]), abs(a["hi"]))
        p999 = float(np.percentile(np.concatenate(a["samples"]), 99.9))
        outlier = absmax / p999 if p999 > 0 else float("inf")
        levels = p["qmax"] - p["qmin"]
        qlo = max(a["lo"], (p["qmin"] - p["zero_point"]) * p["scale"])
        qhi = min(a["hi"], (p["qmax"] - p["zero_point"]) * p["scale"])
        codes = max(0.0, (qhi - qlo) / p["scale"]) / levels
        symmetric = p["zero_point"] == 0 and p["qmin"] < 0
        producer, kind = _kind(t, fp32, producers, graph_inputs)
        clipped = a["clip"] / max(a["n"], 1)
        rows.append(
            LayerError(
                tensor=t,
                producer=producer,
                op_type=producers[t].op_type if t in producers else "Input",
                consumers=consumers.get(t, []),
                local_sqnr_db=_sqnr(a["pre"], a["loc"]),
                cumulative_sqnr_db=_sqnr(a["sig"], a["cum"]),
                rel_err=float(np.sqrt(a["cum"] / max(a["sig"], 1e-30))),
                clipped=clipped,
                outlier_ratio=outlier,
                codes_used=codes,
                reason=_reason(kind, clipped, outlier, codes, symmetric),
            )
        )
    rows.sort(key=lambda r: r.local_sqnr_db)
    return rows


def markdown(rows: Sequence[LayerError], title: str, *, top: int = 20) -> str:
    head = (
        f"### {title}\n\n| # | tensor | op | local SQNR dB | cumulative SQNR dB | rel err "
        "| clipped | max/p99.9 | codes used | reason |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for k, r in enumerate(rows[:top], 1):
        lines.append(
            f"| {k} | `{r.tensor}` | {r.op_type} | {r.local_sqnr_db:.1f} | "
            f"{r.cumulative_sqnr_db:.1f} | {r.rel_err:.3f} | {r.clipped:.2%} | "
            f"{r.outlier_ratio:.1f} | {r.codes_used:.0%} | {r.reason} |"
        )
    return "\n".join(lines)


def plot(results: dict[str, Sequence[LayerError]], path: Path, *, top: int = 15) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results), 0.35 * top + 1.5))
    axes = np.atleast_1d(axes)
    for ax, (form, rows) in zip(axes, results.items(), strict=True):
        worst = list(rows[:top])[::-1]
        labels = [_short(r.tensor) for r in worst]
        y = np.arange(len(worst))
        ax.barh(y - 0.2, [r.local_sqnr_db for r in worst], 0.4, label="local (this Q/DQ)")
        ax.barh(y + 0.2, [r.cumulative_sqnr_db for r in worst], 0.4, label="cumulative vs FP32")
        ax.set_yticks(y, labels, fontsize=7)
        ax.set_xlabel("SQNR (dB, higher is better)")
        ax.set_title(f"INT8 {form} form: worst {len(worst)} tensors")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _short(tensor: str) -> str:
    return tensor.replace("/model/backbone/blocks/", "").replace("_output_0", "").lstrip("/")


FORMS = {"tensorrt": "model.int8.onnx", "cpu": "model.int8-cpu.onnx"}


def diagnose_bundle(
    bundle: str | Path,
    inputs: np.ndarray,
    out: str | Path,
    *,
    files: dict[str, str | Path] | None = None,
    source: str = "",
    threads: int | None = None,
) -> dict[str, Any]:
    """Both INT8 forms of `bundle` (or `files`: form -> Q/DQ file) against its model.onnx;
    writes diagnose.md, diagnose.json and diagnose.png into `out`."""
    from edgescreen.runtime.card import load_card

    bundle, out = Path(bundle), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    card = load_card(bundle)
    files = files or {f: bundle / name for f, name in FORMS.items() if (bundle / name).is_file()}
    results = {
        form: diagnose(
            bundle / "model.onnx",
            path,
            inputs,
            input_name=card.input.name,
            unfused=form == "tensorrt",
            threads=threads,
        )
        for form, path in files.items()
    }
    md = [f"# INT8 per-layer error: {card.name}\n", f"{len(inputs)} images: {source}\n"]
    md += [
        markdown(rows, f"{form} form ({Path(files[form]).name})") + "\n"
        for form, rows in results.items()
    ]
    (out / "diagnose.md").write_text("\n".join(md))
    payload = {
        "bundle": str(bundle),
        "images": len(inputs),
        "source": source,
        "forms": {f: [asdict(r) for r in rows] for f, rows in results.items()},
    }
    (out / "diagnose.json").write_text(json.dumps(payload, indent=1, default=float))
    plot(results, out / "diagnose.png")
    return payload


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m edgescreen.export.diagnose", description=__doc__.splitlines()[0]
    )
    p.add_argument("bundle", type=Path)
    p.add_argument(
        "--data",
        required=True,
        help="images (DATA spec as for export, e.g. split:RUN/splits.json:val)",
    )
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--limit", type=int, default=None, help="at most this many images")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    from edgescreen.runtime.card import load_card

    from .data import prepare_samples, resolve

    data = resolve(args.data, what="diagnosis")
    samples = data.samples[: args.limit] if args.limit else data.samples
    x = prepare_samples(samples, load_card(args.bundle))
    diagnose_bundle(args.bundle, x, args.out, source=data.source, threads=args.threads)
    print((args.out / "diagnose.md").read_text())
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
