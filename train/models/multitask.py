"""Multi-task DR grading head on one backbone (APTOS 2019 top solutions).

Three views of the same ordinal label, trained jointly because each fails differently:
regression respects the order of grades, classification calibrates per-grade
probabilities, ordinal regression (K-1 cumulative logits, P(grade > k)) is robust to the
uneven spacing of grades.  Stage 2 fine-tunes with focal loss and a frozen, then unfrozen,
backbone; stage 3 trains only a linear combiner of the three heads' grade estimates into
``grade_value``, which the runtime cuts with QWK-optimal thresholds.

The losses per stage are the APTOS write-up's (train/configs/multitask-*.yaml): MAE + CE +
ordinal BCE, then MSE + categorical focal + binary focal (alpha 0.25, gamma 2), then MSE
of the combiner with dropout off.  The combiner reads the softmax's expected grade where
the write-up reads its argmax: the same information, but differentiable and not a step.
"""

from __future__ import annotations

import torch
from torch import nn

from . import register
from .backbones import Pretrained, create_backbone
from .common import class_activation_map


class MultiTaskGrader(nn.Module):
    task = "dr_grading"
    family = "multitask"
    export_outputs = {
        "scores": ("scores", "softmax"),
        "grade_value": ("grade_value", "none"),
        "heatmap": ("heatmap", "none"),
    }

    def __init__(self, backbone: nn.Module, *, num_classes: int = 5, dropout: float = 0.2) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = backbone
        c = backbone.num_features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.reg_head = nn.Linear(c, 1)
        self.cls_head = nn.Linear(c, num_classes)
        self.ord_head = nn.Linear(c, num_classes - 1)
        # Starts as the plain average of the three grade estimates, so stage 3 begins
        # no worse than an unweighted ensemble of the heads.
        self.combiner = nn.Linear(3, 1)
        with torch.no_grad():
            self.combiner.weight.fill_(1.0 / 3.0)
            self.combiner.bias.zero_()
        self.register_buffer(
            "grades", torch.arange(num_classes, dtype=torch.float32), persistent=False
        )

    def head_estimates(
        self, logits: torch.Tensor, reg: torch.Tensor, ord_logits: torch.Tensor
    ) -> torch.Tensor:
        """(N, 3): expected grade under the softmax, the regression value, sum of P(grade > k)."""
        expected = torch.softmax(logits, dim=1) @ self.grades
        ordinal = torch.sigmoid(ord_logits).sum(dim=1)
        return torch.stack([expected, reg, ordinal], dim=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap = self.backbone(x)
        feat = self.dropout(self.pool(fmap).flatten(1))
        logits = self.cls_head(feat)
        reg = self.reg_head(feat).squeeze(1)
        ord_logits = self.ord_head(feat)
        grade_value = self.combiner(self.head_estimates(logits, reg, ord_logits)).squeeze(1)
        return {
            "scores": logits,
            "grade_value": grade_value,
            "heatmap": class_activation_map(fmap, self.cls_head),
            "reg": reg,
            "ord": ord_logits,
        }

    # Stage switches: what each training stage lets move.
    def set_backbone_trainable(self, trainable: bool) -> None:
        for p in self.backbone.parameters():
            p.requires_grad_(trainable)

    def combiner_only(self) -> None:
        """Stage 3: freeze everything but the combiner."""
        for p in self.parameters():
            p.requires_grad_(False)
        for p in self.combiner.parameters():
            p.requires_grad_(True)


@register("multitask")
def multitask(
    *,
    num_classes: int = 5,
    in_chans: int = 3,
    backbone: str = "tf_efficientnet_lite0",
    pretrained: Pretrained = False,
    dropout: float = 0.2,
    tiny: bool = False,
    folds: int = 1,
) -> nn.Module:
    """Shipped DR config: tf_efficientnet_lite0 with pretrained='imagenet-lite'.

    ``tiny`` swaps in timm's 0.1M-parameter ``test_efficientnet`` for CPU tests.
    ``folds`` > 1 builds the k-fold ensemble `edgescreen train --folds K` saves: K such
    models whose outputs are averaged (``edgescreen.train.models.common.FoldEnsemble``).
    """
    if folds > 1:
        from .common import FoldEnsemble

        kwargs = dict(num_classes=num_classes, in_chans=in_chans, backbone=backbone)
        kwargs.update(pretrained=pretrained, dropout=dropout, tiny=tiny)
        return FoldEnsemble([multitask(**kwargs) for _ in range(folds)])
    name = "test_efficientnet" if tiny else backbone
    body = create_backbone(name, pretrained=pretrained, in_chans=in_chans)
    return MultiTaskGrader(body, num_classes=num_classes, dropout=dropout)
