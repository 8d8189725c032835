"""Residual Attention Network, Attention-56 and -92 (Wang et al., CVPR 2017), for OCT.

Each attention module has a trunk branch T (ordinary residual units) and a soft-mask
branch M that sees the whole module input through a bottom-up (max-pool, residual
unit) / top-down (bilinear up-sampling, added to a skip) hourglass ending in a sigmoid.
The output is H = (1 + M) * T ("attention residual learning"): M in [0, 1] can only
amplify trunk features, never zero them out, so stacking modules does not erode the
signal the way a plain M * T would.  Attention-56 has one module in each of three stages,
Attention-92 has 1, 2 and 3 (``DEPTHS``), with 3, 2, 1 down-samplings in the mask branch
as the feature map shrinks.  The names count weighted layers: 12 per module plus 20
(56 = 12 * 3 + 20, 92 = 12 * 6 + 20; the paper's "36m + 20" with m = 1 and 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import register
from .backbones import Pretrained, read_state_dict


class PreActBottleneck(nn.Module):
    """Pre-activation residual unit (He et al. 2016): BN-ReLU-conv x3, identity path clean."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        mid = max(cout // 4, 1)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.shortcut = (
            nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        # Projection shortcuts take the pre-activated input, as in the pre-act ResNet.
        identity = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + identity


class SoftMaskBranch(nn.Module):
    """Bottom-up / top-down hourglass with `depth` down-samplings; output at input size."""

    def __init__(self, channels: int, depth: int) -> None:
        super().__init__()
        self.down = PreActBottleneck(channels, channels)
        self.skip = PreActBottleneck(channels, channels) if depth > 1 else None
        self.inner = SoftMaskBranch(channels, depth - 1) if depth > 1 else None
        self.up = PreActBottleneck(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.down(F.max_pool2d(x, 3, 2, 1))
        if self.inner is not None:  # structure, not data: fixed when the module is built
            y = self.inner(y) + self.skip(y)
        y = self.up(y)
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class AttentionModule(nn.Module):
    """p=1 pre units, t=2 trunk units, r=1 unit per mask level, p=1 post unit (Attention-56)."""

    def __init__(self, channels: int, mask_depth: int) -> None:
        super().__init__()
        self.pre = PreActBottleneck(channels, channels)
        self.trunk = nn.Sequential(
            PreActBottleneck(channels, channels), PreActBottleneck(channels, channels)
        )
        self.mask_branch = SoftMaskBranch(channels, mask_depth)
        # Two 1x1 convs then a sigmoid: a per-channel, per-position gate in [0, 1].
        self.mask_head = nn.Sequential(
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1),
            nn.Sigmoid(),
        )
        self.post = PreActBottleneck(channels, channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pre(x)
        trunk = self.trunk(x)
        mask = self.mask_head(self.mask_branch(x))
        return self.post((1 + mask) * trunk), mask


class ResidualAttentionNet(nn.Module):
    task = "oct_classification"
    family = "ran"
    export_outputs = {"scores": ("scores", "softmax"), "heatmap": ("heatmap", "none")}

    def __init__(
        self,
        *,
        num_classes: int = 4,
        in_chans: int = 1,
        stem: int = 64,
        widths: tuple[int, int, int, int] = (256, 512, 1024, 2048),
        modules_per_stage: tuple[int, int, int] = (1, 1, 1),
        mask_depths: tuple[int, int, int] = (3, 2, 1),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem, 7, 2, 3, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        stages: list[nn.ModuleList] = []
        cin = stem
        for i in range(3):
            # First stage keeps resolution (the max pool already halved it); later ones stride 2.
            units: list[nn.Module] = [PreActBottleneck(cin, widths[i], stride=1 if i == 0 else 2)]
            units += [
                AttentionModule(widths[i], mask_depths[i]) for _ in range(modules_per_stage[i])
            ]
            stages.append(nn.ModuleList(units))
            cin = widths[i]
        self.stages = nn.ModuleList(stages)
        self.tail = nn.Sequential(
            PreActBottleneck(cin, widths[3], stride=2),
            PreActBottleneck(widths[3], widths[3]),
            PreActBottleneck(widths[3], widths[3]),
            nn.BatchNorm2d(widths[3]),
            nn.ReLU(inplace=True),
        )
        self.num_features = widths[3]
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        mask = x.new_zeros(())
        for stage in self.stages:
            x = stage[0](x)
            for module in stage[1:]:
                x, mask = module(x)
        x = self.tail(x)
        logits = self.fc(self.dropout(x.mean(dim=(2, 3))))
        # The deepest soft mask, averaged over channels: where the network amplified features.
        heatmap = mask.detach().mean(dim=1, keepdim=True)
        return {"scores": logits, "heatmap": heatmap}


# Attention modules per stage of the paper's ImageNet networks (its Table 2).
DEPTHS: dict[int, tuple[int, int, int]] = {56: (1, 1, 1), 92: (1, 2, 3)}


@register("ran")
def ran(
    *,
    num_classes: int = 4,
    in_chans: int = 1,
    pretrained: Pretrained = False,
    tiny: bool = False,
    dropout: float = 0.0,
    depth: int = 56,
    modules_per_stage: tuple[int, int, int] | list[int] | None = None,
) -> ResidualAttentionNet:
    """Attention-56 (~32M params with ImageNet's 1000 classes) or, ``depth=92``,
    Attention-92 (~52M); ``modules_per_stage`` sets the three stages' module counts
    directly.  ``tiny`` keeps the topology at 1/16 width for CPU tests.

    Trained from scratch (no hub weights exist for it); ``pretrained`` may be a local
    state-dict file of this same network.
    """
    if pretrained is True or pretrained == "imagenet-lite":
        raise ValueError("ran has no ImageNet weights; pass a local state-dict path or False")
    if modules_per_stage is None:
        if depth not in DEPTHS:
            raise ValueError(
                f"depth must be one of {', '.join(map(str, DEPTHS))} (or give modules_per_stage), "
                f"not {depth!r}"
            )
        modules_per_stage = DEPTHS[depth]
    modules = tuple(int(m) for m in modules_per_stage)
    if len(modules) != 3 or min(modules) < 1:
        raise ValueError(f"modules_per_stage must be three counts >= 1, not {modules_per_stage!r}")
    if tiny:
        model = ResidualAttentionNet(
            num_classes=num_classes,
            in_chans=in_chans,
            stem=8,
            widths=(16, 32, 64, 128),
            modules_per_stage=modules,
            dropout=dropout,
        )
    else:
        model = ResidualAttentionNet(
            num_classes=num_classes, in_chans=in_chans, modules_per_stage=modules, dropout=dropout
        )
    if pretrained:
        model.load_state_dict(read_state_dict(pretrained))
    return model
