"""Calibration and evaluation images: from a load_dataset spec, a training run's split, or samples.

``split:RUN_DIR/splits.json:test`` reuses a training run's patient-level split (so the
calibration set can be the training patients and evaluation the held-out ones). The split
file lists image refs and hashes but not labels, so the data set is found again: by
walking up from the images to a folder load_dataset recognises, or named explicitly with
``split:RUN_DIR/splits.json:test=FORMAT:PATH``. An image whose bytes changed since training
is refused.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgescreen.runtime.card import ModelCard
from edgescreen.runtime.errors import EdgescreenError
from edgescreen.runtime.prepare import prepare_batch
from edgescreen.train.data.records import UNGRADABLE, Sample
from edgescreen.train.data.splits import sample_hash


@dataclass
class DataSet:
    samples: list[Sample]
    source: str  # the spec, for manifests and messages


def resolve(data: str | Path | Sequence[Sample] | DataSet | None, *, what: str) -> DataSet | None:
    if data is None:
        return None
    if isinstance(data, DataSet):
        return data
    if not isinstance(data, str | Path):
        return DataSet(list(data), f"{len(data)} samples given by the caller")
    spec = str(data)
    if spec.startswith("split:"):
        return DataSet(_from_split(spec), spec)
    from edgescreen.train.data.loaders import load_dataset

    ls = load_dataset(spec)
    if not ls.samples:
        raise EdgescreenError(f"{what} data {spec!r} holds no usable images")
    return DataSet([s for s in ls.samples if s.label != UNGRADABLE], spec)


def _from_split(spec: str) -> list[Sample]:
    from edgescreen.train.data.loaders import load_dataset, sniff_format

    body = spec[len("split:") :]
    body, _, source = body.partition("=")
    path_text, sep, part = body.rpartition(":")
    if not sep or part not in ("train", "val", "test"):
        raise EdgescreenError(
            f"{spec!r}: use split:RUN_DIR/splits.json:train|val|test[=FORMAT:PATH]"
        )
    path = Path(path_text)
    if path.is_dir():
        path = path / "splits.json"
    try:
        entries = json.loads(path.read_text())[part]
    except FileNotFoundError:
        raise EdgescreenError(f"{path}: split file not found (from {spec!r})") from None
    except (json.JSONDecodeError, KeyError) as exc:
        raise EdgescreenError(f"{path}: not a training run's splits.json ({exc})") from None
    if not entries:
        raise EdgescreenError(f"{path}: split {part!r} is empty")
    if not source and all(e.get("file") and "label" in e for e in entries):
        # Newer runs record each file's label: no need to find and reload the data set.
        return [
            _checked(
                Sample(
                    path=Path(e["ref"]),
                    patient=e["patient"],
                    label=tuple(e["label"]) if isinstance(e["label"], list) else e["label"],
                ),
                e,
                path,
            )
            for e in entries
        ]
    if not source:
        start = Path(entries[0]["ref"]).parent
        for folder in (start, *start.parents[:3]):
            try:
                sniff_format(folder)
            except EdgescreenError:
                continue
            source = str(folder)
            break
        else:
            raise EdgescreenError(
                f"{spec!r}: cannot find the data set of {entries[0]['ref']}; "
                f"name it: {spec}=FORMAT:PATH"
            )
    by_ref = {s.ref: s for s in load_dataset(source).samples}
    chosen = []
    for e in entries:
        s = by_ref.get(e["ref"])
        if s is None:
            raise EdgescreenError(f"{e['ref']}: listed in {path} ({part}) but not in {source}")
        chosen.append(_checked(s, e, path))
    return chosen


def _checked(sample: Sample, entry: dict, path: Path) -> Sample:
    if sample.path is not None and not sample.path.exists():
        raise EdgescreenError(f"{sample.path}: listed in {path} but missing")
    if entry.get("sha256") and sample_hash(sample) != entry["sha256"]:
        raise EdgescreenError(
            f"{entry['ref']}: changed since training (sha256 differs from {path})"
        )
    return sample


def sources_of(samples: Sequence[Sample]) -> list[Path | np.ndarray]:
    """What the runtime's decoder reads for each sample: its file, or its in-memory array."""
    return [s.array if s.array is not None else s.path for s in samples]


def prepare_samples(samples: Sequence[Sample], card: ModelCard) -> np.ndarray:
    """Calibration and evaluation tensors, through the runtime's one prepare step (ungated)."""
    return prepare_batch(sources_of(samples), card)


def labels_of(samples: Sequence[Sample]) -> np.ndarray:
    return np.array([s.label for s in samples])
