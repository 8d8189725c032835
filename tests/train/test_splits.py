"""Patient-level splits: no patient and no byte-identical image crosses splits."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edgescreen.runtime.errors import EdgescreenError
from edgescreen.train.data.loaders import load_cxr14_mini, load_srahim_fundus
from edgescreen.train.data.records import Sample
from edgescreen.train.data.splits import (
    check_disjoint,
    content_hash,
    patient_groups,
    patient_kfold,
    patient_split,
)


@pytest.fixture(scope="module")
def srahim(fundus_dir):
    return load_srahim_fundus(fundus_dir, strict=True).samples


@pytest.fixture(scope="module")
def cxr(cxr_dir):
    return load_cxr14_mini(cxr_dir, strict=True).samples


def _patients(samples):
    return {s.patient for s in samples}


def _assert_patient_disjoint(splits):
    seen: dict[str, str] = {}
    for name, members in splits.items():
        for s in members:
            assert seen.setdefault(s.patient, name) == name, (
                f"{s.patient} in {seen[s.patient]} and {name}"
            )


def _stratum(s: Sample) -> int:
    return int(any(s.label)) if isinstance(s.label, tuple) else s.label


@pytest.mark.parametrize("which", ["srahim", "cxr"])
def test_real_sets_split_disjoint(which, request):
    samples = request.getfixturevalue(which)
    splits = patient_split(samples, seed=0)
    assert sum(len(v) for v in splits.values()) == len(samples)
    _assert_patient_disjoint(splits)
    check_disjoint(splits)  # patients and byte-identical images
    hashes = {name: {content_hash(s.path) for s in v} for name, v in splits.items()}
    assert not (hashes["train"] & hashes["val"]) and not (hashes["train"] & hashes["test"])
    assert not (hashes["val"] & hashes["test"])
    for name, frac in zip(("train", "val", "test"), (0.7, 0.15, 0.15), strict=True):
        assert abs(len(splits[name]) / len(samples) - frac) < 0.05


@pytest.mark.parametrize("which", ["srahim", "cxr"])
def test_stratification_keeps_proportions(which, request):
    samples = request.getfixturevalue(which)
    overall = Counter(_stratum(s) for s in samples)
    splits = patient_split(samples, seed=3)
    for name, members in splits.items():
        c = Counter(_stratum(s) for s in members)
        for label, n in overall.items():
            if n >= 20:
                assert abs(c[label] / len(members) - n / len(samples)) < 0.08, (name, label)
            assert c[label] > 0, (name, label)  # every grade reaches every split


def test_determinism_by_seed(srahim):
    a = patient_split(srahim, seed=7)
    shuffled = list(srahim)
    random.Random(1).shuffle(shuffled)
    b = patient_split(shuffled, seed=7)
    for name in a:
        assert _patients(a[name]) == _patients(b[name])
    c = patient_split(srahim, seed=8)
    assert _patients(a["test"]) != _patients(c["test"])


def test_kfold_covers_every_patient_once(cxr):
    folds = patient_kfold(cxr, k=5, seed=0)
    assert len(folds) == 5
    in_val = Counter(p for _, val in folds for p in _patients(val))
    assert set(in_val) == _patients(cxr) and set(in_val.values()) == {1}
    for train, val in folds:
        assert not (_patients(train) & _patients(val))
        assert len(train) + len(val) == len(cxr)
        assert abs(len(val) - len(cxr) / 5) < 0.05 * len(cxr)
    with pytest.raises(EdgescreenError, match="k must be"):
        patient_kfold(cxr, k=1)


def test_check_disjoint_catches_leaked_patient(srahim):
    splits = patient_split(srahim, seed=0)
    counts = Counter(s.patient for s in splits["train"])
    leaked = next(s for s in splits["train"] if counts[s.patient] == 2)
    splits["train"].remove(leaked)
    splits["test"].append(leaked)
    with pytest.raises(EdgescreenError, match=f"patient {leaked.patient} is in test, train"):
        check_disjoint(splits)


# ---------------------------------------------------------------- byte-identical images


@pytest.fixture()
def twins(tmp_path) -> list[Sample]:
    """20 patients, one image each, random bytes; patients P03 and P11 hold the same bytes
    with different grades (as SRahim's dup_of pair)."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(20):
        path = tmp_path / f"P{i:02d}.jpg"
        path.write_bytes(rng.bytes(64))
        samples.append(Sample(path, i % 5, f"P{i:02d}"))
    (tmp_path / "P11.jpg").write_bytes((tmp_path / "P03.jpg").read_bytes())
    return samples


def test_duplicates_merge_patients(twins):
    groups = patient_groups(twins)
    assert len(groups) == 19
    assert sorted(twins[i].patient for g in groups if len(g) > 1 for i in g) == ["P03", "P11"]
    for seed in range(10):
        splits = patient_split(twins, seed=seed)
        where = {s.patient: name for name, v in splits.items() for s in v}
        assert where["P03"] == where["P11"]
        check_disjoint(splits)
    folds = patient_kfold(twins, k=4, seed=1)
    for _, val in folds:
        assert ("P03" in _patients(val)) == ("P11" in _patients(val))


def test_check_disjoint_names_duplicate_pair(twins):
    splits = {"train": [t for t in twins if t.patient != "P11"], "test": [twins[11]]}
    with pytest.raises(
        EdgescreenError, match=r"byte-identical.*P03\.jpg \(train\).*P11\.jpg \(test\)"
    ):
        check_disjoint(splits)


def test_array_samples_hash_their_bytes():
    a = np.zeros((4, 4), np.uint8)
    b = np.ones((4, 4), np.uint8)
    samples = [
        Sample(None, 0, "m-train-0", "train", array=a),
        Sample(None, 1, "m-test-5", "test", array=a.copy()),
        Sample(None, 1, "m-test-6", "test", array=b),
    ]
    assert len(patient_groups(samples)) == 2
    with pytest.raises(EdgescreenError, match="m-train-0 \\(train\\) == m-test-5"):
        check_disjoint({"train": samples[:1], "test": samples[1:]})


def test_content_hash(tmp_path: Path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"abc")
    assert content_hash(p) == hashlib.sha256(b"abc").hexdigest() == content_hash(str(p))
    with pytest.raises(EdgescreenError, match="cannot hash"):
        content_hash(tmp_path / "missing.bin")


def test_fractions_validated(srahim):
    with pytest.raises(EdgescreenError, match="fractions"):
        patient_split(srahim, fractions=(0.8, 0.3, 0.1))
    splits = patient_split(srahim, fractions=(0.8, 0.2, 0.0))
    assert not splits["test"] and len(splits["train"]) > len(splits["val"]) > 0


# ---------------------------------------------------------------- NIH official test list


def _nih_tree(root: Path, patients: int) -> dict[str, list[str]]:
    """Data_Entry_2017.csv, distinct tiny images, and the official lists: the first two
    thirds of the patients in train_val_list.txt, the rest in test_list.txt."""
    lists: dict[str, list[str]] = {"train_val": [], "test": []}
    rows = ["Image Index,Finding Labels,Follow-up #,Patient ID,View Position"]
    (root / "images_001" / "images").mkdir(parents=True)
    for p in range(1, patients + 1):
        for k in range(3):
            name = f"{p:08d}_{k:03d}.png"
            (root / "images_001" / "images" / name).write_bytes(f"{p}-{k}".encode())
            rows.append(
                f"{name},{('No Finding', 'Effusion', 'Mass|Nodule')[(p + k) % 3]},{k},{p},PA"
            )
            lists["train_val" if p <= 2 * patients // 3 else "test"].append(name)
    (root / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(lists["train_val"]) + "\n")
    (root / "test_list.txt").write_text("\n".join(lists["test"]) + "\n")
    return lists


def test_nih_official_test_list_is_the_test_split(tmp_path):
    """train_val patients never reach test; validation is carved by patient from train_val."""
    from edgescreen.train.config import StageConfig, TrainConfig
    from edgescreen.train.data.loaders import load_nih_cxr
    from edgescreen.train.loop import split_samples

    lists = _nih_tree(tmp_path, patients=30)
    ls = load_nih_cxr(tmp_path, strict=True)
    cfg = TrainConfig(
        name="nih",
        family="agcnn",
        task="cxr_findings",
        model={"tiny": True},
        input_size=96,
        stages=(StageConfig(name="s", epochs=1, loss="bce"),),
    )
    parts = split_samples(ls, cfg)
    names = {k: {s.path.name for s in v} for k, v in parts.items()}
    assert names["test"] == set(lists["test"])
    assert names["train"] | names["val"] == set(lists["train_val"])
    assert names["val"] and names["train"]
    _assert_patient_disjoint(parts)
    # val's share of train_val is val / (train + val) of the configured fractions.
    share = len(names["val"]) / len(lists["train_val"])
    assert abs(share - 0.15 / 0.85) < 0.1
