"""AG-CNN: attention-guided CNN for chest X-ray findings (Guan et al. 2018).

A global branch reads the whole radiograph; its last feature map, reduced to a heat map
(channel-wise max of |f|), is thresholded and its main region boxed (see
``peak_region_boxes``: the paper's largest connected region, made exportable).  A
local branch re-reads that box cropped from the *input image* at full resolution, so
small findings (nodules) are no longer averaged away by the global view; a fusion
branch classifies the two branches' pooled features together.  Training has three
stages (``set_stage``): global, then local with global frozen, then fusion alone.

The box and the crop (RoiAlign) are tensor ops, so the whole forward pass, crop included,
exports as one graph (export/graph_crop.py); the branches stay separately callable
(``global_forward``, ``local_forward``, ``fusion_forward``) for staged training.

Branches are ResNet-50, as in the paper (``backbone="densenet121"`` is the other common
choice). Stage I fine-tunes ImageNet weights when a local file is given
(``pretrained=PATH``, timm/torchvision key layout; no hub is reachable); without one the
model trains from scratch and the card's ``data_manifest.training.initial_weights`` says so.

Outputs: 14, not the paper's 15. The paper's 15th dimension is "No Finding", which in NIH
labels is exactly "none of the 14" (the loaders encode it as the all-zero vector and refuse
it combined with a finding), so it carries no label the 14 do not. The runtime's
``cxr_findings`` task reads every ``scores`` column as a finding with its own threshold:
``labels`` are the 14 NIH findings, a positive column means "refer", and the headline
metric is the mean AUROC over those 14 (the paper reports the same 14-class mean). A
15th exported column would be a "finding" that asks for referral when the film is
normal, and would enter the mean AUROC; "no finding" is what the runtime already reports
when no column crosses its threshold (decision "none").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from . import register
from .backbones import Pretrained, create_backbone


def attention_heat(fmap: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) features -> (N, 1, h, w) in [0, 1]: max_k |f_k|, min-max normalised per image.

    Idempotent on an already-normalised (N, 1, h, w) map, so the box helpers accept either.
    """
    heat = fmap.detach().abs().amax(dim=1, keepdim=True)
    lo = heat.amin(dim=(2, 3), keepdim=True)
    hi = heat.amax(dim=(2, 3), keepdim=True)
    return (heat - lo) / (hi - lo).clamp_min(1e-12)


def peak_region_boxes(heat: torch.Tensor, tau: float, image_size: tuple[int, int]) -> torch.Tensor:
    """(N, 1, h, w) heat in [0, 1] -> (N, 4) float boxes (x0, y0, x1, y1) in input pixels, x1/y1 exclusive.

    The paper boxes the largest connected region above tau. Connected-component labelling
    is not an ONNX/TensorRT op, so the region is grown instead, on the low-res map, from the
    peak of the 3x3-smoothed heat (which sits in the biggest, densest blob) by repeated 3x3
    max-pooling restricted to the mask: ArgMax, MaxPool, Resize and Reduce only, so training
    and the exported graph use this one rule. A map with nothing above tau boxes the image.
    """
    H, W = (int(v) for v in image_size)
    h, w = (int(v) for v in heat.shape[-2:])
    mask = (heat >= tau).to(heat.dtype)
    cells = torch.arange(h * w, device=heat.device)

    def one_hot_peak(m: torch.Tensor) -> torch.Tensor:
        return (
            (cells[None] == m.flatten(1).argmax(dim=1, keepdim=True)).to(heat.dtype).view_as(heat)
        )

    smooth_seed = (
        one_hot_peak(F.avg_pool2d(heat, 3, stride=1, padding=1, count_include_pad=False)) * mask
    )
    raw_seed = one_hot_peak(heat) * mask
    use_smooth = smooth_seed.flatten(1).amax(dim=1).view(-1, 1, 1, 1) > 0
    region = torch.where(use_smooth, smooth_seed, raw_seed)
    for _ in range(max(1, h * w - 1)):  # a path through the mask is at most h*w - 1 steps long
        region = F.max_pool2d(region, 3, stride=1, padding=1) * mask
    near = F.max_pool2d(region, 3, stride=1, padding=1)  # bilinear spills up to one cell out
    up = F.interpolate(heat, size=(H, W), mode="bilinear", align_corners=False)
    keep = ((up >= tau) & (F.interpolate(near, size=(H, W), mode="nearest") > 0))[:, 0]
    rows, cols = keep.any(dim=2), keep.any(dim=1)  # (N, H), (N, W)
    ys = torch.arange(H, dtype=heat.dtype, device=heat.device)
    xs = torch.arange(W, dtype=heat.dtype, device=heat.device)
    big = torch.tensor(float(max(H, W) + 1), dtype=heat.dtype, device=heat.device)
    y0 = torch.where(rows, ys, big).amin(dim=1)
    y1 = torch.where(rows, ys, -big).amax(dim=1) + 1
    x0 = torch.where(cols, xs, big).amin(dim=1)
    x1 = torch.where(cols, xs, -big).amax(dim=1) + 1
    empty = ~rows.any(dim=1)
    zero = torch.zeros_like(y0)
    return torch.stack(
        [
            torch.where(empty, zero, x0),
            torch.where(empty, zero, y0),
            torch.where(empty, zero + W, x1),
            torch.where(empty, zero + H, y1),
        ],
        dim=1,
    )


@torch.no_grad()
def attention_boxes(
    fmap: torch.Tensor, tau: float = 0.7, *, image_size: tuple[int, int]
) -> torch.Tensor:
    """(N, C, h, w) features (or heat maps) -> (N, 4) long boxes (x0, y0, x1, y1) in input pixels."""
    return peak_region_boxes(attention_heat(fmap), tau, image_size).long()


def attention_box(
    fmap: torch.Tensor, tau: float = 0.7, *, image_size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """One image's (C, h, w) features or (h, w) heat map -> (x0, y0, x1, y1) in input pixels."""
    if fmap.dim() == 2:
        fmap = fmap.unsqueeze(0)
    x0, y0, x1, y1 = attention_boxes(fmap.unsqueeze(0), tau, image_size=image_size)[0].tolist()
    return x0, y0, x1, y1


def crop_boxes(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each image's box and resize it to size x size (bilinear, averaged when shrinking)."""
    # Batch index built from the tensor, not len(): keeps the batch size dynamic when traced.
    index = torch.ones_like(images.reshape(images.shape[0], -1)[:, :1]).cumsum(0) - 1
    rois = torch.cat([index, boxes.to(images.dtype)], dim=1)
    return roi_align(
        images, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True
    )


class AGCNN(nn.Module):
    task = "cxr_findings"
    family = "agcnn"
    export_outputs = {"scores": ("scores", "sigmoid"), "heatmap": ("heatmap", "none")}

    def __init__(
        self,
        global_backbone: nn.Module,
        local_backbone: nn.Module,
        *,
        num_classes: int = 14,
        tau: float = 0.7,
        local_size: int = 224,
    ) -> None:
        super().__init__()
        self.tau = tau
        self.local_size = local_size
        self.global_backbone = global_backbone
        self.local_backbone = local_backbone
        self.global_head = nn.Linear(global_backbone.num_features, num_classes)
        self.local_head = nn.Linear(local_backbone.num_features, num_classes)
        self.fusion_head = nn.Linear(
            global_backbone.num_features + local_backbone.num_features, num_classes
        )

    # Max pooling, as in the paper: a finding is present if it is present anywhere.
    @staticmethod
    def _pool(fmap: torch.Tensor) -> torch.Tensor:
        return fmap.amax(dim=(2, 3))

    def global_forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap = self.global_backbone(x)
        pooled = self._pool(fmap)
        return {
            "global_scores": self.global_head(pooled),
            "global_pooled": pooled,
            "heatmap": attention_heat(fmap),
        }

    def local_forward(self, crop: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self._pool(self.local_backbone(crop))
        return {"local_scores": self.local_head(pooled), "local_pooled": pooled}

    def fusion_forward(
        self, global_pooled: torch.Tensor, local_pooled: torch.Tensor
    ) -> torch.Tensor:
        return self.fusion_head(torch.cat([global_pooled, local_pooled], dim=1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        g = self.global_forward(x)
        boxes = peak_region_boxes(g["heatmap"], self.tau, tuple(x.shape[-2:]))
        loc = self.local_forward(crop_boxes(x, boxes, self.local_size))
        return {
            "scores": self.fusion_forward(g["global_pooled"], loc["local_pooled"]),
            "global_scores": g["global_scores"],
            "local_scores": loc["local_scores"],
            "heatmap": g["heatmap"],
            "boxes": boxes,
        }

    def set_stage(self, stage: int) -> None:
        """1: train global; 2: train local (global frozen); 3: train fusion only."""
        if stage not in (1, 2, 3):
            raise ValueError(f"AG-CNN has training stages 1, 2, 3, not {stage}")
        groups = {
            1: (self.global_backbone, self.global_head),
            2: (self.local_backbone, self.local_head),
            3: (self.fusion_head,),
        }
        for p in self.parameters():
            p.requires_grad_(False)
        for module in groups[stage]:
            for p in module.parameters():
                p.requires_grad_(True)


@register("agcnn")
def agcnn(
    *,
    num_classes: int = 14,
    in_chans: int = 3,
    backbone: str = "resnet50",
    pretrained: Pretrained = False,
    tau: float = 0.7,
    local_size: int = 224,
    tiny: bool = False,
) -> AGCNN:
    """ResNet-50 global and local branches with 224 px local crops (the paper); any timm
    name works as ``backbone`` (e.g. ``densenet121``). ``tiny``: test_efficientnet, 64 px crops.

    ``pretrained``: ImageNet weights for both branches (they start alike and are trained
    apart, not shared) from a local state-dict file of the same architecture (timm or
    torchvision layout: a torchvision ``resnet50``/``densenet121`` file loads as it is),
    or 'imagenet-lite' with an EfficientNet-Lite backbone. A missing file or keys that do
    not fit raise, naming the file and the keys.
    """
    name = "test_efficientnet" if tiny else backbone
    size = 64 if tiny else local_size
    return AGCNN(
        create_backbone(name, pretrained=pretrained, in_chans=in_chans),
        create_backbone(name, pretrained=pretrained, in_chans=in_chans),
        num_classes=num_classes,
        tau=tau,
        local_size=size,
    )
