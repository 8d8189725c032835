"""Synthetic generators: deterministic, in the generic layout, and with labels in the pixels."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from edgescreen.runtime.labels import CXR_FINDINGS, DR_GRADES, NO_FINDING, OCT_CLASSES
from edgescreen.train.data.synth import (
    _patient_labels,
    generate_cxr,
    generate_fundus,
    generate_oct,
    image_rng,
    synthesize,
)


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _rows(csv_path: Path) -> list[dict[str, str]]:
    with csv_path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("modality", ["fundus", "oct", "cxr"])
def test_same_seed_same_bytes_different_seed_different(tmp_path: Path, modality: str) -> None:
    a = synthesize(modality, 6, tmp_path / "a", seed=3, size=64).parent
    b = synthesize(modality, 6, tmp_path / "b", seed=3, size=64).parent
    c = synthesize(modality, 6, tmp_path / "c", seed=4, size=64).parent
    ha, hb, hc = _hashes(a), _hashes(b), _hashes(c)
    assert len(ha) == 7  # six images and labels.csv
    assert ha == hb
    differing = [name for name in ha if name.endswith(".png") and ha[name] != hc[name]]
    assert len(differing) == 6


def test_prefix_and_single_image_reproducible(tmp_path: Path) -> None:
    # Image i depends on (seed, i) only: a shorter run is a prefix of a longer one, and
    # any image can be regenerated on its own (what parallel or resumed generation needs).
    short = synthesize("oct", 3, tmp_path / "short", seed=9, size=64)
    long = synthesize("oct", 8, tmp_path / "long", seed=9, size=64)
    rs, rl = _rows(short), _rows(long)
    assert rl[:3] == rs[:3]
    for r in rs:
        assert (short.parent / r["path"]).read_bytes() == (long.parent / r["path"]).read_bytes()
    row = rl[5]
    again = generate_oct(image_rng(9, "oct", 5), row["label"], 64)
    assert np.array_equal(again, cv2.imread(str(long.parent / row["path"]), cv2.IMREAD_UNCHANGED))


@pytest.mark.parametrize("modality", ["fundus", "oct", "cxr"])
def test_generic_layout(tmp_path: Path, modality: str) -> None:
    n = 40
    csv_path = synthesize(modality, n, tmp_path / modality, seed=1, size=64)
    assert csv_path == tmp_path / modality / "labels.csv"
    with csv_path.open(newline="") as fh:
        assert fh.readline().strip() == "path,label,patient"
    rows = _rows(csv_path)
    assert len(rows) == n
    for r in rows:
        p = Path(r["path"])
        assert not p.is_absolute()
        img = cv2.imread(str(csv_path.parent / p), cv2.IMREAD_UNCHANGED)
        assert img is not None and img.dtype == np.uint8
        assert img.shape == ((64, 64, 3) if modality == "fundus" else (64, 64))
        if modality == "fundus":
            assert r["label"] in {str(g) for g in range(len(DR_GRADES))}
        elif modality == "oct":
            assert r["label"] in OCT_CLASSES
        else:
            parts = r["label"].split("|")
            if r["label"] != NO_FINDING:
                assert parts == [f for f in CXR_FINDINGS if f in parts]  # known, canonical order
    per_patient = Counter(r["patient"] for r in rows)
    assert max(per_patient.values()) <= 2
    assert any(c == 2 for c in per_patient.values())  # patient-level splitting has work to do
    assert len({p.split("-p")[0] for p in per_patient}) == 1


def test_label_balance() -> None:
    # Labels are drawn per patient, apart from the pixels: check the plan over ~1000 images.
    def plan(modality: str) -> list:
        out: list = []
        patient = 0
        while len(out) < 1000:
            out += _patient_labels(modality, 0, patient)
            patient += 1
        return out

    n = len(grades := plan("fundus"))
    counts = Counter(grades)
    assert set(counts) == set(range(5)) and min(counts.values()) > n / 5 * 0.75
    n = len(classes := plan("oct"))
    counts = Counter(classes)
    assert set(counts) == set(OCT_CLASSES) and min(counts.values()) > n / 4 * 0.75
    n = len(films := plan("cxr"))
    assert 0.15 < sum(not f for f in films) / n < 0.4
    for name in CXR_FINDINGS:
        share = sum(name in f for f in films) / n
        assert 0.12 < share < 0.3, (name, share)


def test_fundus_eye_puts_the_disc_on_its_side() -> None:
    # Left eye: optic disc (the brightest spot of a healthy fundus) on the image left.
    for i in range(8):
        for eye, left in (("L", True), ("R", False)):
            img = generate_fundus(image_rng(50, "fundus", i), 0, 96, eye=eye)
            grey = img.astype(np.float32).sum(2)
            _, xs = np.nonzero(grey >= np.percentile(grey, 99.7))
            assert (xs.mean() < 48) == left, (i, eye)


def test_invalid_arguments(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        generate_fundus(rng, 5)
    with pytest.raises(ValueError):
        generate_fundus(rng, 0, eye="left")
    with pytest.raises(ValueError):
        generate_oct(rng, "AMD")
    with pytest.raises(ValueError):
        generate_cxr(rng, frozenset({"Covid"}))
    with pytest.raises(ValueError):
        synthesize("mri", 1, tmp_path)


def test_finding_is_drawn_on_the_same_anatomy() -> None:
    # Anatomy and pathology come from separate child streams: adding a finding changes the
    # film, but the rest of the chest stays put (except where the finding is a change of
    # volume: atelectasis shifts the mediastinum, emphysema hyperinflates both lungs).
    plain = generate_cxr(np.random.default_rng(5), frozenset(), 128).astype(np.int16)
    for f in CXR_FINDINGS:
        sick = generate_cxr(np.random.default_rng(5), frozenset({f}), 128).astype(np.int16)
        diff = np.abs(sick - plain)
        assert (diff > 8).mean() > 0.003, f  # visible
        if f not in ("Atelectasis", "Emphysema"):
            assert np.median(diff) <= 1, f  # and local


# ---------------------------------------------------------------- labels are in the pixels


def _fit_score(x: np.ndarray, y: np.ndarray, c: float = 0.5) -> float:
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.35, random_state=0, stratify=y)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=c))
    score = clf.fit(xtr, ytr).score(xte, yte)
    print(f"held-out accuracy {score:.3f}")
    return score


def _fundus_features(img: np.ndarray) -> list[float]:
    # Small dark-red and bright-yellow blobs: a top-hat on green, and a yellowness measure.
    g = img[..., 1].astype(np.float32)
    bg = cv2.medianBlur(img[..., 1], 7).astype(np.float32)
    inside = img[..., 0] > 20
    dark = ((bg - g) > 12) & inside
    bright = ((g - bg) > 18) & inside
    yellow = (img[..., 1].astype(np.int16) - img[..., 2] > 60) & (img[..., 1] > 150)
    return [dark.mean(), bright.mean(), yellow.mean(), cv2.Laplacian(g, cv2.CV_32F).var() / 1e3]


def test_fundus_grade0_vs_grade4_separable() -> None:
    size, n = 160, 50
    x, y = [], []
    for i in range(2 * n):
        grade = 0 if i % 2 == 0 else 4
        img = generate_fundus(image_rng(100, "fundus", i), grade, size)
        x.append(_fundus_features(img))
        y.append(grade)
    assert _fit_score(np.array(x), np.array(y)) >= 0.9


def _oct_features(img: np.ndarray) -> np.ndarray:
    # Flatten the retina on its inner surface (the first bright row under the dark vitreous),
    # then describe the band row by row, which ignores where along the scan a lesion sits.
    size = img.shape[0]
    b = cv2.GaussianBlur(img, (0, 0), 2).astype(np.float32)
    ilm = np.argmax(b > 0.45 * b.max(), axis=0)
    depth = int(0.35 * size)
    cols = np.arange(size)[(ilm > 0) & (ilm < size - depth)]
    band = b[ilm[cols][None, :] + np.arange(depth)[:, None], cols[None, :]]
    top = ilm[cols].astype(np.float64)
    bump = top - np.polyval(np.polyfit(cols, top, 2), cols)  # a dome or a pit in the surface
    return np.r_[band.std(1)[::2] / 50, bump.min() / size * 10, bump.max() / size * 10,
                 np.sort(band, 1)[:, ::16].ravel() / 255]  # fmt: skip


def test_oct_normal_vs_cnv_separable() -> None:
    size, n = 128, 80
    x, y = [], []
    for i in range(2 * n):
        label = "NORMAL" if i % 2 == 0 else "CNV"
        x.append(_oct_features(generate_oct(image_rng(200, "oct", i), label, size)))
        y.append(label)
    assert _fit_score(np.array(x), np.array(y)) >= 0.9


def test_cxr_cardiomegaly_vs_no_finding_separable() -> None:
    # Downsampled pixels are enough: the enlarged heart fills the lower-middle of the film.
    size, n = 128, 100
    x, y = [], []
    for i in range(2 * n):
        sick = i % 2 == 1
        findings = frozenset({"Cardiomegaly"} if sick else ())
        img = generate_cxr(image_rng(300, "cxr", i), findings, size)
        x.append(cv2.resize(img, (32, 32), interpolation=cv2.INTER_AREA).ravel() / 255.0)
        y.append(int(sick))
    assert _fit_score(np.array(x), np.array(y), c=0.1) >= 0.9
