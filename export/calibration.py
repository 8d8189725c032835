"""The INT8 calibration set, governed, and the activation ranges computed from it, cached.

Governance: the set is stratified by class, disjoint by content hash from every
evaluation image (refused otherwise, naming the file), and described in the card
(`card.calibration`: source, method, per-class counts, every image's path and sha256).
Synthetic calibration for a model trained on real data needs an explicit flag and is
recorded as such.

Ranges come from ONNX Runtime's own calibrators (create_calibrator + collect_data in
chunks, so memory stays flat however large the set) and are stored with ORT's
save_tensors_data in a cache keyed by the FP32 model's sha256, the manifest's hash and
the method; quantize_static reads that cache back (calibration_cache_path), so a second
export with the same model and set skips calibration and yields the same scales.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tempfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgescreen.runtime.card import ModelCard, sha256_file
from edgescreen.runtime.errors import EdgescreenError
from edgescreen.train.data.records import Sample
from edgescreen.train.data.splits import sample_hash

METHODS = ("entropy", "percentile", "minmax")
_SYNTH_PATIENT = re.compile(r"^(fundus|oct|cxr)-s\d+-p\d{6}$")
CHUNK = 16  # images per collect_data call: bounds the intermediate outputs ORT holds


class CalibrationError(EdgescreenError):
    """The calibration set breaks a rule (overlap with evaluation, synthetic without the flag, empty)."""


def cache_dir() -> Path:
    root = os.environ.get("EDGESCREEN_CACHE") or Path.home() / ".cache" / "edgescreen"
    return Path(root) / "calibration"


def is_synthetic_patient(patient: str) -> bool:
    """A patient id edgescreen.train.data.synth writes."""
    return bool(_SYNTH_PATIENT.match(patient or ""))


def is_synthetic(samples: Sequence[Sample]) -> bool:
    """Images written by edgescreen.train.data.synth (its patient ids), all of them."""
    return bool(samples) and all(is_synthetic_patient(s.patient) for s in samples)


def _stratum(label: Any) -> int:
    if isinstance(label, tuple):  # multi-label: first finding, or -1 for none
        return next((k for k, v in enumerate(label) if v), -1)
    return int(label)


def check_disjoint(calib: Sequence[Sample], evaluation: Sequence[Sample]) -> None:
    """Refuse a calibration image whose bytes are also an evaluation image."""
    eval_hashes = {}
    for s in evaluation:
        h = sample_hash(s)
        if h:
            eval_hashes.setdefault(h, s)
    for s in calib:
        h = sample_hash(s)
        if h in eval_hashes:
            raise CalibrationError(
                f"calibration image {s.ref} is byte-identical to evaluation image {eval_hashes[h].ref}: "
                "calibration must be disjoint from evaluation (use other patients, e.g. "
                "--calib split:RUN/splits.json:train --eval split:RUN/splits.json:test)"
            )


def select(samples: Sequence[Sample], size: int | None, *, seed: int = 0) -> list[Sample]:
    """Up to `size` images, stratified by class (proportional, every class at least once).

    Deterministic: order by content hash inside each class, then a seeded shuffle.
    """
    by_class: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        by_class[_stratum(s.label)].append(s)
    total = len(samples)
    if size is None or size >= total:
        chosen = list(samples)
    else:
        rng = np.random.default_rng(seed)
        quota = {c: max(1, int(round(size * len(v) / total))) for c, v in by_class.items()}
        while sum(quota.values()) > size:  # rounding up small classes may overshoot
            biggest = max(quota, key=lambda c: quota[c])
            quota[biggest] -= 1
        chosen = []
        for c in sorted(by_class):
            pool = sorted(by_class[c], key=lambda s: sample_hash(s) or s.ref)
            order = rng.permutation(len(pool))[: quota[c]]
            chosen.extend(pool[i] for i in sorted(order))
    return chosen


def manifest(
    samples: Sequence[Sample],
    labels: tuple[str, ...],
    *,
    source: str,
    method: str,
    requested: int | None,
    synthetic: bool,
    allowed_by_flag: bool,
    eval_source: str | None,
) -> dict:
    counts: dict[str, int] = defaultdict(int)
    for s in samples:
        k = _stratum(s.label)
        counts["No Finding" if k < 0 else labels[k]] += 1
    images = [
        {
            "path": str(s.path) if s.path is not None else s.ref,
            "sha256": sample_hash(s),
            "label": list(s.label) if isinstance(s.label, tuple) else int(s.label),
        }
        for s in samples
    ]
    digest = hashlib.sha256(json.dumps([i["sha256"] for i in images]).encode()).hexdigest()
    return {
        "source": source,
        "method": method,
        "size": len(images),
        "requested_size": requested,
        "stratified_by": "class",
        "class_counts": dict(counts),
        "synthetic": synthetic,
        "allowed_by_flag": allowed_by_flag,
        "disjoint_from": eval_source,
        "images_sha256": digest,
        "images": images,
    }


def cache_key(fp32_onnx: str | Path, calib_manifest: dict, method: str) -> str:
    import onnxruntime

    parts = [
        sha256_file(fp32_onnx),
        calib_manifest["images_sha256"],
        method,
        onnxruntime.__version__,
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def ort_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    if method not in METHODS:
        raise CalibrationError(
            f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}"
        )
    return {
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
        "minmax": CalibrationMethod.MinMax,
    }[method]


class _Reader:
    """An ORT CalibrationDataReader over one chunk of preprocessed inputs."""

    def __init__(self, name: str, batch: np.ndarray) -> None:
        self._items = iter([{name: batch[i : i + 1]} for i in range(len(batch))])

    def get_next(self):
        return next(self._items, None)

    def __len__(self):  # pragma: no cover - ORT asks only for strided calibration
        return 0


def compute_ranges(
    fp32_onnx: str | Path,
    card: ModelCard,
    method: str,
    cache_file: Path,
    load_chunk: Callable[[Sequence[int]], np.ndarray],
    count: int,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Calibrate and write ORT's TensorsData JSON to `cache_file`.

    `load_chunk(indices)` returns those calibration images preprocessed, so only one
    chunk of decoded images and their activations is in memory at a time.
    """
    from onnxruntime.quantization import create_calibrator
    from onnxruntime.quantization.calibrate import save_tensors_data

    with tempfile.TemporaryDirectory(prefix="edgescreen-calib-") as tmp:
        calibrator = create_calibrator(
            str(fp32_onnx),
            None,
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=ort_method(method),
            extra_options={"symmetric": False},
        )
        with contextlib.redirect_stdout(
            io.StringIO()
        ):  # ORT prints its progress; keep --json clean
            for start in range(0, count, CHUNK):
                idx = list(range(start, min(count, start + CHUNK)))
                calibrator.collect_data(_Reader(card.input.name, load_chunk(idx)))
                if progress:
                    progress(len(idx))
            ranges = calibrator.compute_data()
        del calibrator
    save_tensors_data(ranges, cache_file)
