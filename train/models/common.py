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


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
