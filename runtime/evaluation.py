"""The task's clinical metric, measured on what the runtime decides: one definition.

Training's validation, export's drift gate and the drift benchmark all call
`task_metrics`, so "QWK" or "referral sensitivity" means the same number everywhere,
computed through the runtime's own postprocessing (runtime/postprocess.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import metrics as M
from .card import ModelCard, is_referral
from .postprocess import activate, interpret_batch

METRIC_OF_TASK = {
    "dr_grading": "qwk",
    "cxr_findings": "mean_auroc",
    "oct_classification": "accuracy",
}


def task_view(card: ModelCard, outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """What the metric reads (predicted class, or probabilities for CXR) and the decisions."""
    found = interpret_batch(card, outputs)
    decisions = [f.decision for f in found]
    if card.task == "cxr_findings":
        return activate(outputs[card.output("scores").name], "sigmoid"), decisions
    index = {label: i for i, label in enumerate(card.labels)}
    return np.array([index[f.label] for f in found]), decisions


def metric_fn(card: ModelCard) -> Callable[[np.ndarray, np.ndarray], float]:
    """The task's headline metric as f(y_true, task_view prediction)."""
    if card.task == "dr_grading":
        k = len(card.labels)
        return lambda y, p: M.quadratic_weighted_kappa(y, p, k)
    if card.task == "cxr_findings":

        def auroc(y, p):  # findings absent (or always present) in a resample have no AUROC
            keep = (y.sum(axis=0) > 0) & (y.sum(axis=0) < len(y))
            return M.mean_auroc(y[:, keep], p[:, keep]) if keep.any() else float("nan")

        return auroc
    return lambda y, p: M.accuracy(y, p)


def truly_referable(card: ModelCard, y: np.ndarray) -> np.ndarray:
    """Which images the ground truth says should be referred."""
    if card.task == "dr_grading":
        return y >= card.decision.refer_min_grade
    if card.task == "cxr_findings":
        return y.any(axis=1)
    return np.array(
        [is_referral(card.decision.class_decisions.get(card.labels[int(k)], "refer")) for k in y]
    )


def task_metrics(card: ModelCard, outputs: dict[str, np.ndarray], y: np.ndarray) -> dict[str, Any]:
    """The headline metric plus the ones a clinician asks about, from the runtime's decisions."""
    pred, decisions = task_view(card, outputs)
    name = METRIC_OF_TASK[card.task]
    value = float(metric_fn(card)(y, pred))
    truth = truly_referable(card, y)
    referred = np.array([is_referral(d) for d in decisions])
    out: dict[str, Any] = {"metric_name": name, "metric": value, name: value}
    if card.task == "dr_grading":
        out["accuracy"] = M.accuracy(y, pred)
    out.update(
        referral_sensitivity=float(referred[truth].mean()) if truth.any() else float("nan"),
        referral_specificity=float((~referred[~truth]).mean()) if (~truth).any() else float("nan"),
        images=int(len(y)),
    )
    return out
