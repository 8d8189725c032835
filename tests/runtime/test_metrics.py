"""edgescreen.runtime.metrics against scikit-learn, plus hand-checked edge cases."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgescreen.runtime import metrics as M

sk = pytest.importorskip("sklearn.metrics")

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def label_pairs(draw, max_k: int = 6, max_n: int = 60):
    k = draw(st.integers(1, max_k))
    n = draw(st.integers(1, max_n))
    lab = hnp.arrays(np.int64, n, elements=st.integers(0, k - 1))
    return k, draw(lab), draw(lab)


@st.composite
def binary_with_scores(draw, max_n: int = 60, tied: bool = False):
    n = draw(st.integers(2, max_n))
    y = draw(hnp.arrays(np.int64, n, elements=st.integers(0, 1)))
    if tied:  # few distinct values: many ties, within and across classes
        s = draw(hnp.arrays(np.int64, n, elements=st.integers(0, 4))).astype(float) / 4
    else:
        s = draw(hnp.arrays(np.float64, n, elements=st.floats(-1e3, 1e3, allow_nan=False)))
    return y, s


def _sk_qwk(y, p, k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sk.cohen_kappa_score(y, p, weights="quadratic", labels=list(range(k)))


# ------------------------------------------------------------------------------- sklearn


@pytest.mark.filterwarnings("ignore:A single label was found:UserWarning")  # k == 1
@SETTINGS
@given(label_pairs())
def test_confusion_matrix_matches_sklearn(case):
    k, y, p = case
    got = M.confusion_matrix(y, p, k)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, sk.confusion_matrix(y, p, labels=list(range(k))))


@SETTINGS
@given(label_pairs())
def test_qwk_matches_sklearn(case):
    k, y, p = case
    ref = _sk_qwk(y, p, k)
    got = M.quadratic_weighted_kappa(y, p, k)
    if np.isnan(ref):  # the one undefined case: both raters constant on one class
        assert np.unique(np.concatenate([y, p])).size == 1
        assert got == 1.0
    else:
        assert got == pytest.approx(ref, rel=1e-9, abs=1e-12)


@SETTINGS
@given(label_pairs())
def test_accuracy_matches_sklearn(case):
    _, y, p = case
    assert M.accuracy(y, p) == pytest.approx(sk.accuracy_score(y, p), abs=1e-15)


@SETTINGS
@given(st.one_of(binary_with_scores(), binary_with_scores(tied=True)))
def test_binary_auroc_matches_sklearn_including_ties(case):
    y, s = case
    got = M.auroc(y, s)
    assert isinstance(got, float)
    if y.min() == y.max():
        assert np.isnan(got)
    else:
        assert got == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)


@SETTINGS
@given(st.data())
def test_multilabel_auroc_matches_sklearn_per_label(data):
    n = data.draw(st.integers(2, 40))
    k = data.draw(st.integers(1, 5))
    y = data.draw(hnp.arrays(np.int64, (n, k), elements=st.integers(0, 1)))
    s = data.draw(hnp.arrays(np.int64, (n, k), elements=st.integers(0, 6))) / 6.0
    got = M.auroc(y, s)
    assert got.shape == (k,)
    defined = []
    for j in range(k):
        if y[:, j].min() == y[:, j].max():
            assert np.isnan(got[j])
        else:
            assert got[j] == pytest.approx(sk.roc_auc_score(y[:, j], s[:, j]), abs=1e-12)
            defined.append(got[j])
    mean = M.mean_auroc(y, s)
    if defined:
        assert mean == pytest.approx(np.mean(defined), abs=1e-12)
    else:
        assert np.isnan(mean)


@SETTINGS
@given(st.data())
def test_auroc_ovr_matches_sklearn(data):
    n = data.draw(st.integers(2, 50))
    k = data.draw(st.integers(2, 5))
    y = data.draw(hnp.arrays(np.int64, n, elements=st.integers(0, k - 1)))
    raw = data.draw(hnp.arrays(np.int64, (n, k), elements=st.integers(1, 5))).astype(float)
    probs = raw / raw.sum(axis=1, keepdims=True)
    got = M.auroc_ovr(y, probs)
    for j in range(k):
        yj = (y == j).astype(int)
        if yj.min() == yj.max():
            assert np.isnan(got[j])
        else:
            assert got[j] == pytest.approx(sk.roc_auc_score(yj, probs[:, j]), abs=1e-12)
    if k >= 3 and np.unique(y).size == k:  # sklearn's multi-class path: every class present
        ref = sk.roc_auc_score(y, probs, multi_class="ovr", average=None)
        np.testing.assert_allclose(got, ref, atol=1e-12)


def test_auroc_known_values():
    assert M.auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert M.auroc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts half
    assert M.auroc([0, 0, 1], [3, 2, 1]) == 0.0
    assert M.auroc([1, 0], [1.0, 0.0]) == 1.0


@SETTINGS
@given(binary_with_scores(tied=True))
def test_youden_threshold_reaches_max_j(case):
    y, s = case
    if y.min() == y.max():
        with pytest.raises(ValueError):
            M.youden_threshold(y, s)
        return
    t = M.youden_threshold(y, s)
    fpr, tpr, _ = sk.roc_curve(y, s, drop_intermediate=False)
    sens, spec = M.sensitivity_specificity(y, s, t)
    assert sens + spec - 1 == pytest.approx(np.max(tpr - fpr), abs=1e-12)
    # no higher observed score reaches the same J (ties go to the highest threshold)
    for u in np.unique(s[s > t]):
        se, sp = M.sensitivity_specificity(y, s, u)
        assert se + sp - 1 < sens + spec - 1 - 1e-12


@SETTINGS
@given(binary_with_scores(tied=True), st.sampled_from([0.1, 0.5, 0.8, 0.9, 0.95, 1.0]))
def test_threshold_for_sensitivity_is_highest(case, target):
    y, s = case
    if y.sum() == 0:
        with pytest.raises(ValueError):
            M.threshold_for_sensitivity(y, s, target)
        return
    t = M.threshold_for_sensitivity(y, s, target)
    assert M.sensitivity_specificity(y, s, t)[0] >= target
    above = np.unique(s[s > t])
    if above.size:  # the next higher candidate must miss the target
        assert M.sensitivity_specificity(y, s, above[0])[0] < target


# ---------------------------------------------------------------------------- edge cases


def test_qwk_edge_cases():
    # all correct, and constant on the same class (sklearn: nan) -> 1.0
    assert M.quadratic_weighted_kappa([0, 1, 2, 2], [0, 1, 2, 2], 3) == 1.0
    assert M.quadratic_weighted_kappa([2, 2, 2], [2, 2, 2], 5) == 1.0
    # both constant on different classes: 0, as sklearn
    assert M.quadratic_weighted_kappa([1, 1, 1], [3, 3, 3], 5) == 0.0
    # constant predictions against varied truth: 0 (no information)
    y = np.array([0, 1, 2, 3, 4, 4])
    assert M.quadratic_weighted_kappa(y, np.full(6, 2), 5) == pytest.approx(0.0, abs=1e-12)
    # one class absent from y_true still uses all num_classes weights
    y, p = np.array([0, 0, 1, 3, 3]), np.array([0, 1, 1, 2, 3])
    assert M.quadratic_weighted_kappa(y, p, 5) == pytest.approx(_sk_qwk(y, p, 5))
    # the reversal of a 3-class ordering is as bad as it gets
    assert M.quadratic_weighted_kappa([0, 1, 2], [2, 1, 0], 3) == pytest.approx(-1.0)


def test_auroc_single_class_label_is_nan_and_excluded_from_mean():
    y = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 0, 1]])
    s = np.array([[0.9, 0.1, 0.2], [0.1, 0.3, 0.7], [0.8, 0.2, 0.4], [0.3, 0.9, 0.1]])
    got = M.auroc(y, s)
    assert got[0] == 1.0 and np.isnan(got[1]) and got[2] == 0.5
    assert M.mean_auroc(y, s) == pytest.approx(0.75)
    assert np.isnan(M.mean_auroc(np.zeros((3, 2), int), np.ones((3, 2))))
    assert np.isnan(M.auroc([1, 1, 1], [0.2, 0.3, 0.4]))


def test_sensitivity_specificity_hand_example_and_nan():
    y = [1, 1, 1, 0, 0]
    s = [0.9, 0.5, 0.2, 0.5, 0.1]
    assert M.sensitivity_specificity(y, s, 0.5) == (pytest.approx(2 / 3), 0.5)
    sens, spec = M.sensitivity_specificity([0, 0], [0.1, 0.9], 0.5)
    assert np.isnan(sens) and spec == 0.5
    assert M.threshold_for_sensitivity(y, s, 1.0) == 0.2
    assert M.threshold_for_sensitivity(y, s, 0.6) == 0.5
    assert M.threshold_for_sensitivity(y, s, 0.3) == 0.9
    # J at .9: 1/3 + 1 - 1; at .5: 2/3 + 1/2 - 1; at .2: 1 + 1/2 - 1 (the best)
    assert M.youden_threshold(y, s) == 0.2
    # J = .5 at both 1.0 and 3.0: the tie goes to the higher (more specific) threshold
    assert M.youden_threshold([0, 1, 0, 1], [0.0, 1.0, 2.0, 3.0]) == 3.0


@pytest.mark.parametrize(
    "call",
    [
        lambda: M.confusion_matrix([0, 1], [0], 2),
        lambda: M.confusion_matrix([], [], 2),
        lambda: M.confusion_matrix([0, 2], [0, 1], 2),
        lambda: M.quadratic_weighted_kappa([0, 1, 2], [0, 1], 3),
        lambda: M.accuracy([], []),
        lambda: M.accuracy([1, 2], [1]),
        lambda: M.auroc([0, 1, 1], [0.1, 0.2]),
        lambda: M.auroc([], []),
        lambda: M.auroc([0, 2], [0.1, 0.2]),
        lambda: M.auroc([0, 1], np.ones((2, 2))),
        lambda: M.auroc_ovr([0, 1], np.ones((3, 2))),
        lambda: M.sensitivity_specificity([0, 1], [0.5], 0.5),
        lambda: M.threshold_for_sensitivity([0, 1], [0.1, 0.2], 0.0),
        lambda: M.expected_calibration_error([0, 1], np.ones((3, 2)) / 2),
        lambda: M.expected_calibration_error([], []),
        lambda: M.bootstrap_ci(M.accuracy, [0, 1], [0, 1, 1]),
        lambda: M.bootstrap_ci(M.accuracy),
        lambda: M.optimise_qwk_cutpoints([0, 1], [0.1], 3),
        lambda: M.optimise_qwk_cutpoints([0, 1], [0.1, 0.2], 3, init=[0.5]),
        lambda: M.apply_cutpoints([0.1], [1.0, 0.5]),
    ],
)
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()


# ---------------------------------------------------------------------------- calibration


def test_ece_hand_computed_multiclass():
    probs = np.array(
        [
            [0.9, 0.05, 0.05],  # conf .9, correct
            [0.8, 0.1, 0.1],  # conf .8, wrong
            [0.3, 0.6, 0.1],  # conf .6, correct
            [0.2, 0.25, 0.55],  # conf .55, wrong
        ]
    )
    y = np.array([0, 1, 1, 1])
    # 2 bins, (0, .5] and (.5, 1]: all four in bin 2; acc .5, mean conf .7125
    assert M.expected_calibration_error(y, probs, n_bins=2) == pytest.approx(0.2125)
    # 5 bins of .2: (.4,.6] holds .6 and .55 (acc .5, conf .575); (.6,.8] holds .8
    # (acc 0, conf .8); (.8,1] holds .9 (acc 1, conf .9)
    want = (2 * abs(0.5 - 0.575) + abs(0.0 - 0.8) + abs(1.0 - 0.9)) / 4
    assert M.expected_calibration_error(y, probs, n_bins=5) == pytest.approx(want)


def test_ece_binary_matches_two_column_form_and_perfect_calibration():
    p = np.array([0.9, 0.2, 0.7, 0.4])
    y = np.array([1, 0, 0, 0])
    two = np.stack([1 - p, p], axis=1)
    assert M.expected_calibration_error(y, p) == pytest.approx(M.expected_calibration_error(y, two))
    # hand: confidences .9 .8 .7 .6, correct 1 1 0 1; 15 bins put each alone
    assert M.expected_calibration_error(y, p) == pytest.approx((0.1 + 0.2 + 0.7 + 0.4) / 4)
    # confident and always right -> 0
    assert M.expected_calibration_error([0, 1], [[1.0, 0.0], [0.0, 1.0]]) == 0.0


# ----------------------------------------------------------------------------- bootstrap


def _noisy_grades(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, n)
    p = np.clip(y + rng.integers(-1, 2, n) * (rng.random(n) < 0.4), 0, 4)
    return y, p


def test_bootstrap_ci_covers_point_is_deterministic_and_shrinks():
    y, p = _noisy_grades(2000, 0)
    qwk = lambda a, b: M.quadratic_weighted_kappa(a, b, 5)  # noqa: E731
    point, lo, hi = M.bootstrap_ci(qwk, y, p, n_boot=300, seed=7)
    assert point == M.quadratic_weighted_kappa(y, p, 5)
    assert lo < point < hi
    assert M.bootstrap_ci(qwk, y, p, n_boot=300, seed=7) == (point, lo, hi)
    assert M.bootstrap_ci(qwk, y, p, n_boot=300, seed=8) != (point, lo, hi)
    _, lo_s, hi_s = M.bootstrap_ci(qwk, y[:100], p[:100], n_boot=300, seed=7)
    assert hi - lo < (hi_s - lo_s) / 2  # 20x the data: about 4.5x narrower


def test_bootstrap_ci_pairs_rows_across_arrays():
    # a paired difference of two identical prediction sets is exactly 0 in every resample
    y, p = _noisy_grades(300, 1)
    diff = lambda a, b, c: M.accuracy(a, b) - M.accuracy(a, c)  # noqa: E731
    assert M.bootstrap_ci(diff, y, p, p.copy(), n_boot=200) == (0.0, 0.0, 0.0)
    # unpaired resampling breaks the row alignment, so the same difference varies
    _, lo, hi = M.bootstrap_ci(diff, y, p, p.copy(), n_boot=200, paired=False)
    assert lo < 0 < hi


def test_bootstrap_ci_skips_nan_resamples():
    # 1 positive in 30: ~36% of resamples lack it and give nan AUROC; they must be skipped
    y = np.zeros(30, int)
    y[0] = 1
    s = np.linspace(0, 1, 30)
    assert M.bootstrap_ci(M.auroc, y, s, n_boot=200) == (0.0, 0.0, 0.0)
    # all nan -> nan bounds
    _, lo, hi = M.bootstrap_ci(M.auroc, np.ones(5, int), np.arange(5.0), n_boot=20)
    assert np.isnan(lo) and np.isnan(hi)


# ---------------------------------------------------------------------------- cut points


def _skewed_regression(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # DR-like skew (most grade 0) and a regressor that shrinks towards the mean
    rng = np.random.default_rng(seed)
    y = rng.choice(5, size=n, p=[0.55, 0.15, 0.15, 0.08, 0.07])
    score = 0.6 * y + 0.5 + rng.normal(0, 0.45, n)
    return y, score


def test_cutpoints_beat_naive_and_generalise():
    y, s = _skewed_regression(3000, 0)
    naive = np.array([0.5, 1.5, 2.5, 3.5])
    cuts = M.optimise_qwk_cutpoints(y, s, 5)
    assert cuts.shape == (4,) and np.all(np.diff(cuts) >= 0)
    q_naive = M.quadratic_weighted_kappa(y, M.apply_cutpoints(s, naive), 5)
    q_opt = M.quadratic_weighted_kappa(y, M.apply_cutpoints(s, cuts), 5)
    assert q_opt > q_naive + 0.05
    # fitted cut points also help on fresh data from the same process
    y2, s2 = _skewed_regression(3000, 1)
    assert M.quadratic_weighted_kappa(
        y2, M.apply_cutpoints(s2, cuts), 5
    ) > M.quadratic_weighted_kappa(y2, M.apply_cutpoints(s2, naive), 5)
    np.testing.assert_array_equal(cuts, M.optimise_qwk_cutpoints(y, s, 5))  # deterministic


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_cutpoints_are_coordinatewise_optimal(seed):
    # brute force: no single cut point, moved to any observed score or midpoint between
    # its neighbours, raises QWK above what the optimiser found
    rng = np.random.default_rng(seed)
    n, k = 40, 4
    y = rng.integers(0, k, n)
    s = np.round(y + rng.normal(0, 1.0, n), 1)
    init = np.sort(rng.uniform(-0.5, 3.5, k - 1))
    cuts = M.optimise_qwk_cutpoints(y, s, k, init=init)
    best = M.quadratic_weighted_kappa(y, M.apply_cutpoints(s, cuts), k)
    assert best >= M.quadratic_weighted_kappa(y, M.apply_cutpoints(s, init), k) - 1e-12
    u = np.unique(s)
    grid = np.concatenate([u, (u[:-1] + u[1:]) / 2, [u[-1] + 1, u[0] - 1]])
    for j in range(k - 1):
        lo = cuts[j - 1] if j else -np.inf
        hi = cuts[j + 1] if j < k - 2 else np.inf
        for v in grid[(grid >= lo) & (grid <= hi)]:
            trial = cuts.copy()
            trial[j] = v
            q = M.quadratic_weighted_kappa(y, M.apply_cutpoints(s, trial), k)
            assert q <= best + 1e-12


def test_apply_cutpoints_boundaries():
    got = M.apply_cutpoints([-1.0, 0.5, 0.49, 1.5, 2.0, 9.0], [0.5, 1.5, 2.5])
    np.testing.assert_array_equal(got, [0, 1, 0, 2, 2, 3])
    assert got.dtype == np.int64


def test_wilson_interval_matches_the_textbook_values():
    from edgescreen.runtime.metrics import wilson_interval

    # 9 flips of 118 images (the demo's TensorRT-form INT8): about 4.1% to 13.9%.
    lo, hi = wilson_interval(9, 118)
    assert lo == pytest.approx(0.0406, abs=5e-4) and hi == pytest.approx(0.1387, abs=5e-4)
    # 0 of n is not "0%": the upper bound is about 3.8/n at n = 100.
    assert wilson_interval(0, 100) == pytest.approx((0.0, 0.0370), abs=5e-4)
    assert wilson_interval(100, 100)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 3)
