"""Zoom-in-Net for DR grading (Wang et al., MICCAI 2017).

- M-Net grades the (optionally down-sampled) whole fundus image.
- A-Net turns M-Net's feature map into, per grade k, a score map S_k (1x1 conv) and an
  attention gate A_k (small conv stack, softmax over space, so sum_xy A_k = 1).  The
  gated score sum_xy S_k * A_k is a grade logit that is high only if evidence for grade k
  sits where A_k looks, which is what makes A_k a lesion heat map without lesion labels.
- C-Net "zooms in": it reads n high-resolution patches centred on the greedy top-n peaks
  of the gated maps, max-pools their features over patches (a lesion anywhere counts) and
  fuses them with M-Net's pooled features for the final grade.

The patch step is data-dependent, so ``mnet_anet_forward`` and ``cnet_forward`` are
exposed separately for export.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from . import register
from .backbones import Pretrained, create_backbone


@torch.no_grad()
def top_peaks(maps: torch.Tensor, n: int, window: int) -> torch.Tensor:
    """Greedy top-``n`` peaks of (N, h, w) maps -> (N, n, 2) long (y, x) map indices.

    After each pick, every cell within Chebyshev distance < ``window`` of it is
    suppressed, so picks are at least ``window`` apart and window x window patches
    centred on them never overlap.  When fewer than n cells remain the last pick repeats.
    """
    b, h, w = maps.shape
    scores = maps.detach().float().reshape(b, h * w).clone()
    yy = torch.arange(h, device=maps.device).repeat_interleave(w)
    xx = torch.arange(w, device=maps.device).repeat(h)
    picks = []
    for _ in range(n):  # n is a fixed hyper-parameter, not data
        idx = scores.argmax(dim=1)
        py, px = idx // w, idx % w
        picks.append(torch.stack([py, px], dim=1))
        near = ((yy[None] - py[:, None]).abs() < window) & ((xx[None] - px[:, None]).abs() < window)
        scores = scores.masked_fill(near, float("-inf"))
    return torch.stack(picks, dim=1)


def crop_patches(images: torch.Tensor, centres: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) images, (N, n, 2) (y, x) pixel centres -> (N*n, C, size, size) patches.

    One sample per output pixel at the input's own resolution (no resizing); zero outside.
    """
    b, n = centres.shape[:2]
    cy, cx = (
        centres[..., 0].reshape(-1).to(images.dtype),
        centres[..., 1].reshape(-1).to(images.dtype),
    )
    index = torch.arange(b, device=images.device, dtype=images.dtype).repeat_interleave(n)
    half = size / 2
    rois = torch.stack([index, cx - half, cy - half, cx + half, cy + half], dim=1)
    return roi_align(
        images, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=1, aligned=True
    )


class ZoomInNet(nn.Module):
    task = "dr_grading"
    family = "zoomin"
    export_outputs = {"scores": ("scores", "softmax"), "heatmap": ("heatmap", "none")}

    def __init__(
        self,
        mnet: nn.Module,
        cnet: nn.Module,
        *,
        num_classes: int = 5,
        mnet_size: int | None = None,
        num_patches: int = 4,
        patch_size: int = 256,
        gate_width: int = 128,
    ) -> None:
        super().__init__()
        self.mnet_size = mnet_size
        self.num_patches = num_patches
        self.patch_size = patch_size
        self.mnet = mnet
        self.mnet_head = nn.Linear(mnet.num_features, num_classes)
        c = mnet.num_features
        self.score_conv = nn.Conv2d(c, num_classes, 1)
        self.gate = nn.Sequential(
            nn.Conv2d(c, gate_width, 3, padding=1, bias=False),
            nn.BatchNorm2d(gate_width),
            nn.ReLU(inplace=True),
            nn.Conv2d(gate_width, num_classes, 1),
        )
        self.cnet = cnet
        self.fusion_head = nn.Linear(mnet.num_features + cnet.num_features, num_classes)

    def mnet_anet_forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.mnet_size is not None:
            x = F.interpolate(
                x, size=(self.mnet_size, self.mnet_size), mode="bilinear", align_corners=False
            )
        fmap = self.mnet(x)
        pooled = fmap.mean(dim=(2, 3))
        s = self.score_conv(fmap)
        a = torch.softmax(self.gate(fmap).flatten(2), dim=2).view_as(s)  # sums to 1 over space
        gated = s * a
        return {
            "mnet_scores": self.mnet_head(pooled),
            "anet_scores": gated.sum(dim=(2, 3)),
            "mnet_pooled": pooled,
            "attention": a,
            "gated": gated,
        }

    def peak_centres(self, gated: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Patch centres (N, n, 2) as (y, x) input pixels at the peaks of the lesion grades' gated maps."""
        h, w = gated.shape[-2:]
        stride_y, stride_x = image_size[0] / h, image_size[1] / w
        window = max(1, math.ceil(self.patch_size / max(stride_y, stride_x)))
        # Grade 0 (no DR) has no lesion to zoom in on; take the strongest lesion grade per cell.
        lesion = gated[:, 1:].amax(dim=1) if gated.shape[1] > 1 else gated[:, 0]
        peaks = top_peaks(lesion, self.num_patches, window).float()
        return (peaks + 0.5) * torch.tensor([stride_y, stride_x], device=gated.device)

    def cnet_forward(self, x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """(N, n, 2) pixel centres -> (N, C) C-Net features, max-pooled over the n patches."""
        patches = crop_patches(x, centres, self.patch_size)
        feats = self.cnet(patches).mean(dim=(2, 3))
        return feats.view(len(x), centres.shape[1], -1).amax(dim=1)

    def fusion_forward(self, mnet_pooled: torch.Tensor, cnet_pooled: torch.Tensor) -> torch.Tensor:
        return self.fusion_head(torch.cat([mnet_pooled, cnet_pooled], dim=1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        m = self.mnet_anet_forward(x)
        centres = self.peak_centres(m["gated"], tuple(x.shape[-2:]))
        scores = self.fusion_forward(m["mnet_pooled"], self.cnet_forward(x, centres))
        return {
            "scores": scores,
            "mnet_scores": m["mnet_scores"],
            "anet_scores": m["anet_scores"],
            "heatmap": m["attention"].detach(),
            "centres": centres,
        }


@register("zoomin")
def zoomin(
    *,
    num_classes: int = 5,
    in_chans: int = 3,
    backbone: str = "tf_efficientnet_lite0",
    cnet_backbone: str | None = None,
    pretrained: Pretrained = False,
    mnet_size: int | None = 512,
    num_patches: int = 4,
    patch_size: int = 256,
    tiny: bool = False,
) -> ZoomInNet:
    """Full size: 1024 px input, M-Net at 512 px, 4 patches of 256 px.

    ``tiny`` (test_efficientnet; 128 px input, M-Net at 64 px, 2 patches of 32 px) for CPU tests.
    """
    if tiny:
        backbone = cnet_backbone = "test_efficientnet"
        mnet_size, num_patches, patch_size, gate_width = 64, 2, 32, 16
    else:
        gate_width = 128
    mnet = create_backbone(backbone, pretrained=pretrained, in_chans=in_chans)
    cnet = create_backbone(cnet_backbone or backbone, pretrained=pretrained, in_chans=in_chans)
    return ZoomInNet(
        mnet,
        cnet,
        num_classes=num_classes,
        mnet_size=mnet_size,
        num_patches=num_patches,
        patch_size=patch_size,
        gate_width=gate_width,
    )
