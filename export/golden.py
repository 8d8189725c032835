"""Write a bundle's golden set: preprocessed inputs and their FP32 outputs (runtime/golden.py reads it)."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np

from edgescreen.runtime import __version__
from edgescreen.runtime.card import atomic_write, load_card, sha256_file
from edgescreen.runtime.errors import CardError
from edgescreen.runtime.golden import (
    DEFAULT_TOLERANCES,
    GOLDEN_SCHEMA,
    INPUTS,
    MANIFEST,
    OUTPUTS,
    fp32_onnx_sha,
    golden_dir,
)


def write_golden(
    bundle: str | Path,
    inputs: np.ndarray,
    outputs: dict[str, np.ndarray],
    names: list[str | Path],
    *,
    sha256s: list[str] | None = None,
    created_by: str | None = None,
    tolerances: dict[str, dict[str, float | None]] | None = None,
) -> Path:
    """Store a golden set. `names` are the source images (a path that exists is hashed)."""
    bundle = Path(bundle)
    card = load_card(bundle)
    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    if inputs.ndim != 4 or tuple(inputs.shape[1:]) != tuple(card.input.shape):
        raise CardError(
            f"golden inputs must be (N, {', '.join(map(str, card.input.shape))}), got {inputs.shape}"
        )
    n = len(inputs)
    if len(names) != n:
        raise CardError(f"{len(names)} names for {n} golden inputs")
    for name, array in outputs.items():
        if len(array) != n:
            raise CardError(f"output {name!r} has {len(array)} rows for {n} inputs")
    missing = [o.name for o in card.outputs if o.name not in outputs]
    if missing:
        raise CardError(f"golden outputs lack {missing}")
    images = []
    for i, name in enumerate(names):
        path = Path(name)
        sha = sha256s[i] if sha256s else (sha256_file(path) if path.is_file() else None)
        images.append({"name": path.name if path.is_file() else str(name), "sha256": sha})
    merged = {k: dict(v) for k, v in DEFAULT_TOLERANCES.items()}
    for precision, values in (tolerances or {}).items():
        merged.setdefault(precision, {}).update(values)
    manifest = {
        "schema": GOLDEN_SCHEMA,
        "model": card.name,
        "source_model_sha256": fp32_onnx_sha(card),
        "created_by": created_by or f"edgescreen {__version__}",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "count": n,
        "input_shape": list(inputs.shape[1:]),
        "outputs": {k: list(np.shape(v)[1:]) for k, v in outputs.items()},
        "images": images,
        "tolerances": merged,
    }
    folder = golden_dir(bundle)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / INPUTS, _npy_bytes(inputs))
    atomic_write(
        folder / OUTPUTS,
        _npz_bytes({k: np.asarray(v, dtype=np.float32) for k, v in outputs.items()}),
    )
    atomic_write(
        folder / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    )
    return folder


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()
