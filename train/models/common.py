"""Small pieces several families share."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def class_activation_map(fmap: torch.Tensor, head: nn.Linear) -> torch.Tensor:
    """CAM (Zhou et al. 2016): the linear head applied at every position, ReLU'd.

    A 1x1 convolution with the head's weights, on detached features: no autograd is
    involved, so the same map comes out of the ONNX graph.  (N, C, h, w) -> (N, K, h, w).
    """
    cam = torch.einsum("nchw,kc->nkhw", fmap.detach(), head.weight.detach())
    return torch.relu(cam)


class ExportView(nn.Module):
    """``model`` with only its ``export_outputs``, as a tuple in that order.

    A dict-returning forward exports every value, training-only heads included; this
    wrapper keeps the ONNX graph to the outputs the card describes (and lets the dead
    heads be pruned from it).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(model.export_outputs)
        # Same mode as the model: exporters restore the wrapper's mode afterwards, and a
        # fresh (training-mode) wrapper would flip a model in eval mode back to training.
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(x)
        return tuple(out[k] for k in self.names)


class FoldEnsemble(nn.Module):
    """K models of one family; every output is the mean of the members' outputs."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"a fold ensemble needs at least 2 members, got {len(members)}")
        first = members[0]
        for m in members[1:]:
            if type(m) is not type(first) or m.export_outputs != first.export_outputs:
                raise ValueError("fold ensemble members must be the same family and outputs")
        self.members = nn.ModuleList(members)
        # What export and the card read off a model: the members' own.
        self.task, self.family = first.task, first.family
        self.export_outputs = dict(first.export_outputs)
        if hasattr(first, "num_classes"):
            self.num_classes = first.num_classes

    @property
    def folds(self) -> int:
        return len(self.members)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outs = [m(x) for m in self.members]
        keys = [k for k in outs[0] if all(k in o for o in outs[1:])]
        return {k: torch.stack([o[k] for o in outs]).mean(dim=0) for k in keys}
