"""Inference backends behind one interface, registered by name and imported only when asked for.

A backend turns one preprocessed NCHW float32 batch into the model's named outputs. Every
backend is made the same way, `Class(bundle, card, precision, **options)`, chooses its own
file from the bundle (runtime/artifacts.py) and exposes `name`, `device`, `artifact`,
`infer` and `close`. `open_backend` is the one place that knows what `auto` means and
which library each backend needs; adding a backend is one REGISTRY row and its module.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..card import ModelCard
from ..errors import BackendUnavailable


@runtime_checkable
class Backend(Protocol):
    name: str
    device: str  # e.g. "cpu", "cuda:0", "cuda:0+dla0"
    artifact: str  # the file it runs, relative to the bundle

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class BackendSpec:
    name: str
    entry: str  # "module:Class", imported when the backend is opened
    library: str  # the package whose presence makes the backend available
    install_hint: str


REGISTRY: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec(
            "onnxruntime",
            "edgescreen.runtime.backends.ort:OrtBackend",
            "onnxruntime",
            "pip install 'edgescreen[runtime]' (or onnxruntime-gpu on a CUDA host)",
        ),
        BackendSpec(
            "tensorrt",
            "edgescreen.runtime.backends.trt:TrtBackend",
            "tensorrt",
            # Not apt's python3-pycuda: it is built against the system numpy, which the
            # venv's numpy 2 replaces, and then it fails to import.
            "on a Jetson: sudo apt install python3-libnvinfer (JetPack 6), then in the venv "
            "CUDA_ROOT=/usr/local/cuda pip install pycuda (jetson/setup.sh does both); "
            "on a GPU host: pip install tensorrt pycuda",
        ),
    )
}
# What `auto` tries, best first. A backend class decides with `can_open` whether it has
# something to run for this bundle and precision (TensorRT: an engine built on this device).
AUTO_ORDER = ("tensorrt", "onnxruntime")


def backend_names() -> list[str]:
    return list(REGISTRY)


def is_available(name: str) -> bool:
    """True when the backend's library is installed; cheap (nothing is imported)."""
    return importlib.util.find_spec(REGISTRY[name].library) is not None


def _backend_class(name: str) -> type:
    if name not in REGISTRY:
        raise BackendUnavailable(
            f"unknown backend {name!r}; choose one of {', '.join(REGISTRY)} or auto"
        )
    spec = REGISTRY[name]
    module_name, cls_name = spec.entry.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise BackendUnavailable(
                f"the {name} backend is not part of this edgescreen build"
            ) from None
        raise BackendUnavailable(
            f"the {name} backend needs {exc.name}: {spec.install_hint}"
        ) from None
    return getattr(module, cls_name)


def resolve(
    name: str, bundle: str | Path, card: ModelCard, precision: str, options: Mapping[str, Any]
) -> str:
    """The backend `name` stands for: itself, or for `auto` the first in AUTO_ORDER that can run.

    TensorRT is chosen only when an engine for this device (and DLA core, when one is asked
    for) exists: a build takes minutes and is never started by a screen.
    """
    if name != "auto":
        return name
    for candidate in AUTO_ORDER:
        if is_available(candidate) and _backend_class(candidate).can_open(
            bundle, card, precision, **options
        ):
            return candidate
    if options.get("dla_core") is not None:
        raise BackendUnavailable(
            f"no {precision} TensorRT engine for DLA core {options['dla_core']} on this device: "
            f"build one with `edgescreen engine build {bundle} --precision {precision} "
            f"--dla {options['dla_core']}`"
        )
    raise BackendUnavailable(
        f"no inference backend is installed: {REGISTRY['onnxruntime'].install_hint}"
    )


def open_backend(
    bundle: str | Path,
    card: ModelCard,
    precision: str,
    backend: str = "auto",
    **options: Any,
) -> Backend:
    """Open `backend` (or the best for `auto`) on the bundle's model for `precision`.

    Options common to every backend: `verify` (check the sha256 of the file about to run,
    default True), `spin` (let CPU inference threads busy-wait between runs, default True).
    ONNX Runtime: `threads`, `device` (auto | cpu | cuda), `target` (force an INT8 form),
    `unfused_qdq`. TensorRT: `dla_core`, `device_ordinal`, `engine`.
    """
    name = resolve(backend, bundle, card, precision, options)
    return _backend_class(name)(Path(bundle), card, precision, **options)


def infer_in_batches(
    backend: Backend, inputs: np.ndarray, batch_size: int
) -> dict[str, np.ndarray]:
    """Outputs for any number of inputs, `batch_size` at a time (memory stays bounded)."""
    parts: list[Mapping[str, np.ndarray]] = [
        backend.infer(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)
    ]
    if not parts:
        return {}
    return {k: np.concatenate([np.asarray(p[k], np.float32) for p in parts]) for k in parts[0]}
