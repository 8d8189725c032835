"""M²CNN: multi-cell, multi-task CNN for DR grading (Zhou et al., EMBC 2018).

Small lesions (microaneurysms) need high resolution, but a deep network trained at high
resolution from scratch converges slowly.  The multi-cell scheme trains a shallow
network at low resolution, then repeatedly grows it: the next cell adds depth and is
trained on larger inputs, starting from the previous cell's weights.  New residual blocks
start as exact identities (their last BN scale is zero), so a grown network computes the
same function as its parent and training resumes where it left off instead of
re-learning.  Every cell has two heads, softmax classification and MSE regression of the
grade, trained with CE + lambda * MSE (``edgescreen.train.losses.m2cnn_loss``).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from . import register
from .backbones import Pretrained, read_state_dict
from .common import class_activation_map

FULL_CELLS = ((224, 1), (448, 2), (720, 3))  # (input size, blocks per group)
TINY_CELLS = ((64, 1), (96, 2), (128, 3))


class BasicBlock(nn.Module):
    """ResNet basic block; ``zero_init`` makes it the identity on non-negative inputs."""

    def __init__(self, cin: int, cout: int, stride: int = 1, *, zero_init: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )
        if zero_init:
            # Residual branch outputs 0 and the input is post-ReLU (>= 0), so
            # relu(x + 0) == x: the block is an exact identity until it is trained.
            nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.down is None else self.down(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


class M2CNN(nn.Module):
    task = "dr_grading"
    family = "m2cnn"
    export_outputs = {
        "scores": ("scores", "softmax"),
        "grade_value": ("grade_value", "none"),
        "heatmap": ("heatmap", "none"),
    }

    def __init__(
        self,
        *,
        num_classes: int = 5,
        in_chans: int = 3,
        widths: tuple[int, ...] = (64, 128, 256, 512),
        cells: tuple[tuple[int, int], ...] = FULL_CELLS,
        cell: int = 0,
    ) -> None:
        super().__init__()
        self.config = dict(num_classes=num_classes, in_chans=in_chans, widths=widths, cells=cells)
        self.cell = cell
        self.input_size, depth = cells[cell]
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], 7, 2, 3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        groups = []
        cin = widths[0]
        for i, w in enumerate(widths):
            blocks = [BasicBlock(cin, w, 1 if i == 0 else 2)]
            blocks += [BasicBlock(w, w) for _ in range(depth - 1)]
            groups.append(nn.Sequential(*blocks))
            cin = w
        self.groups = nn.Sequential(*groups)
        self.num_features = cin
        self.cls_head = nn.Linear(cin, num_classes)
        self.reg_head = nn.Linear(cin, 1)

    @property
    def depth(self) -> int:
        """Number of residual blocks."""
        return sum(len(g) for g in self.groups)

    def grow(self) -> M2CNN:
        """The next cell (see the module function ``grow``); a method so a training
        config's stage hook (``before: grow``) can call it by name."""
        return grow(self)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap = self.groups(self.stem(x))
        feat = fmap.mean(dim=(2, 3))
        return {
            "scores": self.cls_head(feat),
            "grade_value": self.reg_head(feat).squeeze(1),
            "heatmap": class_activation_map(fmap, self.cls_head),
        }


def grow(model: M2CNN) -> M2CNN:
    """The next cell: one more (identity-initialised) block per group, a larger input size.

    Shared layers are copied; the returned model is in the same train/eval mode.  On the
    same input it reproduces ``model``'s outputs exactly (up to float rounding).
    """
    cells = model.config["cells"]
    if model.cell + 1 >= len(cells):
        raise ValueError(f"model is already the last cell ({model.cell + 1} of {len(cells)})")
    new = M2CNN(**model.config, cell=model.cell + 1)
    new.stem = copy.deepcopy(model.stem)
    new.cls_head = copy.deepcopy(model.cls_head)
    new.reg_head = copy.deepcopy(model.reg_head)
    for old_group, new_group in zip(model.groups, new.groups, strict=True):
        for i, block in enumerate(new_group):
            if i < len(old_group):
                new_group[i] = copy.deepcopy(old_group[i])
            else:
                nn.init.zeros_(block.bn2.weight)
    return new.train(model.training)


@register("m2cnn")
def m2cnn(
    *,
    num_classes: int = 5,
    in_chans: int = 3,
    pretrained: Pretrained = False,
    tiny: bool = False,
    cell: int = 0,
) -> M2CNN:
    """Cell ``cell`` (0-based) of M²CNN: 224/448/720 px full size, 64/96/128 px tiny.

    Building cell k directly gives random weights; train cell 0 and ``grow`` it instead.
    ``pretrained`` may be a local state dict of the same cell.
    """
    if pretrained is True or pretrained == "imagenet-lite":
        raise ValueError("m2cnn is trained from scratch; pass a local state-dict path or False")
    widths = (8, 16, 32, 64) if tiny else (64, 128, 256, 512)
    model = M2CNN(
        num_classes=num_classes,
        in_chans=in_chans,
        widths=widths,
        cells=TINY_CELLS if tiny else FULL_CELLS,
        cell=cell,
    )
    if pretrained:
        model.load_state_dict(read_state_dict(pretrained))
    return model
