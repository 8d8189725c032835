"""Clinical screening metrics in numpy alone (the Jetson has no scipy, sklearn or torch).

Conventions shared by every function here:

* Labels are integer class indices (bool / integral floats are accepted and cast).
* A score is "positive" at a threshold when ``score >= threshold``.
* Empty input or mismatched lengths raise ``ValueError``; a metric that is undefined for
  the data (e.g. AUROC with one class present) returns ``nan`` rather than raising, so
  that bootstrap resamples can skip it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "accuracy",
    "apply_cutpoints",
    "auroc",
    "auroc_ovr",
    "bootstrap_ci",
    "confusion_matrix",
    "expected_calibration_error",
    "mean_auroc",
    "optimise_qwk_cutpoints",
    "quadratic_weighted_kappa",
    "sensitivity_specificity",
    "threshold_for_sensitivity",
    "wilson_interval",
    "youden_threshold",
]


# --------------------------------------------------------------------------- validation


def _nonempty(a: np.ndarray, name: str) -> None:
    if a.size == 0 or (a.ndim >= 1 and a.shape[0] == 0):
        raise ValueError(f"{name} is empty")


def _same_length(*named: tuple[str, np.ndarray]) -> None:
    lengths = {name: a.shape[0] for name, a in named}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{n} has {k}" for n, k in lengths.items())
        raise ValueError(f"inputs differ in length: {desc}")


def _labels(y: Any, name: str, num_classes: int | None = None) -> np.ndarray:
    """1-D int64 class indices, optionally checked to lie in [0, num_classes)."""
    a = np.asarray(y)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    _nonempty(a, name)
    if a.dtype == bool:
        a = a.astype(np.int64)
    elif not np.issubdtype(a.dtype, np.integer):
        if not np.issubdtype(a.dtype, np.floating) or not np.all(np.isfinite(a)):
            raise ValueError(f"{name} must hold integer class labels, got dtype {a.dtype}")
        if not np.all(a == np.round(a)):
            raise ValueError(f"{name} must hold integer class labels, got non-integral values")
    a = a.astype(np.int64)
    if num_classes is not None and (a.min() < 0 or a.max() >= num_classes):
        raise ValueError(
            f"{name} has labels outside [0, {num_classes}): min {a.min()}, max {a.max()}"
        )
    return a


def _binary(y: Any, name: str, ndim: int = 1) -> np.ndarray:
    """0/1 labels as bool, with the given number of dimensions."""
    a = np.asarray(y)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    _nonempty(a, name)
    if a.dtype != bool:
        if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
            raise ValueError(f"{name} must hold 0/1 labels, got dtype {a.dtype}")
        if not np.all((a == 0) | (a == 1)):
            raise ValueError(f"{name} must hold only 0 and 1")
    return a.astype(bool)


def _scores(s: Any, name: str, ndim: int | None = None) -> np.ndarray:
    a = np.asarray(s, dtype=np.float64)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    _nonempty(a, name)
    if np.isnan(a).any():
        raise ValueError(f"{name} contains NaN")
    return a


def _num_classes(num_classes: int) -> int:
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


# ------------------------------------------------------------------ confusion, kappa, acc


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """K x K int64 counts; rows are true classes, columns predicted classes."""
    k = _num_classes(num_classes)
    t = _labels(y_true, "y_true", k)
    p = _labels(y_pred, "y_pred", k)
    _same_length(("y_true", t), ("y_pred", p))
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(np.int64)


def _qwk_from_confusion(conf: np.ndarray) -> np.ndarray:
    """QWK for a stack of confusion matrices (..., K, K); 1.0 where undefined (see below)."""
    conf = np.asarray(conf, dtype=np.float64)
    k = conf.shape[-1]
    idx = np.arange(k, dtype=np.float64)
    w = (idx[:, None] - idx[None, :]) ** 2
    n = conf.sum(axis=(-2, -1))
    expected = conf.sum(axis=-1)[..., :, None] * conf.sum(axis=-2)[..., None, :]
    expected = expected / n[..., None, None]
    num = (w * conf).sum(axis=(-2, -1))
    den = (w * expected).sum(axis=(-2, -1))
    safe = np.where(den == 0, 1.0, den)
    return np.where(den == 0, 1.0, 1.0 - num / safe)


def quadratic_weighted_kappa(y_true: Any, y_pred: Any, num_classes: int) -> float:
    """Cohen's kappa with quadratic weights over labels 0..num_classes-1.

    Equals ``sklearn.metrics.cohen_kappa_score(weights="quadratic",
    labels=range(num_classes))`` wherever that is defined. sklearn returns nan when the
    expected disagreement is zero, which happens only when both raters put every sample
    in one and the same class; predictions then equal the truth exactly, so this returns
    1.0 (perfect agreement). Two raters constant on *different* classes give 0.0, as in
    sklearn.
    """
    conf = confusion_matrix(y_true, y_pred, num_classes)
    return float(_qwk_from_confusion(conf))


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of positions where y_pred equals y_true (any comparable labels)."""
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    if t.ndim != 1 or p.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D, got shapes {t.shape} and {p.shape}")
    _nonempty(t, "y_true")
    _same_length(("y_true", t), ("y_pred", p))
    return float(np.mean(t == p))


# ------------------------------------------------------------------------------- AUROC


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of a 1-D array, ties sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new_group = np.empty(xs.shape[0], dtype=bool)
    new_group[0] = True
    np.not_equal(xs[1:], xs[:-1], out=new_group[1:])
    group = np.cumsum(new_group) - 1
    starts = np.flatnonzero(np.append(new_group, True))  # group boundaries incl. the end
    avg = (starts[:-1] + starts[1:] + 1) / 2.0  # mean of 1-based ranks start+1 .. end
    ranks = np.empty(xs.shape[0], dtype=np.float64)
    ranks[order] = avg[group]
    return ranks


def _auroc_1d(y: np.ndarray, s: np.ndarray) -> float:
    n_pos = int(y.sum())
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _average_ranks(s)
    u = r[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def auroc(y_true: Any, scores: Any) -> float | np.ndarray:
    """Area under the ROC curve by Mann-Whitney U with average ranks for ties.

    1-D 0/1 ``y_true`` with 1-D ``scores`` gives a float; an N x K 0/1 matrix with N x K
    scores gives a length-K array (multi-label). A label whose column holds only one
    class gives nan. For integer multi-class labels use :func:`auroc_ovr`.
    """
    t = np.asarray(y_true)
    s = _scores(scores, "scores")
    if t.ndim == 1 and s.ndim == 2:
        raise ValueError(
            "1-D y_true with 2-D scores: use auroc_ovr for multi-class labels, "
            "or pass an N x K 0/1 matrix for multi-label"
        )
    if t.ndim not in (1, 2):
        raise ValueError(f"y_true must be 1-D (binary) or 2-D (multi-label), got {t.shape}")
    yb = _binary(t, "y_true", t.ndim)
    if s.shape != yb.shape:
        raise ValueError(f"y_true has shape {yb.shape} but scores has shape {s.shape}")
    if yb.ndim == 1:
        return _auroc_1d(yb, s)
    return np.array([_auroc_1d(yb[:, j], s[:, j]) for j in range(yb.shape[1])])


def auroc_ovr(y_true: Any, probs: Any) -> np.ndarray:
    """One-vs-rest AUROC per class from integer labels and an N x K score matrix.

    A class absent from y_true (or the only class present) gives nan.
    """
    p = _scores(probs, "probs", 2)
    t = _labels(y_true, "y_true", p.shape[1])
    _same_length(("y_true", t), ("probs", p))
    onehot = t[:, None] == np.arange(p.shape[1])[None, :]
    return np.array([_auroc_1d(onehot[:, j], p[:, j]) for j in range(p.shape[1])])


def mean_auroc(y_true: Any, scores: Any) -> float:
    """Mean of the per-label AUROCs, ignoring nan labels; nan when every label is nan."""
    a = np.atleast_1d(np.asarray(auroc(y_true, scores), dtype=np.float64))
    ok = ~np.isnan(a)
    return float(a[ok].mean()) if ok.any() else float("nan")


# ------------------------------------------------------------------------- thresholds


def _binary_pair(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = _binary(y_true, "y_true_binary", 1)
    s = _scores(scores, "scores", 1)
    _same_length(("y_true_binary", y), ("scores", s))
    return y, s


def sensitivity_specificity(
    y_true_binary: Any, scores: Any, threshold: float
) -> tuple[float, float]:
    """(sensitivity, specificity) calling ``score >= threshold`` positive; nan if undefined."""
    y, s = _binary_pair(y_true_binary, scores)
    pred = s >= threshold
    n_pos = int(y.sum())
    n_neg = y.shape[0] - n_pos
    sens = float(np.sum(pred & y) / n_pos) if n_pos else float("nan")
    spec = float(np.sum(~pred & ~y) / n_neg) if n_neg else float("nan")
    return sens, spec


def threshold_for_sensitivity(y_true_binary: Any, scores: Any, target: float) -> float:
    """Highest threshold whose sensitivity (``score >= t``) is at least ``target``.

    ``target`` must lie in (0, 1]; at least one positive is required. The result is
    always one of the positives' scores.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    y, s = _binary_pair(y_true_binary, scores)
    pos = np.sort(s[y])[::-1]
    n_pos = pos.shape[0]
    if n_pos == 0:
        raise ValueError("y_true_binary has no positives: sensitivity is undefined")
    # Smallest count m with m / n_pos >= target, computed exactly as sensitivity is.
    counts = np.arange(1, n_pos + 1)
    m = int(counts[np.argmax(counts / n_pos >= target)])
    return float(pos[m - 1])


def youden_threshold(y_true_binary: Any, scores: Any) -> float:
    """Threshold among the observed scores maximising sensitivity + specificity - 1.

    Ties go to the highest such threshold (the most specific). Needs both classes.
    """
    y, s = _binary_pair(y_true_binary, scores)
    pos = np.sort(s[y])
    neg = np.sort(s[~y])
    if pos.size == 0 or neg.size == 0:
        raise ValueError("youden_threshold needs both positives and negatives in y_true_binary")
    cand = np.unique(s)[::-1]  # descending, so argmax picks the highest on ties
    tp = pos.size - np.searchsorted(pos, cand, side="left")
    fp = neg.size - np.searchsorted(neg, cand, side="left")
    # J * n_pos * n_neg in integers, so equal J values tie exactly
    return float(cand[np.argmax(tp * neg.size - fp * pos.size)])


# ------------------------------------------------------------------------- calibration


def expected_calibration_error(y_true: Any, probs: Any, n_bins: int = 15) -> float:
    """ECE over ``n_bins`` equal-width confidence bins (lo, hi], the first also holding 0.

    Multi-class: N x K ``probs``, confidence = max prob, correct = argmax == y_true.
    Binary: 1-D probability of the positive class, treated as ``[1 - p, p]`` (so the
    prediction is positive when p > 0.5 and the confidence is max(p, 1 - p)).
    ECE = sum over bins of (bin count / N) * |accuracy(bin) - mean confidence(bin)|.
    """
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    p = _scores(probs, "probs")
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2:
        raise ValueError(f"probs must be 1-D (binary) or N x K, got shape {p.shape}")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("probs must lie in [0, 1]")
    t = _labels(y_true, "y_true", p.shape[1])
    _same_length(("y_true", t), ("probs", p))
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == t).astype(np.float64)
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    b = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, int(n_bins) - 1)
    count = np.bincount(b, minlength=n_bins)
    gap = np.abs(
        np.bincount(b, weights=correct, minlength=n_bins)
        - np.bincount(b, weights=conf, minlength=n_bins)
    )
    # sum_b (n_b / N) |acc_b - conf_b| == sum_b |sum correct - sum conf| / N
    return float(gap.sum() / count.sum())


# --------------------------------------------------------------------------- bootstrap


def bootstrap_ci(
    metric_fn: Callable[..., float],
    *arrays: Any,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    paired: bool = True,
) -> tuple[float, float, float]:
    """(point estimate, low, high): percentile bootstrap CI of ``metric_fn(*arrays)``.

    ``paired=True`` draws one set of row indices per resample and applies it to every
    array (equal lengths required), which keeps predictions aligned with their labels and
    gives a paired CI of a difference such as ``lambda y, a, b: qwk(y, a) - qwk(y, b)``.
    ``paired=False`` resamples each array independently (independent samples, lengths
    may differ). Resamples where the metric is nan are skipped; if all are, the bounds
    are nan. Deterministic for a given seed.
    """
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array")
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    arrs = [np.asarray(a) for a in arrays]
    for i, a in enumerate(arrs):
        if a.ndim == 0:
            raise ValueError(f"array {i} is a scalar; bootstrap_ci resamples along axis 0")
        _nonempty(a, f"array {i}")
    if paired:
        _same_length(*((f"array {i}", a) for i, a in enumerate(arrs)))

    point = float(metric_fn(*arrs))
    rng = np.random.default_rng(seed)
    n_boot = int(n_boot)
    if paired:
        n = arrs[0].shape[0]
        idx = rng.integers(0, n, size=(n_boot, n))
        stats = np.array([float(metric_fn(*(a[ix] for a in arrs))) for ix in idx])
    else:
        idxs = [rng.integers(0, a.shape[0], size=(n_boot, a.shape[0])) for a in arrs]
        stats = np.array(
            [
                float(metric_fn(*(a[ix[b]] for a, ix in zip(arrs, idxs, strict=True))))
                for b in range(n_boot)
            ]
        )
    stats = stats[~np.isnan(stats)]
    if stats.size == 0:
        return point, float("nan"), float("nan")
    low, high = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    return point, float(low), float(high)


# ---------------------------------------------------------------------------- cut points


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% (z = 1.96) Wilson score interval of a proportion k/n.

    A flip rate over a hundred-odd images is a handful of events: its plain k/n says little,
    and the normal approximation gives negative bounds at k = 0. Wilson's interval does not.
    """
    if n <= 0:
        return (float("nan"), float("nan"))
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def apply_cutpoints(y_score: Any, cutpoints: Any) -> np.ndarray:
    """Class index per score: the number of cut points <= score (int64)."""
    s = _scores(y_score, "y_score", 1)
    c = np.asarray(cutpoints, dtype=np.float64)
    if c.ndim != 1:
        raise ValueError(f"cutpoints must be 1-D, got shape {c.shape}")
    if np.isnan(c).any() or np.any(np.diff(c) < 0):
        raise ValueError("cutpoints must be non-decreasing and not NaN")
    return np.searchsorted(c, s, side="right").astype(np.int64)


def _best_cut(
    y: np.ndarray, s: np.ndarray, cuts: np.ndarray, j: int, k: int
) -> tuple[float, float, float]:
    """Exact line search on cut point j: (best value, its QWK, the current QWK)."""
    lo = cuts[j - 1] if j > 0 else -np.inf
    hi = cuts[j + 1] if j + 1 < cuts.shape[0] else np.inf
    pred = np.searchsorted(cuts, s, side="right")
    window = (s >= lo) & (s < hi)  # exactly the samples whose class cut j decides
    current = float(_qwk_from_confusion(np.bincount(y * k + pred, minlength=k * k).reshape(k, k)))
    if not window.any():
        return float(cuts[j]), current, current
    out = ~window
    base = np.bincount(y[out] * k + pred[out], minlength=k * k).reshape(k, k)
    ws, wy = s[window], y[window]
    order = np.argsort(ws, kind="mergesort")
    ws, wy = ws[order], wy[order]
    u, first = np.unique(ws, return_index=True)
    # Split m: window samples below u[m] go to class j, the rest to j + 1 (m = 0 .. U).
    cum = np.zeros((u.shape[0] + 1, k), dtype=np.int64)  # true-label counts below split
    onehot = (wy[:, None] == np.arange(k)[None, :]).astype(np.int64)
    cum[1:] = np.cumsum(onehot, axis=0)[np.append(first[1:] - 1, ws.shape[0] - 1)]
    total = cum[-1]
    conf = np.broadcast_to(base, (cum.shape[0], k, k)).copy()
    conf[:, :, j] += cum
    conf[:, :, j + 1] += total - cum
    q = _qwk_from_confusion(conf)
    mid = (u[:-1] + u[1:]) / 2.0
    mid = np.where(mid > u[:-1], mid, u[1:])  # guard against rounding onto u[m-1]
    last = hi if np.isfinite(hi) else u[-1] + 0.5
    values = np.concatenate([[u[0]], mid, [last]])
    m = int(np.argmax(q))  # first maximum: deterministic
    return float(values[m]), float(q[m]), current


def optimise_qwk_cutpoints(
    y_true: Any, y_score: Any, num_classes: int, init: Any = None, max_sweeps: int = 100
) -> np.ndarray:
    """Cut points (length num_classes - 1) for a regression score that maximise QWK.

    Deterministic coordinate ascent: each cut point in turn is moved to the best split
    between its neighbours (an exact line search over the observed scores, midpoints
    between distinct scores), until a sweep improves nothing. Starts from ``init`` or
    0.5, 1.5, ...; the result never scores below the start. Use with
    :func:`apply_cutpoints`.
    """
    k = _num_classes(num_classes)
    if k < 2:
        raise ValueError("optimise_qwk_cutpoints needs num_classes >= 2")
    s = _scores(y_score, "y_score", 1)
    if not np.all(np.isfinite(s)):
        raise ValueError("y_score must be finite")
    y = _labels(y_true, "y_true", k)
    _same_length(("y_true", y), ("y_score", s))
    if init is None:
        cuts = np.arange(k - 1, dtype=np.float64) + 0.5
    else:
        cuts = np.asarray(init, dtype=np.float64).copy()
        if cuts.shape != (k - 1,):
            raise ValueError(f"init must have num_classes - 1 = {k - 1} values, got {cuts.shape}")
        if not np.all(np.isfinite(cuts)) or np.any(np.diff(cuts) < 0):
            raise ValueError("init must be finite and non-decreasing")
    for _ in range(int(max_sweeps)):
        improved = False
        for j in range(k - 1):
            value, best, current = _best_cut(y, s, cuts, j, k)
            if best > current + 1e-12:
                cuts[j] = value
                improved = True
        if not improved:
            break
    return cuts
