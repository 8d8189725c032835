"""AG-CNN: attention-guided CNN for chest X-ray findings (Guan et al. 2018).

A global branch reads the whole radiograph; its last feature map, reduced to a heat map
(channel-wise max of |f|), is thresholded and its largest connected region boxed.  A
local branch re-reads that box cropped from the *input image* at full resolution, so
small findings (nodules) are no longer averaged away by the global view; a fusion
branch classifies the two branches' pooled features together.  Training has three
stages (``set_stage``): global, then local with global frozen, then fusion alone.

The crop makes the forward pass data-dependent, so the pieces are exposed separately
(``global_forward``, ``local_forward``, ``fusion_forward``): export may keep them in one
graph or split them into two models with the box computed in between.
"""

from __future__ import annotations

import cv2
import numpy as np
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


def _largest_region(mask: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """One (H, W) bool mask -> (labels == largest 8-connected region, its box) or (.., None) if empty.

    OpenCV, not a torch loop: label propagation by max-pooling needs one pass per pixel of
    region diameter (seconds per batch at 224 px on a CPU), while OpenCV's two-pass
    labelling takes well under a millisecond.  OpenCV is a core dependency, so the
    runtime can reproduce exactly this step between two exported models.  Ties between
    equal areas go to the region met first in raster order.
    """
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        mask.astype(np.uint8), connectivity=8
    )
    if count <= 1:
        return np.zeros_like(mask, dtype=bool), None
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (
        int(stats[best, k])
        for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT)
    )
    return labels == best, (x, y, x + w, y + h)


def largest_component(mask: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> the largest 8-connected region of each image's mask."""
    regions = [_largest_region(m)[0] for m in mask.detach().cpu().numpy()]
    return torch.from_numpy(np.stack(regions)).to(mask.device)


@torch.no_grad()
def attention_boxes(
    fmap: torch.Tensor, tau: float = 0.7, *, image_size: tuple[int, int]
) -> torch.Tensor:
    """(N, C, h, w) features (or heat maps) -> (N, 4) long boxes (x0, y0, x1, y1) in input pixels.

    The heat map is up-sampled to ``image_size`` (H, W), thresholded at ``tau``, and the
    largest connected region boxed; x1, y1 are exclusive, so 0 <= x0 < x1 <= W.  An image
    with no pixel above ``tau`` (a flat map) gets the whole image.
    """
    H, W = (int(v) for v in image_size)
    heat = F.interpolate(attention_heat(fmap), size=(H, W), mode="bilinear", align_corners=False)
    boxes = []
    for m in (heat[:, 0] >= tau).cpu().numpy():
        box = _largest_region(m)[1]
        boxes.append(box if box is not None else (0, 0, W, H))
    return torch.tensor(boxes, dtype=torch.long, device=fmap.device).view(-1, 4)


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
    index = torch.arange(len(images), device=images.device, dtype=images.dtype)[:, None]
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
        boxes = attention_boxes(g["heatmap"], self.tau, image_size=tuple(x.shape[-2:]))
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
    backbone: str = "densenet121",
    pretrained: Pretrained = False,
    tau: float = 0.7,
    local_size: int = 224,
    tiny: bool = False,
) -> AGCNN:
    """DenseNet-121 global and local branches at 224 px (paper); ``tiny``: test_efficientnet, 64 px crops.

    ``pretrained`` initialises both branches (a local timm state dict, or 'imagenet-lite'
    with an EfficientNet-Lite backbone).
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
