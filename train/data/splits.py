"""Patient-level splits that never leak a patient, or a byte-identical image, across splits.

Samples are grouped by patient; patients that share a byte-identical image (same sha256 of
the file bytes, or of the array for MedMNIST samples) are merged into one group, because a
duplicate on both sides of a split is a leak whatever the patient ids say (the SRahim set
documents two such twins with different grades). Groups, not images, are assigned to
splits, stratified by each group's worst label (max class index; for cxr: any finding vs
none) so every split sees every grade, and shuffled by `seed` only: the same samples and
seed give the same splits whatever order the samples come in.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from edgescreen.runtime.errors import EdgescreenError
from edgescreen.train.data.records import Sample

SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")

_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def content_hash(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes; cached per (path, mtime, size)."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise EdgescreenError(f"{path}: cannot hash, {e.strerror or e}") from e
    key = (os.fspath(path.resolve()), st.st_mtime_ns, st.st_size)
    cached = _HASH_CACHE.get(key)
    if cached is None:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        cached = _HASH_CACHE[key] = h.hexdigest()
    return cached


def sample_hash(sample: Sample) -> str | None:
    """content_hash of the sample's file, or sha256 of its array (dtype, shape and bytes)."""
    if sample.array is not None:
        a = np.ascontiguousarray(sample.array)
        h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
        return h.hexdigest()
    if sample.path is not None:
        return content_hash(sample.path)
    return None


def _stratum(labels: Iterable[int | tuple[int, ...]]) -> int:
    """Worst label of a group: max class index, or 1/0 for any finding (multi-label).
    Negative (ungradable) labels do not count; a group of only those is stratum -1."""
    best = -1
    for label in labels:
        value = int(any(label)) if isinstance(label, tuple) else int(label)
        best = max(best, value)
    return best


def patient_groups(samples: Sequence[Sample], dedupe: bool = True) -> list[list[int]]:
    """Indices of samples, grouped by patient and merged across byte-identical images.
    Groups come sorted by their smallest patient id, so the result ignores input order."""
    parent: dict[str, str] = {}

    def find(p: str) -> str:
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # root = smallest id: deterministic

    for s in samples:
        parent.setdefault(s.patient, s.patient)
    if dedupe:
        first_patient: dict[str, str] = {}
        for s in samples:
            h = sample_hash(s)
            if h is None:
                continue
            if h in first_patient:
                union(first_patient[h], s.patient)
            else:
                first_patient[h] = s.patient
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[find(s.patient)].append(i)
    return [groups[k] for k in sorted(groups)]


def _shuffled_strata(
    samples: Sequence[Sample], groups: list[list[int]], seed: int, stratify: bool
) -> list[list[list[int]]]:
    """Groups per stratum, each stratum shuffled by seed, then largest groups first
    (stable), so greedy filling balances image counts."""
    rng = np.random.default_rng(seed)
    strata: dict[int, list[list[int]]] = defaultdict(list)
    for g in groups:
        key = _stratum(samples[i].label for i in g) if stratify else 0
        strata[key].append(g)
    out = []
    for key in sorted(strata):
        members = strata[key]
        order = rng.permutation(len(members))
        shuffled = [members[j] for j in order]
        shuffled.sort(key=len, reverse=True)
        out.append(shuffled)
    return out


def patient_split(
    samples: Sequence[Sample],
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    stratify: bool = True,
    dedupe: bool = True,
) -> dict[str, list[Sample]]:
    """Split into {"train", "val", "test"} by patient group (see module doc). Each stratum
    is filled greedily: the next group goes to the split furthest below its share of that
    stratum's images. Samples keep their input order within a split. dedupe=False skips
    hashing (for huge sets already known to be duplicate-free)."""
    fr = [float(f) for f in fractions]
    if len(fr) != 3 or any(f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise EdgescreenError(
            f"fractions must be three non-negative numbers summing to 1: {fractions}"
        )
    groups = patient_groups(samples, dedupe)
    assigned = [0] * len(samples)
    for stratum in _shuffled_strata(samples, groups, seed, stratify):
        total = sum(len(g) for g in stratum)
        have = [0, 0, 0]
        for g in stratum:
            deficit = [fr[k] * total - have[k] if fr[k] > 0 else -np.inf for k in range(3)]
            k = int(np.argmax(deficit))
            have[k] += len(g)
            for i in g:
                assigned[i] = k
    out: dict[str, list[Sample]] = {name: [] for name in SPLIT_NAMES}
    for s, k in zip(samples, assigned, strict=True):
        out[SPLIT_NAMES[k]].append(s)
    return out


def carve_validation(
    samples: Sequence[Sample],
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    stratify: bool = True,
    dedupe: bool = True,
) -> dict[str, list[Sample]]:
    """{"train", "val"} from a set whose test split is fixed elsewhere (NIH's official
    train_val_list.txt): patient groups go to val in the share val/(train+val) of
    `fractions`, the rest to train; nothing goes to test."""
    train, val = (float(f) for f in fractions[:2])
    if train < 0 or val <= 0:
        raise EdgescreenError(
            f"carving validation needs positive train and val fractions: {fractions}"
        )
    parts = patient_split(
        samples, (train / (train + val), val / (train + val), 0.0), seed, stratify, dedupe
    )
    return {"train": parts["train"], "val": parts["val"]}


def patient_kfold(
    samples: Sequence[Sample], k: int = 5, seed: int = 0, stratify: bool = True, dedupe: bool = True
) -> list[tuple[list[Sample], list[Sample]]]:
    """k (train, val) folds; every patient group is in exactly one fold's val. Groups are
    dealt per stratum to the fold holding the fewest of that stratum's images."""
    groups = patient_groups(samples, dedupe)
    if not 2 <= k <= len(groups):
        raise EdgescreenError(
            f"k must be between 2 and the number of patients ({len(groups)}): {k}"
        )
    fold_of = [0] * len(samples)
    totals = [0] * k
    for stratum in _shuffled_strata(samples, groups, seed, stratify):
        have = [0] * k
        for g in stratum:
            f = min(range(k), key=lambda j: (have[j], totals[j], j))
            have[f] += len(g)
            totals[f] += len(g)
            for i in g:
                fold_of[i] = f
    folds = []
    for f in range(k):
        train = [s for s, j in zip(samples, fold_of, strict=True) if j != f]
        val = [s for s, j in zip(samples, fold_of, strict=True) if j == f]
        folds.append((train, val))
    return folds


def check_disjoint(splits: Mapping[str, Sequence[Sample]], dedupe: bool = True) -> None:
    """Raise EdgescreenError naming every patient, and every byte-identical image pair,
    found in more than one split."""
    patient_splits: dict[str, set[str]] = defaultdict(set)
    seen: dict[str, tuple[str, Sample]] = {}
    leaks: list[str] = []
    for name, members in splits.items():
        for s in members:
            patient_splits[s.patient].add(name)
            if not dedupe:
                continue
            h = sample_hash(s)
            if h is None:
                continue
            if h in seen and seen[h][0] != name:
                other_split, other = seen[h]
                leaks.append(
                    f"byte-identical images across splits: {other.ref} ({other_split}) "
                    f"== {s.ref} ({name})"
                )
            seen.setdefault(h, (name, s))
    leaks = [
        f"patient {patient} is in {', '.join(sorted(names))}"
        for patient, names in sorted(patient_splits.items())
        if len(names) > 1
    ] + leaks
    if leaks:
        more = f"\n  ... and {len(leaks) - 20} more" if len(leaks) > 20 else ""
        raise EdgescreenError(
            "splits are not disjoint:\n" + "\n".join(f"  {x}" for x in leaks[:20]) + more
        )
