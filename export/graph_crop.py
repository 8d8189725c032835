"""Export views: every family as one traceable graph returning its export_outputs as a tuple.

The crop families keep their crop *inside* the graph (ArgMax, MaxPool, Resize, Reduce*,
RoiAlign: ops TensorRT and ONNX Runtime both run), so one ONNX file per precision, one
engine, one runtime path and one INT8 calibration cover them like every other family.

- Zoom-in-Net: the model's own forward (greedy peaks on the resized gated map, an s x s
  suppression window, early stop, RoiAlign crops), written to trace with a symbolic batch.
- AG-CNN: the box rule of train/models/agcnn.py (`peak_region_boxes`: the region around
  the smoothed attention peak, grown by iterated 3x3 max-pooling), which training uses too.

TF-style "SAME" convolutions (timm's tf_efficientnet_lite*) pad by an amount computed from
the input size at run time; traced, that becomes Shape/Div/Ceil/Sub arithmetic in the
graph, and ONNX Runtime's quantizer then puts Q/DQ on it and rounds the pad amounts (a
5x5 feature map came out 4x4 in INT8). The card fixes the input size, so `freeze_same_padding`
makes those pads constants before tracing.
"""

from __future__ import annotations

import torch
from torch import nn

from edgescreen.train.models import ExportView


def freeze_same_padding(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Give every dynamic-"SAME" conv the constant padding of the card's input size.

    One forward pass at `input_shape` (C, H, W) records each layer's input size (patch
    branches see their own). Returns the number of layers frozen.
    """
    import torch.nn.functional as F
    from timm.layers.conv2d_same import Conv2dSame
    from timm.layers.padding import pad_same_arg

    sizes: dict[nn.Module, tuple[int, int]] = {}

    def record(
        mod: nn.Module, args: tuple
    ) -> None:  # a pre-hook must return None (else it replaces args)
        sizes.setdefault(mod, tuple(args[0].shape[-2:]))

    hooks = [
        m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, Conv2dSame)
    ]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    for mod, size in sizes.items():
        pad = [
            int(p)
            for p in pad_same_arg(list(size), list(mod.weight.shape[-2:]), mod.stride, mod.dilation)
        ]

        def forward(x: torch.Tensor, mod: nn.Module = mod, pad: list[int] = pad) -> torch.Tensor:
            return F.conv2d(
                F.pad(x, pad), mod.weight, mod.bias, mod.stride, 0, mod.dilation, mod.groups
            )

        mod.forward = forward
    return len(sizes)


def export_view(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """The module to trace for `model`: forward(x) -> tuple in export_outputs order.

    With `input_shape` (the card's C, H, W), "SAME" padding is frozen for that size first.
    """
    if input_shape is not None:
        freeze_same_padding(model, input_shape)
    family = getattr(model, "family", None)
    if family == "zoomin":
        # ZoomInNet.forward keeps the batch symbolic itself (train/models/zoomin.py); its
        # one-image path, the single-eye fallback, is the graph: the very picking training uses.
        return ExportView(model)
    if family == "agcnn":
        return AGCNNGraph(model)
    return ExportView(model)


class _View(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(model.export_outputs)
        self.train(model.training)


class AGCNNGraph(_View):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from edgescreen.train.models.agcnn import crop_boxes, peak_region_boxes

        # The same box rule and crop the model trains with (train/models/agcnn.py).
        m = self.model
        g = m.global_forward(x)
        boxes = peak_region_boxes(g["heatmap"], m.tau, tuple(x.shape[-2:]))
        loc = m.local_forward(crop_boxes(x, boxes, m.local_size))
        result = {
            "scores": m.fusion_forward(g["global_pooled"], loc["local_pooled"]),
            "heatmap": g["heatmap"],
        }
        return tuple(result[k] for k in self.names)
