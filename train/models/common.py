"""Small pieces several families share."""

from __future__ import annotations

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
