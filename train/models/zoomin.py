"""Zoom-in-Net for DR grading (Wang et al., MICCAI 2017).

- M-Net grades the down-sampled whole fundus image.  Its pooled features d_M are
  concatenated with those of the patient's other eye when it is there (the paper's
  two-eye M-Net); the single-eye fallback concatenates the image's own features twice,
  so one image in -> the same graph as a pair whose fellow is the image itself.
- A-Net turns M-Net's feature map into, per grade k, a score map S_k (1x1 conv) and an
  attention gate A_k (three convs, softmax over space, so sum_xy A_k = 1).  The gated
  score sum_xy S_k * A_k is a grade logit that is high only if evidence for grade k
  sits where A_k looks, which is what makes A_k a lesion heat map without lesion labels.
- C-Net "zooms in": the gated map is resized to M-Net's input size, N peaks are picked
  greedily (each pick masks an s x s window around it; picking stops early when what is
  left is weak), high-resolution patches are cut there from the full input, their
  features max-pooled over patches (a lesion anywhere counts) and fused with d_M.

Everything in the single-image ``forward`` is traceable with a symbolic batch (no
``len(x)``, no data-dependent Python control flow), so the exported graph is that forward:
the documented single-eye fallback.  A 5-D input (N, 2, C, H, W) is an eye pair
(image, fellow eye) and is how training feeds both eyes of a patient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from . import register
from .backbones import Pretrained, create_backbone

PEAK_LEVELS = 1024  # resolution of the peak comparison (see greedy_peaks)


@torch.no_grad()
def greedy_peaks(
    maps: torch.Tensor, n: int, window: int, *, stop: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy peaks of (N, h, w) maps -> ((N, n, 2) long (y, x) indices, (N, n) bool valid).

    Each pick masks the s x s window centred on it (cells with |dy| and |dx| < s / 2), so
    no later pick falls inside.  Early stop: pick k > 0 is valid only if every earlier
    pick is and it still reaches ``stop`` of the first peak's height above the map's
    minimum (the paper stops "when the maximal response is reached"; relative, because
    the gated maps have no fixed scale).  A fully masked map yields invalid picks.
    The shape stays (N, n) -- invalid picks are flagged, not dropped -- so the graph is static.
    """
    b, h, w = maps.shape
    scores = maps.detach().float().flatten(1)
    # Responses are compared on a grid of PEAK_LEVELS steps of each map's own range: two
    # cells within float noise of each other (the ONNX Runtime or TensorRT graph computes
    # the map to ~1e-6, and an untrained or flat map is all near-ties) then tie exactly and
    # the first in raster order wins everywhere, so the exported graph picks the same patches.
    lo, hi = scores.amin(dim=1, keepdim=True), scores.amax(dim=1, keepdim=True)
    scores = torch.round((scores - lo) / (hi - lo).clamp_min(1e-12) * PEAK_LEVELS)
    yy = torch.arange(h, device=maps.device).repeat_interleave(w)
    xx = torch.arange(w, device=maps.device).repeat(h)
    low = scores.amin(dim=1, keepdim=True)
    # Masked cells drop below the minimum rather than to -inf: argmax is the same, and the
    # tensor keeps a finite range for INT8 calibration.
    floor = (low - 1).expand_as(scores)
    half = window / 2
    picks, valid, top, ok = [], [], None, None
    for _ in range(n):  # n is a fixed hyper-parameter, not data
        idx = scores.argmax(dim=1, keepdim=True)
        value = scores.gather(1, idx) - low
        if top is None:
            top, ok = value, torch.ones_like(value, dtype=torch.bool)
        else:
            ok = ok & (value >= stop * top) & (value >= 0)
        py, px = idx // w, idx % w
        picks.append(torch.cat([py, px], dim=1))
        valid.append(ok)
        near = ((yy[None] - py).abs() < half) & ((xx[None] - px).abs() < half)
        scores = torch.where(near, floor, scores)
    return torch.stack(picks, dim=1), torch.cat(valid, dim=1)


def crop_patches(images: torch.Tensor, centres: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) images, (N, n, 2) (y, x) pixel centres -> (N*n, C, size, size) patches.

    One sample per output pixel at the input's own resolution (no resizing); zero outside.
    The batch index is built from a tensor, so a traced graph keeps N symbolic.
    """
    centres = centres.to(images.dtype)
    index = (torch.ones_like(centres[..., 0]).cumsum(0) - 1).reshape(-1)
    cy, cx = centres[..., 0].reshape(-1), centres[..., 1].reshape(-1)
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
        window: int | None = None,
        stop: float = 0.0,
        gate_width: int = 128,
    ) -> None:
        super().__init__()
        self.mnet_size = mnet_size
        self.num_patches = num_patches
        self.patch_size = patch_size  # in input pixels
        self.window = window  # s, in M-Net input pixels; None: the patch's footprint there
        self.stop = stop
        self.mnet = mnet
        c = mnet.num_features
        self.mnet_head = nn.Linear(2 * c, num_classes)  # [this eye, fellow eye]
        self.score_conv = nn.Conv2d(c, num_classes, 1)
        self.gate = nn.Sequential(  # A-Net part II: three convs, one gate map per grade
            nn.Conv2d(c, gate_width, 3, padding=1, bias=False),
            nn.BatchNorm2d(gate_width),
            nn.ReLU(inplace=True),
            nn.Conv2d(gate_width, gate_width, 3, padding=1, bias=False),
            nn.BatchNorm2d(gate_width),
            nn.ReLU(inplace=True),
            nn.Conv2d(gate_width, num_classes, 1),
        )
        self.cnet = cnet
        self.fusion_head = nn.Linear(2 * c + cnet.num_features, num_classes)

    # -- M-Net + A-Net ----------------------------------------------------------------------
    def _mnet_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.mnet_size is None:
            return x
        size = (self.mnet_size, self.mnet_size)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    @staticmethod
    def eye_features(pooled: torch.Tensor, fellow: torch.Tensor | None = None) -> torch.Tensor:
        """[d_M of this eye, d_M of the fellow eye]; the fallback's fellow is the eye itself."""
        return torch.cat([pooled, pooled if fellow is None else fellow], dim=1)

    def mnet_anet_forward(
        self, x: torch.Tensor, fellow: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """M-Net and A-Net on (N, C, H, W) images; ``fellow``: the other eyes' images."""
        both = x if fellow is None else torch.cat([x, fellow])
        fmap = self.mnet(self._mnet_input(both))
        pooled = fmap.mean(dim=(2, 3))
        fellow_pooled = None
        if fellow is not None:  # one M-Net pass for both eyes (training only: len() is fine)
            fmap, pooled, fellow_pooled = fmap[: len(x)], pooled[: len(x)], pooled[len(x) :]
        s = self.score_conv(fmap)
        a = torch.softmax(self.gate(fmap).flatten(2), dim=2).view_as(s)  # sums to 1 over space
        gated = s * a
        out = {
            "mnet_scores": self.mnet_head(self.eye_features(pooled, fellow_pooled)),
            "anet_scores": gated.sum(dim=(2, 3)),
            "mnet_pooled": pooled,
            "attention": a,
            "gated": gated,
        }
        if fellow_pooled is not None:
            out["fellow_pooled"] = fellow_pooled
        return out

    # -- patch selection ----------------------------------------------------------------------
    def selection_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The grid the gated map is resized to for picking: M-Net's input (the paper's 492)."""
        return (self.mnet_size, self.mnet_size) if self.mnet_size else tuple(image_size)

    def selection_window(self, image_size: tuple[int, int]) -> int:
        if self.window is not None:
            return self.window
        sel = self.selection_size(image_size)
        return max(
            1, math.ceil(self.patch_size * max(sel[0] / image_size[0], sel[1] / image_size[1]))
        )

    def select_patches(
        self, gated: torch.Tensor, image_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, n, 2) (y, x) input-pixel patch centres and (N, n) validity, from gated maps."""
        # Grade 0 (no DR) has no lesion to zoom in on; take the strongest lesion grade per cell.
        lesion = gated[:, 1:].amax(dim=1) if gated.shape[1] > 1 else gated[:, 0]
        sh, sw = self.selection_size(image_size)
        up = F.interpolate(lesion[:, None], size=(sh, sw), mode="bilinear", align_corners=False)
        peaks, valid = greedy_peaks(
            up[:, 0], self.num_patches, self.selection_window(image_size), stop=self.stop
        )
        scale = torch.tensor(
            [image_size[0] / sh, image_size[1] / sw], device=gated.device, dtype=gated.dtype
        )
        return (peaks.to(gated.dtype) + 0.5) * scale, valid

    # -- C-Net and fusion ---------------------------------------------------------------------
    def cnet_forward(
        self, x: torch.Tensor, centres: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(N, n, 2) pixel centres -> (N, C) C-Net features, max-pooled over the valid patches."""
        n = centres.shape[1]
        feats = self.cnet(crop_patches(x, centres, self.patch_size)).mean(dim=(2, 3))
        feats = feats.reshape(-1, n, feats.shape[-1])
        if valid is not None:  # an early-stopped patch repeats the first (always valid) one
            feats = torch.where(valid[..., None], feats, feats[:, :1])
        return feats.amax(dim=1)

    def fusion_forward(
        self,
        mnet_pooled: torch.Tensor,
        cnet_pooled: torch.Tensor,
        fellow_pooled: torch.Tensor | None = None,
    ) -> torch.Tensor:
        eyes = self.eye_features(mnet_pooled, fellow_pooled)
        return self.fusion_head(torch.cat([eyes, cnet_pooled], dim=1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, C, H, W): one eye each (the exported graph); (N, 2, C, H, W): (eye, fellow eye)."""
        fellow = None
        if x.dim() == 5:
            x, fellow = x[:, 0], x[:, 1]
        m = self.mnet_anet_forward(x, fellow)
        centres, valid = self.select_patches(m["gated"], (int(x.shape[-2]), int(x.shape[-1])))
        cnet_pooled = self.cnet_forward(x, centres, valid)
        scores = self.fusion_forward(m["mnet_pooled"], cnet_pooled, m.get("fellow_pooled"))
        return {
            "scores": scores,
            "mnet_scores": m["mnet_scores"],
            "anet_scores": m["anet_scores"],
            "heatmap": m["attention"].detach(),
            "centres": centres,
            "patch_valid": valid,
        }


@register("zoomin")
def zoomin(
    *,
    num_classes: int = 5,
    in_chans: int = 3,
    backbone: str = "tf_efficientnet_lite0",
    cnet_backbone: str | None = None,
    pretrained: Pretrained = False,
    mnet_size: int | None = 492,
    num_patches: int = 4,
    patch_size: int = 384,
    window: int | None = 200,
    stop: float = 0.5,
    gate_width: int = 128,
    tiny: bool = False,
) -> ZoomInNet:
    """The paper's sizes: 1230 px input, M-Net at 492 px, s = 200, four 384 px patches.

    ``tiny`` (test_efficientnet; 128 px input, M-Net at 64 px, s = 26, two 32 px patches)
    for CPU tests.
    """
    if tiny:
        backbone = cnet_backbone = "test_efficientnet"
        mnet_size, num_patches, patch_size, window, gate_width = 64, 2, 32, 26, 16
    mnet = create_backbone(backbone, pretrained=pretrained, in_chans=in_chans)
    cnet = create_backbone(cnet_backbone or backbone, pretrained=pretrained, in_chans=in_chans)
    return ZoomInNet(
        mnet,
        cnet,
        num_classes=num_classes,
        mnet_size=mnet_size,
        num_patches=num_patches,
        patch_size=patch_size,
        window=window,
        stop=stop,
        gate_width=gate_width,
    )
