"""Quality gate: is this image gradable, and if not, what should the technician do?

Runs before preprocessing, on the decoded image.  Every check produces a number in
``QualityReport.measurements`` (so a hub can audit and re-tune limits) and, when it fails,
a :class:`QualityIssue` whose message is a plain action sentence.

Fundus measurements, all taken inside the field-of-view disc shrunk to 90 % of its
radius (the rim is vignetted on every camera) after resizing the disc to a fixed
radius of ``_REF_RADIUS`` pixels, so numbers do not depend on the camera's resolution:

- ``fov_fraction``: share of the fitted circle's area inside the frame (and inside the
  straight edges that cut it, ``Disc.cuts``; what lies beyond them is not measured).
- ``sharpness``: fine-detail contrast, 100 * std(green - GaussianBlur(green, 2 px)) /
  max(mean(green), 50).  The green channel carries the vessels; dividing by brightness keeps a
  focused but dim photo from reading as blurred.  (Laplacian variance was tried first:
  its spread over the real photos was 100x and overlapped blurred copies; band-energy
  ratios were tried next and rise again under heavy blur, so neither is used.)  It only
  catches gross blur: a defocused photo saved as JPEG keeps fine-detail energy (the 8x8
  blocks and the noise of a dim photo), and a hazy but gradable photo has little.
- ``edge_sharpness``: how sharp the sharpest strong edges are, independent of their
  contrast.  Gradient magnitudes of the green channel after a Gaussian blur of 0.8 px
  (fine) and 3 px (coarse); at the local maxima of the fine one that are strong (at
  least 0.05 * max(mean green, 50) grey levels per pixel, and 6x the median fine
  gradient in the disc, so that noise and JPEG blocks are not edges; when fewer than 5
  stand out of the texture that way, as in a very noisy photo, the first condition
  alone), the ratio fine / coarse is about 3.75 for an ideal step, about
  sqrt(s^2 + 9) / sqrt(s^2 + 0.64) for a step blurred by s px and higher for thin lines
  and dots; the measurement is its 90th percentile (1.0 when there are fewer than 5
  edges).  Defocus widens every edge, so even the sharpest ones fall; haze lowers
  contrast but leaves small features sharp.
- ``dark_fraction``: share of pixels whose brightest channel is below ``dark_level``
  (a fundus is red, so luma would call healthy dark-red retina "dark").
- ``bright_fraction``: share of pixels whose green is above ``bright_level``; red
  saturates on many cameras in good photos, green only when the photo is washed out.
- ``redness``: share of pixels whose red exceeds both green and blue by 10 levels.  A
  fundus is red-dominant; a grey image (chest X-ray, red-free photo) scores 0.

OCT / CXR: the grey image (16 bit scaled to 8 bit) shrunk to at most ``_REF_SIDE`` on
its longer side; sharpness is the Laplacian variance over the squared standard
deviation (contrast-normalised), exposure the share of near-black / near-white pixels.

The fundus defaults were set from the 400 photos of the SRahim DR set (all gradable)
with a margin; see ``default_limits`` for the numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from typing import Any

import cv2
import numpy as np

from .errors import CardError
from .labels import MODALITIES
from .preprocess import (
    Disc,
    crop_square,
    find_fundus_disc,
    percentile_u8,
    to_grey,
    to_rgb,
    to_uint8,
)
from .schema import from_data

__all__ = [
    "MESSAGES",
    "QualityIssue",
    "QualityLimits",
    "QualityReport",
    "assess_quality",
    "default_limits",
]

_REF_RADIUS = 200  # fundus disc resized to this radius before measuring
_REF_SIDE = 512  # OCT/CXR longer side measured at (never enlarged)
_INNER = 0.9  # measure inside this share of the disc radius
# edge_sharpness (fundus): Gaussian sigmas (reference pixels) of the fine and coarse
# gradients, what makes an edge strong, and how many strong edges are needed.
_EDGE_FINE = 0.8
_EDGE_COARSE = 3.0
_EDGE_STRONG = 6.0  # x the median fine gradient in the disc
_EDGE_CONTRAST = 0.05  # x max(mean green, 50) grey levels per pixel
_EDGE_MIN_COUNT = 5
_ERODE_EDGE = np.ones((15, 15), np.uint8)  # 7 px: the coarse blur's reach into the border
_PEAK = np.ones((3, 3), np.uint8)
_EDGE_PAD = 14  # the coarse Gaussian's kernel radius (12 at sigma 3) + Sobel + 1

MESSAGES: dict[str, str] = {
    "too_small": "image resolution too low: use the camera's full-resolution setting and retake",
    "not_fundus": "no fundus found in the image: is this an eye photo? retake",
    "fov_cut_off": "retina partly outside the frame: centre the eye in the view and retake",
    "blurred": "image too blurred: refocus and retake",
    "underexposed": "image too dark: increase flash/exposure and retake",
    "overexposed": "image too bright: reduce flash/exposure and retake",
}


@dataclass(frozen=True)
class QualityLimits:
    """Thresholds of the gate; stored in model.json under ``"quality"``.

    Levels are on the 8-bit scale (16-bit images are scaled first).  ``min_fov_fraction``,
    ``min_redness`` and ``min_edge_sharpness`` apply to fundus only.
    """

    min_side: int
    min_sharpness: float
    max_dark_fraction: float
    max_bright_fraction: float
    dark_level: int = 15
    bright_level: int = 245
    min_fov_fraction: float = 0.0
    min_redness: float = 0.0
    # fundus only; 0 (off) in a card written before it existed
    min_edge_sharpness: float = 0.0

    def __post_init__(self) -> None:
        _check_limits(self, "quality")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "quality") -> QualityLimits:
        return from_data(cls, d, where)

    def validate(self, where: str) -> None:
        _check_limits(self, where)


def _check_limits(lim: Any, where: str) -> None:
    def bad(name: str, problem: str) -> CardError:
        return CardError(problem, field=f"{where}.{name}")

    for f in fields(QualityLimits):
        v = getattr(lim, f.name)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise bad(f.name, f"expected a number, got {v!r}")
        if f.type == "int" and not isinstance(v, int):
            raise bad(f.name, f"expected an integer, got {v!r}")
    if lim.min_side < 1:
        raise bad("min_side", f"must be >= 1, got {lim.min_side}")
    if lim.min_sharpness < 0:
        raise bad("min_sharpness", f"must be >= 0, got {lim.min_sharpness}")
    if lim.min_edge_sharpness < 0:
        raise bad("min_edge_sharpness", f"must be >= 0, got {lim.min_edge_sharpness}")
    for name in ("max_dark_fraction", "max_bright_fraction", "min_fov_fraction", "min_redness"):
        if not 0 <= getattr(lim, name) <= 1:
            raise bad(name, f"must be between 0 and 1, got {getattr(lim, name)}")
    if not 0 <= lim.dark_level < lim.bright_level <= 255:
        raise bad("dark_level", "need 0 <= dark_level < bright_level <= 255")


def default_limits(modality: str) -> QualityLimits:
    """Documented defaults per modality.

    fundus (from the 400 SRahim photos, 768x514; real min/max in brackets):
      min_side 256 [514]; min_fov_fraction 0.70 [min 0.864]; min_sharpness 0.75
      [min 0.967, 1st pct 1.65, median 4.2; Gaussian blur sigma 6-8 px saved as JPEG
      q70-95 still gives 0.55-1.34, so this only catches gross blur];
      min_edge_sharpness 2.3 [min 2.47 (c10_Patient103_L, haze of a vitreous
      haemorrhage; 2.45-2.51 re-encoded at q70, resized 0.67x / 1.5x or dimmed; next
      photo 2.57), median 7.6; the 40 camera originals 3872x2592 min 2.48 (2.50 decoded
      at 1/8, as screening decodes them); synthetic fundus (seed 12, 200) min 2.55;
      all 400 blurred at sigma 6 px and saved as JPEG at every quality 70-95 max 2.14
      (median 1.4), at sigma 8 px max 1.6; sigma 4 px median 2.1, so about a third of
      those still pass];
      dark_level 40 / max_dark_fraction 0.40 [max 0.165]; bright_level 240 /
      max_bright_fraction 0.05 [max 0.0072]; min_redness 0.5 [min 0.973; grey 0].
    oct / cxr: no real OCT here and the CXR mini set is 64x64, so these are lax:
      min_side 64 (cards should raise it towards the model input size), exposure
      limits that only catch frames that are mostly black or mostly white.
    """
    if modality == "fundus":
        return QualityLimits(
            min_side=256,
            min_sharpness=0.75,
            max_dark_fraction=0.40,
            max_bright_fraction=0.05,
            dark_level=40,
            bright_level=240,
            min_fov_fraction=0.70,
            min_redness=0.5,
            min_edge_sharpness=2.3,
        )
    if modality in ("oct", "cxr"):
        return QualityLimits(
            min_side=64,
            min_sharpness=0.002,
            max_dark_fraction=0.80 if modality == "oct" else 0.45,
            max_bright_fraction=0.50,
            dark_level=10,
            bright_level=250,
        )
    raise CardError(
        f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}",
        field="quality.modality",
    )


@dataclass(frozen=True)
class QualityIssue:
    code: str
    message: str

    @classmethod
    def of(cls, code: str) -> QualityIssue:
        return cls(code, MESSAGES[code])


@dataclass
class QualityReport:
    gradable: bool
    issues: list[QualityIssue] = field(default_factory=list)
    measurements: dict[str, float] = field(default_factory=dict)

    @property
    def reasons(self) -> list[str]:
        return [i.message for i in self.issues]

    @property
    def codes(self) -> list[str]:
        return [i.code for i in self.issues]

    def to_dict(self) -> dict[str, Any]:
        return {
            "gradable": self.gradable,
            "reasons": self.reasons,
            "issues": [asdict(i) for i in self.issues],
            "measurements": dict(self.measurements),
        }


@lru_cache(maxsize=4)
def _crop_coords(size: int) -> np.ndarray:
    """Pixel-centre coordinates (2, size, size): [0] row + 0.5, [1] column + 0.5 (read-only)."""
    out = np.mgrid[0:size, 0:size].astype(np.float32) + np.float32(0.5)
    out.setflags(write=False)
    return out


def _edge_sharpness(green: np.ndarray, mask: np.ndarray, mean: float) -> float:
    """How sharp the sharpest strong edges are, at the reference radius (see module doc).

    ``green``: float32 green channel of the crop; ``mask``: where to measure (uint8).
    """
    inner = cv2.erode(mask, _ERODE_EDGE)
    x, y, w, h = cv2.boundingRect(inner)
    if w * h < 100:
        return 1.0
    # Only the box around the measured pixels, with the coarse kernel's reach around it
    # (cv2 reflects at the crop's own border either way, so the result is the same).
    pad = _EDGE_PAD
    x0, y0 = max(x - pad, 0), max(y - pad, 0)
    x1, y1 = min(x + w + pad, green.shape[1]), min(y + h + pad, green.shape[0])
    g = green[y0:y1, x0:x1]
    inner = inner[y0:y1, x0:x1] > 0
    fine = _gradient(cv2.GaussianBlur(g, (0, 0), _EDGE_FINE))
    vals = fine[inner]
    if vals.size < 100:
        return 1.0
    level = float(np.partition(vals, vals.size // 2)[vals.size // 2])
    contrast = _EDGE_CONTRAST * max(mean, 50.0)
    peaks = inner & (fine >= cv2.dilate(fine, _PEAK)) & (fine > contrast)
    strong = peaks & (fine > _EDGE_STRONG * level)
    if np.count_nonzero(strong) >= _EDGE_MIN_COUNT:
        peaks = strong
    # else no edge stands out of the texture: a photo as noisy as its edges are strong
    # is judged on all its contrasted edges (noise included), not called blurred.
    f = fine[peaks]
    if f.size < _EDGE_MIN_COUNT:
        return 1.0  # no contrasted edge at all: as flat as a defocused picture
    coarse = _gradient(cv2.GaussianBlur(g, (0, 0), _EDGE_COARSE))
    ratio = f / np.maximum(coarse[peaks], 1e-6)
    # In float64: NumPy 1 and 2 interpolate a float32 percentile in different precisions,
    # and the Triton server's environment runs NumPy 1 (runtime/triton/server.py).
    return float(np.percentile(ratio.astype(np.float64), 90))


def _gradient(x: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(x, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
    gy = cv2.Sobel(x, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
    return cv2.magnitude(gx, gy)


def _fundus(
    image: np.ndarray, lim: QualityLimits, disc: Disc | None, m: dict[str, float]
) -> list[str]:
    rgb = to_rgb(image)
    if disc is None:
        disc = find_fundus_disc(rgb)
    m.update(
        disc_found=float(disc.found),
        disc_cx=float(disc.cx),
        disc_cy=float(disc.cy),
        disc_radius=float(disc.radius),
        fov_fraction=float(disc.fov_fraction),
        disc_fit_iou=float(disc.fit_iou),
    )
    if not disc.found:
        # A frame that is nearly all black (or white) is an exposure problem, not a
        # missing eye; say so, so the technician changes the right thing.
        luma = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        p99 = percentile_u8(luma, 99)
        p1 = percentile_u8(luma, 1)
        value = cv2.max(cv2.max(rgb[:, :, 0], rgb[:, :, 1]), rgb[:, :, 2])
        chroma = float(
            np.mean(cv2.subtract(value, cv2.min(cv2.min(rgb[:, :, 0], rgb[:, :, 1]), rgb[:, :, 2])))
        )
        bright = float(np.count_nonzero(rgb[:, :, 1] > lim.bright_level)) / luma.size
        m.update(luma_p1=p1, luma_p99=p99, chroma=chroma, bright_fraction=bright)
        if p99 < lim.dark_level:
            return ["underexposed"]
        if chroma >= 3.0 and (p1 > lim.bright_level or bright > lim.max_bright_fraction):
            return ["overexposed"]
        return ["not_fundus"]
    size = 2 * _REF_RADIUS
    crop = crop_square(rgb, disc.cx + 0.5, disc.cy + 0.5, disc.radius, size)
    # Inside the inner circle and inside the frame (the crop is black-padded outside).
    s = size / (2 * disc.radius)
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, (_REF_RADIUS, _REF_RADIUS), round(_INNER * _REF_RADIUS), 255, cv2.FILLED)
    h, w = rgb.shape[:2]
    x0 = (-0.5 - (disc.cx - disc.radius)) * s
    y0 = (-0.5 - (disc.cy - disc.radius)) * s
    frame = np.zeros_like(mask)
    pt1 = (max(0, math.ceil(x0) + 2), max(0, math.ceil(y0) + 2))
    pt2 = (min(size - 1, math.floor(x0 + w * s) - 3), min(size - 1, math.floor(y0 + h * s) - 3))
    cv2.rectangle(frame, pt1, pt2, 255, cv2.FILLED)
    mask = cv2.bitwise_and(mask, frame)
    if disc.cuts:  # straight edges of the field inside the frame: black beyond them
        u = _crop_coords(size)
        for nx, ny, c in disc.cuts:
            # crop pixel u is at source x = (u + 0.5) / s + cx - r; keep 2.5 px inside
            off = nx * (disc.cx - disc.radius) + ny * (disc.cy - disc.radius)
            mask[nx * u[1] + ny * u[0] > (c - off) * s - 2.5] = 0
    n = cv2.countNonZero(mask)
    if n < 100:
        m["measured_pixels"] = float(n)
        return ["fov_cut_off"]
    r, g, b = cv2.split(crop)
    # Fine-detail contrast: the band below ~2 px (at the reference radius) of the green
    # channel, relative to its brightness.  Unlike band ratios it falls monotonically
    # with defocus, down to the quantisation floor (~0.4).  Masked sums are taken by
    # OpenCV (in float64) rather than by indexing copies out of the crop.
    gf = g.astype(np.float32)
    fine = gf - cv2.GaussianBlur(gf, (0, 0), 2.0)
    inner = cv2.erode(mask, np.ones((9, 9), np.uint8))
    g_mean = cv2.mean(gf, mask)[0]
    fine_std = float(cv2.meanStdDev(fine, mask=inner)[1][0, 0]) if cv2.countNonZero(inner) else 0.0
    value = cv2.max(cv2.max(r, g), b)
    red = cv2.min(cv2.subtract(r, g), cv2.subtract(r, b))

    def share(test: np.ndarray) -> float:  # of the measured pixels
        return cv2.countNonZero(cv2.bitwise_and(test, mask)) / n

    m.update(
        sharpness=100.0 * fine_std / max(g_mean, 50.0),
        edge_sharpness=_edge_sharpness(gf, mask, g_mean),
        mean_luma=cv2.mean(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), mask)[0],
        dark_fraction=share(cv2.compare(value, lim.dark_level, cv2.CMP_LT)),
        bright_fraction=share(cv2.compare(g, lim.bright_level, cv2.CMP_GT)),
        redness=share(cv2.compare(red, 10, cv2.CMP_GT)),
        chroma=cv2.mean(cv2.subtract(value, cv2.min(cv2.min(r, g), b)), mask)[0],
    )
    codes = []
    if m["dark_fraction"] > lim.max_dark_fraction:
        codes.append("underexposed")
    if m["bright_fraction"] > lim.max_bright_fraction:
        codes.append("overexposed")
    # Colour is unreliable in a badly exposed photo; the exposure message is the useful one.
    # A grey picture (chest X-ray, flat frame) is never a colour fundus photo, whatever
    # its exposure; otherwise colour is unreliable in a badly exposed photo, and the
    # exposure message is the useful one.
    if m["chroma"] < 3.0 or (not codes and m["redness"] < lim.min_redness):
        codes.append("not_fundus")
    if disc.fov_fraction < lim.min_fov_fraction:
        codes.append("fov_cut_off")
    if m["sharpness"] < lim.min_sharpness or m["edge_sharpness"] < lim.min_edge_sharpness:
        codes.append("blurred")
    return codes


def _grey(image: np.ndarray, lim: QualityLimits, m: dict[str, float]) -> list[str]:
    grey = to_uint8(to_grey(image))
    h, w = grey.shape
    f = min(1.0, _REF_SIDE / max(h, w))
    if f < 1.0:
        grey = cv2.resize(grey, (max(1, round(w * f)), max(1, round(h * f))), cv2.INTER_AREA)
    mean, std = cv2.meanStdDev(grey)
    std = float(std[0, 0])
    lap = cv2.Laplacian(grey, cv2.CV_32F)
    lap_var = float(np.var(lap[1:-1, 1:-1], dtype=np.float64)) if min(grey.shape) > 2 else 0.0
    n = grey.size
    m.update(
        sharpness=lap_var / max(std, 1.0) ** 2,
        mean_luma=float(mean[0, 0]),
        contrast=std,
        dark_fraction=float(np.count_nonzero(grey < lim.dark_level)) / n,
        bright_fraction=float(np.count_nonzero(grey > lim.bright_level)) / n,
    )
    codes = []
    if m["dark_fraction"] > lim.max_dark_fraction:
        codes.append("underexposed")
    if m["bright_fraction"] > lim.max_bright_fraction:
        codes.append("overexposed")
    if std < 2.0 or m["sharpness"] < lim.min_sharpness:
        codes.append("blurred")
    return codes


def assess_quality(
    image: np.ndarray,
    modality: str,
    limits: QualityLimits | None = None,
    *,
    disc: Disc | None = None,
) -> QualityReport:
    """Measure ``image`` and decide whether it is gradable for ``modality``.

    ``disc`` (fundus): a Disc already found by the caller, so it is not searched twice.
    """
    if modality not in MODALITIES:
        raise CardError(
            f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}",
            field="modality",
        )
    lim = limits if limits is not None else default_limits(modality)
    h, w = image.shape[:2]
    m: dict[str, float] = {"height": float(h), "width": float(w)}
    if min(h, w) < lim.min_side:
        return QualityReport(False, [QualityIssue.of("too_small")], m)
    codes = _fundus(image, lim, disc, m) if modality == "fundus" else _grey(image, lim, m)
    issues = [QualityIssue.of(c) for c in codes]
    return QualityReport(not issues, issues, m)


# The smallest disc the gate measures as found, without a finer decode: its crop enlarges a
# disc below _REF_RADIUS, which softens edges. Measured on the 400 SRahim copies shrunk so
# that their disc radius is 185 px: edge_sharpness stays >= 2.40 (limit 2.3, 2.47 at the
# reference) and no photo is rejected; at 180 px the hazy minimum photo falls to 1.79.
MIN_DISC_RADIUS = 186
# Radius / shorter side of a field of view about 1.2 frame heights across, as on cameras
# whose circle is cut by the top and bottom of the frame (0.58-0.66 on the 40 originals).
_CLIPPED_RADIUS_FRAC = 0.6


def coarse_measuring_side(modality: str) -> int | None:
    """A shorter side at which a fundus disc clipped by the frame's top and bottom is still
    measurable (radius >= MIN_DISC_RADIUS); None where no such shortcut exists (OCT/CXR).

    A smaller disc at that scale needs measuring_side's decode instead (prepare.decode_scaled
    checks the disc it finds and decodes again when it falls short).
    """
    if modality != "fundus":
        return None
    return math.ceil(MIN_DISC_RADIUS / _CLIPPED_RADIUS_FRAC)


def measuring_side(modality: str) -> int:
    """The shorter side an image can be shrunk to and still be measured at the gate's scale.

    Fundus: the disc is measured at radius _REF_RADIUS, and a camera's field of view spans at
    least 0.8 of the frame's shorter side (more where the circle is clipped), so a shorter
    side of 2.5 radii keeps the disc at or above the reference. OCT/CXR: measured with the
    longer side at _REF_SIDE, which a shorter side of _REF_SIDE keeps.
    """
    return round(2.5 * _REF_RADIUS) if modality == "fundus" else _REF_SIDE
