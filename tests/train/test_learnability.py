"""Learnability on synthetic data: the labels carry signal and the seeds can learn it.

These train real models for a couple of minutes on the CPU (no timing is asserted; the
test log prints how long they took).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from edgescreen.runtime.metrics import accuracy, quadratic_weighted_kappa
from edgescreen.train.checkpoint import load_trained
from edgescreen.train.config import load_config
from edgescreen.train.data.loaders import load_generic_csv
from edgescreen.train.data.synth import synthesize
from edgescreen.train.loop import Trainer

pytestmark = pytest.mark.slow


def _fit(config, data, tmp_path):
    start = time.perf_counter()
    trainer = Trainer(config, data, tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)
    result = trainer.run()
    trained = load_trained(result.checkpoint)
    outputs = trainer.predict(trained.model, "test")
    from edgescreen.runtime.postprocess import interpret_batch

    found = interpret_batch(result.card, outputs)
    index = {label: i for i, label in enumerate(result.card.labels)}
    y = np.array([s.label for s in trainer.splits["test"]])
    pred = np.array([index[f.label] for f in found])
    print(
        f"{config.name}: trained in {time.perf_counter() - start:.0f}s on {len(trainer.splits['train'])} images"
    )
    return y, pred


def test_multitask_tiny_learns_dr_grades(tmp_path):
    data = load_generic_csv(synthesize("fundus", 320, tmp_path / "fundus", seed=11, size=192), "dr")
    base = load_config("multitask-tiny")
    # The write-up's three stages, one of each: MAE + CE + BCE, then MSE + focal
    # (alpha 0.25, gamma 2) on the unfrozen model, then the MSE combiner with dropout off.
    stages = (
        dataclasses.replace(base.stages[0], epochs=2),
        dataclasses.replace(base.stages[2], epochs=1),
        dataclasses.replace(base.stages[-1], epochs=1),
    )
    assert stages[1].loss_args == {"regression": "mse", "focal_alpha": 0.25, "focal_gamma": 2.0}
    assert stages[2].loss == "combiner" and stages[2].dropout is False
    cfg = dataclasses.replace(base, input_size=128, working_size=144, stages=stages)
    y, pred = _fit(cfg, data, tmp_path)
    qwk = quadratic_weighted_kappa(y, pred, 5)
    print(f"multitask synthetic test QWK {qwk:.3f} on {len(y)} images")
    assert qwk >= 0.80


def test_ran_tiny_learns_oct_classes(tmp_path):
    data = load_generic_csv(synthesize("oct", 800, tmp_path / "oct", seed=12, size=96), "oct")
    cfg = load_config("ran-tiny")
    y, pred = _fit(cfg, data, tmp_path)
    acc = accuracy(y, pred)
    print(f"ran synthetic test accuracy {acc:.3f} on {len(y)} images")
    assert acc >= 0.85
