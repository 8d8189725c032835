"""Synthetic fundus, retinal OCT and chest X-ray images whose labels are visible in the pixels.

They stand in for real data in tests, smoke trainings and calibration dry runs (there is no
real OCT set at all). Each generator draws anatomy, pathology and camera nuisances from
separate child generators, so the same seed with and without a finding differs only by
that finding (and what it displaces). Only numpy, OpenCV and the standard library.

`synthesize` writes the project's generic layout (``labels.csv``: ``path,label,patient``).
Image ``i`` and patient ``k`` are drawn from ``(seed, modality, i)`` and ``(seed, modality,
k)`` alone, so ``n=10`` is a prefix of ``n=1000`` and any slice can be regenerated on its own.
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


@lru_cache(maxsize=8)
def _bank(size: int, kind: str) -> np.ndarray:
    # Per-pixel noise is the slowest thing to draw on a small CPU (about 1.5 ms per 256^2
    # normal field, 5 ms for gamma), so images take random crops of one fixed 2x-size field.
    rng = np.random.default_rng(20240917)
    shape = (2 * size, 2 * size)
    if kind == "normal":
        out = rng.standard_normal(shape, dtype=np.float32)
    else:  # OCT speckle: unit-mean gamma, shape 1.6
        out = rng.standard_gamma(1.6, shape, dtype=np.float32) / np.float32(1.6)
    out.setflags(write=False)
    return out


def _noise(rng: np.random.Generator, size: int, kind: str = "normal") -> np.ndarray:
    """A size x size view of fixed noise at a random offset and orientation (read-only)."""
    ox, oy, flip = (int(a) for a in rng.integers(0, size, 3))
    crop = _bank(size, kind)[oy : oy + size, ox : ox + size]
    return crop[::-1] if flip % 2 else crop


def _lowfreq(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth zero-mean noise (unit-ish std) with about `cells` blobs across."""
    small = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    mid = cv2.resize(small, (8 * (cells + 1), 8 * (cells + 1)), interpolation=cv2.INTER_CUBIC)
    # Two stages: cubic from a tiny grid is slow in OpenCV; crop the clamped border half-cells.
    return cv2.resize(mid[4:-4, 4:-4], (size, size), interpolation=cv2.INTER_LINEAR)


def _fx(p: float) -> int:
    return int(round(p * _ONE))


def _pts(xy) -> np.ndarray:
    return (np.asarray(xy, dtype=np.float64) * _ONE).round().astype(np.int32).reshape(-1, 1, 2)


def _circle(img: np.ndarray, c: tuple[float, float], r: float, val: float, thick: int = -1) -> None:
    cv2.circle(img, (_fx(c[0]), _fx(c[1])), max(_fx(r), 1), val, thick, _AA, _SHIFT)


def _ellipse(img, c, axes, angle_deg: float, val: float, thick: int = -1) -> None:
    centre = (_fx(c[0]), _fx(c[1]))
    ax = (max(_fx(axes[0]), 1), max(_fx(axes[1]), 1))
    cv2.ellipse(img, centre, ax, angle_deg, 0, 360, val, thick, _AA, _SHIFT)


def _line(img, xy, val: float, thick: float, closed: bool = False) -> None:
    cv2.polylines(img, [_pts(xy)], closed, val, max(1, int(round(thick))), _AA, _SHIFT)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma < 0.3:
        return img
    return cv2.GaussianBlur(img, (0, 0), sigma)


def _exp(x: np.ndarray) -> np.ndarray:
    # Clamped so tails never reach float32 denormals, which are ~20x slower in every later op.
    return np.exp(np.maximum(x, np.float32(-40.0)))


# A tree segment: (points N x 2 in pixels, calibre in px, tag, the same points as cv2 fixed point).
Segment = tuple[np.ndarray, float, int, np.ndarray]
_DECAY = 0.96 ** np.arange(1024)


def _forest(
    rng: np.random.Generator,
    roots: list[tuple[float, float, float, float, float, float, int]],
    step: float,
    inside: Callable[[np.ndarray, np.ndarray], np.ndarray],
    depth: int,
    wiggle: float = 0.07,
    min_width: float = 0.3,
) -> list[Segment]:
    """Recursive branching random walks (retinal vessels, lung markings, air bronchograms).

    Each root is (x, y, angle, calibre, length, curvature, tag). A segment turns by its
    curvature per step (decaying) plus noise and stops where `inside` fails; it then forks
    asymmetrically into a thicker continuation and a thinner side branch, down to `depth`
    generations. One generation of every tree is walked at once as a 2-D array: per-segment
    numpy calls cost more than the arithmetic on a small CPU.
    """
    x, y, ang, w, ln, cv = (
        np.array(c, dtype=np.float64) for c in list(zip(*roots, strict=True))[:6]
    )
    tag = np.array([r[6] for r in roots])
    segs: list[Segment] = []
    for level in range(depth + 1):
        m = len(x)
        nst = np.maximum(2, (ln / step).astype(np.int64))
        N = int(nst.max())
        angs = ang[:, None] + np.cumsum(
            cv[:, None] * _DECAY[None, :N] + rng.normal(0, wiggle, (m, N)), 1
        )
        P = np.empty((m, N + 1, 2))
        P[:, 0, 0], P[:, 0, 1] = x, y
        P[:, 1:, 0] = x[:, None] + step * np.cumsum(np.cos(angs), 1)
        P[:, 1:, 1] = y[:, None] + step * np.cumsum(np.sin(angs), 1)
        ok = inside(P[:, 1:, 0], P[:, 1:, 1]) & (np.arange(N)[None, :] < nst[:, None])
        stop = np.where(ok.all(1), N, ok.argmin(1))  # valid steps per segment
        PF = (P * _ONE).round().astype(np.int32)
        for i, e, wi, ti in zip(
            range(m), (stop + 1).tolist(), w.tolist(), tag.tolist(), strict=True
        ):
            if e > 1:
                segs.append((P[i, :e], wi, ti, PF[i, :e, None]))
        if level == depth:
            break
        idx = np.nonzero((stop >= nst // 2) & (stop > 0) & (w * 0.62 >= min_width))[0]
        if not len(idx):
            break
        g, last = len(idx), stop[idx]
        ex, ey, ea = P[idx, last, 0], P[idx, last, 1], angs[idx, last - 1]
        ec = cv[idx] * _DECAY[np.minimum(nst[idx], 1023)]
        sd = np.where(rng.random(g) < 0.5, 1.0, -1.0) * rng.uniform(0.35, 0.8, g)
        # children: [continuations..., side branches...]; np.concatenate (np.r_ is slow)
        lens = ln[idx, None] * rng.uniform((0.75, 0.45), (0.95, 0.75), (g, 2))
        x, y = np.concatenate([ex, ex]), np.concatenate([ey, ey])
        ang = np.concatenate([ea - 0.35 * sd, ea + sd])
        w = np.concatenate([w[idx] * 0.82, w[idx] * 0.62])
        ln = lens.T.ravel()
        cv = np.concatenate([ec, ec * 0.5])
        tag = np.concatenate([tag[idx], tag[idx]])
    return segs


def _draw_segments(
    mask: np.ndarray, segments: list[Segment], val: float = 1.0, tag: int | None = None
) -> None:
    """Draw tree segments; sub-pixel calibres become fainter 1-px lines, which reads as thinner.

    Segments of one stroke (thickness, shade in 1/16 steps) go to OpenCV in one call.
    """
    groups: dict[tuple[int, int], list[np.ndarray]] = {}
    for _, w, t, fx in segments:
        if tag is None or t == tag:
            key = (max(1, int(round(w))), int(round(16 * min(1.0, w))))
            groups.setdefault(key, []).append(fx)
    for (thick, shade), lines in sorted(groups.items()):
        cv2.polylines(mask, lines, False, val * shade / 16, thick, _AA, _SHIFT)


# ---------------------------------------------------------------------------- fundus

_FUNDUS_LESIONS = {  # grade -> (microaneurysms, haemorrhages, exudate clusters) count ranges
    0: ((0, 0), (0, 0), (0, 0)),
    1: ((3, 8), (0, 0), (0, 0)),
    2: ((6, 14), (3, 8), (2, 5)),
    3: ((8, 16), (10, 20), (3, 7)),
    4: ((8, 16), (8, 18), (3, 7)),
}


def generate_fundus(
    rng: np.random.Generator, grade: int, size: int = 256, *, eye: str | None = None
) -> np.ndarray:
    """Colour fundus photograph (RGB uint8 HxWx3) showing ICDR DR grade `grade` (0-4).

    `eye` ("L"/"R") puts the optic disc on the matching side; random when None.
    """
    grade = int(grade)
    if not 0 <= grade < len(DR_GRADES):
        raise ValueError(f"DR grade must be 0..{len(DR_GRADES) - 1}, got {grade}")
    if eye not in (None, "L", "R"):
        raise ValueError(f'eye must be "L", "R" or None, got {eye!r}')
    S = int(size)
    k = S / 256.0
    anat, les, cam = _children(rng, 3)

    # Camera framing: the field-of-view circle, off-centre and of varying size.
    R = S * anat.uniform(0.40, 0.53)
    cx = S / 2 + anat.normal(0, 0.025 * S)
    cy = S / 2 + anat.normal(0, 0.025 * S)
    if eye is None:
        eye = "L" if anat.random() < 0.5 else "R"
    side = -1.0 if eye == "L" else 1.0  # disc on the image left for a left eye
    # Optic disc on the nasal side; the macula about 2.5 disc diameters temporal to it.
    disc = (cx + side * R * anat.uniform(0.36, 0.48), cy + R * anat.normal(-0.03, 0.05))
    rd = R * anat.uniform(0.13, 0.16)
    mac = (disc[0] - side * R * anat.uniform(0.45, 0.55), disc[1] + R * anat.uniform(0.02, 0.08))

    # The picture is reflectance (albedo, drawn on directly with OpenCV) times illumination
    # (`lum`: vignetting, pigment, glare); drawing in colour keeps full-image passes few.
    base = np.array([0.86, 0.40, 0.13], np.float32) * np.float32(anat.uniform(0.85, 1.1))
    base[1] *= anat.uniform(0.85, 1.15)
    base[2] *= anat.uniform(0.7, 1.3)
    alb = np.empty((S, S, 3), np.uint8)  # 8-bit: OpenCV draws, blurs and multiplies it fastest
    cv2.rectangle(alb, (0, 0), (S, S), tuple(float(b) * 255 for b in base), -1)

    def col(c, t: float = 1.0) -> tuple[float, float, float]:
        # `c` relative to the background colour, faded to it by t (thin vessels, faint spots)
        return tuple(min(255.0, 255.0 * float(b + t * (b * c[i] - b))) for i, b in enumerate(base))

    def soften(x: float, y: float, r: float, sigma: float) -> None:
        x0, y0 = max(int(x - r - 3 * sigma), 0), max(int(y - r - 3 * sigma), 0)
        x1, y1 = min(int(x + r + 3 * sigma) + 2, S), min(int(y + r + 3 * sigma) + 2, S)
        if x1 > x0 + 2 and y1 > y0 + 2:
            alb[y0:y1, x0:x1] = cv2.GaussianBlur(alb[y0:y1, x0:x1], (0, 0), sigma)

    # Optic disc: yellow-pink rim, pale central cup, soft edge.
    _circle(alb, disc, rd, (250, 178, 107))
    cup = (rd * anat.uniform(0.3, 0.5), rd * anat.uniform(0.35, 0.55))
    _ellipse(alb, disc, cup, 0, (255, 219, 168))
    soften(*disc, rd, rd * 0.18)

    # Vessels: superior/inferior temporal arcades arching around the macula, nasal branches,
    # small macular twigs. Veins (tag 1) darker and wider than arteries (tag 0).
    step = R * 0.03
    mr2 = (0.09 * R) ** 2

    def inside(x, y):
        return ((x - cx) ** 2 + (y - cy) ** 2 < (1.04 * R) ** 2) & (
            (x - mac[0]) ** 2 + (y - mac[1]) ** 2 > mr2
        )

    tmp = math.pi if side > 0 else 0.0  # direction from disc to macula
    turn = 1.0 if side < 0 else -1.0
    wv = k * anat.uniform(2.0, 2.6)
    roots = []
    for tag, wmul in ((1, 1.0), (0, 0.7)):
        for up in (-1.0, 1.0):
            a0 = tmp + up * turn * (1.05 + anat.normal(0, 0.15))
            curv = -up * turn * anat.uniform(0.045, 0.065)
            sx, sy = disc[0] + rd * 0.25 * math.cos(a0), disc[1] + rd * 0.25 * math.sin(a0)
            roots.append((sx, sy, a0, wv * wmul, R * 0.55, curv, tag))
            an = tmp + math.pi - up * turn * anat.uniform(0.4, 1.1)
            roots.append((sx, sy, an, wv * wmul * 0.75, R * 0.4, 0.0, tag))
        roots.append((disc[0], disc[1], tmp + anat.normal(0, 0.3), wv * 0.4, R * 0.3, 0.0, tag))
    segs = _forest(anat, roots, step, inside, 4)
    vein, artery = (0.62, 0.30, 0.45), (0.80, 0.50, 0.60)
    strokes: dict[tuple[int, int, int], list[np.ndarray]] = {}
    for _, w, tag, fx in segs:  # one OpenCV call per stroke style; thin vessels fade out
        strokes.setdefault((tag, max(1, int(round(w))), int(round(8 * min(1.0, w)))), []).append(fx)
    for (tag, thick, shade), lines in sorted(strokes.items()):  # veins over arteries
        cv2.polylines(
            alb, lines, False, col(vein if tag else artery, shade / 8), thick, _AA, _SHIFT
        )

    # ------------------------------------------------ lesions: kind and number follow the grade
    def spots(n: int, spread: float = 0.55) -> list[tuple[float, float]]:
        # Lesions cluster in the posterior pole around the macula, inside the field, off the disc.
        c = les.normal(0, 1, (4 * n + 8, 2)) * (spread * R, spread * 0.8 * R) + mac
        ok = (((c - (cx, cy)) ** 2).sum(1) < (0.9 * R) ** 2) & (
            ((c - disc) ** 2).sum(1) > (1.6 * rd) ** 2
        )
        out = [tuple(q) for q in c[ok][:n].tolist()]
        return out + [(mac[0], mac[1] - 0.3 * R)] * (n - len(out))

    red, blot, yellow, cotton = (
        (0.50, 0.16, 0.30),
        (0.42, 0.12, 0.25),
        (1.2, 2.25, 2.6),
        (1.12, 2.1, 4.8),
    )
    n_ma, n_hem, n_ex = (int(les.integers(lo, hi + 1)) for lo, hi in _FUNDUS_LESIONS[grade])
    # Microaneurysms: tiny, crisp, dark red.
    for p, r in zip(spots(n_ma), (k * les.uniform(0.7, 1.2, n_ma)).tolist(), strict=True):
        _circle(alb, p, r, col(red))
    # Haemorrhages: dot/blot (a lumpy cluster of ellipses) or flame-shaped (along the nerve
    # fibres, radial from the disc). Parameters drawn as arrays: scalar draws are slow.
    kind = (les.random(n_hem) < 0.7).tolist()
    parts = les.integers(1, 4, n_hem).tolist()
    off = (les.normal(0, 1.2 * k, (n_hem, 3, 2))).tolist()
    axes = (k * les.uniform(1.3, 3.2, (n_hem, 3))).tolist()
    ratio = les.uniform(0.6, 1.0, (n_hem, 3)).tolist()
    rot = les.uniform(0, 180, (n_hem, 3)).tolist()
    flame = (k * les.uniform((3.5, 1.0), (6.0, 1.8), (n_hem, 2))).tolist()
    for i, p in enumerate(spots(n_hem, 0.6)):
        if kind[i]:
            for j in range(parts[i]):
                q = (p[0] + off[i][j][0], p[1] + off[i][j][1])
                _ellipse(alb, q, (axes[i][j], axes[i][j] * ratio[i][j]), rot[i][j], col(blot))
        else:
            ang = math.degrees(math.atan2(p[1] - disc[1], p[0] - disc[0]))
            _ellipse(alb, p, tuple(flame[i]), ang, col(red, 0.9))
    # Hard exudates: clusters or circinate rings of small yellow dots.
    for c in spots(n_ex, 0.4):
        m = int(les.integers(3, 10))
        if les.random() < 0.35:
            t = les.uniform(0, 2 * math.pi, m)
            d = k * les.uniform(5, 12) * np.stack([np.cos(t), np.sin(t)], 1)
        else:
            d = les.normal(0, 3.5 * k, (m, 2))
        for q, r in zip((d + c).tolist(), (k * les.uniform(0.7, 1.9, m)).tolist(), strict=True):
            _circle(alb, q, r, col(yellow))
    main = [s for s in segs if s[1] > wv * 0.5 and len(s[0]) > 4]
    if grade >= 3:
        beads: dict[int, list[np.ndarray]] = {}  # venous beading: sausage-like calibre changes
        for _, w, tag, fx in main:
            if tag == 1 and les.random() < 0.6:
                thick = max(2, int(round(w * les.uniform(1.4, 1.9))))
                beads.setdefault(thick, []).extend(fx[j : j + 2] for j in range(2, len(fx) - 2, 3))
        for thick, lines in beads.items():
            cv2.polylines(alb, lines, False, col(vein), thick, _AA, _SHIFT)
        for _ in range(les.integers(2, 6)):  # cotton-wool spots: fluffy pale patches near arcades
            pts = main[les.integers(0, len(main))][0]
            p = pts[les.integers(0, len(pts))]
            p = (p[0] + les.normal(0, 4 * k), p[1] + les.normal(0, 4 * k))
            ax = k * les.uniform(3.0, 6.0)
            _ellipse(
                alb, p, (ax, ax * les.uniform(0.5, 0.9)), les.uniform(0, 180), col(cotton, 0.8)
            )
            soften(*p, ax, 1.6 * k)
    if grade == 4:
        # Neovascularisation: tufts of fine, tortuous loops at the disc and/or on the arcades.
        sites = []
        if les.random() < 0.65:
            sites.append((disc[0] + les.normal(0, rd * 0.5), disc[1] + les.normal(0, rd * 0.5)))
        while not sites or (len(sites) < 3 and les.random() < 0.6):
            pts = main[les.integers(0, len(main))][0]
            sites.append(tuple(pts[les.integers(len(pts) // 3, len(pts))]))
        for sx, sy in sites:  # 5-9 loops of 12 steps per site, all walked at once
            n_loops = int(les.integers(5, 10))
            a = les.uniform(0, 2 * math.pi, (n_loops, 1)) + np.cumsum(
                les.normal(0, 0.9, (n_loops, 12)), 1
            )
            walk = np.zeros((n_loops, 13, 2))
            walk[:, 1:, 0] = np.cumsum(np.cos(a), 1)
            walk[:, 1:, 1] = np.cumsum(np.sin(a), 1)
            loops = _pts(walk * (1.4 * k) + (sx, sy)).reshape(n_loops, 13, 1, 2)
            cv2.polylines(alb, list(loops), False, col(vein, 0.8), 1, _AA, _SHIFT)
        if les.random() < 0.4:  # pre-retinal (boat-shaped) haemorrhage
            _ellipse(
                alb, spots(1, 0.5)[0], (k * les.uniform(7, 12), k * les.uniform(4, 7)), 0, col(blot)
            )
        if les.random() < 0.35:  # fibrovascular veil along an arcade
            pts = main[0][0]
            _line(alb, pts, col(cotton, 0.5), 6 * k)
            lo_, hi_ = pts.min(0), pts.max(0)
            c, r = (lo_ + hi_) / 2, float((hi_ - lo_).max()) / 2
            soften(c[0], c[1], r, 2.0 * k)

    # ------------------------------------------------ illumination
    # Smooth, so computed at half resolution and upsampled; noise and aperture at full.
    h2 = max(S // 2, 16)
    hu, hv = _grid(h2)
    X, Y = hu * S, hv * S
    r2 = ((X - cx) ** 2 + (Y - cy) ** 2) * np.float32(1 / (R * R))
    lum = 1.0 + 0.045 * _lowfreq(anat, h2, 5) + 0.03 * _lowfreq(anat, h2, 20)
    lum -= 0.45 * (r2 * np.sqrt(r2))  # vignetting towards the rim
    md2 = ((X - mac[0]) ** 2 + (Y - mac[1]) ** 2) * np.float32(1 / (R * R))
    lum -= 0.28 * _exp(md2 * np.float32(-1 / (2 * 0.12**2)))
    lum -= 0.15 * _exp(md2 * np.float32(-1 / (2 * 0.022**2)))  # fovea
    dd2 = ((X - disc[0]) ** 2 + (Y - disc[1]) ** 2) * np.float32(1 / (rd * rd))
    lum += 0.08 * _exp(dd2 * np.float32(-1 / (2 * 2.0**2)))  # peripapillary glow
    lum = cv2.resize(lum, (S, S), interpolation=cv2.INTER_LINEAR) + 0.012 * _noise(cam, S)
    ap = np.zeros((S, S), np.float32)  # the aperture: a circle with an anti-aliased rim
    _circle(ap, (cx, cy), R, 255.0)
    if cam.random() < 0.4:  # the sensor's 3:2 frame cuts the circle top and bottom
        h = R * cam.uniform(0.8, 0.93)
        ap[: max(0, int(round(cy - h)))] = 0
        ap[max(0, int(round(cy + h))) :] = 0
    lum8 = cv2.convertScaleAbs(lum * ap, alpha=200 / 255)  # 200 == unit illumination
    img = cv2.multiply(alb, cv2.merge([lum8, lum8, lum8]), scale=1 / 200)

    # ------------------------------------------------ camera: exposure, colour cast, gamma, focus
    gain = np.exp(cam.normal(0.0, 0.18)) * np.exp(np.r_[0.0, cam.normal(0.0, 0.08, 2)])
    gamma = cam.uniform(0.85, 1.2)
    x = np.arange(256, dtype=np.float64) / 255.0
    lut = np.stack(
        [np.clip(np.power(np.minimum(x * g, 1.0), gamma) * 255.0 + 0.5, 0, 255) for g in gain], 1
    )
    img = cv2.LUT(img, lut.astype(np.uint8).reshape(256, 1, 3))
    if cam.random() < 0.5:  # slight defocus
        img = cv2.GaussianBlur(img, (0, 0), cam.uniform(0.4, 1.2) * k)
    return img


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
    fov = _exp(-((xs - fx) ** 2) / (2 * (anat.uniform(0.045, 0.065) * S) ** 2))
    pit = anat.uniform(0.75, 0.95)
    scale = k * anat.uniform(1.25, 1.6)
    th = {
        name: np.full(S, thick * scale * anat.uniform(0.85, 1.15), np.float32)
        for name, _, thick in _OCT_LAYERS
    }
    # RNFL thickens towards the (off-screen) disc on one side; inner layers vanish in the pit.
    th["rnfl"] *= 1.0 + anat.uniform(0.3, 1.2) * np.clip(
        t * (1 if anat.random() < 0.5 else -1) * 2, 0, 1
    )
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
            srf += dome(
                c + path.normal(0, 8 * k), w * path.uniform(1.1, 1.8), k * path.uniform(5, 15), 0.8
            )
        for name in ("inl", "onl"):  # overlying oedema
            th[name] *= 1.0 + path.uniform(0.2, 0.6) * fov
        for _ in range(path.integers(0, 3)):
            cysts.append(
                (c + path.normal(0, w * 0.5), 0.5, k * path.uniform(2, 5), k * path.uniform(2, 4))
            )
    elif label == "DME":
        swell = _exp(
            -((xs - fx - path.normal(0, 10 * k)) ** 2) / (2 * (path.uniform(0.1, 0.18) * S) ** 2)
        )
        th["inl"] *= 1.0 + path.uniform(1.0, 2.5) * swell
        th["onl"] *= 1.0 + path.uniform(0.6, 1.4) * swell
        for name in ("rnfl", "gcl", "ipl", "opl"):  # the pit fills in
            th[name] = th[name] + pit * fov * _OCT_LAYERS[0][2] * k * 0.6
        for _ in range(path.integers(4, 12)):
            rx = k * path.uniform(2.5, 8.0)
            cysts.append(
                (fx + path.normal(0, 0.09 * S), path.random(), rx, rx * path.uniform(0.7, 1.4))
            )
        if path.random() < 0.4:
            srf += dome(
                fx + path.normal(0, 6 * k), k * path.uniform(12, 25), k * path.uniform(3, 7)
            )

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
        [0.008] + [val for _, val, _ in _OCT_LAYERS] + [0.02, 0.97, sub_val, 0.0], np.float32
    )  # vitreous, layers, fluid, RPE, sub-RPE, choroid (filled below)
    rows = _grid(S)[1] * S
    region = np.zeros((S, S), np.uint8)
    for b in bounds:
        region += rows >= b[None, :]
    img = lut[region]

    # Choroid: reflectivity fading with depth, dark vessel lumens; sclera below.
    depth = (rows - bm[None, :]) / S
    chor = (
        0.5
        * _exp(-depth / anat.uniform(0.04, 0.07))
        * np.clip(1.0 + 0.5 * _lowfreq(anat, S, 18), 0.1, None)
    )
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
        shade = 1.0 - 0.55 * _exp(-((xs - c) ** 2) / (2 * w * w))
        below = rows > (bounds[1][None, :] + 1)
        img = np.where(below, img * shade[None, :], img)

    img = cv2.GaussianBlur(img, (0, 0), sigmaX=0.6 * k, sigmaY=0.9 * k)
    # Speckle: multiplicative, laterally correlated (the beam is wider than the axial resolution).
    spk = cv2.blur(_noise(cam, S, "gamma"), (3, 1))
    img = img * spk + 0.012 * np.abs(_noise(cam, S))
    gain = cam.uniform(8, 25)
    img = np.log1p(gain * img) / np.log1p(gain) * cam.uniform(0.85, 1.1)
    # Registration tilt and shift, as scanners rotate the B-scan to follow the retina.
    M = cv2.getRotationMatrix2D((S / 2, S / 2), cam.normal(0, 3.0), 1.0)
    M[1, 2] += cam.normal(0, 0.03 * S)
    img = cv2.warpAffine(
        img, M, (S, S), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0
    )
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
    gu, gv = _grid(S)
    u, v = gu[:1, :], gv[:, :1]  # a row and a column: most anatomy is separable, broadcast late
    has = findings.__contains__

    # ---- anatomy parameters (always drawn, in a fixed order, so findings only modify them)
    wc = anat.uniform(0.35, 0.40)  # half-width of the inner rib cage
    mid = 0.5 + anat.normal(0, 0.01)
    apex = anat.uniform(0.10, 0.14)
    cp = anat.uniform(0.76, 0.82)  # costophrenic angles
    dome_h = anat.uniform(0.07, 0.11)
    ldrop = anat.uniform(0.01, 0.035)  # the left hemidiaphragm sits lower
    ctr = anat.uniform(0.38, 0.46)  # cardiothoracic ratio
    heart_h = anat.uniform(0.10, 0.13)
    tissue = anat.uniform(0.58, 0.66)
    lung_dark = anat.uniform(0.34, 0.42)
    body_w = anat.uniform(0.45, 0.55)

    # ---- findings that change the anatomy itself
    el_r = el_l = 0.0  # hemidiaphragm elevation (volume loss)
    marks = 1.0
    if has("Cardiomegaly"):
        ctr = fnd.uniform(0.56, 0.68)
        heart_h *= fnd.uniform(1.1, 1.3)
    if has("Emphysema"):
        cp += fnd.uniform(0.04, 0.07)
        apex -= 0.02
        dome_h *= fnd.uniform(0.15, 0.35)
        lung_dark += fnd.uniform(0.08, 0.12)
        marks = 0.35
        ctr *= 0.92
    atel_side = 0
    if has("Atelectasis"):
        atel_side = -1 if fnd.random() < 0.5 else 1
        el = fnd.uniform(0.05, 0.08)
        el_r, el_l = (el, 0.0) if atel_side < 0 else (0.0, el)
        mid += atel_side * 0.015

    H = cp - apex

    def half_width(vv):  # rib cage: a superellipse above the costophrenic level
        q = np.clip((cp - vv) / H, 0, 1)
        return wc * np.power(1.0 - np.power(q, 2.6), 1 / 2.6)

    hw = half_width(v)
    du = u - mid
    adu = np.abs(du)
    cage = (adu < hw) & (v > apex)
    right = du < 0  # the patient's right is the image left

    def diaphragm(uu):
        # Two domes; their lateral ends dip below the costophrenic level: sharp, deep angles.
        r = np.clip(1.0 - ((uu - mid + wc * 0.45) / 0.2) ** 2, -0.5, 1)
        left = np.clip(1.0 - ((uu - mid - wc * 0.45) / 0.2) ** 2, -0.5, 1)
        return np.where(uu < mid, cp - el_r - dome_h * r, cp + ldrop - el_l - dome_h * left)

    diaph = diaphragm(u)
    # Heart: about 1/3 right of the midline, 2/3 left, apex tilted down towards the left.
    hwid = ctr * wc
    heart_m = np.zeros((S, S), np.uint8)
    # Its widest diameter sits just above the left dome, where the ratio is read.
    hc = ((mid + 0.16 * 2 * hwid) * S, (cp + ldrop - dome_h * 0.8 - heart_h * 0.3) * S)
    _ellipse(heart_m, hc, (hwid * S * 1.02, heart_h * S), anat.uniform(10, 25), 1)
    _ellipse(heart_m, ((mid + 0.045) * S, 0.31 * S), (0.03 * S, 0.035 * S), 0, 1)  # aortic knob
    heart = heart_m.astype(bool)
    med_w = 0.05 + 0.02 * _exp(-((v - 0.38) ** 2) * 250)  # mediastinum, wider at the hila
    lung = cage & ~heart & (adu > med_w) & (v < diaph)
    lungf = lung.astype(np.float32)
    lungb = _blur(lungf, 1.5 * k)

    # Smooth layers at half resolution, then upsampled: soft tissue thinning towards the
    # flanks (air above the shoulders and beside the neck), abdomen, trachea, spine, gastric
    # bubble (one shared blur), and the lungs' shading: darkest in the mid zones, while
    # apices, bases and the periphery carry soft tissue.
    n2 = max(S // 2, 16)
    g2u, g2v = _grid(n2)
    u2, v2 = g2u[:1, :], g2v[:, :1]
    adu2, hw2 = np.abs(u2 - mid), half_width(v2)
    body = np.zeros((n2, n2), np.float32)
    sh = anat.uniform(0.06, 0.12)
    outline = [(mid - 0.09, -0.01), (mid - 0.11, sh * 0.7), (mid - 0.28, sh), (mid - body_w, sh + 0.08),
               (mid - body_w - 0.02, 1.01), (mid + body_w + 0.02, 1.01), (mid + body_w, sh + 0.08),
               (mid + 0.28, sh), (mid + 0.11, sh * 0.7), (mid + 0.09, -0.01)]  # fmt: skip
    cv2.fillPoly(body, [_pts([(x * n2, y * n2) for x, y in outline])], 1.0, _AA, _SHIFT)
    soft = body * (tissue * (1.0 - 0.35 * np.minimum((adu2 / body_w) ** 2, 1.0)))
    soft += 0.07 * ((v2 > diaphragm(u2)) & (adu2 < hw2 + 0.03))  # abdomen below the domes
    gb = np.zeros((n2, n2), np.float32)  # air: the trachea, and a gastric bubble
    _line(gb, [(mid * n2, 0), (mid * n2, 0.34 * n2)], 0.10, 0.028 * n2)
    ph = anat.uniform(0, 1)
    soft += (0.04 * (adu2 < 0.032)) * (0.6 + 0.4 * (np.cos((v2 - ph) * (2 * np.pi / 0.05)) > -0.6))
    c = ((mid + wc * 0.45) * n2, (cp + ldrop + 0.04) * n2)
    _ellipse(gb, c, (0.04 * n2, 0.025 * n2), 0, 0.15 * anat.uniform(0.3, 1.0))
    soft -= gb
    D = cv2.resize(_blur(soft, 1.8 * k * n2 / S), (S, S), interpolation=cv2.INTER_LINEAR)
    shade = (
        1.0 - 0.35 * _exp(-(((v2 - apex) / 0.07) ** 2)) - 0.25 * np.clip((v2 - 0.55) / 0.3, 0, 1)
    )
    shade = shade - 2.5 * np.clip(adu2 - hw2 + 0.08, 0, 0.08)
    shade += 0.06 * _lowfreq(anat, n2, 4)
    shade = cv2.resize(shade, (S, S), interpolation=cv2.INTER_LINEAR)
    shade *= lungb
    LD = shade * lung_dark  # how much the lungs lighten the film; opacities fill it back
    D -= LD

    # Ribs: posterior arcs rising from the spine and curving down the lateral wall, fainter
    # anterior ribs sloping down-medially; clavicles on top. Most visible over the lungs.
    # All ribs of a kind go to OpenCV in one call.
    bone = np.zeros((S, S), np.float32)
    f = np.linspace(0, 1, 14)[None, :]
    y0 = (apex - 0.015 + np.arange(10) * (H / 10.0))[:, None]
    lat = half_width(np.minimum(y0 + 0.06, cp)) + 0.015
    ys = y0 + 0.03 * f + 0.07 * f**3 - 0.03 * np.sin(np.pi * f)
    ay = ys[:7, -1:]
    ant_y = np.concatenate([ay, ay + 0.07, ay + 0.10], 1)
    for sgn in (-1, 1):
        xs = mid + sgn * (0.035 + f * (lat - 0.035))
        post = _pts(np.stack([xs, ys], -1) * S).reshape(10, 14, 1, 2)
        cv2.polylines(bone, list(post), False, 0.45, max(1, round(0.016 * S)), _AA, _SHIFT)
        for dy, val in ((-0.008, 0.9), (0.008, 0.6)):  # cortices
            cv2.polylines(
                bone,
                list(post + _fx(dy * S) * np.array([0, 1], np.int32)),
                False,
                val,
                1,
                _AA,
                _SHIFT,
            )
        ax = mid + sgn * lat[:7]
        ant_x = np.concatenate([ax, ax - sgn * 0.08, np.full_like(ax, mid + sgn * 0.14)], 1)
        ant = _pts(np.stack([ant_x, ant_y], -1) * S).reshape(7, 3, 1, 2)
        cv2.polylines(bone, list(ant), False, 0.35, max(1, round(0.014 * S)), _AA, _SHIFT)
        cl = [
            ((mid + sgn * 0.04) * S, 0.16 * S),
            ((mid + sgn * 0.17) * S, 0.15 * S),
            ((mid + sgn * 0.32) * S, 0.10 * S),
        ]
        _line(bone, cl, 1.0, 0.024 * S)
        _line(bone, cl, 1.6, 2 * k)
    bone *= 0.027 + 0.063 * lungb  # faint over soft tissue; unblurred: the final blur softens
    D += bone

    # Lung markings: vessels branching from the hila, tapering and fading towards the periphery.
    step = 0.018 * S
    roots = []

    def anywhere(x, y):
        return (x >= 0) & (x < S) & (y >= 0) & (y < S)

    for sgn in (-1, 1):
        hx, hy = (mid + sgn * 0.085) * S, 0.40 * S
        for a in np.linspace(-1.3, 1.3, 7):
            ang = (math.pi if sgn < 0 else 0.0) + sgn * a + anat.normal(0, 0.1)
            roots.append((hx, hy, ang, 2.4 * k, 0.24 * S, 0.0, 0))
    segs = _forest(anat, roots, step, anywhere, 2, wiggle=0.18)
    mk = np.zeros((S, S), np.float32)
    _draw_segments(mk, segs)
    hil = _exp(-(((adu - 0.08) / 0.2) ** 2))
    mk *= hil
    mk *= lungb
    markings = mk if marks == 1.0 else mk * marks
    markings *= 0.07

    # ---- findings
    F = np.zeros((S, S), np.float32)
    side_of = {-1: right, 1: ~right}

    def pick_side() -> int:
        return -1 if fnd.random() < 0.5 else 1

    def lung_points(n: int = 1, sel: np.ndarray | None = None) -> list[tuple[float, float]]:
        st = max(1, S // 64)  # candidates on a coarse lattice, jittered
        m = lung[::st, ::st] if sel is None else (lung & sel)[::st, ::st]
        ys, xs = np.nonzero(m)
        if len(ys) == 0:
            return [(mid * S, 0.5 * S)] * n
        i = fnd.integers(0, len(ys), n)
        jit = fnd.uniform(0, st, (n, 2))
        return list(
            zip((xs[i] * st + jit[:, 0]).tolist(), (ys[i] * st + jit[:, 1]).tolist(), strict=True)
        )

    def lung_point(sel: np.ndarray | None = None) -> tuple[float, float]:
        return lung_points(1, sel)[0]

    if has("Pneumothorax"):  # lucent rim without markings, thin visceral pleural line
        s = pick_side()
        gap_w = fnd.uniform(0.05, 0.10)
        pnx = lung & side_of[s] & (adu > hw - gap_w) & (v < diaph - 0.03)
        markings = markings * ~pnx
        D -= 0.08 * _blur(pnx.astype(np.float32), 1.0 * k)
        vs = np.linspace(apex + 0.04, cp - 0.08, 24, dtype=np.float32)
        pl = np.stack([(mid + s * (half_width(vs) - gap_w)) * S, vs * S], 1)
        pm = np.zeros((S, S), np.float32)
        _line(pm, pl, 1.0, 1)
        F += 0.25 * pm * lungb
    if has("Effusion"):  # fluid fills the base; the meniscus climbs the lateral wall
        for s in [-1, 1] if fnd.random() < 0.3 else [pick_side()]:
            level = cp - fnd.uniform(0.08, 0.2)
            latf = np.clip((adu - 0.1) / (wc - 0.1), 0, 1)
            fl = (lung & side_of[s] & (v > level - 0.08 * latf**2)).astype(np.float32)
            F += LD * _blur(fl, 2.5 * k) * fnd.uniform(0.85, 1.0)
    if has("Nodule"):
        for _ in range(fnd.integers(1, 3)):
            nm = np.zeros((S, S), np.float32)
            _circle(nm, lung_point(), S * fnd.uniform(0.012, 0.022), 1.0)
            F += 0.28 * _blur(nm, 0.6 * k)
    if has("Mass"):
        c = lung_point()
        r = S * fnd.uniform(0.045, 0.07)
        mm = np.zeros((S, S), np.float32)
        for _ in range(3):  # lobulated
            _circle(
                mm,
                (c[0] + fnd.normal(0, r * 0.25), c[1] + fnd.normal(0, r * 0.25)),
                r * fnd.uniform(0.7, 1.0),
                1.0,
            )
        F += 0.27 * _blur(mm, 1.4 * k)
    if has("Atelectasis"):  # plate-like band or wedge, on the side of the raised hemidiaphragm
        s = atel_side
        y = cp - fnd.uniform(0.12, 0.22)
        x0, x1 = mid + s * 0.1, mid + s * (wc - 0.03)
        am = np.zeros((S, S), np.float32)
        _line(am, [(x0 * S, y * S), (x1 * S, (y + fnd.uniform(-0.05, 0.03)) * S)], 1.0, 0.022 * S)
        if fnd.random() < 0.5:
            tri = [
                ((mid + s * 0.08) * S, 0.42 * S),
                (x1 * S, (y - 0.06) * S),
                (x1 * S, (y + 0.06) * S),
            ]
            cv2.fillPoly(am, [_pts(tri)], 0.8, _AA, _SHIFT)
        F += 0.9 * LD * _blur(am, 1.5 * k)
    if has("Infiltration"):  # patchy, ill-defined
        s = pick_side() if fnd.random() < 0.7 else 0
        zone = _exp(-((v - fnd.uniform(0.35, 0.7)) ** 2) * 40)
        patch = np.clip(_lowfreq(fnd, S, 10) - 0.2, 0, 1) * zone
        if s:
            patch = patch * side_of[s]
        F += 0.7 * LD * _blur(patch, 2.0 * k)
    if has("Pneumonia"):  # a dense lobe bounded by a fissure, with air bronchograms
        s = pick_side()
        lower = fnd.random() < 0.65
        fis = (v > 0.40 + 0.28 * adu / wc) if lower else (v < 0.36 + 0.04 * adu / wc)
        lobe = (lung & side_of[s] & fis).astype(np.float32)
        roots = []
        for _ in range(3):
            a = (math.pi if s < 0 else 0.0) + s * (1 if lower else -1) * fnd.uniform(0.3, 1.1)
            roots.append(((mid + s * 0.08) * S, 0.42 * S, a, 1.8 * k, 0.14 * S, 0.0, 0))
        bs = _forest(fnd, roots, step, anywhere, 2, wiggle=0.15)
        br = np.zeros((S, S), np.float32)
        _draw_segments(br, bs)
        F += 0.85 * LD * _blur(lobe, 1.2 * k) * (1.0 - 0.5 * _blur(br, 0.5 * k))
    if has("Consolidation"):  # homogeneous dense opacity, no fissure edge
        cm = np.zeros((S, S), np.float32)
        c = lung_point()
        for _ in range(2):
            q = (c[0] + fnd.normal(0, 0.02 * S), c[1] + fnd.normal(0, 0.02 * S))
            _ellipse(
                cm,
                q,
                (S * fnd.uniform(0.04, 0.08), S * fnd.uniform(0.03, 0.06)),
                fnd.uniform(0, 180),
                1.0,
            )
        F += 0.9 * LD * _blur(cm, 2.5 * k)
    if has("Edema"):  # bilateral perihilar (bat-wing) haze and Kerley B lines
        bat = _exp(-(((adu - 0.12) / 0.12) ** 2) - ((v - 0.45) / 0.14) ** 2)
        F += fnd.uniform(0.55, 0.7) * LD * bat
        kl = np.zeros((S, S), np.float32)
        for sgn in (-1, 1):
            for _ in range(fnd.integers(4, 8)):
                y = fnd.uniform(cp - 0.16, cp - 0.05)
                x = mid + sgn * (float(half_width(np.float32(y))) - 0.005)
                _line(kl, [(x * S, y * S), ((x - sgn * 0.04) * S, y * S)], 1.0, 1)
        F += 0.18 * kl * lungb
    if has("Emphysema"):
        for _ in range(fnd.integers(0, 3)):  # bullae
            _circle(F, lung_point(v < 0.4), S * fnd.uniform(0.03, 0.05), 0.10, 1)
    if has("Fibrosis"):  # reticular lines and small cysts in the basal and peripheral lung
        fm = np.zeros((S, S), np.float32)
        per = (adu > hw - 0.12) | (v > diaph - 0.15)
        n = int(fnd.integers(60, 100))
        ang = fnd.uniform(0, math.pi, n)
        ln = S * fnd.uniform(0.015, 0.035, n)
        p0 = np.array(lung_points(n, per))
        p1 = p0 + np.stack([ln * np.cos(ang), ln * np.sin(ang)], 1)
        cv2.polylines(
            fm, list(_pts(np.stack([p0, p1], 1)).reshape(n, 2, 1, 2)), False, 1.0, 1, _AA, _SHIFT
        )
        for q in p0[fnd.random(n) < 0.3].tolist():  # honeycomb cysts
            _circle(fm, q, S * 0.008, 1.0, 1)
        F += 0.22 * fm * lungb
    if has("Pleural_Thickening"):  # a smooth bright band inside the lateral chest wall
        for s in [-1, 1] if fnd.random() < 0.3 else [pick_side()]:
            wid = fnd.uniform(0.015, 0.03)
            y0 = fnd.uniform(apex + 0.03, 0.45)
            vs = np.linspace(y0, min(y0 + fnd.uniform(0.2, 0.4), cp - 0.03), 20, dtype=np.float32)
            pl = np.stack([(mid + s * (half_width(vs) - wid / 2)) * S, vs * S], 1)
            pm = np.zeros((S, S), np.float32)
            _line(pm, pl, 1.0, wid * S)
            F += 0.32 * _blur(pm, 1.0 * k)
    if has("Hernia"):  # retrocardiac gas bubble with an air-fluid level above the diaphragm
        c = (
            (mid + fnd.uniform(-0.02, 0.05)) * S,
            (cp + ldrop - dome_h - fnd.uniform(0.03, 0.07)) * S,
        )
        r = S * fnd.uniform(0.045, 0.07)
        gas = np.zeros((S, S), np.float32)
        _circle(gas, c, r, 1.0)
        cv2.rectangle(gas, (0, int(c[1] + r * fnd.uniform(0.0, 0.4))), (S, S), 0, -1)
        rim = np.zeros((S, S), np.float32)
        _circle(rim, c, r, 1.0, max(1, int(2 * k)))
        F += 0.16 * _blur(rim, 0.5 * k) - 0.30 * _blur(gas, 0.8 * k)

    D += markings
    D += F
    D += 0.03 * _lowfreq(anat, S, 3)

    # ---- acquisition: blur, quantum noise, exposure/contrast, positioning, side marker
    D = _blur(D, 0.8 * k)
    D += 0.012 * _noise(cam, S)
    lo, hi = cam.uniform(0.0, 0.08), cam.uniform(0.72, 0.92)
    # Window to 8 bits (clamped below first: convertScaleAbs would fold negatives back up),
    # then gamma by lookup table and positioning on the 8-bit film.
    out = cv2.convertScaleAbs(
        cv2.max(D, float(lo)), alpha=255 / (hi - lo), beta=-255 * lo / (hi - lo)
    )
    gamma = cam.uniform(0.8, 1.25)
    out = cv2.LUT(out, np.round(255 * (np.arange(256) / 255) ** gamma).astype(np.uint8))
    M = cv2.getRotationMatrix2D((S / 2, S / 2), cam.normal(0, 2.0), cam.uniform(0.95, 1.05))
    M[:, 2] += cam.normal(0, 0.015 * S, 2)
    out = cv2.warpAffine(out, M, (S, S), flags=cv2.INTER_LINEAR, borderValue=0)
    if cam.random() < 0.5 and S >= 64:
        # The radiographer's side marker, drawn as strokes (putText costs more than the film).
        x, y, h = S * cam.uniform(0.03, 0.1), S * cam.uniform(0.12, 0.2), 0.05 * S
        bowl = [(0, 0), (0, 1), (0.45, 1), (0.6, 0.85), (0.6, 0.65), (0.45, 0.5), (0, 0.5)]
        for stroke in (bowl, [(0.2, 0.5), (0.65, 0)]):
            _line(out, [(x + h * a, y - h * b) for a, b in stroke], 235, max(1.0, 1.5 * k))
    return out


# ---------------------------------------------------------------------------- datasets

_SALT_IMAGE, _SALT_PATIENT = 0, 1


def image_rng(seed: int, modality: str, index: int) -> np.random.Generator:
    """The generator image `index` of a `modality` set with `seed` is drawn from."""
    return np.random.default_rng([int(seed), MODALITIES.index(modality), _SALT_IMAGE, int(index)])


def _patient_labels(modality: str, seed: int, patient: int) -> list:
    """Labels of one synthetic patient's 1-2 images (two eyes, two scans, a follow-up film)."""
    rng = np.random.default_rng(
        [int(seed), MODALITIES.index(modality), _SALT_PATIENT, int(patient)]
    )
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


def _render(
    modality: str, rng: np.random.Generator, label, size: int, eye: str | None = None
) -> np.ndarray:
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


def contact_sheet(
    modality: str, path: Path, *, seed: int = 0, tile: int = 176, size: int = 256
) -> Path:
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
            cv2.putText(
                img,
                part,
                org,
                cv2.FONT_HERSHEY_SIMPLEX,
                0.38,
                (255, 255, 80)[: img.shape[2]],
                1,
                cv2.LINE_AA,
            )
        r, c = divmod(i, cols)
        sheet[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = img
        sheet[r * tile, :] = 60
        sheet[:, c * tile] = 60
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet &= 0xFC  # 6 bits per channel: invisible at this scale, keeps the docs PNGs small
    if colour:
        sheet = cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(
        ".png", sheet if colour else sheet[..., 0], [cv2.IMWRITE_PNG_COMPRESSION, 9]
    )
    path.write_bytes(buf.tobytes())
    return path


def _main(argv: list[str] | None = None) -> None:
    """Regenerate the docs contact sheets and/or time `synthesize` per modality."""
    import argparse
    import tempfile
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
            with tempfile.TemporaryDirectory() as tmp:
                t0, c0 = time.perf_counter(), time.process_time()
                synthesize(m, args.bench, Path(tmp), size=args.size)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            # CPU time is the fair figure on a shared machine; wall time is what you wait.
            print(
                f"{m}: {args.bench / wall:.1f} images/s wall, {args.bench / cpu:.1f} images/s of "
                f"process CPU at {args.size} px (generate + PNG + write, one process)"
            )


if __name__ == "__main__":
    _main()
