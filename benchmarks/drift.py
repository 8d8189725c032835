"""Drift of every precision in a bundle against its FP32 model, on labelled real images.

The comparison itself is export's (`edgescreen.export.verify.compare`: paired bootstrap CI
of the metric difference, decision flips through the runtime's postprocessing); this adds
the bundle's artifacts as they ship, run by the runtime's own ONNX Runtime backend, and
calibration (ECE). Images are prepared by the one prepare step, ungated: every labelled
image is measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from edgescreen.runtime import metrics
from edgescreen.runtime.artifacts import form_of
from edgescreen.runtime.backends import infer_in_batches, open_backend
from edgescreen.runtime.card import Artifact, ModelCard, load_card
from edgescreen.runtime.postprocess import activate, interpret_batch, thresholded_values
from edgescreen.runtime.prepare import prepare_batch

BATCH = 16


def _ece(card, outputs: dict[str, np.ndarray], y: np.ndarray) -> float:
    spec = card.output("scores")
    if spec is None:
        return float("nan")
    probs = activate(outputs[spec.name], spec.activation)
    if card.task == "cxr_findings":  # every (image, finding) pair is one binary prediction
        return metrics.expected_calibration_error(y.ravel().astype(int), probs.ravel())
    return metrics.expected_calibration_error(y.astype(int), probs)


def prepared_inputs(samples: Sequence, card: ModelCard, *, workers: int = 2) -> np.ndarray:
    """(N, C, H, W) of the labelled samples, prepared as screening does (ungated)."""
    from edgescreen.export.data import sources_of

    sources = sources_of(samples)
    if not sources:
        return prepare_batch([], card)
    step = max(1, -(-len(sources) // workers))
    parts = [sources[i : i + step] for i in range(0, len(sources), step)]
    with ThreadPoolExecutor(max_workers=workers) as pool:  # OpenCV releases the GIL
        return np.concatenate(list(pool.map(lambda part: prepare_batch(part, card), parts)))


def run_artifact(
    bundle: Path, card: ModelCard, artifact: Artifact, x: np.ndarray, *, threads: int
) -> dict[str, np.ndarray]:
    """Outputs of one shipped ONNX file, through the backend that ships, on the CPU.

    The TensorRT-form INT8 file is judged as TensorRT computes it (Q/DQ run as written).
    """
    with open_backend(
        bundle,
        card,
        artifact.precision,
        "onnxruntime",
        threads=threads,
        device="cpu",
        target=artifact.target,
        unfused_qdq=artifact.target == "tensorrt",
    ) as backend:
        if backend.artifact != artifact.file:
            raise ValueError(
                f"{bundle}: asked for {artifact.file}, the backend ran {backend.artifact}"
            )
        return infer_in_batches(backend, x, BATCH)


def fp16_band(card: ModelCard, fp32, fp16) -> dict[str, float]:
    """FP16's error band: the largest change FP16 makes to each thresholded value."""
    a, b = thresholded_values(card, fp32), thresholded_values(card, fp16)
    return {k: float(np.max(np.abs(a[k][0] - b[k][0]), initial=0.0)) for k in a}


def within_band(card: ModelCard, fp32, band: dict[str, float]) -> np.ndarray:
    """Per image: does some thresholded FP32 value lie within FP16's band of its threshold?

    There FP16's own rounding can already move the result, so a flip of any reduced
    precision on such an image says little about that precision (issue 13, item 4).
    """
    n = len(next(iter(fp32.values())))
    near = np.zeros(n, bool)
    for k, (values, thresholds) in thresholded_values(card, fp32).items():
        distance = np.abs(values[:, None] - thresholds[None, :]).min(axis=1)
        near |= distance <= band.get(k, 0.0)
    return near


def _changes(card: ModelCard, a, b, near: np.ndarray | None) -> dict[str, Any]:
    """Decision flips and label changes between two lists of Interpretations."""
    flipped = np.array([x.decision != z.decision for x, z in zip(a, b, strict=True)], bool)
    found: dict[str, Any] = {}
    if card.task != "cxr_findings":  # a CXR's argmax is no result; its findings are the flips
        relabelled = np.array([x.label != z.label for x, z in zip(a, b, strict=True)], bool)
        found["label_changes"] = int(relabelled.sum())
    if near is not None:
        found["flips_in_fp16_band"] = int((flipped & near).sum())
        if "label_changes" in found:
            found["label_changes_in_fp16_band"] = int((relabelled & near).sum())
    return found


def drift_row(
    card: ModelCard,
    name: str,
    ref,
    outputs,
    y: np.ndarray,
    refs,
    near: np.ndarray | None = None,
    ref_found: list | None = None,
) -> dict[str, Any]:
    """One precision against FP32; `ref_found`: FP32's interpretations, when already made."""
    from edgescreen.export.ptq_search import deltas_between
    from edgescreen.export.verify import compare

    r = compare(card, ref, outputs, y, refs)
    lo, hi = r["delta_ci95"]
    changes: dict[str, Any] = {}
    dp = np.zeros(1)
    if len(y):
        a = ref_found if ref_found is not None else interpret_batch(card, ref)
        b = interpret_batch(card, outputs)
        dp, changes = deltas_between(a, b), _changes(card, a, b, near)
    return {
        "precision": name,
        "metric_name": r["metric_name"],
        "metric": r["metric"],
        "delta": r["delta"],
        "ci_low": lo,
        "ci_high": hi,
        "flips": r["flip_count"],
        "flip_rate": r["flip_rate"],
        "flip_rate_ci95": r["flip_rate_ci95"],
        "flipped_images": [f["image"] for f in r["flips"]],
        "sensitivity": r["referral_sensitivity"],
        "specificity": r["referral_specificity"],
        "ece": _ece(card, outputs, y),
        "max_abs_err": r["max_abs_err"],
        # |Δ referral probability| per image (issue 13's floors: median <= 0.005, p95 <= 0.02)
        "median_abs_dp": float(np.median(dp)),
        "p95_abs_dp": float(np.percentile(dp, 95)),
        "images": len(y),
        **changes,
    }


def drift_rows(
    bundle: Path, samples: Sequence, *, threads: int = 2, progress: bool = False
) -> list[dict[str, Any]]:
    bundle = Path(bundle)
    card = load_card(bundle)
    x = prepared_inputs(samples, card)
    y = np.array([s.label for s in samples])
    refs = [s.ref for s in samples]
    runs = {
        form_of(art): run_artifact(bundle, card, art, x, threads=threads)
        for art in card.artifacts.values()
        if art.format == "onnx"
    }
    if "fp32" not in runs:
        raise ValueError(f"{bundle}: no FP32 ONNX model to compare against")
    near = None
    if "fp16" in runs and len(y):
        band = fp16_band(card, runs["fp32"], runs["fp16"])
        near = within_band(card, runs["fp32"], band)
    ref_found = interpret_batch(card, runs["fp32"]) if len(y) else None
    rows = [
        drift_row(card, name, runs["fp32"], out, y, refs, near, ref_found)
        for name, out in runs.items()
    ]
    if near is not None:
        for row in rows:
            row["fp16_band"] = band
            row["images_in_fp16_band"] = int(near.sum())
    return rows
