"""Learnability of the tiny Zoom-in-Net on synthetic fundus photos: all three stages, with
the two-eye pairing in training and the single-eye (exported) path in validation and test.

The floor is the measured test QWK less a margin (see /work/notes/models-zoomin.md)."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from edgescreen.runtime.metrics import quadratic_weighted_kappa
from edgescreen.runtime.postprocess import interpret_batch
from edgescreen.train import loop
from edgescreen.train.checkpoint import load_trained
from edgescreen.train.config import load_config
from edgescreen.train.data.loaders import load_generic_csv
from edgescreen.train.data.synth import synthesize

pytestmark = pytest.mark.slow


def test_zoomin_tiny_learns_dr_grades(tmp_path):
    data = load_generic_csv(synthesize("fundus", 240, tmp_path / "fundus", seed=11, size=128), "dr")
    base = load_config("zoomin-tiny")
    assert base.pair_eyes  # both eyes in training, one in validation and test
    epochs = (3, 1, 1)
    stages = tuple(
        dataclasses.replace(s, epochs=e) for s, e in zip(base.stages, epochs, strict=True)
    )
    model = {**base.model, "mnet_size": 64, "patch_size": 32, "window": 26}
    cfg = dataclasses.replace(base, model=model, input_size=112, stages=stages)
    start = time.perf_counter()
    trainer = loop.Trainer(
        cfg, data, tmp_path / "run", cache_dir=tmp_path / "cache", progress=False
    )
    result = trainer.run()
    seconds = time.perf_counter() - start
    for row in result.history:
        print(f"{row['stage']} {row['epoch']}: val {row['select']} QWK {row['select_metric']:.3f}")
    trained = load_trained(result.checkpoint)
    found = interpret_batch(result.card, trainer.predict(trained.model, "test"))
    index = {label: i for i, label in enumerate(result.card.labels)}
    y = np.array([s.label for s in trainer.splits["test"]])
    pred = np.array([index[f.label] for f in found])
    qwk = quadratic_weighted_kappa(y, pred, 5)
    print(
        f"zoomin-tiny: {seconds:.0f}s on {len(trainer.splits['train'])} images, "
        f"val QWK {result.val_metric:.3f}, test QWK {qwk:.3f} on {len(y)}"
    )
    assert qwk >= 0.60
