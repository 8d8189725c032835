"""The CUDA side of the TensorRT backend, in one small module: context, stream, buffers.

pycuda (built in the venv against JetPack's CUDA) is the only thing imported here, lazily, so that
swapping it for cuda-python touches this file alone. TensorRT itself uses the CUDA
runtime API, which works in the device's *primary* context; we retain that context
instead of making a new one (what pycuda.autoinit does) and push it around every call,
because the screener may call infer from another thread than the one that built it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BackendUnavailable
from . import REGISTRY


def _driver() -> Any:
    try:
        import pycuda.driver as cuda  # noqa: PLC0415 - optional, heavy
    except ImportError:
        hint = REGISTRY["tensorrt"].install_hint
        raise BackendUnavailable(f"the tensorrt backend needs pycuda: {hint}") from None
    try:
        cuda.init()
    except cuda.Error as exc:
        raise BackendUnavailable(
            f"CUDA could not start ({exc}); is this a GPU machine with its driver loaded?"
        ) from None
    return cuda


@dataclass(frozen=True)
class DeviceProperties:
    name: str
    compute_capability: tuple[int, int]
    sm_count: int
    total_memory: int


def device_properties(ordinal: int = 0) -> DeviceProperties:
    cuda = _driver()
    if ordinal >= cuda.Device.count():
        raise BackendUnavailable(
            f"no CUDA device {ordinal} (this machine has {cuda.Device.count()})"
        )
    dev = cuda.Device(ordinal)
    major, minor = dev.compute_capability()
    return DeviceProperties(
        name=dev.name(),
        compute_capability=(int(major), int(minor)),
        sm_count=int(dev.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT)),
        total_memory=int(dev.total_memory()),
    )


class CudaContext:
    """The device's primary context, made current for the duration of a `with` block."""

    def __init__(self, ordinal: int = 0) -> None:
        self._cuda = _driver()
        self._ctx = self._cuda.Device(ordinal).retain_primary_context()
        self.ordinal = ordinal

    def __enter__(self) -> CudaContext:
        self._ctx.push()
        return self

    def __exit__(self, *exc: object) -> None:
        self._cuda.Context.pop()

    def release(self) -> None:
        # The primary context is released when the last reference to it is dropped.
        self._ctx = None


class Stream:
    def __init__(self) -> None:
        self._cuda = _driver()
        self._stream = self._cuda.Stream()

    @property
    def handle(self) -> int:
        """The raw cudaStream_t, what execute_async_v3 takes."""
        return int(self._stream.handle)

    def synchronize(self) -> None:
        self._stream.synchronize()

    def free(self) -> None:
        self._stream = None


class HostDeviceBuffer:
    """A page-locked host array and a device allocation of the same size.

    Sized once for the largest shape the engine accepts; each call copies only the bytes
    of the current batch.
    """

    def __init__(self, count: int, dtype: np.dtype) -> None:
        cuda = _driver()
        self._cuda = cuda
        self.dtype = np.dtype(dtype)
        self.host = cuda.pagelocked_empty(max(int(count), 1), self.dtype)
        self.device = cuda.mem_alloc(max(self.host.nbytes, 1))

    @property
    def ptr(self) -> int:
        return int(self.device)

    def to_device(self, data: np.ndarray, stream: Stream) -> None:
        flat = np.ascontiguousarray(data, dtype=self.dtype).reshape(-1)
        if flat.size > self.host.size:
            raise ValueError(f"{flat.size} values do not fit a buffer of {self.host.size}")
        self.host[: flat.size] = flat
        self._cuda.memcpy_htod_async(self.device, self.host[: flat.size], stream._stream)

    def from_device(self, count: int, stream: Stream) -> np.ndarray:
        """Queue the copy of the first `count` values back; valid after stream.synchronize()."""
        view = self.host[:count]
        self._cuda.memcpy_dtoh_async(view, self.device, stream._stream)
        return view

    def free(self) -> None:
        if self.device is not None:
            self.device.free()
            self.device = None
        base = getattr(self.host, "base", None)
        if base is not None and hasattr(base, "free"):
            base.free()
        self.host = None
