"""From raw network outputs to task outputs and a decision, driven only by the card.

Export verification and the benchmarks use this too, so a "decision flip" between FP32
and INT8 means exactly what a technician would have seen change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .card import ModelCard


@dataclass
class Interpretation:
    decision: str
    action: str
    label: str
    grade: int | None
    probabilities: dict[str, float]
    positive_findings: list[str]
    referable_probability: float | None
    heatmap: np.ndarray | None  # (h, w) float32 in [0, 1]


def activate(scores: np.ndarray, activation: str) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if activation == "softmax":
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-scores))
    return scores


def grades_from_values(values: np.ndarray, cutpoints: tuple[float, ...]) -> np.ndarray:
    """Grade k when cutpoints[k-1] <= value < cutpoints[k]."""
    return np.searchsorted(np.asarray(cutpoints), np.ravel(values), side="right").astype(np.int64)


def interpret_batch(card: ModelCard, outputs: dict[str, np.ndarray]) -> list[Interpretation]:
    scores_spec, value_spec, heat_spec = (
        card.output("scores"),
        card.output("grade_value"),
        card.output("heatmap"),
    )
    probs = activate(outputs[scores_spec.name], scores_spec.activation) if scores_spec else None
    n = len(outputs[(scores_spec or value_spec).name])
    dec = card.decision
    labels = card.labels

    referable = None
    positives: list[list[str]] = [[] for _ in range(n)]
    if card.task == "dr_grading":
        if value_spec is not None:
            index = grades_from_values(outputs[value_spec.name], dec.cutpoints)
        else:
            index = probs.argmax(axis=1)
        index = np.clip(index, 0, len(labels) - 1)
        if probs is not None:
            referable = probs[:, dec.refer_min_grade :].sum(axis=1)
        refer = index >= dec.refer_min_grade
        if referable is not None and dec.referable_threshold is not None:
            refer |= referable >= dec.referable_threshold
        decisions = np.where(
            index >= dec.urgent_min_grade, "urgent", np.where(refer, "refer", "rescreen")
        )
    elif card.task == "oct_classification":
        index = probs.argmax(axis=1)
        # An unlisted class is referred: a missing mapping must not silence a finding.
        decisions = np.array([dec.class_decisions.get(labels[i], "refer") for i in index])
    else:
        thresholds = np.array([dec.thresholds.get(label, 0.5) for label in labels])
        positive = probs >= thresholds
        index = probs.argmax(axis=1)
        positives = [[labels[k] for k in np.flatnonzero(row)] for row in positive]
        decisions = np.where(positive.any(axis=1), "refer", "none")

    heatmaps = _heatmaps(outputs[heat_spec.name], index, len(labels)) if heat_spec else [None] * n
    results = []
    for i in range(n):
        decision = str(decisions[i])
        results.append(
            Interpretation(
                decision=decision,
                action=dec.actions.get(decision, decision),
                label=labels[int(index[i])],
                grade=int(index[i]) if card.task == "dr_grading" else None,
                probabilities={}
                if probs is None
                else {lab: float(p) for lab, p in zip(labels, probs[i], strict=True)},
                positive_findings=positives[i],
                referable_probability=None if referable is None else float(referable[i]),
                heatmap=heatmaps[i],
            )
        )
    return results


def _heatmaps(raw: np.ndarray, index: np.ndarray, num_labels: int) -> list[np.ndarray]:
    """One (h, w) map per image in [0, 1]: the predicted label's map when there is one per label."""
    raw = np.asarray(raw, dtype=np.float32)
    if raw.ndim == 3:
        maps = raw
    elif raw.shape[1] == num_labels:
        maps = raw[np.arange(len(raw)), index]
    else:
        maps = raw.max(axis=1)
    lo = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - lo
    return list((maps - lo) / np.where(span > 0, span, 1.0))


def thresholded_values(
    card: ModelCard, outputs: dict[str, np.ndarray]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each per-image value a decision or label of `interpret_batch` compares with thresholds.

    {name: (values (N,), thresholds (K,))}. A small change of a value can move the result
    only where the value lies near one of its thresholds; the drift benchmark uses this to
    tell a flip that FP16's own rounding could cause from one it could not. An argmax is the
    gap between the two largest probabilities, thresholded at 0.
    """
    scores_spec, value_spec = card.output("scores"), card.output("grade_value")
    probs = activate(outputs[scores_spec.name], scores_spec.activation) if scores_spec else None
    dec = card.decision
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def top_gap() -> np.ndarray:
        top2 = np.sort(probs, axis=1)[:, -2:]
        return top2[:, 1] - top2[:, 0]

    if card.task == "dr_grading":
        if value_spec is not None:
            values = np.ravel(outputs[value_spec.name]).astype(np.float64)
            found["grade_value"] = (values, np.asarray(dec.cutpoints, np.float64))
        elif probs is not None and probs.shape[1] > 1:
            found["top_gap"] = (top_gap(), np.zeros(1))
        if probs is not None and dec.referable_threshold is not None:
            referable = probs[:, dec.refer_min_grade :].sum(axis=1)
            found["referable_probability"] = (referable, np.array([dec.referable_threshold]))
    elif card.task == "oct_classification":
        found["top_gap"] = (top_gap(), np.zeros(1))
    else:
        for k, label in enumerate(card.labels):
            found[f"p[{label}]"] = (probs[:, k], np.array([dec.thresholds.get(label, 0.5)]))
    return found
