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
