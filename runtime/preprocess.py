"""Preprocessing: the one implementation that training and the Jetson runtime share.

A model card stores a :class:`PreprocessConfig` under ``"preprocessing"``; both sides build
their tensors from it with the functions below, so a model never sees pixels prepared
differently from the ones it was trained on.

The pipeline has two halves, and training puts augmentation between them::

    image (RGB uint8 / grey uint8|uint16)
      -> canonical(image, cfg, size=working)  # geometry + photometry that define the input:
                                            # fundus disc crop, Ben Graham, mask; CXR window
      -> [training only: augmentation on the uint8 HxWxC image]
      -> to_tensor(prepared, cfg)           # resize to cfg.size, /255, (x-mean)/std, CHW

Why this order: ``canonical`` removes what differs between cameras and scanners (where the
fundus disc lies and how big it is, illumination, bit depth) so augmentation starts from
the canonical picture the runtime will also produce; augmenting first would make the
crop and the Ben Graham blur depend on the random transform.  Augmentation works on
uint8 images (what albumentations and cv2 expect), at a working resolution that may be
larger than ``cfg.size`` so that random crops and rotations do not lose detail, and
``to_tensor`` resizes last.  Normalisation comes last because it is the only step that
produces floats and it is cheap.

Runtime code: numpy + OpenCV + stdlib only (no torch, no PIL), no Python loops over
pixels.  The fundus disc is found on a copy at most ``_DISC_WORK_SIDE`` pixels long.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import cv2
import numpy as np

from .errors import CardError, ImageError
from .labels import MODALITIES
from .schema import from_data

__all__ = [
    "Disc",
    "PreprocessConfig",
    "find_fundus_disc",
    "canonical",
    "crop_square",
    "preprocess",
    "to_grey",
    "to_rgb",
    "to_tensor",
    "to_uint8",
]

# ---------------------------------------------------------------------------------------
# Config


_REQUIRED = ("modality", "size", "channels", "mean", "std")


@dataclass(frozen=True)
class PreprocessConfig:
    """Plain data: how to turn a decoded image into a model input.  Stored in model.json.

    ``mean``/``std`` apply to values scaled to [0, 1], one per output channel.
    Fields prefixed by a modality's options are ignored for the other modalities.
    """

    modality: str
    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # fundus
    crop_to_disc: bool = True
    ben_graham: bool = True
    ben_graham_sigma_frac: float = 1 / 30
    circle_mask: bool = True
    mask_radius_frac: float = 0.95
    # Shrink the disc crop through a Gaussian low-pass (see _shrink_smooth). False in a card
    # written before it existed, so such a bundle prepares exactly as it was trained.
    antialias: bool = False
    # oct
    denoise: bool = False
    # cxr
    window_percentiles: tuple[float, float] = (0.5, 99.5)
    clahe: bool = False
    clahe_clip: float = 2.0

    def __post_init__(self) -> None:
        # Lists (from JSON or a caller) become tuples so the config stays hashable.
        for name in ("mean", "std", "window_percentiles"):
            value = getattr(self, name)
            if isinstance(value, list | tuple):
                object.__setattr__(self, name, tuple(float(v) for v in value))
        _check_values(self, "preprocessing")

    @classmethod
    def default(cls, modality: str, size: int) -> PreprocessConfig:
        """Sensible per-modality defaults.

        - fundus: 3 channels, Ben Graham output is centred on 128, so mean = std = 0.5
          maps it to [-1, 1].
        - oct: 1 channel.  OCT B-scans are grey; replicating them costs 3x the input
          bandwidth for no information, and our OCT models are trained from scratch
          (no hub weights), so there is no ImageNet stem to feed.  mean = std = 0.5.
        - cxr: 3 channels (backbones such as DenseNet-121, as in AG-CNN, expect them);
          windowed values are spread over [0, 1], so mean = std = 0.5.
        """
        if modality not in MODALITIES:
            raise CardError(
                f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}",
                field="preprocessing.modality",
            )
        channels = 1 if modality == "oct" else 3
        return cls(
            modality=modality,
            size=size,
            channels=channels,
            mean=(0.5,) * channels,
            std=(0.5,) * channels,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "preprocessing") -> PreprocessConfig:
        """Read a card section: types by the shared schema reader, values by ``_check_values``."""
        return from_data(cls, d, where)

    def validate(self, where: str) -> None:
        _check_values(self, where)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _check_values(cfg: PreprocessConfig, where: str) -> None:
    def bad(name: str, problem: str) -> CardError:
        return CardError(problem, field=f"{where}.{name}")

    if cfg.modality not in MODALITIES:
        raise bad("modality", f"unknown modality {cfg.modality!r}; expected one of {MODALITIES}")
    if isinstance(cfg.size, bool) or not isinstance(cfg.size, int) or cfg.size < 8:
        raise bad("size", f"must be an integer >= 8, got {cfg.size!r}")
    if cfg.channels not in (1, 3) or isinstance(cfg.channels, bool):
        raise bad("channels", f"must be 1 or 3, got {cfg.channels!r}")
    for name in ("mean", "std"):
        value = getattr(cfg, name)
        if not isinstance(value, tuple) or not all(_is_number(v) for v in value):
            raise bad(name, f"must be a list of numbers, got {value!r}")
        if len(value) != cfg.channels:
            raise bad(name, f"needs {cfg.channels} value(s) (one per channel), got {len(value)}")
    if any(s <= 0 for s in cfg.std):
        raise bad("std", f"every value must be > 0, got {list(cfg.std)}")
    if not (_is_number(cfg.ben_graham_sigma_frac) and cfg.ben_graham_sigma_frac > 0):
        raise bad("ben_graham_sigma_frac", f"must be > 0, got {cfg.ben_graham_sigma_frac!r}")
    if not (_is_number(cfg.mask_radius_frac) and 0 < cfg.mask_radius_frac <= 1):
        raise bad("mask_radius_frac", f"must be in (0, 1], got {cfg.mask_radius_frac!r}")
    wp = cfg.window_percentiles
    if not (
        isinstance(wp, tuple)
        and len(wp) == 2
        and all(_is_number(v) for v in wp)
        and 0 <= wp[0] < wp[1] <= 100
    ):
        raise bad(
            "window_percentiles", f"must be [low, high] with 0 <= low < high <= 100, got {wp!r}"
        )
    if not (_is_number(cfg.clahe_clip) and cfg.clahe_clip > 0):
        raise bad("clahe_clip", f"must be > 0, got {cfg.clahe_clip!r}")
    for name in ("crop_to_disc", "ben_graham", "circle_mask", "antialias", "denoise", "clahe"):
        if not isinstance(getattr(cfg, name), bool):
            raise bad(name, f"expected true or false, got {getattr(cfg, name)!r}")


# ---------------------------------------------------------------------------------------
# Colour / bit-depth conversion


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ImageError("<array>", f"expected a numpy array, got {type(image).__name__}")
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageError("<array>", f"unsupported pixel type {image.dtype}: expected uint8/uint16")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ImageError("<array>", f"unsupported image shape {image.shape}: expected HxW or HxWx3")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError("<array>", f"empty image {image.shape}")
    return image


def to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    return cv2.convertScaleAbs(image, alpha=255.0 / 65535.0)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Any supported image -> RGB uint8 HxWx3 (grey is replicated, 16 bit scaled)."""
    image = to_uint8(_check_image(image))
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2RGB)
    return image


def to_grey(image: np.ndarray) -> np.ndarray:
    """Any supported image -> grey HxW, keeping the bit depth (uint8 or uint16)."""
    image = _check_image(image)
    if image.ndim == 2:
        return image
    code = cv2.COLOR_RGBA2GRAY if image.shape[2] == 4 else cv2.COLOR_RGB2GRAY
    return cv2.cvtColor(image, code)


def _to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """uint8 HxW or HxWx3 -> HxWxC."""
    if channels == 3:
        return image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return image[:, :, None]


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    # INTER_AREA averages properly when shrinking a lot; below 2x it is slow at
    # non-integer ratios and linear is as good.
    factor = max(w / width, h / height)
    interp = cv2.INTER_AREA if factor >= 2 else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


# ---------------------------------------------------------------------------------------
# Fundus disc (the circular field of view of a fundus camera, not the optic disc)

_DISC_WORK_SIDE = 256
# Straight edges of the field of view inside the picture (a sensor frame that cuts the
# circle top and bottom, then black padding: common in APTOS / EyePACS): hull edges at
# least _CHORD_MIN_LEN of the radius long.  They are left out of the circle fit, and one
# that cuts the fitted circle at least _CUT_MIN_DEPTH deep (and leaves the centre at
# least _CUT_MIN_DIST of the radius inside) becomes a cut of the field.
_CHORD_MIN_LEN = 0.2
_CUT_MIN_DEPTH = 0.02
_CUT_MIN_DIST = 0.4


@dataclass(frozen=True)
class Disc:
    """The fundus camera's circular field of view, in source-image pixels.

    When ``found`` is False the geometry is a fallback (image centre, radius half the
    longer side, so a square crop keeps the whole image) and must not be trusted.
    ``clipped``: the circle is cut by the frame or by a straight edge of the field.
    ``fov_fraction``: share of the circle's area that lies inside the image and inside
    the cuts.
    ``fit_iou``: overlap of the bright region with the fitted circle (inside the image,
    less the cuts), 1.0 for a clean disc; low for a shape that is not a circle.
    ``cuts``: straight edges of the field inside the image, each ``(nx, ny, c)`` with
    ``(nx, ny)`` a unit normal pointing out of the field: pixels (x, y) with
    ``nx * x + ny * y > c`` lie outside it.  Empty for a circle cut only by the frame.
    """

    cx: float
    cy: float
    radius: float
    found: bool
    clipped: bool
    fov_fraction: float = 1.0
    fit_iou: float = 0.0
    cuts: tuple[tuple[float, float, float], ...] = ()

    @classmethod
    def fallback(cls, height: int, width: int) -> Disc:
        return cls(width / 2, height / 2, max(height, width) / 2, False, False, 0.0, 0.0)

    def scaled(self, fx: float, fy: float) -> Disc:
        """The same field of view in a copy of the image resized by (fx, fy).

        Pixel centres sit at integers, so a point x maps to (x + 0.5) * f - 0.5; the radius
        takes the mean factor (a decoder's 1/k copy differs from a true 1/k by a rounding
        pixel at most).
        """

        def cut(nx: float, ny: float, c: float) -> tuple[float, float, float]:
            # n . x > c in this image is n' . x' > c' in the copy, n' the normal of (nx/fx, ny/fy).
            mx, my = nx / fx, ny / fy
            norm = math.hypot(mx, my)
            c_copy = c + 0.5 * (nx + ny) - 0.5 * (mx + my)
            return mx / norm, my / norm, c_copy / norm

        return Disc(
            (self.cx + 0.5) * fx - 0.5,
            (self.cy + 0.5) * fy - 0.5,
            self.radius * (fx + fy) / 2,
            self.found,
            self.clipped,
            self.fov_fraction,
            self.fit_iou,
            tuple(cut(*c) for c in self.cuts),
        )


def _circle_fraction_inside(cx: float, cy: float, r: float, h: int, w: int) -> float:
    """Share of a circle's area inside the rectangle [0, w] x [0, h] (numerical, exact enough)."""
    n = 2048
    x = cx + r * ((np.arange(n) + 0.5) / n * 2 - 1)
    half = np.sqrt(np.maximum(r * r - (x - cx) ** 2, 0.0))
    chord = np.clip(cy + half, 0, h) - np.clip(cy - half, 0, h)
    inside = (x >= 0) & (x <= w)
    area = float(np.sum(chord * inside)) * (2 * r / n)
    return min(area / (math.pi * r * r), 1.0)


def percentile_u8(values: np.ndarray, q: float) -> float:
    """np.percentile(values, q) of uint8 values (linear interpolation), from a histogram.

    The same two order statistics np.percentile interpolates between, so the results agree
    to floating-point rounding (about 1e-11); a 256-bin count is several times cheaper than
    the partial sort np.percentile does.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    counts = np.cumsum(np.bincount(values.ravel(), minlength=256))
    n = int(counts[-1])
    if n == 0:
        raise ValueError("percentile of no values")
    rank = (n - 1) * q / 100.0
    lo = math.floor(rank)
    # The value at sorted position i is the first level whose cumulative count exceeds i.
    below, above = np.searchsorted(counts, [lo, min(lo + 1, n - 1)], side="right")
    return float(below + (above - below) * (rank - lo))


def _fit_circle(pts: np.ndarray) -> tuple[float, float, float]:
    """Algebraic (Kasa) least-squares circle through points (N, 2)."""
    x, y = pts[:, 0], pts[:, 1]
    a = np.stack([x, y, np.ones_like(x)], axis=1)
    b = x * x + y * y
    (c0, c1, c2), *_ = np.linalg.lstsq(a, b, rcond=None)
    cx, cy = c0 / 2, c1 / 2
    return cx, cy, math.sqrt(max(c2 + cx * cx + cy * cy, 0.0))


def _hull_chords(
    hull: np.ndarray, sh: int, sw: int, margin: float, min_len: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Edges of a convex polygon (vertices (N, 2)) at least ``min_len`` long, except
    those along the image border (a circle clipped by the frame is handled apart)."""
    p = hull.reshape(-1, 2).astype(np.float64)
    q = np.roll(p, -1, axis=0)
    long_ = np.hypot(q[:, 0] - p[:, 0], q[:, 1] - p[:, 1]) >= min_len
    lo, hi_x, hi_y = margin, sw - 1 - margin, sh - 1 - margin
    border = (
        ((p[:, 0] <= lo) & (q[:, 0] <= lo))
        | ((p[:, 0] >= hi_x) & (q[:, 0] >= hi_x))
        | ((p[:, 1] <= lo) & (q[:, 1] <= lo))
        | ((p[:, 1] >= hi_y) & (q[:, 1] >= hi_y))
    )
    return [(p[i], q[i]) for i in np.nonzero(long_ & ~border)[0]]


def _segment_distance(pts: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of points (N, 2) to the segment a-b."""
    d = b - a
    t = np.clip(((pts - a) @ d) / max(float(d @ d), 1e-12), 0.0, 1.0)
    return np.hypot(*(pts - (a + t[:, None] * d)).T)


def find_fundus_disc(image: np.ndarray) -> Disc:
    """Find the fundus field-of-view circle: threshold, largest blob, convex hull, circle fit.

    Robust to black borders, off-centre discs, notches (the convex hull bridges inward
    notches; a robust refit drops outward tabs), circles clipped by the frame (hull
    points on the image border are not used for the fit) and circles cut by straight
    edges inside the frame (long straight hull edges are not used for the fit; they
    become ``Disc.cuts``).  Grey or non-fundus images (flat frames, chest X-rays filling
    the frame) give ``found=False`` because their bright region has no circular edge
    inside the image.
    """
    image = _check_image(image)
    h, w = image.shape[:2]
    fallback = Disc.fallback(h, w)
    scale = min(1.0, _DISC_WORK_SIDE / max(h, w))
    small = to_uint8(image)
    if scale < 1.0:
        sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
        small = cv2.resize(small, (sw, sh), interpolation=cv2.INTER_AREA)
    sh, sw = small.shape[:2]
    if min(sh, sw) < 16:
        return fallback
    # Brightest channel: fundus is red-dominant, and this also works for grey images.
    if small.ndim == 2:
        v = small
    else:
        v = cv2.max(cv2.max(small[:, :, 0], small[:, :, 1]), small[:, :, 2])
    top = percentile_u8(v, 99)
    if top < 8:  # black frame
        return fallback
    # Camera borders are near 0 (JPEG noise < ~6); fundus edges, even dark ones, above.
    thresh = min(max(0.08 * top, 6.0), 30.0)
    mask = (v > thresh).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return fallback
    blob = max(contours, key=cv2.contourArea)
    if cv2.contourArea(blob) < 0.05 * sh * sw:
        return fallback
    hull = cv2.convexHull(blob)
    hull_mask = np.zeros((sh, sw), np.uint8)
    cv2.drawContours(hull_mask, [hull], -1, 1, thickness=cv2.FILLED)
    edge, _ = cv2.findContours(hull_mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    pts = edge[0][:, 0, :].astype(np.float64)
    margin = 2
    keep = (
        (pts[:, 0] > margin)
        & (pts[:, 0] < sw - 1 - margin)
        & (pts[:, 1] > margin)
        & (pts[:, 1] < sh - 1 - margin)
    )
    # Long straight hull edges are cuts of the field or bridges over notches: not arc.
    r0 = math.sqrt(cv2.contourArea(hull) / math.pi)
    chords = _hull_chords(hull, sh, sw, margin, _CHORD_MIN_LEN * r0)
    for a, b in chords:
        keep &= _segment_distance(pts, a, b) > 1.5
    pts = pts[keep]
    if len(pts) < 20:
        return fallback
    # Pixel centres of the boundary lie half a pixel inside the true edge.
    cx, cy, r = _fit_circle(pts)
    for _ in range(2):  # robust refit: drop outward tabs and stray hull segments
        d = np.hypot(pts[:, 0] - cx, pts[:, 1] - cy) - r
        mad = float(np.median(np.abs(d))) + 1e-6
        inl = np.abs(d) < max(2.0, 4 * mad)
        if inl.sum() < 20:
            return fallback
        cx, cy, r = _fit_circle(pts[inl])
    # The inliers must span a real arc, not a nearly straight edge (CXR collimation).
    ang = np.arctan2(pts[inl, 1] - cy, pts[inl, 0] - cx)
    span_bins = np.unique(np.floor((ang + math.pi) / (2 * math.pi) * 16).astype(int) % 16)
    # Chords that cut the circle: each a half-plane n . (x, y) <= n . a (n points out).
    centre = np.array([cx, cy])
    inside = hull[:, 0, :].mean(axis=0)
    cuts_w: list[tuple[np.ndarray, float]] = []
    deep = False
    for a, b in chords:
        t = b - a
        n = np.array([t[1], -t[0]]) / math.hypot(t[0], t[1])
        if float((inside - a) @ n) > 0:
            n = -n
        dist = float((a - centre) @ n)  # centre to the chord, positive when inside
        if r - dist < max(1.5, _CUT_MIN_DEPTH * r):
            continue  # a notch bridge or a pixel row of the circle itself
        if dist < _CUT_MIN_DIST * r:
            deep = True
        cuts_w.append((n, float(a @ n) + 0.5))
    r_src = (r + 0.5) / scale
    cx_src = (cx + 0.5) / scale - 0.5
    cy_src = (cy + 0.5) / scale - 0.5
    circle = np.zeros((sh, sw), np.uint8)
    cv2.circle(circle, (round(cx * 16), round(cy * 16)), round(r * 16), 1, cv2.FILLED, shift=4)
    model = circle
    if cuts_w:
        yy, xx = np.mgrid[0:sh, 0:sw]
        model = circle.copy()
        for n, c in cuts_w:
            model[n[0] * xx + n[1] * yy > c] = 0
    inter = int(np.count_nonzero(model & hull_mask))
    union = int(np.count_nonzero(model | hull_mask))
    iou = inter / union if union else 0.0
    fov = _circle_fraction_inside(cx_src + 0.5, cy_src + 0.5, r_src, h, w)
    if cuts_w:
        fov *= np.count_nonzero(model) / max(np.count_nonzero(circle), 1)
    cuts = tuple(
        # work pixel centre x_w is source (x_w + 0.5) / scale - 0.5
        (float(n[0]), float(n[1]), float((c + 0.5 * (n[0] + n[1])) / scale - 0.5 * (n[0] + n[1])))
        for n, c in cuts_w
    )
    clipped = bool(
        cuts
        or cx_src - r_src < -1
        or cy_src - r_src < -1
        or cx_src + r_src > w
        or cy_src + r_src > h
    )
    # A camera's field of view ends in a sharp step to black; a chest X-ray's dark
    # corners fade.  Just outside the circle the frame must be (nearly) black.
    ring = np.zeros((sh, sw), np.uint8)
    cv2.circle(
        ring, (round(cx * 16), round(cy * 16)), round((r * 1.1 + 2) * 16), 1, cv2.FILLED, shift=4
    )
    ring[circle > 0] = 0
    ring = cv2.subtract(ring, cv2.dilate(circle, kernel))
    outside = v[ring > 0]
    step_ok = outside.size < 20 or percentile_u8(outside, 90) <= thresh
    found = bool(
        step_ok
        and not deep
        and len(span_bins) >= (6 if cuts else 3)
        and iou >= 0.85
        and 0.1 * min(h, w) <= r_src <= 1.5 * max(h, w)
        and fov >= 0.1
    )
    if not found:
        return Disc(
            fallback.cx, fallback.cy, fallback.radius, False, clipped, float(fov), float(iou)
        )
    return Disc(
        float(cx_src), float(cy_src), float(r_src), True, clipped, float(fov), float(iou), cuts
    )


def crop_square(
    image: np.ndarray, cx: float, cy: float, half: float, size: int, *, smooth: bool = False
) -> np.ndarray:
    """Square [cx-half, cx+half]^2 resized to size x size, black where it leaves the image.

    ``smooth``: shrink through ``_shrink_smooth`` (2x or more) instead of plain averaging.
    """
    h, w = image.shape[:2]
    side = max(1, round(2 * half))
    x0, y0 = round(cx - half), round(cy - half)
    x1, y1 = x0 + side, y0 + side
    crop = image[max(y0, 0) : min(y1, h), max(x0, 0) : min(x1, w)]
    if crop.size == 0:
        shape = (size, size) + image.shape[2:]
        return np.zeros(shape, image.dtype)
    pads = (max(0, -y0), max(0, y1 - h), max(0, -x0), max(0, x1 - w))
    if any(pads):
        crop = cv2.copyMakeBorder(crop, *pads, cv2.BORDER_CONSTANT, value=0)
    if smooth and crop.shape[0] >= 2 * size:
        return _shrink_smooth(crop, size, size)
    return _resize(crop, size, size)


_SMOOTH_SIGMA = 1.2  # px at twice the output's resolution: 0.6 output pixels


def _shrink_smooth(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Shrink 2x or more with a Gaussian low-pass near the output's Nyquist limit.

    Plain averaging (INTER_AREA) at different ratios lets different fine detail through, so
    a camera's 3872 px original and its 768 px copy gave visibly different model inputs once
    Ben Graham's filter boosted fine detail 4x (mean |difference| 0.018 on the normalised
    tensor over the 40 shared pairs; 0.011 with this). Averaging to twice the size first keeps
    the blur cheap (it runs on at most 4x the output's pixels).
    """
    mid = cv2.resize(image, (2 * width, 2 * height), interpolation=cv2.INTER_AREA)
    mid = cv2.GaussianBlur(mid, (0, 0), _SMOOTH_SIGMA)
    return cv2.resize(mid, (width, height), interpolation=cv2.INTER_AREA)


def _wide_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; a wide one is computed at reduced resolution (4-10x faster).

    The blur keeps only low frequencies, so blurring a copy shrunk by k (sigma/k >= 2 px)
    and enlarging it back differs from the full-size blur by a grey level or two.
    """
    k = int(sigma // 2)
    if k < 2:
        return cv2.GaussianBlur(image, (0, 0), sigma)
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, w // k), max(1, h // k)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma * small.shape[1] / w)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _prepare_fundus(image: np.ndarray, cfg: PreprocessConfig, size: int, disc: Disc | None):
    rgb = to_rgb(image)
    h, w = rgb.shape[:2]
    if disc is None:
        disc = find_fundus_disc(rgb)
    if cfg.crop_to_disc:
        cx, cy, half = disc.cx, disc.cy, disc.radius
    else:
        cx, cy, half = w / 2, h / 2, max(h, w) / 2
    # Centre of pixel i is at i (cv2 convention); the square covers [cx-half, cx+half].
    out = crop_square(rgb, cx + 0.5, cy + 0.5, half, size, smooth=cfg.antialias)
    s = size / (2 * half)
    ocx, ocy, orad = (disc.cx - cx) * s + size / 2, (disc.cy - cy) * s + size / 2, disc.radius * s
    if cfg.ben_graham:
        blur = _wide_blur(out, max(cfg.ben_graham_sigma_frac * orad, 0.5))
        out = cv2.addWeighted(out, 4.0, blur, -4.0, 128.0)
    if cfg.circle_mask:
        mask = np.zeros((size, size), np.uint8)
        centre = (round((ocx - 0.5) * 16), round((ocy - 0.5) * 16))
        cv2.circle(
            mask, centre, round(cfg.mask_radius_frac * orad * 16), 255, cv2.FILLED, cv2.LINE_8, 4
        )
        # Where the disc is clipped by the frame, Ben Graham leaves a bright/dark band
        # along the cut; trim the same margin there as at the circle's edge.
        if cfg.ben_graham:
            m = (1 - cfg.mask_radius_frac) * orad
            left, top = (-0.5 - (cx - half)) * s + m, (-0.5 - (cy - half)) * s + m
            right, bottom = left + w * s - 2 * m, top + h * s - 2 * m
            keep = np.zeros_like(mask)
            pt1 = (max(0, math.ceil(left)), max(0, math.ceil(top)))
            pt2 = (min(size - 1, math.floor(right) - 1), min(size - 1, math.floor(bottom) - 1))
            cv2.rectangle(keep, pt1, pt2, 255, cv2.FILLED)
            mask = cv2.bitwise_and(mask, keep)
            # Straight edges of the field inside the frame (Disc.cuts) leave the same band.
            if disc.cuts:
                ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
                for nx, ny, c in disc.cuts:
                    # output pixel (x, y) is at source ((x + 0.5) / s + cx - half - 0.5, ...)
                    src_x, src_y = (
                        (xs + 0.5) / s + cx - half - 0.5,
                        (ys + 0.5) / s + cy - half - 0.5,
                    )
                    mask[nx * src_x + ny * src_y > c - m / s] = 0
        out = cv2.bitwise_and(out, out, mask=mask)
    return out


def _window_lut(grey: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Percentile windowing to uint8 through a lookup table.

    Percentiles are taken as actual pixel values (lower rank), and the table is built
    with exact division, so a 16-bit image equal to an 8-bit one times 257 gives the
    identical output.
    """
    levels = 256 if grey.dtype == np.uint8 else 65536
    hist = np.bincount(grey.ravel(), minlength=levels)
    cdf = np.cumsum(hist)
    n = cdf[-1]
    lo_q, hi_q = percentiles
    lo = int(np.searchsorted(cdf, max(lo_q / 100 * n, 1), side="left"))
    hi = int(np.searchsorted(cdf, max(hi_q / 100 * n, 1), side="left"))
    values = np.arange(levels, dtype=np.float64)
    if hi <= lo:  # flat image: everything maps to mid grey-ish step
        lut = np.where(values > lo, 255, 0).astype(np.uint8)
    else:
        lut = np.clip(np.rint((values - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)
    return lut[grey]


def canonical(
    image: np.ndarray, cfg: PreprocessConfig, *, size: int | None = None, disc: Disc | None = None
) -> np.ndarray:
    """Image -> uint8 ``size x size x cfg.channels`` canonical picture (see module doc).

    ``disc`` (fundus only) skips the disc search when the quality gate already ran it.
    """
    size = int(size or cfg.size)
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    if cfg.modality == "fundus":
        out = _prepare_fundus(image, cfg, size, disc)
    elif cfg.modality == "oct":
        grey = to_uint8(to_grey(image))
        out = _resize(grey, size, size)
        if cfg.denoise:
            # Median 3x3 after resizing: speckle is granular, the median removes it while
            # keeping retinal layer edges, and it costs well under a millisecond on a
            # Jetson CPU (fastNlMeans would be ~100x slower for little gain at 224-512 px).
            out = cv2.medianBlur(out, 3)
    elif cfg.modality == "cxr":
        grey = to_grey(image)
        # Window at full bit depth first, then resize the uint8 result.
        out = _resize(_window_lut(grey, cfg.window_percentiles), size, size)
        if cfg.clahe:
            clahe = cv2.createCLAHE(clipLimit=cfg.clahe_clip, tileGridSize=(8, 8))
            out = clahe.apply(out)
    else:  # pragma: no cover - config validation forbids it
        raise CardError(f"unknown modality {cfg.modality!r}", field="preprocessing.modality")
    return np.ascontiguousarray(_to_channels(out, cfg.channels))


def to_tensor(prepared: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """uint8 HxWxC (or HxW) -> float32 (C, cfg.size, cfg.size), /255, (x - mean) / std."""
    if prepared.dtype != np.uint8:
        raise ImageError(
            "<array>", f"to_tensor expects uint8 (from canonical), got {prepared.dtype}"
        )
    if prepared.ndim == 3 and prepared.shape[2] == 1:
        prepared = prepared[:, :, 0]
    img = _resize(prepared, cfg.size, cfg.size)
    img = _to_channels(img, cfg.channels)
    mean = np.asarray(cfg.mean, np.float32) * 255.0
    inv = 1.0 / (np.asarray(cfg.std, np.float32) * 255.0)
    x = (img.astype(np.float32) - mean) * inv
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(image: np.ndarray, cfg: PreprocessConfig, *, disc: Disc | None = None) -> np.ndarray:
    """canonical at ``cfg.size`` then to_tensor: float32 (C, size, size)."""
    return to_tensor(canonical(image, cfg, disc=disc), cfg)
