"""Losses for the model families.  Each takes the model's output dict keys it needs.

Conventions: logits in, integer grades / {0, 1} labels as targets, ``reduction`` as in
torch ("mean" | "sum" | "none").  The composite losses return a dict whose "loss" is the
total to back-propagate; the other entries are detached parts for logging.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F


def _reduce(loss: torch.Tensor, reduction: str, denom: torch.Tensor | None = None) -> torch.Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / denom if denom is not None else loss.mean()
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma: float = 2.0,
    alpha: float | None = None,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Categorical focal loss (Lin et al. 2017): -alpha w_y (1 - p_y)^gamma log p_y.

    Down-weights easy, confidently-correct examples so the rare severe grades are not
    drowned by the many easy "no DR" images.  With gamma = 0 it is exactly
    ``F.cross_entropy(logits, target, weight=weight)``, including torch's weighted mean
    (divided by the sum of the targets' weights), times ``alpha``.  A scalar ``alpha``
    only scales the loss: it is the ``categorical_focal_loss(alpha=.25, gamma=2)`` the
    APTOS write-up uses (umbertogriffo/focal-loss-keras), whose alpha sets the focal
    terms' weight against the regression head's MSE, not a class balance (``weight`` is).
    """
    log_p = F.log_softmax(logits, dim=1).gather(1, target.long()[:, None]).squeeze(1)
    loss = -((1 - log_p.exp()).clamp_min(0) ** gamma) * log_p if gamma else -log_p
    if alpha is not None:
        loss = alpha * loss
    denom = None
    if weight is not None:
        w = weight.to(logits)[target.long()]
        loss, denom = loss * w, w.sum()
    return _reduce(loss, reduction, denom)


def binary_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma: float = 2.0,
    alpha: float | None = None,
    pos_weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Per-label (multi-label) focal loss on sigmoid logits.

    ``alpha`` weights positives by alpha and negatives by 1 - alpha (Lin et al.);
    ``pos_weight`` is BCE's per-label positive weight.  gamma = 0 with neither is
    ``F.binary_cross_entropy_with_logits``.
    """
    target = target.to(logits)
    bce = F.binary_cross_entropy_with_logits(
        logits, target, pos_weight=pos_weight, reduction="none"
    )
    if gamma:
        p = torch.sigmoid(logits)
        p_t = p * target + (1 - p) * (1 - target)
        bce = (1 - p_t) ** gamma * bce
    if alpha is not None:
        bce = (alpha * target + (1 - alpha) * (1 - target)) * bce
    return _reduce(bce, reduction)


def pos_weight_from_labels(
    labels: np.ndarray | torch.Tensor, *, max_weight: float = 100.0
) -> torch.Tensor:
    """Per-label BCE ``pos_weight`` = #negatives / #positives from an (N, L) 0/1 label matrix.

    Balances each finding's positives against its negatives (NIH CXR findings run from
    ~0.2 % Hernia to ~18 % Infiltration).  Labels with no positives get ``max_weight``.
    """
    y = torch.as_tensor(np.asarray(labels), dtype=torch.float32)
    pos = y.sum(dim=0)
    neg = len(y) - pos
    w = torch.where(pos > 0, neg / pos.clamp_min(1), torch.full_like(pos, max_weight))
    return w.clamp(max=max_weight)


def weighted_bce(
    logits: torch.Tensor, target: torch.Tensor, pos_weight: torch.Tensor, *, reduction: str = "mean"
) -> torch.Tensor:
    """BCE with per-label positive weights, for imbalanced multi-label findings."""
    return F.binary_cross_entropy_with_logits(
        logits, target.to(logits), pos_weight=pos_weight.to(logits), reduction=reduction
    )


def ordinal_targets(grade: torch.Tensor, num_classes: int = 5) -> torch.Tensor:
    """Grades (N,) -> cumulative targets (N, K-1), column k = [grade > k].  2 -> [1, 1, 0, 0]."""
    thresholds = torch.arange(num_classes - 1, device=grade.device)
    return (grade.long()[:, None] > thresholds[None]).float()


def ordinal_loss(
    ord_logits: torch.Tensor,
    grade: torch.Tensor,
    *,
    gamma: float = 0.0,
    alpha: float | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """BCE of the K-1 cumulative logits P(grade > k) against ``ordinal_targets``; with
    ``gamma``/``alpha`` the binary focal loss instead (the write-up's stage 2)."""
    target = ordinal_targets(grade, ord_logits.shape[1] + 1).to(ord_logits)
    return binary_focal_loss(ord_logits, target, gamma=gamma, alpha=alpha, reduction=reduction)


REGRESSION_LOSSES = ("smooth_l1", "mse", "mae")


def regression_loss(value: torch.Tensor, grade: torch.Tensor, kind: str) -> torch.Tensor:
    """The grade-regression term: "mae" (the write-up's stage 1), "mse" (stages 2 and 3),
    or "smooth_l1" (Huber with delta 1, MAE's robustness with a smooth minimum)."""
    grade = grade.to(value)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(value, grade)
    if kind == "mse":
        return F.mse_loss(value, grade)
    if kind == "mae":
        return F.l1_loss(value, grade)
    raise ValueError(f"regression must be one of {', '.join(REGRESSION_LOSSES)}, not {kind!r}")


def multitask_loss(
    outputs: Mapping[str, torch.Tensor],
    target: torch.Tensor,
    weights: Mapping[str, float] | tuple[float, float, float] = (1.0, 1.0, 1.0),
    *,
    regression: str = "smooth_l1",
    gamma: float = 0.0,
    alpha: float | None = None,
    class_weight: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Regression + classification + ordinal loss for the ``multitask`` family.

    ``outputs`` needs "reg" (N,), "scores" (N, K), "ord" (N, K-1); ``target`` is the grade (N,).
    ``weights`` is (reg, cls, ord) or a mapping with those keys.  ``gamma`` > 0 or an
    ``alpha`` turn both the classification term (categorical focal) and the ordinal term
    (binary focal) into focal losses, as in the APTOS write-up's stage 2
    (``alpha=0.25, gamma=2``); with neither they are cross-entropy and BCE (stage 1).
    """
    w = (
        dict(weights)
        if isinstance(weights, Mapping)
        else dict(zip(("reg", "cls", "ord"), weights, strict=True))
    )
    reg = regression_loss(outputs["reg"], target, regression)
    cls = focal_loss(outputs["scores"], target, gamma=gamma, alpha=alpha, weight=class_weight)
    ordl = ordinal_loss(outputs["ord"], target, gamma=gamma, alpha=alpha)
    total = w.get("reg", 0.0) * reg + w.get("cls", 0.0) * cls + w.get("ord", 0.0) * ordl
    return {"loss": total, "reg": reg.detach(), "cls": cls.detach(), "ord": ordl.detach()}


def m2cnn_loss(
    outputs: Mapping[str, torch.Tensor],
    target: torch.Tensor,
    *,
    lam: float = 1.0,
    class_weight: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """M²CNN's multi-task loss: softmax cross-entropy + lam * MSE of "grade_value" to the grade."""
    ce = F.cross_entropy(outputs["scores"], target.long(), weight=class_weight)
    mse = F.mse_loss(outputs["grade_value"], target.to(outputs["grade_value"]))
    return {"loss": ce + lam * mse, "ce": ce.detach(), "mse": mse.detach()}
