"""Losses: reductions to the textbook cases, targets, and the composite losses' parts."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from edgescreen.train.losses import (  # noqa: E402
    binary_focal_loss,
    focal_loss,
    m2cnn_loss,
    multitask_loss,
    ordinal_loss,
    ordinal_targets,
    pos_weight_from_labels,
    regression_loss,
    weighted_bce,
)
from edgescreen.train.objectives import objective  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 5, generator=g), torch.randint(0, 5, (16,), generator=g)


def test_focal_gamma0_is_cross_entropy(batch):
    logits, y = batch
    torch.testing.assert_close(focal_loss(logits, y, gamma=0), F.cross_entropy(logits, y))
    w = torch.tensor([0.2, 1.0, 2.0, 3.0, 5.0])
    torch.testing.assert_close(
        focal_loss(logits, y, gamma=0, weight=w), F.cross_entropy(logits, y, weight=w)
    )
    torch.testing.assert_close(
        focal_loss(logits, y, gamma=0, reduction="none"),
        F.cross_entropy(logits, y, reduction="none"),
    )


def test_focal_downweights_easy_examples(batch):
    logits, y = batch
    per = focal_loss(logits, y, gamma=2, reduction="none")
    ce = F.cross_entropy(logits, y, reduction="none")
    assert torch.all(per <= ce + 1e-7)
    easy = torch.full((1, 5), -2.0)
    easy[0, 1] = 4.0
    ce_easy = F.cross_entropy(easy, torch.tensor([1]))
    assert focal_loss(easy, torch.tensor([1]), gamma=2) < 1e-3 * ce_easy


def test_binary_focal_gamma0_is_bce():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 14, generator=g)
    y = (torch.rand(8, 14, generator=g) > 0.7).float()
    torch.testing.assert_close(
        binary_focal_loss(logits, y, gamma=0), F.binary_cross_entropy_with_logits(logits, y)
    )
    pw = torch.linspace(1, 10, 14)
    torch.testing.assert_close(
        binary_focal_loss(logits, y, gamma=0, pos_weight=pw),
        F.binary_cross_entropy_with_logits(logits, y, pos_weight=pw),
    )
    assert binary_focal_loss(logits, y, gamma=2) < binary_focal_loss(logits, y, gamma=0)


def test_ordinal_targets():
    t = ordinal_targets(torch.tensor([0, 1, 2, 3, 4]), 5)
    expected = torch.tensor(
        [[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.float32
    )
    assert torch.equal(t, expected)
    assert torch.equal(t.sum(1), torch.tensor([0.0, 1, 2, 3, 4]))  # sum of targets == grade


def test_ordinal_loss_prefers_the_right_grade():
    grade = torch.tensor([3])
    right = torch.tensor([[9.0, 9.0, 9.0, -9.0]])
    wrong = torch.tensor([[9.0, -9.0, -9.0, -9.0]])
    assert ordinal_loss(right, grade) < 1e-3 < ordinal_loss(wrong, grade)


def test_pos_weight_from_labels_and_weighted_bce():
    labels = np.array([[1, 0, 0], [0, 0, 1], [0, 0, 1], [0, 0, 1]])
    w = pos_weight_from_labels(labels, max_weight=50)
    torch.testing.assert_close(w, torch.tensor([3.0, 50.0, 1 / 3]))
    logits = torch.zeros(4, 3)
    loss = weighted_bce(logits, torch.as_tensor(labels), w)
    torch.testing.assert_close(
        loss,
        F.binary_cross_entropy_with_logits(logits, torch.as_tensor(labels).float(), pos_weight=w),
    )


def test_multitask_loss_parts_and_weights(batch):
    logits, y = batch
    out = {"scores": logits, "reg": torch.randn(16, requires_grad=True), "ord": torch.randn(16, 4)}
    parts = multitask_loss(out, y, (1.0, 0.5, 2.0))
    expected = (
        F.smooth_l1_loss(out["reg"], y.float())
        + 0.5 * F.cross_entropy(logits, y)
        + 2.0 * F.binary_cross_entropy_with_logits(out["ord"], ordinal_targets(y))
    )
    torch.testing.assert_close(parts["loss"], expected)
    parts["loss"].backward()
    assert out["reg"].grad is not None
    only_reg = multitask_loss(out, y, {"reg": 1.0}, regression="mse")
    torch.testing.assert_close(only_reg["loss"], F.mse_loss(out["reg"], y.float()))
    focal = multitask_loss(out, y, (0, 1, 0), gamma=2.0)
    assert focal["loss"] < F.cross_entropy(logits, y)


def test_focal_by_hand_with_alpha():
    # p = softmax([0, ln 3]) = (0.25, 0.75): FL = -alpha (1 - p_y)^gamma ln p_y per image.
    logits = torch.log(torch.tensor([[1.0, 3.0], [1.0, 3.0]]))
    y = torch.tensor([1, 0])
    easy = 0.25 * 0.25**2 * -np.log(0.75)  # 0.004495
    hard = 0.25 * 0.75**2 * -np.log(0.25)  # 0.194948
    per = focal_loss(logits, y, gamma=2, alpha=0.25, reduction="none")
    torch.testing.assert_close(per, torch.tensor([easy, hard], dtype=torch.float32))
    torch.testing.assert_close(
        focal_loss(logits, y, gamma=2, alpha=0.25), torch.tensor((easy + hard) / 2).float()
    )


def test_focal_alpha_gamma0_is_scaled_cross_entropy(batch):
    logits, y = batch
    torch.testing.assert_close(
        focal_loss(logits, y, gamma=0, alpha=0.25), 0.25 * F.cross_entropy(logits, y)
    )
    w = torch.tensor([0.2, 1.0, 2.0, 3.0, 5.0])
    torch.testing.assert_close(
        focal_loss(logits, y, gamma=0, alpha=0.25, weight=w),
        0.25 * F.cross_entropy(logits, y, weight=w),
    )


def test_binary_focal_by_hand_with_alpha():
    # Positive at p = 0.5: alpha_t = 0.25, (1 - p_t)^2 = 0.25, -ln p_t = ln 2.
    # Negative at p = 0.75: alpha_t = 0.75, p_t = 0.25, (1 - p_t)^2 = 0.5625, -ln p_t = ln 4.
    logits = torch.tensor([[0.0, float(np.log(3.0))]])
    y = torch.tensor([[1.0, 0.0]])
    pos = 0.25 * 0.25 * np.log(2.0)
    neg = 0.75 * 0.5625 * np.log(4.0)
    per = binary_focal_loss(logits, y, gamma=2, alpha=0.25, reduction="none")
    torch.testing.assert_close(per, torch.tensor([[pos, neg]], dtype=torch.float32))
    # gamma = 0 with alpha: BCE with positives weighted alpha and negatives 1 - alpha.
    g = torch.Generator().manual_seed(2)
    logits, y = torch.randn(8, 4, generator=g), (torch.rand(8, 4, generator=g) > 0.5).float()
    bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    torch.testing.assert_close(
        binary_focal_loss(logits, y, gamma=0, alpha=0.25),
        ((0.25 * y + 0.75 * (1 - y)) * bce).mean(),
    )


def test_ordinal_focal_and_regression_kinds(batch):
    _, y = batch
    ord_logits = torch.randn(16, 4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(
        ordinal_loss(ord_logits, y, gamma=2, alpha=0.25),
        binary_focal_loss(ord_logits, ordinal_targets(y), gamma=2, alpha=0.25),
    )
    value = torch.randn(16)
    torch.testing.assert_close(regression_loss(value, y, "mae"), (value - y).abs().mean())
    torch.testing.assert_close(regression_loss(value, y, "mse"), ((value - y) ** 2).mean())
    with pytest.raises(ValueError, match="regression"):
        regression_loss(value, y, "huber")


def test_multitask_stage_objectives_are_the_write_ups(batch):
    """Stage 1: MAE + CE + BCE; stage 2: MSE + categorical focal + binary focal (alpha .25,
    gamma 2) on the ordinal head; stage 3: MSE of the combiner's grade value."""
    logits, y = batch
    g = torch.Generator().manual_seed(4)
    out = {
        "scores": logits,
        "reg": torch.randn(16, generator=g),
        "ord": torch.randn(16, 4, generator=g),
        "grade_value": torch.randn(16, generator=g),
    }
    stage1 = objective("multitask", out, y, regression="mae")
    torch.testing.assert_close(
        stage1,
        F.l1_loss(out["reg"], y.float())
        + F.cross_entropy(logits, y)
        + F.binary_cross_entropy_with_logits(out["ord"], ordinal_targets(y)),
    )
    stage2 = objective("multitask", out, y, regression="mse", focal_gamma=2.0, focal_alpha=0.25)
    torch.testing.assert_close(
        stage2,
        F.mse_loss(out["reg"], y.float())
        + focal_loss(logits, y, gamma=2, alpha=0.25)
        + binary_focal_loss(out["ord"], ordinal_targets(y), gamma=2, alpha=0.25),
    )
    torch.testing.assert_close(
        objective("combiner", out, y), F.mse_loss(out["grade_value"], y.float())
    )


def test_m2cnn_loss(batch):
    logits, y = batch
    value = torch.randn(16)
    parts = m2cnn_loss({"scores": logits, "grade_value": value}, y, lam=0.3)
    torch.testing.assert_close(
        parts["loss"], F.cross_entropy(logits, y) + 0.3 * F.mse_loss(value, y.float())
    )


def test_bad_reduction_is_an_error(batch):
    logits, y = batch
    with pytest.raises(ValueError, match="reduction"):
        focal_loss(logits, y, reduction="avg")


def test_a_loss_over_several_outputs_is_their_weighted_sum():
    """Zoom-in-Net's joint stage: `output: {scores: 1, mnet_scores: 0.5}` trains both."""
    from edgescreen.train.objectives import OBJECTIVES

    torch.manual_seed(0)
    outputs = {"scores": torch.randn(6, 5), "mnet_scores": torch.randn(6, 5)}
    target = torch.randint(0, 5, (6,))
    ce = OBJECTIVES["ce"]
    joint = ce(outputs, target, output={"scores": 1.0, "mnet_scores": 0.5})
    want = ce(outputs, target, output="scores") + 0.5 * ce(outputs, target, output="mnet_scores")
    torch.testing.assert_close(joint, want)
    with pytest.raises(ValueError, match="empty"):
        ce(outputs, target, output={})
