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
from edgescreen.runtime.backends import infer_in_batches, open_backend
from edgescreen.runtime.card import ModelCard
from edgescreen.runtime.evaluation import METRIC_OF_TASK, metric_fn, task_metrics, task_view

# Largest accepted max|got - ref| / max|ref| per output, by precision (parity with PyTorch).
PARITY_BOUNDS = {"fp32": 1e-4, "torchscript": 1e-5, "fp16": 3e-2, "int8": 0.25}
N_BOOT = 1000
BATCH = 16


def run_shipped(
    bundle: str | Path,
    card: ModelCard,
    precision: str,
    inputs: np.ndarray,
    *,
    target: str | None = None,
    threads: int | None = None,
) -> dict[str, np.ndarray]:
    """Outputs of the bundle's file for `precision` as the runtime's ONNX Runtime backend runs it
    on a CPU. The TensorRT-form INT8 file (target "tensorrt") runs with its Q/DQ unfused, as
    TensorRT computes it (ORT's fused x86 kernels saturate int16 intermediates TensorRT does
    not have)."""
    with open_backend(
        bundle,
        card,
        precision,
        "onnxruntime",
        device="cpu",
        threads=threads,
        target=target,
        unfused_qdq=target == "tensorrt",
    ) as backend:
        return infer_in_batches(backend, inputs, BATCH)


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


def compare(
    card: ModelCard,
    ref: dict[str, np.ndarray],
    got: dict[str, np.ndarray],
    y: np.ndarray,
    refs: Sequence[str],
) -> dict[str, Any]:
    """Metric of `got`, its difference to `ref` (FP32) with a paired bootstrap CI, and the flips."""
    base = task_metrics(card, ref, y)
    mine = task_metrics(card, got, y)
    fn = metric_fn(card)
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
        "flip_rate_ci95": list(M.wilson_interval(len(flips), len(y))),
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
                f"{key}: decision flip rate {r['flip_rate']:.2%} ({r['flip_count']} of {r['images']}, "
                f"95% CI {_pct(r['flip_rate_ci95'])}) exceeds {lim.max_flip_rate:.2%}"
            )
    return out


def _pct(interval: Sequence[float]) -> str:
    return f"{interval[0]:.1%}-{interval[1]:.1%}"
