"""Heatmaps a technician can read: upsampled smoothly and blended over the photo the model saw.

A network's attention or class-activation map is small (5x5 to 20x20 cells). Blown up with
nearest-neighbour or area interpolation it shows blocks that look like findings; bicubic
upsampling shows the smooth field it is. The same two functions serve the batch ledger
(a 64 px map per image), the HTML report and `edgescreen screen --heatmap DIR`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

STORED_SIDE = 64  # the heatmap kept per image in the batch ledger


def resize_map(heatmap: np.ndarray, side: int) -> np.ndarray:
    """A [0, 1] float map at side x side: bicubic up (clipped: cubic overshoots), area down."""
    heat = np.asarray(heatmap, np.float32)
    grow = side > max(heat.shape[:2])
    out = cv2.resize(heat, (side, side), interpolation=cv2.INTER_CUBIC if grow else cv2.INTER_AREA)
    return np.clip(out, 0.0, 1.0)


def heatmap_png(heatmap: np.ndarray | None, side: int = STORED_SIDE) -> bytes | None:
    """The map as a small 8-bit PNG (what the ledger stores)."""
    if heatmap is None:
        return None
    small = np.rint(resize_map(heatmap, side) * 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", small)
    return buf.tobytes() if ok else None


def model_view(image: np.ndarray, measurements: Mapping[str, Any], crop_to_disc: bool, side: int):
    """The part of `image` (BGR or RGB uint8) the model saw, as a side x side square.

    Fundus models see the disc square (the quality gate's measurements hold the disc, in the
    pixels of the image they were taken on, maybe larger than `image`); others the whole frame.
    """
    h, w = image.shape[:2]
    m = measurements
    if crop_to_disc and m.get("disc_found") and m.get("width"):
        s = w / m["width"]
        cx, cy, r = (m["disc_cx"] + 0.5) * s, (m["disc_cy"] + 0.5) * s, m["disc_radius"] * s
        x0, y0, size = round(cx - r), round(cy - r), max(1, round(2 * r))
        pads = (max(0, -y0), max(0, y0 + size - h), max(0, -x0), max(0, x0 + size - w))
        crop = image[max(y0, 0) : min(y0 + size, h), max(x0, 0) : min(x0 + size, w)]
        image = cv2.copyMakeBorder(crop, *pads, cv2.BORDER_CONSTANT, value=0) if any(pads) else crop
    grow = side > max(image.shape[:2])
    return cv2.resize(
        image, (side, side), interpolation=cv2.INTER_CUBIC if grow else cv2.INTER_AREA
    )


def overlay(
    image_bgr: np.ndarray,
    heatmap: np.ndarray,
    measurements: Mapping[str, Any],
    *,
    crop_to_disc: bool,
    side: int,
    weight: float = 0.45,
) -> np.ndarray:
    """BGR uint8 side x side: the model's view of the photo with the heatmap blended in (jet)."""
    if image_bgr.ndim == 2:
        image_bgr = cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR)
    base = model_view(image_bgr, measurements, crop_to_disc, side)
    heat = np.asarray(heatmap)
    heat = heat.astype(np.float32) / 255.0 if heat.dtype == np.uint8 else heat
    colour = cv2.applyColorMap(
        np.rint(resize_map(heat, side) * 255).astype(np.uint8), cv2.COLORMAP_JET
    )
    return cv2.addWeighted(base, 1.0 - weight, colour, weight, 0)
