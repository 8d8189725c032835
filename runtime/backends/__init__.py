"""Inference backends behind one small interface, imported only when asked for.

A backend turns one preprocessed NCHW float32 batch into the model's named outputs.
The registry maps a name to "module:class" so that a missing TensorRT costs nothing
until it is requested, and then fails with a message naming the install step.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import BackendUnavailable


@runtime_checkable
class Backend(Protocol):
    name: str
    device: str  # e.g. "cpu", "cuda:0"

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


_REGISTRY: dict[str, str] = {
    "onnxruntime": "edgescreen.runtime.backends.ort:OrtBackend",
    "tensorrt": "edgescreen.runtime.backends.trt:TrtBackend",
}

INSTALL_HINTS = {
    "onnxruntime": "pip install 'edgescreen[runtime]' (or onnxruntime-gpu on a CUDA host)",
    "tensorrt": "on a Jetson: sudo apt install python3-libnvinfer python3-pycuda (JetPack 6); "
    "on a GPU host: pip install tensorrt pycuda",
}


def backend_names() -> list[str]:
    return list(_REGISTRY)


def load_backend(name: str, model_path: str | Path, **options: Any) -> Backend:
    if name not in _REGISTRY:
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of {', '.join(_REGISTRY)}")
    module_name, cls_name = _REGISTRY[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise BackendUnavailable(
                f"the {name} backend is not part of this edgescreen build"
            ) from None
        raise BackendUnavailable(
            f"the {name} backend needs {exc.name}: {INSTALL_HINTS[name]}"
        ) from None
    return getattr(module, cls_name)(model_path, **options)


def is_available(name: str) -> bool:
    """True when the backend's library imports; cheap enough for auto-selection."""
    lib = {"onnxruntime": "onnxruntime", "tensorrt": "tensorrt"}[name]
    return importlib.util.find_spec(lib) is not None


def resolve_backend(name: str, bundle: str | Path | None = None, precision: str = "fp32") -> str:
    """'auto' -> a TensorRT engine already built for this device, else ONNX Runtime.

    ONNX Runtime itself prefers its CUDA provider when present. TensorRT is chosen only
    when an engine exists: building one takes minutes and is never started by a screen.
    """
    if name != "auto":
        return name
    if bundle is not None and is_available("tensorrt"):
        from .trt import engine_available

        if engine_available(bundle, precision):
            return "tensorrt"
    if is_available("onnxruntime"):
        return "onnxruntime"
    raise BackendUnavailable(f"no inference backend is installed: {INSTALL_HINTS['onnxruntime']}")
