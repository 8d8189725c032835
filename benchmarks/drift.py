"""Drift of every precision in a bundle against its FP32 model, on labelled real images.

The comparison itself is export's (`edgescreen.export.verify.compare`: paired bootstrap CI
of the metric difference, decision flips through the runtime's postprocessing); this adds
the bundle's artifacts as they ship, run by ONNX Runtime, and calibration (ECE).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from edgescreen.runtime import metrics
from edgescreen.runtime.card import load_card
from edgescreen.runtime.imageio import load_image
from edgescreen.runtime.postprocess import activate
from edgescreen.runtime.preprocess import preprocess

# Display names of the artifact forms, as in the latency table.
FORMS = {("int8", "tensorrt"): "int8", ("int8", "cpu"): "int8-cpu"}


def _ece(card, outputs: dict[str, np.ndarray], y: np.ndarray) -> float:
    spec = card.output("scores")
    if spec is None:
        return float("nan")
    probs = activate(outputs[spec.name], spec.activation)
    if card.task == "cxr_findings":  # every (image, finding) pair is one binary prediction
        return metrics.expected_calibration_error(y.ravel().astype(int), probs.ravel())
    return metrics.expected_calibration_error(y.astype(int), probs)


def drift_rows(
    bundle: Path, samples: Sequence, *, threads: int = 2, progress: bool = False
) -> list[dict[str, Any]]:
    from edgescreen.export.verify import compare, run_onnx

    bundle = Path(bundle)
    card = load_card(bundle)
    with ThreadPoolExecutor(max_workers=2) as pool:
        x = np.stack(
            list(
                pool.map(
                    lambda s: preprocess(
                        s.array if s.array is not None else load_image(s.path), card.preprocessing
                    ),
                    samples,
                )
            )
        )
    y = np.array([s.label for s in samples])
    refs = [s.ref for s in samples]
    runs = {}
    for art in card.artifacts.values():
        if art.format == "onnx":
            name = FORMS.get((art.precision, art.target), art.precision)
            # The TensorRT-form file is judged as TensorRT computes it (see run_onnx).
            runs[name] = run_onnx(
                bundle / art.file,
                x,
                card.input.name,
                threads=threads,
                emulate_qdq=art.target == "tensorrt",
            )
    if "fp32" not in runs:
        raise ValueError(f"{bundle}: no FP32 ONNX model to compare against")
    rows = []
    for name, outputs in runs.items():
        r = compare(card, runs["fp32"], outputs, y, refs)
        lo, hi = r["delta_ci95"]
        rows.append(
            {
                "precision": name,
                "metric_name": r["metric_name"],
                "metric": r["metric"],
                "delta": r["delta"],
                "ci_low": lo,
                "ci_high": hi,
                "flips": r["flip_count"],
                "flip_rate": r["flip_rate"],
                "flipped_images": [f["image"] for f in r["flips"]],
                "sensitivity": r["referral_sensitivity"],
                "specificity": r["referral_specificity"],
                "ece": _ece(card, outputs, y),
                "max_abs_err": r["max_abs_err"],
                "images": len(y),
            }
        )
    return rows
