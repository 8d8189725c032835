"""Synthetic fundus, retinal OCT and chest X-ray images whose labels are visible in the pixels.

They stand in for real data in tests, smoke trainings and calibration dry runs (there is no
real OCT set at all). Each generator draws anatomy, pathology and camera nuisances from
separate child generators, so the same seed with and without a finding differs only by
that finding. Only numpy, OpenCV and the standard library: this runs anywhere.

`synthesize` writes the project's generic layout (``labels.csv``: ``path,label,patient``).
Image ``i`` and patient ``k`` are drawn from ``(seed, modality, i)`` and ``(seed, modality,
k)`` alone, so ``n=10`` is a prefix of ``n=1000`` and any slice can be regenerated
independently.
"""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from edgescreen.runtime.labels import CXR_FINDINGS, DR_GRADES, MODALITIES, NO_FINDING, OCT_CLASSES

__all__ = [
    "contact_sheet",
    "generate_cxr",
    "generate_fundus",
    "generate_oct",
    "image_rng",
    "synthesize",
]

_SHIFT = 4  # cv2 sub-pixel drawing: coordinates are fixed point with 4 fractional bits
_ONE = 1 << _SHIFT
_AA = cv2.LINE_AA


# ---------------------------------------------------------------------------- helpers


def _children(rng: np.random.Generator, n: int) -> list[np.random.Generator]:
    # Derived from the parent's stream, so this works for any Generator (not only seeded ones).
    return [np.random.default_rng(int(s)) for s in rng.integers(0, 2**63 - 1, size=n)]


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates normalised to [0, 1): (u across, v down), read-only."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    u = np.broadcast_to(c[None, :], (size, size))
    v = np.broadcast_to(c[:, None], (size, size))
    return u, v


def _lowfreq(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth zero-mean unit-ish noise with about `cells` blobs across."""
    small = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    big = cv2.resize(small, (size + 2 * size // cells, size + 2 * size // cells), interpolation=cv2.INTER_CUBIC)
    o = size // cells
    return big[o : o + size, o : o + size]


def _fx(p: float) -> int:
    return int(round(p * _ONE))


def _pts(xy: list[tuple[float, float]]) -> np.ndarray:
    return (np.asarray(xy, dtype=np.float64) * _ONE).round().astype(np.int32).reshape(-1, 1, 2)


def _circle(img: np.ndarray, c: tuple[float, float], r: float, val: float, thick: int = -1) -> None:
    cv2.circle(img, (_fx(c[0]), _fx(c[1])), max(_fx(r), 1), val, thick, _AA, _SHIFT)


def _ellipse(img, c, axes, angle_deg: float, val: float, thick: int = -1) -> None:
    cv2.ellipse(
        img,
        (_fx(c[0]), _fx(c[1])),
        (max(_fx(axes[0]), 1), max(_fx(axes[1]), 1)),
        angle_deg,
        0,
        360,
        val,
        thick,
        _AA,
        _SHIFT,
    )


def _line(img, xy: list[tuple[float, float]], val: float, thick: int, closed: bool = False) -> None:
    cv2.polylines(img, [_pts(xy)], closed, val, max(1, int(round(thick))), _AA, _SHIFT)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma < 0.3:
        return img
    return cv2.GaussianBlur(img, (0, 0), sigma)


def _grow_tree(
    rng: np.random.Generator,
    segments: list[tuple[list[tuple[float, float]], float, int]],
    x: float,
    y: float,
    ang: float,
    width: float,
    length: float,
    depth: int,
    curv: float,
    step: float,
    inside: Callable[[float, float], bool],
    tag: int = 0,
    wiggle: float = 0.07,
    min_width: float = 0.35,
) -> None:
    """Recursive branching random-walk polyline (retinal vessels, lung markings, bronchograms).

    Appends (points, width, tag) to `segments`; children are thinner and shorter.
    """
    n = max(2, int(length / step))
    noise = rng.normal(0.0, wiggle, n)
    pts = [(x, y)]
    for i in range(n):
        ang += curv + noise[i]
        curv *= 0.96
        x += step * math.cos(ang)
        y += step * math.sin(ang)
        if not inside(x, y):
            break
        pts.append((x, y))
    segments.append((pts, width, tag))
    if depth <= 0 or len(pts) < n // 2 + 1 or width * 0.8 < min_width:
        return
    # Asymmetric bifurcation: the main trunk continues with most of the calibre.
    side = 1.0 if rng.random() < 0.5 else -1.0
    spread = rng.uniform(0.35, 0.75)
    _grow_tree(
        rng, segments, x, y, ang - side * spread * 0.4, width * 0.82, length * rng.uniform(0.75, 0.95),
        depth - 1, curv, step, inside, tag, wiggle, min_width,
    )  # fmt: skip
    _grow_tree(
        rng, segments, x, y, ang + side * spread, width * 0.62, length * rng.uniform(0.45, 0.75),
        depth - 1, curv * 0.5, step, inside, tag, wiggle, min_width,
    )  # fmt: skip


def _draw_segments(mask: np.ndarray, segments, scale: float = 1.0, tags: set[int] | None = None) -> None:
    """Draw tree segments; sub-pixel calibres become fainter 1-px lines, which reads as thinner."""
    for pts, w, tag in segments:
        if len(pts) < 2 or (tags is not None and tag not in tags):
            continue
        wpx = w * scale
        val = min(1.0, wpx) if wpx < 1.0 else 1.0
        _line(mask, pts, val, max(1, int(round(wpx))))


# ---------------------------------------------------------------------------- fundus


def generate_fundus(
    rng: np.random.Generator, grade: int, size: int = 256, *, eye: str | None = None
) -> np.ndarray:
    """Colour fundus photograph (RGB uint8 HxWx3) showing ICDR DR grade `grade` (0-4).

    `eye` ("L"/"R") puts the optic disc on the matching side; random when None.
    """
    grade = int(grade)
    if not 0 <= grade < len(DR_GRADES):
        raise ValueError(f"DR grade must be 0..{len(DR_GRADES) - 1}, got {grade}")
    S = int(size)
    anat, les, cam = _children(rng, 3)
    u, v = _grid(S)
    X, Y = u * S, v * S

    # Camera framing: the field of view circle, sometimes clipped top/bottom like 3:2 sensors.
    R = S * anat.uniform(0.40, 0.53)
    cx = S / 2 + anat.normal(0, 0.025 * S)
    cy = S / 2 + anat.normal(0, 0.025 * S)
    if eye is None:
        eye = "L" if anat.random() < 0.5 else "R"
    side = -1.0 if eye == "L" else 1.0  # disc on the image left for a left eye
    dx, dy = X - cx, Y - cy
    r2 = (dx * dx + dy * dy) / (R * R)

    # Anatomy positions in disc-radius units; temporal direction is -side.
    disc = (cx + side * R * anat.uniform(0.38, 0.50), cy + R * anat.normal(-0.03, 0.05))
    rd = R * anat.uniform(0.085, 0.11)
    mac = (cx - side * R * anat.uniform(0.02, 0.10), disc[1] + R * anat.uniform(0.02, 0.10))

    # Background: orange-red fundus with choroidal mottling and a darker, pigmented macula.
    base = np.array([0.86, 0.40, 0.13], np.float32) * np.float32(anat.uniform(0.85, 1.1))
    base[1] *= anat.uniform(0.85, 1.15)
    lum = 1.0 + 0.07 * _lowfreq(anat, S, 6) + 0.035 * _lowfreq(anat, S, 24)
    lum -= 0.42 * np.power(np.minimum(r2, 1.3), 1.6)  # vignetting towards the rim
    mdx, mdy = X - mac[0], Y - mac[1]
    md2 = (mdx * mdx + mdy * mdy) / (R * R)
    lum -= 0.30 * np.exp(-md2 / (2 * 0.11**2)) + 0.18 * np.exp(-md2 / (2 * 0.025**2))
    ddx, ddy = X - disc[0], Y - disc[1]
    dd2 = (ddx * ddx + ddy * ddy) / (rd * rd)
    lum += 0.18 * np.exp(-dd2 / (2 * 2.2**2))  # peripapillary glow
    img = lum[..., None] * base
    img[..., 1] += 0.02 * _lowfreq(anat, S, 12)

    # Optic disc: yellow-pink rim, pale cup.
    dmask = np.clip(1.15 - np.power(dd2, 2.0), 0, 1)[..., None] * 0.85
    dcol = np.array([1.0, 0.78, 0.48], np.float32)
    img = img * (1 - dmask) + dcol * dmask
    cup = np.clip(1.0 - dd2 / anat.uniform(0.2, 0.4), 0, 1)[..., None] * 0.6
    img = img * (1 - cup) + np.array([1.0, 0.93, 0.78], np.float32) * cup

    # Vessels: four arcades from the disc (temporal ones arch around the macula) plus nasal
    # branches; veins (tag 1) darker and wider than arteries (tag 0).
    step = R * 0.035

    def inside(x: float, y: float) -> bool:
        ex, ey = x - cx, y - cy
        if ex * ex + ey * ey > (1.05 * R) ** 2:
            return False
        fx, fy = x - mac[0], y - mac[1]
        return fx * fx + fy * fy > (0.10 * R) ** 2

    segs: list = []
    tmp = math.pi if side > 0 else 0.0  # temporal direction angle
    wv = S / 256 * anat.uniform(2.2, 2.8)
    for tag, wmul in ((1, 1.0), (0, 0.72)):
        for up in (-1.0, 1.0):
            off = anat.normal(0, 0.15)
            a0 = tmp + up * (1.15 + off) * (1 if side < 0 else -1)
            curv = -up * (1 if side < 0 else -1) * anat.uniform(0.05, 0.075)
            start = (disc[0] + rd * 0.3 * math.cos(a0), disc[1] + rd * 0.3 * math.sin(a0))
            _grow_tree(anat, segs, *start, a0, wv * wmul, R * 0.55, 4, curv, step, inside, tag)
            an = tmp + math.pi - up * anat.uniform(0.5, 1.1) * (1 if side < 0 else -1)
            _grow_tree(anat, segs, *start, an, wv * wmul * 0.8, R * 0.4, 3, 0.0, step, inside, tag)
        for _ in range(2):  # small macular branches
            a = tmp + anat.normal(0, 0.25)
            _grow_tree(anat, segs, disc[0], disc[1], a, wv * 0.35, R * 0.3, 1, 0.0, step, inside, tag)

    vmask = np.zeros((S, S), np.float32)
    amask = np.zeros((S, S), np.float32)
    for pts, w, tag in segs:
        if len(pts) < 2:
            continue
        val = min(1.0, w) if w < 1 else 1.0
        _line(vmask if tag else amask, pts, val, max(1, int(round(w))))

    # ------------------------------------------------ lesions (grade-dependent)
    red = np.zeros((S, S), np.float32)  # microaneurysms, haemorrhages
    yel = np.zeros((S, S), np.float32)  # hard exudates
    wht = np.zeros((S, S), np.float32)  # cotton-wool spots, fibrosis
    neo = np.zeros((S, S), np.float32)  # new vessels
    k = S / 256.0

    def spot(spread: float = 0.55) -> tuple[float, float]:
        # Lesions cluster in the posterior pole around the macula, away from the disc.
        for _ in range(20):
            px = mac[0] + les.normal(0, spread) * R
            py = mac[1] + les.normal(0, spread * 0.8) * R
            if (px - cx) ** 2 + (py - cy) ** 2 < (0.9 * R) ** 2 and (px - disc[0]) ** 2 + (
                py - disc[1]
            ) ** 2 > (1.6 * rd) ** 2:
                return px, py
        return mac[0], mac[1] - 0.3 * R

    lo, hi = {0: (0, 0), 1: (3, 8), 2: (6, 14), 3: (8, 16), 4: (8, 16)}[grade]
    for _ in range(les.integers(lo, hi + 1)):  # microaneurysms: tiny, crisp, dark red
        _circle(red, spot(), k * les.uniform(0.7, 1.2), 1.0)
    n_hem = {0: 0, 1: 0, 2: les.integers(3, 8), 3: les.integers(10, 20), 4: les.integers(8, 18)}[grade]
    for _ in range(n_hem):
        p = spot(0.6)
        if les.random() < 0.7:  # dot/blot: a lumpy cluster of ellipses
            for _ in range(les.integers(1, 4)):
                q = (p[0] + les.normal(0, 1.2 * k), p[1] + les.normal(0, 1.2 * k))
                ax = k * les.uniform(1.5, 3.5)
                _ellipse(red, q, (ax, ax * les.uniform(0.6, 1.0)), les.uniform(0, 180), 0.95)
        else:  # flame: elongated along the nerve fibres (radial from the disc)
            ang = math.degrees(math.atan2(p[1] - disc[1], p[0] - disc[0]))
            _ellipse(red, p, (k * les.uniform(4, 7), k * les.uniform(1.2, 2.0)), ang, 0.85)
    n_ex = {0: 0, 1: 0, 2: les.integers(2, 5), 3: les.integers(3, 7), 4: les.integers(3, 7)}[grade]
    for _ in range(n_ex):  # hard exudates: clusters or circinate rings of small yellow dots
        c = spot(0.4)
        ring = les.random() < 0.35
        rr = k * les.uniform(5, 12)
        for _ in range(les.integers(3, 10)):
            if ring:
                t = les.uniform(0, 2 * math.pi)
                q = (c[0] + rr * math.cos(t), c[1] + rr * math.sin(t))
            else:
                q = (c[0] + les.normal(0, 3.5 * k), c[1] + les.normal(0, 3.5 * k))
            _circle(yel, q, k * les.uniform(0.7, 2.0), 1.0)
    if grade >= 3:
        for _ in range(les.integers(2, 6)):  # cotton-wool spots: fluffy pale patches near arcades
            pts, _w, _t = segs[les.integers(0, min(8, len(segs)))]
            p = pts[les.integers(0, len(pts))]
            p = (p[0] + les.normal(0, 4 * k), p[1] + les.normal(0, 4 * k))
            ax = k * les.uniform(3.0, 6.0)
            _ellipse(wht, p, (ax, ax * les.uniform(0.5, 0.9)), les.uniform(0, 180), 0.75)
        # Venous beading: sausage-like calibre changes along the main veins.
        for pts, w, tag in segs[:16]:
            if tag != 1 or len(pts) < 6 or les.random() < 0.4:
                continue
            for j in range(2, len(pts) - 1, 3):
                _circle(vmask, pts[j], max(w * 0.9, 1.0) * les.uniform(1.0, 1.4), 1.0)
    if grade == 4:
        # Neovascularisation: tufts of fine, tortuous loops at the disc and/or on the arcades.
        sites = []
        if les.random() < 0.65:
            sites.append((disc[0] + les.normal(0, rd * 0.6), disc[1] + les.normal(0, rd * 0.6)))
        while not sites or (len(sites) < 3 and les.random() < 0.6):
            pts, _w, _t = segs[les.integers(0, min(16, len(segs)))]
            sites.append(pts[les.integers(len(pts) // 3, len(pts))])
        for sx, sy in sites:
            for _ in range(les.integers(5, 10)):
                x, y, a = sx, sy, les.uniform(0, 2 * math.pi)
                pts = [(x, y)]
                for _ in range(les.integers(8, 16)):
                    a += les.normal(0, 0.9)
                    x += 1.4 * k * math.cos(a)
                    y += 1.4 * k * math.sin(a)
                    pts.append((x, y))
                _line(neo, pts, 0.9, 1)
        if les.random() < 0.4:  # pre-retinal (boat-shaped) haemorrhage
            p = spot(0.5)
            _ellipse(red, p, (k * les.uniform(7, 12), k * les.uniform(4, 7)), 0, 0.9)
        if les.random() < 0.35:  # fibrovascular veil along an arcade
            pts, _w, _t = segs[0]
            _line(wht, pts, 0.45, max(1, int(6 * k)))

    # Composite: lesions and vessels on top of the background.
    wht = _blur(wht, 2.0 * k)
    neo = _blur(neo, 0.4 * k)
    vm = np.clip(vmask + 0.8 * neo, 0, 1)[..., None]
    am = amask[..., None]
    img = img * (1 - 0.55 * vm * np.array([0.55, 1.0, 1.0], np.float32))
    img = img * (1 - 0.42 * am * np.array([0.35, 1.0, 1.0], np.float32))
    rm = red[..., None]
    img = img * (1 - rm) + rm * (img * np.array([0.5, 0.18, 0.2], np.float32))
    ym = yel[..., None]
    img = img * (1 - ym) + ym * np.array([1.0, 0.88, 0.35], np.float32)
    wm = wht[..., None]
    img = img * (1 - wm) + wm * np.array([0.98, 0.88, 0.72], np.float32)

    # ------------------------------------------------ camera nuisances
    gain = np.exp(cam.normal(0.0, 0.18))
    cast = np.array([1.0, *np.exp(cam.normal(0.0, 0.08, 2))], np.float32)
    img = np.clip(img * (gain * cast), 0, 1.2)
    img = np.power(np.clip(img, 0, None), np.float32(cam.uniform(0.85, 1.2)))
    if cam.random() < 0.5:
        img = _blur(img, cam.uniform(0.4, 1.2) * k)  # slight defocus
    img += cam.normal(0, 0.012, (S, S, 1)).astype(np.float32)
    ap = np.clip((1.0 - np.sqrt(r2)) * R / 1.2 + 0.5, 0, 1)  # aperture with a soft 1-px rim
    if cam.random() < 0.4:  # the sensor's 3:2 frame cuts the circle top and bottom
        h = R * cam.uniform(0.8, 0.93)
        ap = ap * ((Y > cy - h) & (Y < cy + h))
    img = img * ap[..., None]
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------- OCT

# Retinal layers from the inner limiting membrane down, with their (pre-speckle) reflectivity
# and thickness in pixels at 256 px. Region 0 is the vitreous.
_OCT_LAYERS: tuple[tuple[str, float, float], ...] = (
    ("rnfl", 0.80, 4.5),
    ("gcl", 0.40, 5.0),
    ("ipl", 0.55, 4.5),
    ("inl", 0.22, 4.5),
    ("opl", 0.55, 3.0),
    ("onl", 0.10, 13.0),
    ("elm", 0.42, 1.2),
    ("myoid", 0.14, 2.5),
    ("ez", 0.85, 2.2),
    ("os", 0.30, 2.0),
    ("iz", 0.60, 1.6),
)


def generate_oct(rng: np.random.Generator, label: str, size: int = 256) -> np.ndarray:
    """Retinal OCT B-scan (grey uint8 HxW) of class `label` (CNV, DME, DRUSEN, NORMAL)."""
    if label not in OCT_CLASSES:
        raise ValueError(f"OCT class must be one of {OCT_CLASSES}, got {label!r}")
    S = int(size)
    k = S / 256.0
    anat, path, cam = _children(rng, 3)
    xs = np.arange(S, dtype=np.float32)
    t = (xs - S / 2) / S

    # Bruch's membrane: a gently curved, tilted, slightly wavy profile.
    bm = S * (
        anat.uniform(0.56, 0.68)
        + anat.uniform(-0.10, 0.35) * t * t
        + anat.uniform(-0.12, 0.12) * t
        + 0.008 * _lowfreq(anat, S, 3)[0]
    )
    fx = S / 2 + anat.normal(0, 0.06 * S)  # fovea
    fov = np.exp(-((xs - fx) ** 2) / (2 * (anat.uniform(0.045, 0.065) * S) ** 2))
    pit = anat.uniform(0.75, 0.95)
    th = {name: np.full(S, thick * k * anat.uniform(0.85, 1.15), np.float32) for name, _, thick in _OCT_LAYERS}
    # RNFL thickens towards the (off-screen) disc on one side; inner layers vanish in the pit.
    th["rnfl"] *= 1.0 + anat.uniform(0.3, 1.2) * np.clip(t * (1 if anat.random() < 0.5 else -1) * 2, 0, 1)
    for name in ("rnfl", "gcl", "ipl", "inl", "opl"):
        th[name] *= 1.0 - pit * fov
    th["onl"] *= 1.0 + 0.35 * fov
    sub = np.zeros(S, np.float32)  # material between Bruch's membrane and the RPE
    srf = np.zeros(S, np.float32)  # sub-retinal fluid between RPE and photoreceptors
    sub_val = 0.55

    def dome(c: float, w: float, h: float, p: float = 0.5) -> np.ndarray:
        return (h * np.power(np.clip(1.0 - ((xs - c) / w) ** 2, 0, 1), p)).astype(np.float32)

    cysts: list[tuple[float, float, float, float]] = []
    if label == "DRUSEN":
        for _ in range(path.integers(2, 7)):
            c = fx + path.normal(0, 0.15 * S)
            sub += dome(c, k * path.uniform(7, 17), k * path.uniform(3, 10), 0.6)
        sub_val = path.uniform(0.45, 0.65)
    elif label == "CNV":
        c = fx + path.normal(0, 0.06 * S)
        w = k * path.uniform(22, 45)
        sub += dome(c, w, k * path.uniform(10, 24), 0.7)
        sub_val = 0.82
        if path.random() < 0.85:
            srf += dome(c + path.normal(0, 8 * k), w * path.uniform(1.1, 1.8), k * path.uniform(5, 15), 0.8)
        for name in ("inl", "onl"):  # overlying oedema
            th[name] *= 1.0 + path.uniform(0.2, 0.6) * fov
        for _ in range(path.integers(0, 3)):
            cysts.append((c + path.normal(0, w * 0.5), 0.5, k * path.uniform(2, 5), k * path.uniform(2, 4)))
    elif label == "DME":
        swell = np.exp(-((xs - fx - path.normal(0, 10 * k)) ** 2) / (2 * (path.uniform(0.1, 0.18) * S) ** 2))
        th["inl"] *= 1.0 + path.uniform(1.0, 2.5) * swell
        th["onl"] *= 1.0 + path.uniform(0.6, 1.4) * swell
        for name in ("rnfl", "gcl", "ipl", "opl"):  # the pit fills in
            th[name] = th[name] + pit * fov * _OCT_LAYERS[0][2] * k * 0.6
        for _ in range(path.integers(4, 12)):
            rx = k * path.uniform(2.5, 8.0)
            cysts.append((fx + path.normal(0, 0.09 * S), path.random(), rx, rx * path.uniform(0.7, 1.4)))
        if path.random() < 0.4:
            srf += dome(fx + path.normal(0, 6 * k), k * path.uniform(12, 25), k * path.uniform(3, 7))

    # Boundaries, bottom-up from Bruch's membrane, then listed top-down.
    rpe_bot = bm - sub
    rpe_top = rpe_bot - k * anat.uniform(3.0, 4.0)
    y = rpe_top - srf
    bounds = [bm, rpe_bot, rpe_top]
    for name, _, _ in reversed(_OCT_LAYERS):
        bounds.append(y)
        y = y - th[name]
    bounds.append(y)  # the inner limiting membrane
    bounds = bounds[::-1]
    lut = np.array(
        [0.03] + [val for _, val, _ in _OCT_LAYERS] + [0.03, 0.97, sub_val, 0.0], np.float32
    )  # vitreous, layers, fluid, RPE, sub-RPE, choroid (filled below)
    _, Yg = _grid(S)
    Y = Yg * S
    region = np.zeros((S, S), np.uint8)
    for b in bounds:
        region += Y >= b[None, :]
    img = lut[region]

    # Choroid: reflectivity fading with depth, dark vessel lumens; sclera below.
    depth = (Y - bm[None, :]) / S
    chor = 0.62 * np.exp(-depth / anat.uniform(0.06, 0.11)) * np.clip(1.0 + 0.55 * _lowfreq(anat, S, 18), 0.1, None)
    img = np.where(region == len(bounds), chor, img)
    if label == "CNV":  # the fibrovascular mass is lumpy
        mass = region == len(bounds) - 1
        img = np.where(mass, img * np.clip(1 + 0.5 * _lowfreq(path, S, 20), 0.3, 1.6), img)

    if cysts:
        cm = np.zeros((S, S), np.float32)
        inl_top, onl_bot = bounds[3], bounds[6]
        for cxp, frac, rx, ry in cysts:
            xi = int(np.clip(cxp, 0, S - 1))
            cy = inl_top[xi] + frac * (onl_bot[xi] - inl_top[xi])
            _ellipse(cm, (cxp, cy), (rx, ry), path.uniform(-20, 20), 1.0)
        img = img * (1.0 - 0.93 * cm)

    # Shadows of retinal vessels: dark vertical stripes under the nerve fibre layer.
    for _ in range(anat.integers(2, 6)):
        c, w = anat.uniform(0, S), k * anat.uniform(1.5, 4)
        shade = 1.0 - 0.55 * np.exp(-((xs - c) ** 2) / (2 * w * w))
        below = Y > (bounds[1][None, :] + 1)
        img = np.where(below, img * shade[None, :], img)

    img = cv2.GaussianBlur(img, (0, 0), sigmaX=0.6 * k, sigmaY=0.9 * k)
    # Speckle: multiplicative, laterally correlated (the beam is wider than the axial resolution).
    spk = cam.gamma(1.6, 1 / 1.6, (S, S)).astype(np.float32)
    spk = cv2.blur(spk, (3, 1))
    img = img * spk + np.abs(cam.normal(0, 0.035, (S, S))).astype(np.float32)
    gain = cam.uniform(8, 25)
    img = np.log1p(gain * img) / np.log1p(gain) * cam.uniform(0.85, 1.1)
    # Registration tilt and shift, as scanners rotate the B-scan to follow the retina.
    M = cv2.getRotationMatrix2D((S / 2, S / 2), cam.normal(0, 3.0), 1.0)
    M[1, 2] += cam.normal(0, 0.03 * S)
    img = cv2.warpAffine(img, M, (S, S), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------- chest X-ray


def generate_cxr(rng: np.random.Generator, findings: frozenset[str], size: int = 256) -> np.ndarray:
    """PA chest radiograph (grey uint8 HxW) showing the NIH `findings` (empty: No Finding)."""
    findings = frozenset(findings)
    unknown = findings - set(CXR_FINDINGS)
    if unknown:
        raise ValueError(f"unknown CXR findings {sorted(unknown)}; valid: {CXR_FINDINGS}")
    S = int(size)
    k = S / 256.0
    anat, fnd, cam = _children(rng, 3)
    u, v = _grid(S)
    has = findings.__contains__

    # ---- anatomy parameters (always drawn, in a fixed order, so findings only add to them)
    wc = anat.uniform(0.36, 0.41)  # half-width of the inner rib cage
    mid = 0.5 + anat.normal(0, 0.012)
    apex = anat.uniform(0.09, 0.14)
    cp = anat.uniform(0.76, 0.82)  # costophrenic angles
    dome_h = anat.uniform(0.07, 0.11)
    ldrop = anat.uniform(0.01, 0.035)  # left hemidiaphragm sits lower
    ctr = anat.uniform(0.38, 0.47)
    heart_h = anat.uniform(0.11, 0.14)
    tissue = anat.uniform(0.55, 0.65)
    lung_dark = anat.uniform(0.36, 0.44)

    # ---- findings that change the anatomy itself
    el_r = el_l = 0.0  # hemidiaphragm elevation (volume loss)
    marks = 1.0
    if has("Cardiomegaly"):
        ctr = fnd.uniform(0.55, 0.66)
    if has("Emphysema"):
        cp += fnd.uniform(0.04, 0.07)
        apex -= 0.02
        dome_h *= fnd.uniform(0.2, 0.4)
        lung_dark += fnd.uniform(0.07, 0.11)
        marks = 0.4
        ctr *= 0.92
    atel_side = 0
    if has("Atelectasis"):
        atel_side = -1 if fnd.random() < 0.5 else 1
        el = fnd.uniform(0.04, 0.07)
        el_r, el_l = (el, 0.0) if atel_side < 0 else (0.0, el)
        mid += atel_side * 0.012

    H = cp - apex

    def half_width(vv):  # rib cage: a superellipse above the costophrenic level
        q = np.clip((cp - vv) / H, 0, 1)
        return wc * np.power(1.0 - np.power(q, 2.6), 1 / 2.6)

    hw = half_width(v)
    cage = (np.abs(u - mid) < hw) & (v > apex) & (v < cp + 0.1)
    du = u - mid
    right = du < 0  # patient's right is the image left

    def dome(c, base, h):
        return base - h * np.clip(1.0 - ((u - c) / 0.2) ** 2, 0, 1)

    diaph = np.where(right, dome(mid - wc * 0.45, cp - el_r, dome_h), dome(mid + wc * 0.45, cp + ldrop - el_l, dome_h))
    # Heart: 1/3 right of the midline, 2/3 left; its lower edge sits on the left hemidiaphragm.
    hwid = ctr * wc  # half of the cardiac diameter
    hc = (mid + 0.17 * 2 * hwid, cp + ldrop - dome_h * 0.6 - heart_h * 0.55)
    heart = ((u - hc[0]) / hwid) ** 2 + ((v - hc[1]) / heart_h) ** 2 < 1.0
    med_w = 0.055 + 0.02 * np.exp(-((v - 0.38) ** 2) / 0.004)  # mediastinum, wider at the hila
    medi = np.abs(u - mid) < med_w
    lung = cage & ~heart & ~medi & (v < diaph)
    lungf = lung.astype(np.float32)

    # Body: soft tissue, air outside the shoulders and neck.
    body = np.zeros((S, S), np.uint8)
    sh = anat.uniform(0.10, 0.16)
    outline = [(mid - 0.10, 0.0), (mid - 0.12, sh * 0.6), (mid - 0.30, sh), (mid - 0.45, sh + 0.05), (mid - 0.49, 0.3),
               (mid - 0.48, 1.0), (mid + 0.48, 1.0), (mid + 0.49, 0.3), (mid + 0.45, sh + 0.05), (mid + 0.30, sh),
               (mid + 0.12, sh * 0.6), (mid + 0.10, 0.0)]  # fmt: skip
    _line(body, [(x * S, y * S) for x, y in outline], 1, 1, closed=True)
    cv2.fillPoly(body, [_pts([(x * S, y * S) for x, y in outline])], 1, _AA, _SHIFT)
    D = body.astype(np.float32) * tissue
    D += 0.08 * (v > diaph) * cage  # abdomen below the domes is denser than chest wall
    D -= lung_dark * _blur(lungf, 1.2 * k)

    # Trachea (air column) and the spine with vertebral bodies behind the mediastinum.
    tr = np.zeros((S, S), np.float32)
    _line(tr, [(mid * S, 0), (mid * S, 0.33 * S)], 1.0, 0.03 * S)
    D -= 0.12 * _blur(tr, 1.5 * k)
    sp = (np.abs(u - mid) < 0.035).astype(np.float32) * (0.5 + 0.5 * (np.cos((v - anat.uniform(0, 1)) * 2 * np.pi / 0.045) > -0.7))
    D += 0.10 * _blur(sp, 1.0 * k)

    # Ribs: posterior arcs from the spine, anterior ones faint and sloping; clavicles on top.
    bone = np.zeros((S, S), np.float32)
    rib_gap = (cp - apex) / 9.5
    for sgn in (-1, 1):
        for i in range(10):
            y0 = apex + 0.01 + i * rib_gap
            pts = []
            for j in range(12):
                f = j / 11
                x = mid + sgn * (0.04 + f * (wc + 0.02))
                y = y0 - 0.035 * f + 0.09 * f**3
                pts.append((x * S, y * S))
            _line(bone, pts, 0.6, 0.018 * S)
            _line(bone, [(px, py - 0.009 * S) for px, py in pts], 1.0, 1)
            if i < 6:
                a = [(mid + sgn * (wc + 0.01)) * S, (y0 + 0.05) * S]
                b = [(mid + sgn * 0.16) * S, (y0 + 0.13) * S]
                _line(bone, [tuple(a), tuple(b)], 0.35, 0.012 * S)
        cl = [((mid + sgn * 0.04) * S, 0.17 * S), ((mid + sgn * 0.16) * S, 0.16 * S), ((mid + sgn * 0.30) * S, 0.11 * S)]
        _line(bone, cl, 1.0, 0.024 * S)
    D += 0.13 * _blur(bone, 0.8 * k)

    # Lung markings: vessels branching from the hila, fading towards the periphery.
    mk = np.zeros((S, S), np.float32)
    segs: list = []
    step = 0.02 * S
    for sgn in (-1, 1):
        hx, hy = (mid + sgn * 0.09) * S, 0.40 * S
        for a in np.linspace(-2.2, 2.2, 7):
            ang = (math.pi if sgn < 0 else 0.0) + sgn * a * 0.6 + anat.normal(0, 0.1)
            _grow_tree(anat, segs, hx, hy, ang, 2.2 * k, 0.22 * S, 3, 0.0, step, lambda x, y: 0 <= x < S and 0 <= y < S, 0, 0.12)
    _draw_segments(mk, segs)
    hil = np.exp(-(((np.abs(du) - 0.10) / 0.22) ** 2))
    markings = 0.12 * marks * _blur(mk, 0.7 * k) * hil

    # ---- findings drawn on top
    F = np.zeros((S, S), np.float32)
    side_of = {-1: right, 1: ~right}

    def pick_side() -> int:
        return -1 if fnd.random() < 0.5 else 1

    def lung_point(sel: np.ndarray | None = None) -> tuple[float, float]:
        m = lung if sel is None else lung & sel
        ys, xs = np.nonzero(m[:: max(1, S // 64), :: max(1, S // 64)])
        if len(ys) == 0:
            return mid * S, 0.5 * S
        i = fnd.integers(0, len(ys))
        st = max(1, S // 64)
        return float(xs[i] * st), float(ys[i] * st)

    if has("Pneumothorax"):
        s = pick_side()
        gap = fnd.uniform(0.04, 0.09)
        pnx = lung & side_of[s] & (np.abs(du) > hw - gap) & (v < diaph - 0.02)
        markings = markings * ~pnx
        D -= 0.05 * _blur(pnx.astype(np.float32), 1.0 * k)
        vs = np.linspace(apex + 0.03, cp - 0.07, 24)
        pl = [((mid + s * (float(half_width(y)) - gap)) * S, (y + 0.02 * max(0.0, 1 - (y - apex) / 0.1)) * S) for y in vs]
        pm = np.zeros((S, S), np.float32)
        _line(pm, pl, 1.0, 1)
        F += 0.22 * pm * lungf
    if has("Effusion"):
        for s in ([-1, 1] if fnd.random() < 0.3 else [pick_side()]):
            level = cp - fnd.uniform(0.07, 0.18)
            lat = np.clip((np.abs(du) - 0.1) / (wc - 0.1), 0, 1)
            top = level - 0.07 * lat**2  # meniscus climbs the lateral chest wall
            fl = (cage & side_of[s] & (v > top) & ~heart & (v < cp + 0.05)).astype(np.float32)
            F += (lung_dark + 0.06) * _blur(fl, 2.5 * k)
    if has("Nodule"):
        for _ in range(fnd.integers(1, 3)):
            _circle(F, lung_point(), S * fnd.uniform(0.012, 0.024), 0.30)
    if has("Mass"):
        c = lung_point()
        r = S * fnd.uniform(0.045, 0.07)
        mm = np.zeros((S, S), np.float32)
        for _ in range(3):  # lobulated
            _circle(mm, (c[0] + fnd.normal(0, r * 0.25), c[1] + fnd.normal(0, r * 0.25)), r * fnd.uniform(0.7, 1.0), 1.0)
        F += 0.34 * _blur(mm, 1.2 * k)
    if has("Atelectasis"):
        s = atel_side
        y = cp - fnd.uniform(0.10, 0.2)
        x0, x1 = mid + s * 0.12, mid + s * (wc - 0.04)
        am = np.zeros((S, S), np.float32)
        _line(am, [(x0 * S, y * S), (x1 * S, (y + fnd.uniform(-0.05, 0.03)) * S)], 1.0, 0.02 * S)
        if fnd.random() < 0.5:  # wedge towards the hilum
            tri = [((mid + s * 0.09) * S, 0.42 * S), (x1 * S, (y - 0.05) * S), (x1 * S, (y + 0.06) * S)]
            cv2.fillPoly(am, [_pts(tri)], 0.7, _AA, _SHIFT)
        F += 0.30 * _blur(am, 1.5 * k) * lungf
    if has("Infiltration"):
        s = pick_side() if fnd.random() < 0.7 else 0
        zone = np.exp(-((v - fnd.uniform(0.35, 0.7)) ** 2) / 0.02)
        sel = side_of[s] if s else True
        patch = np.clip(_lowfreq(fnd, S, 10) - 0.3, 0, None) * zone * sel
        F += 0.28 * _blur(patch, 2.0 * k) * lungf
    if has("Pneumonia"):
        s = pick_side()
        lower = fnd.random() < 0.65
        fis = (v > 0.42 + 0.25 * np.abs(du) / wc) if lower else (v < 0.38 + 0.0 * u)  # fissure edge
        lobe = (lung & side_of[s] & fis).astype(np.float32)
        bs: list = []
        hx = (mid + s * 0.09) * S
        for _ in range(3):
            a = (math.pi if s < 0 else 0.0) + s * (fnd.uniform(0.3, 1.1) if lower else -fnd.uniform(0.3, 1.1))
            _grow_tree(fnd, bs, hx, 0.42 * S, a, 2.0 * k, 0.15 * S, 2, 0.0, step, lambda x, y: True, 0, 0.15)
        br = np.zeros((S, S), np.float32)
        _draw_segments(br, bs)
        F += 0.40 * _blur(lobe, 1.2 * k) * (1.0 - 0.55 * br)
    if has("Consolidation"):
        c = lung_point()
        cm = np.zeros((S, S), np.float32)
        _ellipse(cm, c, (S * fnd.uniform(0.05, 0.09), S * fnd.uniform(0.04, 0.07)), fnd.uniform(0, 180), 1.0)
        F += 0.42 * _blur(cm, 3.0 * k) * lungf
    if has("Edema"):
        bat = np.exp(-(((np.abs(du) - 0.12) / 0.11) ** 2) - ((v - 0.45) / 0.13) ** 2)
        F += fnd.uniform(0.22, 0.3) * bat * _blur(lungf, 3 * k)
        kl = np.zeros((S, S), np.float32)
        for sgn in (-1, 1):  # Kerley B lines at the lateral bases
            for _ in range(fnd.integers(3, 7)):
                y = fnd.uniform(cp - 0.15, cp - 0.05)
                x = mid + sgn * (float(half_width(y)) - 0.005)
                _line(kl, [(x * S, y * S), ((x - sgn * 0.04) * S, y * S)], 1.0, 1)
        F += 0.15 * kl * lungf
    if has("Emphysema"):
        for _ in range(fnd.integers(0, 3)):  # bullae
            _circle(F, lung_point(v < 0.4), S * fnd.uniform(0.03, 0.05), 0.12, 1)
    if has("Fibrosis"):
        fm = np.zeros((S, S), np.float32)
        per = lung & ((np.abs(du) > hw - 0.12) | (v > diaph - 0.12))
        for _ in range(int(fnd.integers(40, 70))):
            x, y = lung_point(per)
            a = fnd.uniform(0, math.pi)
            ln = S * fnd.uniform(0.015, 0.035)
            _line(fm, [(x, y), (x + ln * math.cos(a), y + ln * math.sin(a))], 1.0, 1)
            if fnd.random() < 0.3:  # honeycomb cysts
                _circle(fm, (x, y), S * 0.008, 1.0, 1)
        F += 0.20 * fm * lungf
    if has("Pleural_Thickening"):
        for s in ([-1, 1] if fnd.random() < 0.3 else [pick_side()]):
            wid = fnd.uniform(0.012, 0.025)
            y0, y1 = sorted(fnd.uniform(apex + 0.02, cp - 0.04, 2))
            y1 = max(y1, y0 + 0.2)
            vs = np.linspace(y0, min(y1, cp - 0.02), 20)
            pl = [((mid + s * (float(half_width(y)) - wid / 2)) * S, y * S) for y in vs]
            pm = np.zeros((S, S), np.float32)
            _line(pm, pl, 1.0, wid * S)
            F += 0.30 * _blur(pm, 1.0 * k)
    if has("Hernia"):
        c = ((mid + fnd.uniform(-0.02, 0.06)) * S, (cp + ldrop - dome_h - fnd.uniform(0.02, 0.06)) * S)
        r = S * fnd.uniform(0.045, 0.07)
        hm = np.zeros((S, S), np.float32)
        _circle(hm, c, r, 1.0)
        gas = hm.copy()
        cv2.rectangle(gas, (0, int(c[1] + r * fnd.uniform(0.0, 0.4))), (S, S), 0, -1)  # air-fluid level
        rim = np.zeros((S, S), np.float32)
        _circle(rim, c, r, 1.0, max(1, int(2 * k)))
        F += 0.18 * rim - 0.32 * _blur(gas, 0.8 * k)

    D = D + markings + F
    # A gastric bubble under the left dome is normal anatomy.
    gb = np.zeros((S, S), np.float32)
    _ellipse(gb, ((mid + wc * 0.45) * S, (cp + ldrop + 0.04) * S), (0.04 * S, 0.025 * S), 0, 1.0)
    D -= 0.15 * _blur(gb, 2 * k) * anat.uniform(0.3, 1.0)

    # ---- acquisition: blur, quantum noise, exposure/contrast, positioning, side marker
    D = _blur(D, 0.6 * k)
    D = D + cam.normal(0, 0.012, (S, S)).astype(np.float32)
    lo, hi = cam.uniform(0.0, 0.08), cam.uniform(0.78, 0.95)
    D = np.clip((D - lo) / (hi - lo), 0, 1)
    D = np.power(D, np.float32(cam.uniform(0.8, 1.25)))
    M = cv2.getRotationMatrix2D((S / 2, S / 2), cam.normal(0, 2.0), cam.uniform(0.95, 1.05))
    M[:, 2] += cam.normal(0, 0.015 * S, 2)
    D = cv2.warpAffine(D, M, (S, S), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    out = np.clip(D * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if cam.random() < 0.5 and S >= 64:
        org = (int(S * cam.uniform(0.03, 0.1)), int(S * cam.uniform(0.12, 0.2)))
        cv2.putText(out, "R", org, cv2.FONT_HERSHEY_SIMPLEX, 0.6 * k, 235, max(1, int(2 * k)), cv2.LINE_AA)
    return out


# ---------------------------------------------------------------------------- datasets

_SALT_IMAGE, _SALT_PATIENT = 0, 1


def image_rng(seed: int, modality: str, index: int) -> np.random.Generator:
    """The generator image `index` of a `modality` set with `seed` is drawn from."""
    return np.random.default_rng([int(seed), MODALITIES.index(modality), _SALT_IMAGE, int(index)])


def _patient_labels(modality: str, seed: int, patient: int) -> list:
    """Labels of one synthetic patient's 1-2 images (two eyes, two scans, a follow-up film)."""
    rng = np.random.default_rng([int(seed), MODALITIES.index(modality), _SALT_PATIENT, int(patient)])
    n = 2 if rng.random() < 0.7 else 1
    if modality == "fundus":
        g = int(rng.integers(0, len(DR_GRADES)))
        second = g if rng.random() < 0.5 else int(rng.integers(0, len(DR_GRADES)))
        return [g, second][:n]
    if modality == "oct":
        return [OCT_CLASSES[int(rng.integers(0, len(OCT_CLASSES)))]] * n
    out = []
    for _ in range(n):
        if rng.random() < 0.25:
            out.append(frozenset())
            continue
        while True:  # each finding in about 17% of films, several per abnormal film
            f = frozenset(name for name in CXR_FINDINGS if rng.random() < 0.22)
            if f:
                break
        out.append(f)
    return out


def _label_text(modality: str, label) -> str:
    if modality == "cxr":
        return "|".join(f for f in CXR_FINDINGS if f in label) or NO_FINDING
    return str(label)


def _render(modality: str, rng: np.random.Generator, label, size: int, eye: str | None = None) -> np.ndarray:
    if modality == "fundus":
        return generate_fundus(rng, label, size, eye=eye)
    if modality == "oct":
        return generate_oct(rng, label, size)
    return generate_cxr(rng, label, size)


def _encode_png(img: np.ndarray) -> bytes:
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    if not ok:  # pragma: no cover - only on a broken OpenCV build
        raise RuntimeError("cv2.imencode failed to encode a PNG")
    return buf.tobytes()


def synthesize(
    modality: str,
    n: int,
    out_dir: Path,
    *,
    seed: int = 0,
    size: int = 256,
    progress: bool = False,
) -> Path:
    """Write `n` synthetic images of `modality` and a generic ``labels.csv``; return the CSV path.

    Layout: ``out_dir/images/NNNNNN.png`` and ``out_dir/labels.csv`` (``path,label,patient``,
    paths relative to the CSV). Labels: DR grade 0-4, OCT class name, or pipe-joined NIH
    findings / ``No Finding``. Each synthetic patient has 1-2 images. Deterministic in
    (`seed`, index): same arguments give byte-identical files.
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < 32:
        raise ValueError(f"size must be >= 32 px, got {size}")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str]] = []
    patient = 0
    while len(rows) < n:
        labels = _patient_labels(modality, seed, patient)
        pid = f"{modality}-s{seed}-p{patient:06d}"
        for j, label in enumerate(labels):
            i = len(rows)
            if i >= n:
                break
            eye = ("R", "L")[j] if modality == "fundus" else None
            img = _render(modality, image_rng(seed, modality, i), label, size, eye)
            rel = f"images/{i:06d}.png"
            (out_dir / rel).write_bytes(_encode_png(img))
            rows.append((rel, _label_text(modality, label), pid))
            if progress and ((i + 1) % 100 == 0 or i + 1 == n):
                print(f"synth {modality}: {i + 1}/{n}", file=sys.stderr, flush=True)
        patient += 1
    csv_path = out_dir / "labels.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(("path", "label", "patient"))
        w.writerows(rows)
    return csv_path


# ---------------------------------------------------------------------------- contact sheets


def _sheet_labels(modality: str) -> list:
    if modality == "fundus":
        return [g for _ in range(4) for g in range(len(DR_GRADES))]
    if modality == "oct":
        return [c for _ in range(5) for c in OCT_CLASSES]
    singles = [frozenset({f}) for f in CXR_FINDINGS]
    combos = [frozenset({"Cardiomegaly", "Effusion", "Edema"}), frozenset({"Mass", "Pneumothorax"})]
    return [frozenset(), frozenset(), *singles[:9], *combos[:1], *singles[9:], combos[1]]


def contact_sheet(modality: str, path: Path, *, seed: int = 0, tile: int = 192, size: int = 256) -> Path:
    """A labelled grid of generated images (5 columns for fundus/CXR, 4 for OCT) as a PNG."""
    labels = _sheet_labels(modality)
    cols = 4 if modality == "oct" else 5
    rows = math.ceil(len(labels) / cols)
    colour = modality == "fundus"
    sheet = np.zeros((rows * tile, cols * tile, 3 if colour else 1), np.uint8)
    for i, label in enumerate(labels):
        img = _render(modality, image_rng(seed, modality, i), label, size)
        img = cv2.resize(img, (tile, tile), interpolation=cv2.INTER_AREA)
        if not colour:
            img = img[..., None]
        text = _label_text(modality, label)
        if modality == "fundus":
            text = f"{label} {DR_GRADES[label]}"
        img = np.ascontiguousarray(img)
        for j, part in enumerate(text.split("|")):
            org = (3, 12 + 12 * j)
            cv2.putText(img, part, org, cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0,) * 3, 3, cv2.LINE_AA)
            cv2.putText(img, part, org, cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 80)[: img.shape[2]], 1, cv2.LINE_AA)
        r, c = divmod(i, cols)
        sheet[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = img
        sheet[r * tile, :] = 60
        sheet[:, c * tile] = 60
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_encode_png(sheet if colour else sheet[..., 0]))
    return path


def _main(argv: list[str] | None = None) -> None:
    """Regenerate the docs contact sheets and print single-process throughput per modality."""
    import argparse
    import time

    ap = argparse.ArgumentParser(prog="python -m edgescreen.train.data.synth")
    ap.add_argument("--sheets", type=Path, help="folder to write contact_<modality>.png into")
    ap.add_argument("--bench", type=int, default=0, help="images per modality to time (0: skip)")
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args(argv)
    for m in MODALITIES:
        if args.sheets:
            p = contact_sheet(m, args.sheets / f"contact_{m}.png")
            print(f"{p}  {p.stat().st_size / 1024:.0f} KiB")
        if args.bench:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                synthesize(m, args.bench, Path(tmp), size=args.size)
                dt = time.perf_counter() - t0
            print(f"{m}: {args.bench / dt:.1f} images/s at {args.size} px (generate + PNG write)")


if __name__ == "__main__":
    _main()
