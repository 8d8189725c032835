"""prepare.decode_scaled: a camera JPEG decoded at the coarsest scale its disc allows.

A 10-megapixel fundus JPEG whose circle is clipped by the frame's top and bottom is decoded
at 1/8 (its disc is still at least quality.MIN_DISC_RADIUS there); one whose circle lies
inside the frame, a photo with no disc and any non-JPEG are decoded at decode_side's scale.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgescreen.runtime.imageio import Decoded, decode
from edgescreen.runtime.prepare import decode_recipe, decode_scaled, decode_side, prepare
from edgescreen.runtime.preprocess import Disc, PreprocessConfig, find_fundus_disc
from edgescreen.runtime.quality import MIN_DISC_RADIUS, coarse_measuring_side, default_limits

W, H = 3872, 2592  # the shared camera originals' size
CFG = PreprocessConfig.default("fundus", 160)
LIMITS = default_limits("fundus")


def _photo(radius: int, fmt: str = ".jpg") -> bytes:
    """A red disc with dark vessels on black, centred in a camera-size frame."""
    img = np.zeros((H, W, 3), np.uint8)
    cv2.circle(img, (W // 2, H // 2), radius, (30, 60, 170), cv2.FILLED)  # BGR: red fundus
    rng = np.random.default_rng(radius)
    for _ in range(12):
        a, b = rng.uniform(-0.6, 0.6, 2) * radius
        cv2.line(img, (W // 2, H // 2), (int(W // 2 + a), int(H // 2 + b)), (20, 30, 90), 9)
    ok, buf = cv2.imencode(fmt, img)
    assert ok
    return buf.tobytes()


def test_coarse_side_serves_a_clipped_disc_only():
    assert coarse_measuring_side("oct") is None and coarse_measuring_side("cxr") is None
    coarse = coarse_measuring_side("fundus")
    # An original's shorter side at 1/8 (324) clears it; a 768 px copy at 1/2 (257) does not.
    assert H // 8 >= coarse > 514 // 2
    assert coarse < decode_side(CFG, LIMITS)
    assert decode_recipe(CFG, LIMITS)["coarse_side"] == coarse


def test_clipped_circle_decodes_at_one_eighth_and_keeps_its_disc():
    data = _photo(radius=int(0.6 * H))  # about 1.2 frame heights across, cut top and bottom
    d = decode_scaled(data, CFG, LIMITS, name="clipped.jpg")
    assert d.scale == pytest.approx(1 / 8) and d.image.shape[:2] == (H // 8, W // 8)
    assert d.name == "clipped.jpg"
    assert d.disc is not None and d.disc.found and d.disc.radius >= MIN_DISC_RADIUS
    # prepare() takes the disc the decoder found rather than searching again.
    assert prepare(d, CFG, gate=False).disc is d.disc
    again = find_fundus_disc(d.image)
    assert (again.cx, again.cy, again.radius) == (d.disc.cx, d.disc.cy, d.disc.radius)


def test_circle_inside_the_frame_is_decoded_again_and_keeps_its_disc_scaled():
    data = _photo(radius=int(0.45 * H))  # 146 px at 1/8: too small to measure there
    d = decode_scaled(data, CFG, LIMITS)
    side = decode_side(CFG, LIMITS)
    assert d.scale == pytest.approx(1 / 4)  # 2592 / 4 = 648 >= side > 2592 / 8
    assert min(d.image.shape[:2]) >= side
    fresh = find_fundus_disc(d.image)  # what prepare would have searched for
    assert d.disc is not None and d.disc.found
    assert abs(d.disc.cx - fresh.cx) < 1 and abs(d.disc.cy - fresh.cy) < 1
    assert abs(d.disc.radius - fresh.radius) < 1 and d.disc.radius < 2 * MIN_DISC_RADIUS


def test_photo_without_a_disc_is_decoded_again_and_searched_there():
    d = decode_scaled(_photo(radius=0), CFG, LIMITS)
    assert d.scale == pytest.approx(1 / 4) and d.disc is None


def test_a_scaled_disc_keeps_its_cuts_on_the_same_pixels():
    cut = Disc(100.0, 80.0, 90.0, True, True, 0.9, 0.95, ((0.0, 1.0, 150.0),))  # y > 150 out
    big = cut.scaled(2.0, 2.0)
    assert (big.cx, big.cy, big.radius) == (200.5, 160.5, 180.0)
    ((nx, ny, c),) = big.cuts
    # The edge runs through the centre of small row 150, which covers big rows 300-301: the
    # boundary falls between them, at the centre line y = 300.5.
    assert (nx, ny) == (0.0, 1.0) and c == pytest.approx(300.5)


def test_non_jpeg_and_arrays_take_the_safe_scale_once(monkeypatch):
    import edgescreen.runtime.prepare as prepare_module

    png = _photo(radius=int(0.6 * H), fmt=".png")
    side = decode_side(CFG, LIMITS)
    calls = []
    monkeypatch.setattr(
        prepare_module, "decode", lambda *a, **k: calls.append(k) or decode(*a, **k)
    )
    d = decode_scaled(png, CFG, LIMITS)
    assert [c["min_side"] for c in calls] == [side]  # decoded (and resized) once, never twice
    assert min(d.image.shape[:2]) == side and d.disc is None
    array = decode(png).image
    a = decode_scaled(array, CFG, LIMITS)
    assert min(a.image.shape[:2]) == side and a.disc is None
    already = Decoded("given", array)
    assert decode_scaled(already, CFG, LIMITS) is already


def test_path_and_bytes_of_one_file_decode_alike(tmp_path):
    """Path and bytes of one file decode identically (screening, heatmaps, training agree)."""
    data = _photo(radius=int(0.6 * H))
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    a, b = decode_scaled(path, CFG, LIMITS), decode_scaled(data, CFG, LIMITS)
    assert a.name == str(path) and np.array_equal(a.image, b.image) and a.scale == b.scale


def test_pixel_limit_holds_on_the_coarse_path():
    from edgescreen.runtime.errors import ImageError

    with pytest.raises(ImageError, match="over the limit"):
        decode_scaled(_photo(radius=int(0.6 * H)), CFG, LIMITS, max_pixels=W * H - 1, name="big")


def test_a_picture_larger_than_the_disc_allows_takes_the_safe_scale():
    # A model input (or training working size) over twice the coarse disc's radius would be
    # enlarged from it: then the coarse scale is not used.
    big = PreprocessConfig.default("fundus", 400)
    d = decode_scaled(_photo(radius=int(0.6 * H)), big, LIMITS)
    assert d.scale > 1 / 8 and d.disc is None


def test_training_decodes_a_camera_photo_at_screenings_scale(tmp_path):
    """The dataset's call (no limits, its working size) and decode_for's (the card's limits,
    input size) choose the same scale for the shipped DR configuration."""
    from edgescreen.train.config import load_config

    cfg = load_config("multitask-tiny")
    data = _photo(radius=int(0.6 * H))
    screening = decode_scaled(data, PreprocessConfig.default("fundus", cfg.input_size), LIMITS)
    training = decode_scaled(
        data, PreprocessConfig.default("fundus", cfg.input_size), size=cfg.working_size
    )
    assert screening.scale == training.scale == pytest.approx(1 / 8)
    assert np.array_equal(screening.image, training.image)
