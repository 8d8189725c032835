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


def _names(transform) -> list[str]:
    """Class names of every transform, inside OneOf/SomeOf groups too."""
    out = []
    for t in transform.transforms:
        out.append(type(t).__name__)
        if hasattr(t, "transforms"):
            out.extend(_names(t))
    return out


# The APTOS write-up's augmentations (piecewise affine left out: see augment.py).
WRITE_UP = (
    "OpticalDistortion",
    "GridDistortion",
    "GaussNoise",
    "Sharpen",
    "Emboss",
    "RGBShift",
    "Affine",
    "GaussianBlur",
    "CoarseDropout",
    "HorizontalFlip",
    "VerticalFlip",
    "Rotate",
    "RandomBrightnessContrast",
    "RandomGamma",
)


def test_fundus_has_the_write_ups_augmentations():
    assert set(WRITE_UP) <= set(_names(build_augmentation("fundus")))


def test_other_modalities_get_no_warps_or_edge_filters():
    for modality in ("oct", "cxr"):
        names = set(_names(build_augmentation(modality)))
        assert not names & {"OpticalDistortion", "GridDistortion", "Sharpen", "Emboss"}, modality


@pytest.mark.parametrize(
    "name", ["OpticalDistortion", "GridDistortion", "GaussNoise", "Sharpen", "Emboss"]
)
def test_each_new_fundus_transform_runs_alone(name):
    """Forced on (p=1) one at a time: it changes the picture and keeps its contract."""
    import albumentations as A

    (t,) = [t for t in _walk(build_augmentation("fundus")) if type(t).__name__ == name]
    t.p = 1.0
    image = np.random.default_rng(3).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    a, b = (augment(A.Compose([t]), image, seed=5) for _ in range(2))
    assert a.shape == image.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, image)


def _walk(transform):
    for t in transform.transforms:
        yield t
        if hasattr(t, "transforms"):
            yield from _walk(t)


def test_dataset_augments_by_epoch_and_never_at_validation(tmp_path):
    """Training pictures are a function of (seed, epoch, index): the same epoch twice gives
    the same tensors, the next epoch others; a validation dataset is the bare prepared image."""
    pytest.importorskip("torch")
    from edgescreen.runtime.preprocess import PreprocessConfig, to_tensor
    from edgescreen.train.data.dataset import ScreeningDataset
    from edgescreen.train.data.loaders import load_generic_csv
    from edgescreen.train.data.synth import synthesize

    data = load_generic_csv(synthesize("fundus", 4, tmp_path / "f", seed=3, size=96), "dr")
    cfg = PreprocessConfig.default("fundus", 64)

    def epoch_tensors(ds, epoch):
        ds.set_epoch(epoch)
        return [ds[i][0].numpy() for i in range(len(ds))]

    train = ScreeningDataset(data.samples, cfg, train=True, working_size=80, seed=1)
    first, again, second = (epoch_tensors(train, e) for e in (3, 3, 4))
    assert all(a.shape == (3, 64, 64) and a.dtype == np.float32 for a in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))

    val = ScreeningDataset(data.samples, cfg, train=False, working_size=80, seed=1)
    assert val.augmentation is None
    for e in (0, 7):
        for i, x in enumerate(epoch_tensors(val, e)):
            np.testing.assert_array_equal(x, to_tensor(val.prepared(i), cfg))
