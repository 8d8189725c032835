"""Augmentation keeps the image contract, is reproducible by seed, and never mirrors a CXR."""

from __future__ import annotations

import numpy as np
import pytest

from edgescreen.train.augment import augment, build_augmentation


@pytest.mark.parametrize(
    "modality, shape",
    [("fundus", (96, 96, 3)), ("oct", (96, 96, 1)), ("cxr", (96, 96, 3)), ("cxr", (96, 96, 1))],
)
def test_shapes_dtypes_and_determinism(modality, shape):
    image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    transform = build_augmentation(modality)
    outs = [augment(transform, image, seed=s) for s in (7, 7, 8)]
    assert all(o.shape == shape and o.dtype == np.uint8 for o in outs)
    assert np.array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], outs[2])


def test_cxr_is_never_flipped_horizontally():
    transform = build_augmentation("cxr")
    assert not any(
        "Flip" in type(t).__name__ or "Transpose" in type(t).__name__ for t in transform.transforms
    )
    # Behaviourally: a bright block centred at x=104 stays right of the midline (a flip puts it at 23).
    image = np.zeros((128, 128, 1), np.uint8)
    image[40:90, 90:120] = 255
    for seed in range(60):
        out = augment(transform, image, seed=seed)[..., 0].astype(float)
        cols = np.arange(out.shape[1])
        centre = (out.sum(axis=0) * cols).sum() / max(out.sum(), 1)
        assert centre > 64, f"seed {seed}: bright block moved to x={centre:.0f}"


def test_fundus_is_flipped_sometimes():
    transform = build_augmentation("fundus")
    assert any(type(t).__name__ == "HorizontalFlip" for t in transform.transforms)


def test_unknown_modality():
    with pytest.raises(ValueError, match="unknown modality"):
        build_augmentation("mri")
