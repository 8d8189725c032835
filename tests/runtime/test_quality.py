"""Quality gate: every real photo passes; degraded copies fail with the matching code."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from edgescreen.runtime.errors import CardError
from edgescreen.runtime.preprocess import find_fundus_disc
from edgescreen.runtime.quality import QualityLimits, assess_quality, default_limits


def _read_rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def fundus_paths(fundus_dir):
    paths = sorted((fundus_dir / "images").glob("*.jpg"))
    assert len(paths) == 400
    return paths


@pytest.fixture(scope="module")
def sample(fundus_paths):
    return [_read_rgb(p) for p in fundus_paths[::40]]  # 10 photos, 5 patients' eyes apart


def test_all_real_photos_gradable(fundus_paths):
    for p in fundus_paths:
        report = assess_quality(_read_rgb(p), "fundus")
        assert report.gradable, (p.name, report.to_dict())
        assert report.issues == [] and report.reasons == []


DEGRADE = {
    "blurred": lambda im: cv2.GaussianBlur(im, (0, 0), 12),
    "underexposed": lambda im: cv2.convertScaleAbs(im, alpha=0.15),
    # Flash far too strong: every channel clips, the camera's black border stays black.
    "overexposed": lambda im: cv2.LUT(
        im, np.clip((np.arange(256) - 8) * 12, 0, 255).astype(np.uint8)
    ),
    "fov_cut_off": lambda im: np.ascontiguousarray(im[: im.shape[0] // 2, : im.shape[1] // 2]),
}


@pytest.mark.parametrize("code", list(DEGRADE))
def test_degraded_photos_rejected(sample, code):
    for i, img in enumerate(sample):
        report = assess_quality(DEGRADE[code](img), "fundus")
        assert not report.gradable
        assert code in [x.code for x in report.issues], (i, report.to_dict())


def test_chest_xray_given_as_fundus_rejected(cxr_dir):
    paths = sorted((cxr_dir / "images").glob("*.png"))
    big = [p for p in paths if cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).shape[0] >= 256]
    assert big, "the mini set has a few 256/1024 px images"
    for p in big[:10]:
        img = _read_rgb(p)
        report = assess_quality(img, "fundus")
        assert "not_fundus" in [x.code for x in report.issues], (p.name, report.to_dict())
        # ... and as a chest X-ray it is fine.
        assert assess_quality(img, "cxr").gradable, p.name


def test_flat_grey_rejected():
    grey = np.full((600, 800, 3), 128, np.uint8)
    report = assess_quality(grey, "fundus")
    assert [i.code for i in report.issues] == ["not_fundus"]
    assert "no fundus found" in report.reasons[0]
    assert "blurred" in [i.code for i in assess_quality(grey[:, :, 0], "cxr").issues]
    black = np.zeros((600, 800, 3), np.uint8)
    assert [i.code for i in assess_quality(black, "fundus").issues] == ["underexposed"]


def test_too_small():
    report = assess_quality(np.zeros((28, 28, 3), np.uint8), "fundus")
    assert [i.code for i in report.issues] == ["too_small"]
    assert not report.gradable


def test_precomputed_disc_is_used(sample):
    img = sample[0]
    disc = find_fundus_disc(img)
    a = assess_quality(img, "fundus", disc=disc)
    b = assess_quality(img, "fundus")
    assert a.measurements == b.measurements
    moved = type(disc)(disc.cx, disc.cy, disc.radius, True, True, 0.3, disc.fit_iou)
    assert "fov_cut_off" in [i.code for i in assess_quality(img, "fundus", disc=moved).issues]


def test_cxr_real_images_gradable_and_16_bit(cxr_dir):
    paths = sorted((cxr_dir / "images").glob("*.png"))[::25]
    for p in paths:
        assert assess_quality(_read_rgb(p), "cxr").gradable, p.name
    g = cv2.imread(str(paths[0]), cv2.IMREAD_GRAYSCALE)
    r8 = assess_quality(g, "cxr")
    r16 = assess_quality(g.astype(np.uint16) * 257, "cxr")
    assert r8.gradable and r16.gradable
    assert "underexposed" in [i.code for i in assess_quality(g // 20, "cxr").issues]


def test_report_to_dict_is_json():
    report = assess_quality(np.full((600, 800, 3), 128, np.uint8), "fundus")
    d = json.loads(json.dumps(report.to_dict()))
    assert d["gradable"] is False and d["issues"][0]["code"] == "not_fundus"


def test_limits_round_trip_and_refusals():
    for modality in ("fundus", "oct", "cxr"):
        lim = default_limits(modality)
        assert QualityLimits.from_dict(json.loads(json.dumps(lim.to_dict()))) == lim
    good = default_limits("fundus").to_dict()
    cases = [
        ({"min_side": 0}, "min_side"),
        ({"min_side": 12.5}, "min_side"),
        ({"min_sharpness": "high"}, "min_sharpness"),
        ({"max_dark_fraction": 1.5}, "max_dark_fraction"),
        ({"min_redness": True}, "min_redness"),
        ({"surprise": 1}, "surprise"),
    ]
    for change, field in cases:
        with pytest.raises(CardError) as err:
            QualityLimits.from_dict({**good, **change})
        assert err.value.field == f"quality.{field}", change
    missing = {k: v for k, v in good.items() if k != "min_side"}
    with pytest.raises(CardError, match="quality.min_side"):
        QualityLimits.from_dict(missing)
    with pytest.raises(CardError):
        default_limits("mri")
