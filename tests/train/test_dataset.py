"""Dataset: runtime preprocessing, augmentation, to_tensor, and the prepared-image cache."""

from __future__ import annotations

import numpy as np
import torch

from edgescreen.runtime.imageio import load_image
from edgescreen.runtime.preprocess import PreprocessConfig, preprocess
from edgescreen.train.data.dataset import ScreeningDataset
from edgescreen.train.data.loaders import load_srahim_fundus
from edgescreen.train.data.records import Sample


def test_eval_items_equal_the_runtime_preprocessing(fundus_dir, tmp_path):
    samples = load_srahim_fundus(fundus_dir).samples[:3]
    cfg = PreprocessConfig.default("fundus", 96)
    ds = ScreeningDataset(samples, cfg, train=False, cache_dir=tmp_path / "cache")
    for i, sample in enumerate(samples):
        x, y = ds[i]
        expected = preprocess(load_image(sample.path), cfg)
        # One source of truth: training sees exactly what the runtime feeds the model.
        assert x.dtype == torch.float32 and tuple(x.shape) == (3, 96, 96)
        np.testing.assert_allclose(x.numpy(), expected, atol=1e-5)
        assert int(y) == sample.label


def test_cache_is_used_after_the_first_epoch(fundus_dir, tmp_path, monkeypatch):
    samples = load_srahim_fundus(fundus_dir).samples[:2]
    cfg = PreprocessConfig.default("fundus", 64)
    ds = ScreeningDataset(samples, cfg, working_size=96, cache_dir=tmp_path / "cache")
    first = [ds[i][0] for i in range(2)]
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 2

    import edgescreen.train.data.dataset as module

    def no_decoding(*a, **k):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(module, "decode_scaled", no_decoding)
    again = ScreeningDataset(samples, cfg, working_size=96, cache_dir=tmp_path / "cache")
    for a, b in zip(first, (again[i][0] for i in range(2)), strict=True):
        assert torch.equal(a, b)
    # A different recipe must not reuse the entries.
    other = ScreeningDataset(
        samples,
        PreprocessConfig.default("fundus", 48),
        working_size=96,
        cache_dir=tmp_path / "cache",
    )
    try:
        other[0]
    except AssertionError:
        pass
    else:
        raise AssertionError("a different recipe hit the cache")


def test_training_augmentation_is_seeded_by_epoch_and_index():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (80, 80, 3), dtype=np.uint8) for _ in range(2)]
    samples = [Sample(path=None, label=i, patient=str(i), array=a) for i, a in enumerate(arrays)]
    cfg = PreprocessConfig.default("oct", 64)
    ds = ScreeningDataset(samples, cfg, train=True)
    a0 = ds[0][0]
    assert torch.equal(a0, ds[0][0])
    ds.set_epoch(1)
    assert not torch.equal(a0, ds[0][0])
    ds.set_epoch(0)
    assert torch.equal(a0, ds[0][0])


def test_multilabel_targets_are_float_vectors():
    sample = Sample(path=None, label=(0, 1, 0), patient="p", array=np.zeros((40, 40), np.uint8))
    ds = ScreeningDataset([sample], PreprocessConfig.default("cxr", 32))
    x, y = ds[0]
    assert y.dtype == torch.float32 and y.tolist() == [0.0, 1.0, 0.0]
