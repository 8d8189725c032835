"""Export views: every family as one traceable graph returning its export_outputs as a tuple.

The crop families keep their crop *inside* the graph (ArgMax, MaxPool, Resize, Reduce*,
RoiAlign: ops TensorRT and ONNX Runtime both run), so one ONNX file per precision, one
engine, one runtime path and one INT8 calibration cover them like every other family.

- Zoom-in-Net: the same greedy top-n peak picking and patch crop as training, rewritten
  with the batch size kept symbolic (training code uses ``len(x)``, which tracing freezes).
  Identical outputs.
- AG-CNN: training boxes the *largest* 8-connected region of the up-sampled thresholded
  heat map with OpenCV. In the graph the region is the one holding the attention peak,
  grown from the peak by iterated 3x3 max-pooling restricted to the thresholded low-res
  map (h*w steps bound any region's geodesic diameter); its box is read on the up-sampled
  map, masked to that region dilated by one cell. See export/README.md for the measured gap.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgescreen.train.models import ExportView


def export_view(model: nn.Module) -> nn.Module:
    """The module to trace for `model`: forward(x) -> tuple in export_outputs order."""
    family = getattr(model, "family", None)
    if family == "zoomin":
        return ZoomInGraph(model)
    if family == "agcnn":
        return AGCNNGraph(model)
    return ExportView(model)


def _batch_index(like: torch.Tensor) -> torch.Tensor:
    """(N,) float 0..N-1 built from a tensor, so the batch size stays symbolic when traced."""
    return torch.ones_like(like.reshape(like.shape[0], -1)[:, 0]).cumsum(0) - 1


class _View(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(model.export_outputs)
        self.train(model.training)


class ZoomInGraph(_View):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.model
        out = m.mnet_anet_forward(x)
        gated = out["gated"]
        H, W = x.shape[-2:]
        h, w = gated.shape[-2:]
        sy, sx = int(H) / int(h), int(W) / int(w)
        window = max(1, math.ceil(m.patch_size / max(sy, sx)))
        lesion = gated[:, 1:].amax(dim=1) if gated.shape[1] > 1 else gated[:, 0]
        scores = lesion.flatten(1)
        yy = torch.arange(int(h), device=x.device).repeat_interleave(int(w))
        xx = torch.arange(int(w), device=x.device).repeat(int(h))
        ninf = torch.full_like(scores, float("-inf"))
        picks = []
        for _ in range(m.num_patches):
            idx = scores.argmax(dim=1, keepdim=True)
            py, px = idx // int(w), idx % int(w)
            picks.append(torch.cat([py, px], dim=1))
            near = ((yy[None] - py).abs() < window) & ((xx[None] - px).abs() < window)
            scores = torch.where(near, ninf, scores)
        centres = (torch.stack(picks, dim=1).to(x.dtype) + 0.5) * torch.tensor([sy, sx], dtype=x.dtype)
        n, half = m.num_patches, m.patch_size / 2
        index = _batch_index(x)[:, None].expand(-1, n).reshape(-1)
        cy, cx = centres[..., 0].reshape(-1), centres[..., 1].reshape(-1)
        rois = torch.stack([index, cx - half, cy - half, cx + half, cy + half], dim=1)
        from torchvision.ops import roi_align

        patches = roi_align(x, rois, output_size=(m.patch_size, m.patch_size), spatial_scale=1.0,
                            sampling_ratio=1, aligned=True)
        feats = m.cnet(patches).mean(dim=(2, 3))
        cnet_pooled = feats.reshape(-1, n, feats.shape[-1]).amax(dim=1)
        result = {"scores": m.fusion_forward(out["mnet_pooled"], cnet_pooled), "heatmap": out["attention"]}
        return tuple(result[k] for k in self.names)


def peak_region_boxes(heat: torch.Tensor, tau: float, image_size: tuple[int, int]) -> torch.Tensor:
    """(N, 1, h, w) heat in [0, 1] -> (N, 4) float boxes (x0, y0, x1, y1), x1/y1 exclusive.

    Traceable: the region holding the peak, grown on the low-res map; a flat map (no pixel
    above tau) gets the whole image, as in training.
    """
    H, W = (int(v) for v in image_size)
    h, w = (int(v) for v in heat.shape[-2:])
    mask = (heat >= tau).to(heat.dtype)
    flat = heat.flatten(1)
    seed = (flat >= flat.amax(dim=1, keepdim=True)).to(heat.dtype).view_as(heat) * mask
    region = seed
    for _ in range(max(1, h * w - 1)):
        region = F.max_pool2d(region, 3, stride=1, padding=1) * mask
    near = F.max_pool2d(region, 3, stride=1, padding=1)  # bilinear spills up to one cell out
    up = F.interpolate(heat, size=(H, W), mode="bilinear", align_corners=False)
    keep = (up >= tau) & (F.interpolate(near, size=(H, W), mode="nearest") > 0)
    keep = keep[:, 0]
    rows, cols = keep.any(dim=2), keep.any(dim=1)  # (N, H), (N, W)
    ys = torch.arange(H, dtype=heat.dtype, device=heat.device)
    xs = torch.arange(W, dtype=heat.dtype, device=heat.device)
    big = torch.tensor(float(max(H, W) + 1), dtype=heat.dtype)
    y0 = torch.where(rows, ys, big).amin(dim=1)
    y1 = torch.where(rows, ys, -big).amax(dim=1) + 1
    x0 = torch.where(cols, xs, big).amin(dim=1)
    x1 = torch.where(cols, xs, -big).amax(dim=1) + 1
    empty = ~rows.any(dim=1)
    zero = torch.zeros_like(y0)
    return torch.stack([torch.where(empty, zero, x0), torch.where(empty, zero, y0),
                        torch.where(empty, zero + W, x1), torch.where(empty, zero + H, y1)], dim=1)


class AGCNNGraph(_View):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from torchvision.ops import roi_align

        m = self.model
        g = m.global_forward(x)
        boxes = peak_region_boxes(g["heatmap"], m.tau, tuple(x.shape[-2:]))
        rois = torch.cat([_batch_index(x)[:, None], boxes], dim=1)
        crop = roi_align(x, rois, output_size=(m.local_size, m.local_size), spatial_scale=1.0,
                         sampling_ratio=2, aligned=True)
        loc = m.local_forward(crop)
        result = {"scores": m.fusion_forward(g["global_pooled"], loc["local_pooled"]), "heatmap": g["heatmap"]}
        return tuple(result[k] for k in self.names)
