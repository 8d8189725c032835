"""Kermany OCT2017 trees without val/: validation is carved from train/ by patient."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgescreen.runtime.labels import OCT_CLASSES
from edgescreen.train.config import StageConfig, TrainConfig
from edgescreen.train.data.loaders import load_dataset, load_kermany_oct

pytestmark = pytest.mark.torch  # split_samples lives in the training loop


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)
    assert cv2.imwrite(str(path), pixels)


def _tree(root: Path, *, val: bool) -> dict[str, str]:
    """OCT2017/{train,test}[/val]/CLASS/CLASS-<patient>-<n>.jpeg; returns file -> patient.
    Patients hold 1-3 images and some hold two classes (as in Kermany's release)."""
    patients: dict[str, str] = {}
    seed = 0
    for p in range(40):
        pid = str(1000000 + 7 * p)
        classes = [OCT_CLASSES[p % 4]] + ([OCT_CLASSES[(p + 1) % 4]] if p % 5 == 0 else [])
        for cls in classes:
            for n in range(1 + p % 3):
                seed += 1
                name = f"{cls}-{pid}-{n + 1}.jpeg"
                _image(root / "OCT2017" / "train" / cls / name, seed)
                patients[name] = pid
    for p, cls in enumerate(OCT_CLASSES * 2):
        seed += 1
        pid = str(2000000 + p)
        name = f"{cls}-{pid}-1.jpeg"
        _image(root / "OCT2017" / "test" / cls / name, seed)
        patients[name] = pid
    if val:
        for p, cls in enumerate(OCT_CLASSES):
            seed += 1
            name = f"{cls}-{3000000 + p}-1.jpeg"
            _image(root / "OCT2017" / "val" / cls / name, seed)
            patients[name] = str(3000000 + p)
    return patients


def _cfg() -> TrainConfig:
    return TrainConfig(
        name="oct",
        family="ran",
        task="oct_classification",
        model={"tiny": True},
        input_size=32,
        stages=(StageConfig(name="s", epochs=1, loss="ce"),),
    )


def test_train_and_test_only_is_accepted_and_val_is_carved_by_patient(tmp_path):
    from edgescreen.train.loop import split_samples

    patients = _tree(tmp_path, val=False)
    ls = load_dataset(f"kermany:{tmp_path}")
    assert not ls.problems
    assert Counter(s.split for s in ls.samples) == {"trainval": len(patients) - 8, "test": 8}
    assert all(s.patient == patients[s.path.name] for s in ls.samples)  # id from the name
    assert any("carved" in note for note in ls.notes)

    splits = split_samples(ls, _cfg())  # refused before: "need training and validation"
    train, val, test = ({s.patient for s in splits[k]} for k in ("train", "val", "test"))
    assert val and train and not (train & val)  # by patient, never by image
    assert {s.path.name for s in splits["test"]} == {
        p.name for p in (tmp_path / "OCT2017" / "test").rglob("*.jpeg")
    }
    assert not (test & (train | val))
    # Every image of a patient lands on the same side, whichever class folder it sits in.
    side = {s.patient: k for k in ("train", "val") for s in splits[k]}
    assert sum(len(splits[k]) for k in ("train", "val")) == len(patients) - 8
    assert all(side[patients[s.path.name]] == k for k in ("train", "val") for s in splits[k])
    # About the configured share of the training images (0.15 / 0.85), every class present.
    share = len(splits["val"]) / (len(splits["train"]) + len(splits["val"]))
    assert 0.08 < share < 0.3
    assert {OCT_CLASSES[s.label] for s in splits["val"]} == set(OCT_CLASSES)
    # Deterministic: the same tree and seed give the same carve.
    again = split_samples(load_kermany_oct(tmp_path), _cfg())
    assert [s.path for s in again["val"]] == [s.path for s in splits["val"]]


def test_an_official_val_folder_is_kept(tmp_path):
    from edgescreen.train.loop import split_samples

    _tree(tmp_path, val=True)
    ls = load_kermany_oct(tmp_path)
    assert set(Counter(s.split for s in ls.samples)) == {"train", "val", "test"}
    assert not ls.notes
    splits = split_samples(ls, _cfg())
    assert {s.patient for s in splits["val"]} == {str(3000000 + p) for p in range(4)}
