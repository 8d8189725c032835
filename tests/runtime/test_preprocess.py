"""Preprocessing: disc detection on real and synthetic fundus images, shapes, config."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from edgescreen.runtime.errors import CardError
from edgescreen.runtime.preprocess import (
    PreprocessConfig,
    canonical,
    find_fundus_disc,
    preprocess,
    to_tensor,
)


def _read_rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _synthetic_fundus(h, w, cx, cy, r, notch=False, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    cv2.circle(img, (round(cx), round(cy)), round(r), (170, 80, 30), cv2.FILLED)
    img = cv2.add(img, rng.integers(0, 3, img.shape, dtype=np.uint8))
    cv2.line(
        img, (round(cx - r / 2), round(cy)), (round(cx + r / 2), round(cy + r / 3)), (90, 30, 10), 4
    )
    if notch:  # a dark inward notch at the top-right rim, as some cameras print
        ang = -math.pi / 4
        px, py = cx + r * math.cos(ang), cy + r * math.sin(ang)
        cv2.rectangle(
            img, (round(px - 15), round(py - 15)), (round(px + 15), round(py + 15)), 0, -1
        )
    return img


def test_disc_found_on_all_real_photos(fundus_dir):
    paths = sorted((fundus_dir / "images").glob("*.jpg"))
    assert len(paths) == 400
    for p in paths:
        img = _read_rgb(p)
        h, w = img.shape[:2]
        d = find_fundus_disc(img)
        assert d.found, p.name
        assert 0 <= d.cx < w and 0 <= d.cy < h, p.name
        # Measured: radius 296-338 px on 514 px high images (0.58-0.66 of the height).
        assert 0.5 * h <= d.radius <= 0.75 * h, (p.name, d.radius)
        assert 0.8 <= d.fov_fraction <= 1.0, p.name


@pytest.mark.parametrize(
    ("h", "w", "cx", "cy", "r", "notch"),
    [
        (600, 800, 400, 300, 250, False),  # centred, black borders left/right
        (600, 800, 300, 260, 220, False),  # off-centre
        (600, 800, 420, 310, 240, True),  # notch
        (500, 760, 380, 250, 310, False),  # clipped top and bottom
        (1200, 1600, 700, 620, 540, True),  # large, notch, off-centre
    ],
)
def test_synthetic_disc_recovered(h, w, cx, cy, r, notch):
    d = find_fundus_disc(_synthetic_fundus(h, w, cx, cy, r, notch))
    assert d.found
    assert abs(d.cx - cx) < 0.02 * r and abs(d.cy - cy) < 0.02 * r, d
    assert abs(d.radius - r) < 0.02 * r, d
    assert d.clipped == (cy - r < 0 or cy + r > h or cx - r < 0 or cx + r > w)


def test_non_fundus_not_found():
    assert not find_fundus_disc(np.full((400, 400, 3), 128, np.uint8)).found
    assert not find_fundus_disc(np.zeros((400, 400, 3), np.uint8)).found
    ramp = np.tile(np.linspace(0, 255, 400, dtype=np.uint8), (300, 1))
    assert not find_fundus_disc(ramp).found


def test_prepare_fundus_shape_and_mask(fundus_dir):
    img = _read_rgb(next(iter(sorted((fundus_dir / "images").glob("*.jpg")))))
    cfg = PreprocessConfig.default("fundus", 224)
    out = canonical(img, cfg, size=320)
    assert out.shape == (320, 320, 3) and out.dtype == np.uint8
    yy, xx = np.mgrid[:320, :320]
    rr = np.hypot(xx - 159.5, yy - 159.5)
    assert not out[rr > 0.95 * 160 + 2].any()  # zero outside the mask circle
    inside = out[rr < 0.5 * 160]
    assert abs(float(inside.mean()) - 128) < 20  # Ben Graham centres the retina on 128
    t = to_tensor(out, cfg)
    assert t.shape == (3, 224, 224) and t.dtype == np.float32
    assert np.isclose(t.min(), -1.0) and t.max() <= 1.0
    np.testing.assert_array_equal(preprocess(img, cfg), to_tensor(canonical(img, cfg), cfg))


def test_prepare_fundus_pads_with_black_when_off_frame():
    img = _synthetic_fundus(400, 400, 100, 200, 150)  # disc pokes out on the left
    cfg = PreprocessConfig(
        "fundus", 128, 3, (0.5,) * 3, (0.5,) * 3, ben_graham=False, circle_mask=False
    )
    out = canonical(img, cfg)
    assert out.shape == (128, 128, 3)
    assert not out[:, :5].any()  # left of the frame: padding
    assert out[64, 64, 0] > 150  # centre of the disc


def test_grey_fundus_and_colour_oct_cxr():
    grey = _synthetic_fundus(300, 400, 200, 150, 120)[:, :, 0]
    cfg = PreprocessConfig.default("fundus", 64)
    out = canonical(grey, cfg)
    assert out.shape == (64, 64, 3)
    assert (out[:, :, 0] == out[:, :, 1]).all() and (out[:, :, 1] == out[:, :, 2]).all()
    rgb = np.dstack([np.full((100, 120), v, np.uint8) for v in (200, 100, 50)])
    oct_cfg = PreprocessConfig.default("oct", 32)
    o = canonical(rgb, oct_cfg)
    assert o.shape == (32, 32, 1)
    assert abs(int(o[0, 0, 0]) - round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)) <= 1
    assert preprocess(rgb, oct_cfg).shape == (1, 32, 32)
    cxr = canonical(rgb, PreprocessConfig.default("cxr", 32))
    assert cxr.shape == (32, 32, 3) and (cxr[..., 0] == cxr[..., 2]).all()


def test_cxr_16_and_8_bit_identical():
    rng = np.random.default_rng(1)
    img8 = cv2.GaussianBlur(rng.integers(0, 256, (300, 280), dtype=np.uint8), (0, 0), 3)
    img8 = cv2.normalize(img8, None, 0, 255, cv2.NORM_MINMAX)
    img16 = img8.astype(np.uint16) * 257
    for clahe in (False, True):
        cfg = PreprocessConfig("cxr", 128, 3, (0.5,) * 3, (0.25,) * 3, clahe=clahe)
        a, b = canonical(img8, cfg), canonical(img16, cfg)
        np.testing.assert_array_equal(a, b)
        assert a.shape == (128, 128, 3)
    # Windowing spreads the middle 99 % over the full range.
    out = canonical(img8, PreprocessConfig.default("cxr", 128))
    assert out.min() == 0 and out.max() == 255


def test_oct_denoise():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (200, 300), dtype=np.uint8)
    cfg = PreprocessConfig("oct", 64, 1, (0.5,), (0.5,), denoise=True)
    noisy = canonical(img, PreprocessConfig("oct", 64, 1, (0.5,), (0.5,)))
    assert canonical(img, cfg).std() < noisy.std()


def test_config_round_trip():
    import json

    for modality in ("fundus", "oct", "cxr"):
        cfg = PreprocessConfig.default(modality, 256)
        d = json.loads(json.dumps(cfg.to_dict()))
        assert PreprocessConfig.from_dict(d) == cfg
    assert PreprocessConfig.default("oct", 64).channels == 1


_GOOD = PreprocessConfig.default("fundus", 224).to_dict()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"modality": "mri"}, "modality"),
        ({"modality": 3}, "modality"),
        ({"channels": 2}, "channels"),
        ({"channels": True}, "channels"),
        ({"mean": [0.5, 0.5]}, "mean"),
        ({"std": [0.5, 0.0, 0.5]}, "std"),
        ({"std": "0.5"}, "std"),
        ({"size": 4}, "size"),
        ({"size": 224.0}, "size"),
        ({"ben_graham": "yes"}, "ben_graham"),
        ({"mask_radius_frac": 1.5}, "mask_radius_frac"),
        ({"ben_graham_sigma_frac": 0}, "ben_graham_sigma_frac"),
        ({"window_percentiles": [99, 1]}, "window_percentiles"),
        ({"window_percentiles": [1]}, "window_percentiles"),
        ({"clahe_clip": -1}, "clahe_clip"),
        ({"colour": "rgb"}, "colour"),
    ],
)
def test_config_refuses_bad_values(change, field):
    d = {**_GOOD, **change}
    with pytest.raises(CardError) as err:
        PreprocessConfig.from_dict(d, where="card.preprocessing")
    assert err.value.field == f"card.preprocessing.{field}"
    assert f"card.preprocessing.{field}" in str(err.value)


@pytest.mark.parametrize("missing", ["modality", "size", "channels", "mean", "std"])
def test_config_refuses_missing(missing):
    d = {k: v for k, v in _GOOD.items() if k != missing}
    with pytest.raises(CardError, match=f"preprocessing.{missing}"):
        PreprocessConfig.from_dict(d)


def test_direct_construction_is_validated():
    with pytest.raises(CardError, match="preprocessing.channels"):
        PreprocessConfig("fundus", 224, 2, (0.5, 0.5), (0.5, 0.5))


def test_a_card_without_antialias_prepares_as_before():
    """Bundles written before the option read it as off: their inputs are unchanged."""
    d = PreprocessConfig.default("fundus", 96).to_dict()
    del d["antialias"]
    cfg = PreprocessConfig.from_dict(d)
    assert cfg.antialias is False
    assert PreprocessConfig.default("fundus", 96).antialias is False  # opt-in per config


def test_antialias_brings_a_camera_original_and_its_copy_closer():
    """The same photo at 3872 px and as the 768 px copy: the smoothed shrink leaves less of
    the resolution-dependent fine detail that Ben Graham's filter then boosts 4x."""
    from conftest import shared_set

    from edgescreen.benchmarks.camera import pairs
    from edgescreen.runtime.imageio import load_image

    photo_pairs = pairs(shared_set("fundus-dr-srahim-fullres"))[::10]  # 4 of the 40
    base = PreprocessConfig.default("fundus", 160)
    smooth = PreprocessConfig.from_dict({**base.to_dict(), "antialias": True})
    gaps = {False: [], True: []}
    for original, copy in photo_pairs:
        a, b = load_image(original), load_image(copy)
        for cfg in (base, smooth):
            gaps[cfg.antialias].append(
                float(np.abs(preprocess(a, cfg) - preprocess(b, cfg)).mean())
            )
    assert np.mean(gaps[True]) < 0.8 * np.mean(gaps[False]), gaps


def test_uint8_percentile_from_a_histogram_equals_numpys():
    from edgescreen.runtime.preprocess import percentile_u8

    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 7, 1000, 44_000):
        for values in (
            rng.integers(0, 256, n, dtype=np.uint8),
            np.full(n, rng.integers(0, 256), np.uint8),  # flat: every rank one level
            rng.choice(np.array([0, 255], np.uint8), n),  # two levels far apart
        ):
            for q in (0, 1, 33.3, 50, 90, 99, 100):
                assert percentile_u8(values, q) == pytest.approx(np.percentile(values, q), abs=1e-9)
    with pytest.raises(ValueError):
        percentile_u8(np.array([], np.uint8), 50)
