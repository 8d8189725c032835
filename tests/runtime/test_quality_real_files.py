"""The fundus quality gate on whole sets of real files (skipped where the shared data is absent).

- a camera original (3872x2592), the same file decoded at 1/4 and at 1/8 (as screening
  decodes it) and its 768 px copy get the same verdict, and every real photo of both sets is gradable;
- defocused copies of every real photo, saved as JPEG at quality 70-95, are rejected;
- the synthetic set whose clipped circles used to be "no fundus found" is all gradable.
"""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
from conftest import shared_set

from edgescreen.runtime.prepare import decode_scaled
from edgescreen.runtime.preprocess import PreprocessConfig, find_fundus_disc
from edgescreen.runtime.quality import assess_quality, default_limits


def _read_rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    assert ok
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def camera_pairs():
    """(camera original, its 768 px copy) for the 40 originals."""
    full = shared_set("fundus-dr-srahim-fullres")
    small = shared_set("fundus-dr-srahim")
    with (full / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 40
    pairs = [(full / r["filename"], small / r["copy_in_fundus_dr_srahim"]) for r in rows]
    for original, copy in pairs:
        assert original.is_file() and copy.is_file(), (original, copy)
    return pairs


@pytest.mark.slow  # 40 camera-size JPEG decodes: 5-8 s
def test_camera_original_and_768_copy_same_verdict(camera_pairs):
    for original, copy in camera_pairs:
        big, small = _read_rgb(original), _read_rgb(copy)
        assert big.shape[:2] == (2592, 3872) and small.shape[:2] == (514, 768), original.name
        a, b = assess_quality(big, "fundus"), assess_quality(small, "fundus")
        assert a.gradable == b.gradable, (original.name, a.to_dict(), b.to_dict())
        assert a.gradable, (original.name, a.to_dict())
        ma, mb = a.measurements, b.measurements
        # Measured at the reference radius: geometry and exposure agree, and the original
        # (not re-encoded, not shrunk by the camera) is never less sharp than its copy.
        assert abs(ma["fov_fraction"] - mb["fov_fraction"]) < 0.005, original.name
        assert abs(ma["dark_fraction"] - mb["dark_fraction"]) < 0.005, original.name
        assert ma["edge_sharpness"] >= 0.95 * mb["edge_sharpness"], (original.name, ma, mb)
        assert ma["sharpness"] >= 0.95 * mb["sharpness"], (original.name, ma, mb)
        # Decoded at 1/4 in the DCT domain (968x648), as a reduced JPEG decode gives it.
        quarter = cv2.cvtColor(
            cv2.imread(str(original), cv2.IMREAD_REDUCED_COLOR_4), cv2.COLOR_BGR2RGB
        )
        c = assess_quality(quarter, "fundus")
        assert c.gradable == a.gradable, (original.name, c.to_dict())
        # As screening decodes it: at 1/8, where the clipped disc is still big enough.
        eighth = decode_scaled(
            original, PreprocessConfig.default("fundus", 160), default_limits("fundus")
        )
        assert eighth.scale == 1 / 8 and eighth.disc is not None, original.name
        e = assess_quality(eighth.image, "fundus", disc=eighth.disc)
        assert e.gradable == a.gradable, (original.name, e.to_dict())


@pytest.mark.slow  # 400 photos x 4 qualities: 15-25 s
def test_every_real_photo_defocused_as_jpeg_rejected(fundus_dir):
    paths = sorted((fundus_dir / "images").glob("*.jpg"))
    assert len(paths) == 400
    for p in paths:
        blurred = cv2.GaussianBlur(_read_rgb(p), (0, 0), 6)
        for quality in (70, 80, 90, 95):
            report = assess_quality(_jpeg(blurred, quality), "fundus")
            assert report.codes == ["blurred"], (p.name, quality, report.to_dict())


def test_synthetic_set_with_clipped_circles_gradable(tmp_path):
    """`edgescreen synth fundus --n 200 --seed 12`: 39 of its photos were "no fundus found"."""
    synth = pytest.importorskip("edgescreen.train.data.synth")
    csv_path = synth.synthesize("fundus", 200, tmp_path / "synth12", seed=12)
    paths = sorted((csv_path.parent / "images").glob("*.png"))
    assert len(paths) == 200
    cut = 0
    for p in paths:
        img = _read_rgb(p)
        disc = find_fundus_disc(img)
        report = assess_quality(img, "fundus", disc=disc)
        assert report.gradable, (p.name, report.to_dict())
        cut += bool(disc.cuts)
    assert cut >= 39


@pytest.mark.slow  # 3 camera-size blurs and encodes: about 4 s
def test_defocused_camera_original_rejected_at_the_scale_screening_decodes(camera_pairs):
    """A 10-megapixel photo defocused as much as sigma 6 px at 768 px, saved as JPEG, is
    decoded at 1/8 like any clipped-circle original and still found blurred."""
    cfg, limits = PreprocessConfig.default("fundus", 160), default_limits("fundus")
    for original, _ in camera_pairs[::16]:
        blurred = cv2.GaussianBlur(cv2.imread(str(original)), (0, 0), 6 * 3872 / 768)
        for quality in (70, 95):
            ok, buf = cv2.imencode(".jpg", blurred, [cv2.IMWRITE_JPEG_QUALITY, quality])
            assert ok
            decoded = decode_scaled(buf.tobytes(), cfg, limits)
            assert decoded.scale == 1 / 8, original.name
            report = assess_quality(decoded.image, "fundus", limits, disc=decoded.disc)
            assert report.codes == ["blurred"], (original.name, quality, report.to_dict())
