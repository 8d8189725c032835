"""M²CNN: multi-cell, multi-task CNN for DR grading (Zhou et al., EMBC 2018).

Small lesions (microaneurysms) need high resolution, but a deep network trained at high
resolution from scratch converges slowly.  The multi-cell scheme trains Inception-ResNet-v2
at 224 px, then grows it stage by stage: each larger input (448, 720 px) passes through one
more added Reduction Cell-B + Normal Cell-C (the cells of Inception-ResNet-v2 itself), so the
last feature map stays about 5x5 (224: 5x5; 448: 12x12 -> 5x5; 720: 21x21 -> 10x10 -> 4x4,
the slides' numbers), and the grown network starts from the previous stage's weights.

The added cells start so that the grown network is its parent followed by a 3x3/2 max
pool per added cell: a Reduction Cell-B's max-pool branch carries the parent's features,
the head sees only those (its weights for the new conv-branch channels start at zero) and a
Normal Cell-C's residual projection starts at zero (identity on post-ReLU input).  So
training a new stage resumes from what the last one learnt instead of re-learning.

Every cell has two heads, softmax classification and MSE regression of the grade, trained
with CE + lambda * MSE (``edgescreen.train.losses.m2cnn_loss``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import register
from .backbones import Pretrained, read_state_dict
from .common import class_activation_map

# Input size of each cell (training stage); cell k has k added Reduction-B groups.
FULL_CELLS = (224, 448, 720)
TINY_CELLS = (80, 160, 256)

# Branch specs of Inception-ResNet-v2 (Szegedy et al., AAAI 2017, Figs. 3, 7, 10, 16-19;
# the widths of timm's / TF-slim's inception_resnet_v2).  A branch is a chain of
# (output channels, kernel, stride); every conv is conv-BN-ReLU.
Branch = tuple[tuple[int, int | tuple[int, int], int], ...]
MIXED_5B: tuple[Branch, ...] = (
    ((96, 1, 1),),
    ((48, 1, 1), (64, 5, 1)),
    ((64, 1, 1), (96, 3, 1), (96, 3, 1)),
)  # + 3x3 average pool -> 1x1 conv 64
CELL_A: tuple[Branch, ...] = (
    ((32, 1, 1),),
    ((32, 1, 1), (32, 3, 1)),
    ((32, 1, 1), (48, 3, 1), (64, 3, 1)),
)
REDUCTION_A: tuple[Branch, ...] = (((384, 3, 2),), ((256, 1, 1), (256, 3, 1), (384, 3, 2)))
CELL_B: tuple[Branch, ...] = (((192, 1, 1),), ((128, 1, 1), (160, (1, 7), 1), (192, (7, 1), 1)))
REDUCTION_B: tuple[Branch, ...] = (
    ((256, 1, 1), (384, 3, 2)),
    ((256, 1, 1), (288, 3, 2)),
    ((256, 1, 1), (288, 3, 1), (320, 3, 2)),
)
CELL_C: tuple[Branch, ...] = (((192, 1, 1),), ((192, 1, 1), (224, (1, 3), 1), (256, (3, 1), 1)))
RESIDUAL_SCALE = {"a": 0.17, "b": 0.10, "c": 0.20}  # damps each residual (paper, sec. 3.3)
FEATURES = 1536  # the 1x1 conv after the last Inception-ResNet-C cell


def _ch(n: int, width: float) -> int:
    return max(1, round(n * width))


def _pad(kernel: int | tuple[int, int], padded: bool) -> int | tuple[int, int]:
    if not padded:
        return 0
    return (kernel[0] // 2, kernel[1] // 2) if isinstance(kernel, tuple) else kernel // 2


class ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, padding, bias=False),
            nn.BatchNorm2d(cout, eps=1e-3),
            nn.ReLU(inplace=True),
        )


def _chain(cin: int, spec: Branch, width: float, same: bool) -> tuple[nn.Sequential, int]:
    """One branch.  Stride-1 convs keep the size; stride-2 ones are 'valid' as in the
    paper unless ``same`` (the tiny variant pads them, so small inputs still fit)."""
    layers = []
    for cout, kernel, stride in spec:
        cout = _ch(cout, width)
        layers.append(ConvBN(cin, cout, kernel, stride, _pad(kernel, stride == 1 or same)))
        cin = cout
    return nn.Sequential(*layers), cin


class ResidualCell(nn.Module):
    """Inception-ResNet normal cell (A, B or C): parallel branches, concatenated, a linear
    1x1 projection back to the input width, scaled, added to the input, then ReLU."""

    def __init__(
        self, channels: int, branches: tuple[Branch, ...], *, scale: float, width: float
    ) -> None:
        super().__init__()
        chains = [_chain(channels, spec, width, True) for spec in branches]
        self.branches = nn.ModuleList(c for c, _ in chains)
        self.project = nn.Conv2d(sum(c for _, c in chains), channels, 1)
        self.scale = scale
        self.relu = True

    def zero_init(self) -> ResidualCell:
        """Projection = 0: the cell is the identity on non-negative (post-ReLU) input."""
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x + self.scale * self.project(torch.cat([b(x) for b in self.branches], 1))
        return F.relu(out) if self.relu else out


class ConcatCell(nn.Module):
    """Inception mixing cell: conv branches and a pooling branch, concatenated.

    ``stride=2`` makes it a reduction cell (Reduction-A/B: max pool, no conv after it, so the
    input's channels pass through and the width grows by the conv branches' outputs)."""

    def __init__(
        self,
        cin: int,
        branches: tuple[Branch, ...],
        *,
        width: float,
        same: bool,
        stride: int = 2,
        pool_conv: int | None = None,
    ) -> None:
        super().__init__()
        chains = [_chain(cin, spec, width, same) for spec in branches]
        self.branches = nn.ModuleList(c for c, _ in chains)
        if stride == 2:
            self.pool: nn.Module = nn.MaxPool2d(3, 2, padding=1 if same else 0)
            pooled = cin
        else:  # Mixed-5b: 3x3 average pool, then a 1x1 conv
            pooled = _ch(pool_conv or cin, width)
            self.pool = nn.Sequential(
                nn.AvgPool2d(3, 1, 1, count_include_pad=False), ConvBN(cin, pooled, 1)
            )
        self.conv_channels = sum(c for _, c in chains)
        self.out_channels = self.conv_channels + pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches] + [self.pool(x)], 1)


def normal_cell_c(channels: int, width: float) -> ResidualCell:
    """Inception-ResNet-C (the slides' Normal Cell-C): 1x1 | 1x1-1x3-3x1, scale 0.2."""
    return ResidualCell(channels, CELL_C, scale=RESIDUAL_SCALE["c"], width=width)


def reduction_cell_b(channels: int, width: float, same: bool) -> ConcatCell:
    """Reduction-B (the slides' Reduction Cell-B): 1x1-3x3/2 | 1x1-3x3/2 | 1x1-3x3-3x3/2 |
    3x3/2 max pool, concatenated."""
    return ConcatCell(channels, REDUCTION_B, width=width, same=same)


class Stem(nn.Sequential):
    """Inception-ResNet-v2 stem (its Fig. 14 as implemented by TF-slim / timm), then
    Mixed-5b: 299 px -> 35x35x320.  ``pools=1`` drops the second max pool (tiny)."""

    def __init__(self, in_chans: int, width: float, same: bool, pools: int) -> None:
        c = [_ch(n, width) for n in (32, 32, 64, 80, 192)]
        layers = [
            ConvBN(in_chans, c[0], 3, 2, 1 if same else 0),
            ConvBN(c[0], c[1], 3, 1, 1 if same else 0),
            ConvBN(c[1], c[2], 3, 1, 1),
            nn.MaxPool2d(3, 2, 1 if same else 0),
            ConvBN(c[2], c[3], 1),
            ConvBN(c[3], c[4], 3, 1, 1 if same else 0),
        ]
        if pools == 2:
            layers.append(nn.MaxPool2d(3, 2, 1 if same else 0))
        mixed = ConcatCell(c[4], MIXED_5B, width=width, same=same, stride=1, pool_conv=64)
        super().__init__(*layers, mixed)
        self.out_channels = mixed.out_channels


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
        width: float = 1.0,
        repeats: tuple[int, int, int] = (10, 20, 10),
        cells: tuple[int, ...] = FULL_CELLS,
        normal_cells: int = 1,
        same: bool = False,
        stem_pools: int = 2,
        cell: int = 0,
    ) -> None:
        """``width`` scales every Inception-ResNet-v2 channel count, ``repeats`` are the
        A/B/C normal cells of the base network (10/20/10 in the paper's code), ``cells`` the
        input size of each training stage, ``normal_cells`` the Normal Cell-C per added
        Reduction Cell-B.  ``same`` pads stride-2 convs and ``stem_pools=1`` halves the
        stem's stride: both only so the tiny variant fits small inputs."""
        super().__init__()
        if not 0 <= cell < len(cells):
            raise ValueError(f"cell must be in 0..{len(cells) - 1}, not {cell}")
        self.config = dict(
            num_classes=num_classes,
            in_chans=in_chans,
            width=width,
            repeats=tuple(repeats),
            cells=tuple(cells),
            normal_cells=normal_cells,
            same=same,
            stem_pools=stem_pools,
        )
        self.cell = cell
        self.input_size = cells[cell]
        self.stem = Stem(in_chans, width, same, stem_pools)
        c = self.stem.out_channels
        layers: list[nn.Module] = []
        layers += [
            ResidualCell(c, CELL_A, scale=RESIDUAL_SCALE["a"], width=width)
            for _ in range(repeats[0])
        ]
        layers.append(ConcatCell(c, REDUCTION_A, width=width, same=same))
        c = layers[-1].out_channels
        layers += [
            ResidualCell(c, CELL_B, scale=RESIDUAL_SCALE["b"], width=width)
            for _ in range(repeats[1])
        ]
        layers.append(reduction_cell_b(c, width, same))
        c = layers[-1].out_channels
        layers += [normal_cell_c(c, width) for _ in range(repeats[2])]
        layers[-1].relu = False  # as in the paper's code: the last C cell is linear ...
        layers.append(ConvBN(c, _ch(FEATURES, width), 1))  # ... before the 1x1 conv
        self.body = nn.Sequential(*layers)
        c = _ch(FEATURES, width)
        # The multi-cell part: one Reduction Cell-B + Normal Cell-C group per later stage.
        added = []
        for _ in range(cell):
            reduction = reduction_cell_b(c, width, same)
            c = reduction.out_channels
            added.append(
                nn.Sequential(reduction, *(normal_cell_c(c, width) for _ in range(normal_cells)))
            )
        self.cells = nn.Sequential(*added)
        self.num_features = c
        self.cls_head = nn.Linear(c, num_classes)
        self.reg_head = nn.Linear(c, 1)
        # He init keeps activations at unit scale through the ~100 convolutions (PyTorch's
        # default shrinks them layer by layer): trains from scratch, and outputs are not
        # so small that export's relative parity check measures only rounding.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def depth(self) -> int:
        """Number of cells (normal and reduction), base network and added ones."""
        kinds = (ResidualCell, ConcatCell)
        return sum(isinstance(m, kinds) for m in self.modules())

    def grow(self) -> M2CNN:
        """The next cell (see the module function ``grow``); a method so a training
        config's stage hook (``before: grow``) can call it by name."""
        return grow(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map, (N, num_features, h, w): about 5x5 at the cell's size."""
        return self.cells(self.body(self.stem(x)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap = self.features(x)
        feat = fmap.mean(dim=(2, 3))
        return {
            "scores": self.cls_head(feat),
            "grade_value": self.reg_head(feat).squeeze(1),
            "heatmap": class_activation_map(fmap, self.cls_head),
        }


def grow(model: M2CNN) -> M2CNN:
    """The next cell: the same network plus one Reduction Cell-B + Normal Cell-C group,
    for a larger input size.

    Every parent weight is copied.  The new group starts as a 3x3/2 max pool of the parent's
    features (Normal Cell-C projection zero, head weights of the new conv-branch channels
    zero), so the grown model's outputs equal the parent's head applied to the max-pooled
    parent feature map.  The returned model is in the same train/eval mode and on the same
    device.
    """
    cells = model.config["cells"]
    if model.cell + 1 >= len(cells):
        raise ValueError(f"model is already the last cell ({model.cell + 1} of {len(cells)})")
    device = next(model.parameters()).device
    new = M2CNN(**model.config, cell=model.cell + 1).to(device)
    parent = model.state_dict()
    heads = ("cls_head.", "reg_head.")
    missing, unexpected = new.load_state_dict(
        {k: v for k, v in parent.items() if not k.startswith(heads)}, strict=False
    )
    fresh = f"cells.{model.cell}."
    assert not unexpected and all(k.startswith(fresh) or k.startswith(heads) for k in missing)
    group = new.cells[model.cell]
    for normal in group[1:]:
        normal.zero_init()
    new_channels = group[0].conv_channels  # concatenated before the pooled parent channels
    with torch.no_grad():
        for name in ("cls_head", "reg_head"):
            old, head = getattr(model, name), getattr(new, name)
            head.weight.zero_()
            head.weight[:, new_channels:] = old.weight
            head.bias.copy_(old.bias)
    return new.train(model.training)


@register("m2cnn")
def m2cnn(
    *,
    num_classes: int = 5,
    in_chans: int = 3,
    pretrained: Pretrained = False,
    tiny: bool = False,
    cell: int = 0,
    normal_cells: int = 1,
) -> M2CNN:
    """Cell ``cell`` (0-based) of M²CNN: Inception-ResNet-v2 (~54M parameters) at
    224/448/720 px; ``tiny`` keeps the cell structure at 1/8 width with one normal cell of
    each kind, padded stride-2 convs and a stride-16 network, at 80/160/256 px
    (last feature map 5x5, 5x5, 4x4 like the full model's).

    Building cell k directly gives random weights; train cell 0 and ``grow`` it instead.
    ``pretrained`` may be a local state dict of the same cell.
    """
    if pretrained is True or pretrained == "imagenet-lite":
        raise ValueError("m2cnn is trained from scratch; pass a local state-dict path or False")
    if tiny:
        model = M2CNN(
            num_classes=num_classes,
            in_chans=in_chans,
            width=1 / 8,
            repeats=(1, 1, 1),
            cells=TINY_CELLS,
            normal_cells=normal_cells,
            same=True,
            stem_pools=1,
            cell=cell,
        )
    else:
        model = M2CNN(
            num_classes=num_classes, in_chans=in_chans, normal_cells=normal_cells, cell=cell
        )
    if pretrained:
        model.load_state_dict(read_state_dict(pretrained))
    return model
