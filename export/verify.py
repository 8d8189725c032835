"""Does each exported file give the answers the PyTorch model gives, and what does precision cost?

- Parity: TorchScript and FP32 ONNX against PyTorch on real preprocessed images; the error of
  each output relative to its scale must stay under PARITY_BOUNDS (an FP32 file beyond it is
  an export bug, not drift).
- Drift, per reduced precision against FP32 ONNX on the evaluation set: the task's clinical
  metric and its paired-bootstrap 95% CI of the difference, referral sensitivity and
  specificity at the card's thresholds, the images whose *decision* flips (through the
  runtime's own postprocessing), largest/mean output error.
- Gate: card.drift_limits; |delta| is used both ways (a change that helps on this set is
  still a change the set cannot vouch for).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgescreen.runtime import metrics as M
from edgescreen.runtime.card import ModelCard
from edgescreen.runtime.postprocess import activate, interpret_batch

# Largest accepted max|got - ref| / max|ref| per output, by precision (parity with PyTorch).
PARITY_BOUNDS = {"fp32": 1e-4, "torchscript": 1e-5, "fp16": 3e-2, "int8": 0.25}
METRIC_OF_TASK = {
    "dr_grading": "qwk",
    "cxr_findings": "mean_auroc",
    "oct_classification": "accuracy",
}
N_BOOT = 1000


def run_onnx(
    path: str | Path,
    inputs: np.ndarray,
    input_name: str,
    *,
    batch: int = 16,
    threads: int | None = None,
    emulate_qdq: bool = False,
) -> dict[str, np.ndarray]:
    """Outputs of an ONNX file in ONNX Runtime on the CPU.

    `emulate_qdq` runs Q/DQ nodes as written (quantize, dequantize, float op) instead of
    fusing them into ORT's x86 integer kernels, whose int16 intermediate saturation adds
    error TensorRT does not have: it is how the TensorRT-form INT8 file is judged here.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if emulate_qdq:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    chunks: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for start in range(0, len(inputs), batch):
        for n, v in zip(
            names, session.run(None, {input_name: inputs[start : start + batch]}), strict=True
        ):
            chunks[n].append(np.asarray(v, dtype=np.float32))
    return {n: np.concatenate(v) for n, v in chunks.items()}


def run_torch(
    module, inputs: np.ndarray, names: Sequence[str], *, batch: int = 16
) -> dict[str, np.ndarray]:
    import torch

    chunks: dict[str, list[np.ndarray]] = {n: [] for n in names}
    with torch.no_grad():
        for start in range(0, len(inputs), batch):
            out = module(torch.from_numpy(inputs[start : start + batch]))
            for n, v in zip(names, out, strict=True):
                chunks[n].append(v.float().numpy())
    return {n: np.concatenate(v) for n, v in chunks.items()}


def output_errors(
    card: ModelCard, ref: dict[str, np.ndarray], got: dict[str, np.ndarray]
) -> dict[str, float]:
    """Relative (to the output's scale) and absolute errors over the decision outputs."""
    rel, mx, mean = 0.0, 0.0, []
    for spec in card.outputs:
        if spec.role == "heatmap":
            continue
        a, b = np.asarray(ref[spec.name], np.float64), np.asarray(got[spec.name], np.float64)
        diff = np.abs(a - b)
        rel = max(rel, float(diff.max() / max(np.abs(a).max(), 1e-12)))
        mx = max(mx, float(diff.max()))
        mean.append(float(diff.mean()))
    heat = [s.name for s in card.outputs if s.role == "heatmap"]
    heat_rel = 0.0
    for name in heat:
        a, b = ref[name], got[name]
        heat_rel = max(heat_rel, float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12)))
    return {
        "max_rel_err": rel,
        "max_abs_err": mx,
        "mean_abs_err": float(np.mean(mean)) if mean else 0.0,
        "heatmap_max_rel_err": heat_rel,
    }


def _referral(card: ModelCard, decisions: list[str]) -> np.ndarray:
    return np.array([d in ("refer", "urgent") for d in decisions])


def _truth_referral(card: ModelCard, y: np.ndarray) -> np.ndarray:
    if card.task == "dr_grading":
        return y >= card.decision.refer_min_grade
    if card.task == "cxr_findings":
        return y.any(axis=1)
    return np.array(
        [
            card.decision.class_decisions.get(card.labels[int(k)], "refer") in ("refer", "urgent")
            for k in y
        ]
    )


def task_view(card: ModelCard, outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """What the metric reads (predicted class, or probabilities for CXR) and the decisions."""
    found = interpret_batch(card, outputs)
    decisions = [f.decision for f in found]
    if card.task == "cxr_findings":
        return activate(outputs[card.output("scores").name], "sigmoid"), decisions
    index = {label: i for i, label in enumerate(card.labels)}
    return np.array([index[f.label] for f in found]), decisions


def _metric_fn(card: ModelCard):
    if card.task == "dr_grading":
        k = len(card.labels)
        return lambda y, p: M.quadratic_weighted_kappa(y, p, k)
    if card.task == "cxr_findings":

        def auroc(y, p):  # findings absent (or always present) in a resample have no AUROC
            keep = (y.sum(axis=0) > 0) & (y.sum(axis=0) < len(y))
            return M.mean_auroc(y[:, keep], p[:, keep]) if keep.any() else float("nan")

        return auroc
    return lambda y, p: M.accuracy(y, p)


def clinical(card: ModelCard, outputs: dict[str, np.ndarray], y: np.ndarray) -> dict[str, Any]:
    pred, decisions = task_view(card, outputs)
    name = METRIC_OF_TASK[card.task]
    value = float(_metric_fn(card)(y, pred))
    truth, referred = _truth_referral(card, y), _referral(card, decisions)
    sens = float(referred[truth].mean()) if truth.any() else float("nan")
    spec = float((~referred[~truth]).mean()) if (~truth).any() else float("nan")
    return {
        "metric_name": name,
        "metric": value,
        name: value,
        "referral_sensitivity": sens,
        "referral_specificity": spec,
        "images": int(len(y)),
    }


def compare(
    card: ModelCard,
    ref: dict[str, np.ndarray],
    got: dict[str, np.ndarray],
    y: np.ndarray,
    refs: Sequence[str],
) -> dict[str, Any]:
    """Metric of `got`, its difference to `ref` (FP32) with a paired bootstrap CI, and the flips."""
    base = clinical(card, ref, y)
    mine = clinical(card, got, y)
    fn = _metric_fn(card)
    p_ref, d_ref = task_view(card, ref)
    p_got, d_got = task_view(card, got)
    delta, lo, hi = M.bootstrap_ci(
        lambda yy, a, b: fn(yy, b) - fn(yy, a), y, p_ref, p_got, n_boot=N_BOOT, paired=True
    )
    flips = [
        {"image": r, "fp32": a, "now": b}
        for r, a, b in zip(refs, d_ref, d_got, strict=True)
        if a != b
    ]
    return {
        **mine,
        "delta": float(delta),
        "delta_ci95": [lo, hi],
        "delta_sensitivity": mine["referral_sensitivity"] - base["referral_sensitivity"],
        "delta_specificity": mine["referral_specificity"] - base["referral_specificity"],
        "flips": flips,
        "flip_count": len(flips),
        "flip_rate": len(flips) / max(len(y), 1),
        **output_errors(card, ref, got),
    }


def gate(card: ModelCard, results: dict[str, dict[str, Any]]) -> list[str]:
    """Violations of card.drift_limits by the reduced-precision results (keys: precision keys)."""
    lim = card.drift_limits
    bound = {
        "qwk": lim.max_abs_delta_qwk,
        "mean_auroc": lim.max_delta_auroc,
        "accuracy": lim.max_delta_accuracy,
    }[METRIC_OF_TASK[card.task]]
    out = []
    for key, r in results.items():
        if abs(r["delta"]) > bound:
            out.append(f"{key}: |delta {r['metric_name']}| = {abs(r['delta']):.4f} exceeds {bound}")
        if r["flip_rate"] > lim.max_flip_rate:
            out.append(
                f"{key}: decision flip rate {r['flip_rate']:.2%} ({r['flip_count']} of {r['images']}) "
                f"exceeds {lim.max_flip_rate:.2%}"
            )
    return out
