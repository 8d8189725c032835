"""TensorRT backend: runs a cached engine (plan) for this device, torch-free.

Loader + runner in the Polygraphy spirit, with the buffer core of TensorRT's
samples/python/common_runtime.py: deserialize the plan, allocate page-locked host and
device buffers once for the profile's largest batch, bind them with set_tensor_address,
and per call set the input shape, copy in, execute_async_v3, copy out, synchronize.

The engine for the precision on this device is looked up in bundle/engines/ (built there
by `edgescreen engine build`, never by the runtime); `engine=` names one file instead,
loaded only if its sidecar key matches this device and bundle.

tensorrt and pycuda are imported when a backend is made, never at module import, so
`engine_available()` and the registry cost nothing where they are missing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..card import ModelCard
from ..engine_cache import (
    DeviceInfo,
    EngineKey,
    StaleEngine,
    check_engine,
    find_engine,
    make_key,
    quantizations,
)
from ..errors import BackendUnavailable, CardError, EdgescreenError
from . import REGISTRY, cuda_mem

log = logging.getLogger(__name__)


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt  # noqa: PLC0415 - optional, heavy
    except ImportError:
        raise BackendUnavailable(
            f"TensorRT is not installed: {REGISTRY['tensorrt'].install_hint}"
        ) from None
    return trt


def _logger(trt: Any) -> Any:
    # One logger per process: TensorRT keeps a reference to it for the runtime's lifetime.
    global _TRT_LOGGER
    if _TRT_LOGGER is None:
        _TRT_LOGGER = trt.Logger(trt.Logger.WARNING)
    return _TRT_LOGGER


_TRT_LOGGER: Any = None


# -- this device and its engines ----------------------------------------------------------------
def current_device(trt: Any = None, ordinal: int = 0) -> DeviceInfo:
    """DeviceInfo of GPU `ordinal` from TensorRT and pycuda; BackendUnavailable when they are missing."""
    trt = trt or import_tensorrt()
    props = cuda_mem.device_properties(ordinal)
    return DeviceInfo(
        gpu_name=props.name,
        compute_capability=props.compute_capability,
        trt_version=str(trt.__version__),
        sm_count=props.sm_count,
    )


def engine_keys(
    card: ModelCard, precision: str, device: DeviceInfo, dla_core: int | None = None
) -> list[EngineKey]:
    """The keys an engine for the card's model and precision may carry on this device, the
    default build path's first (an engine built with a non-default --int8-mode is still found)."""
    keys, errors = [], []
    for q in quantizations(device.trt_version, precision):
        try:  # a path whose source file the bundle lacks cannot have built an engine
            keys.append(make_key(card, precision, device, dla_core=dla_core, quantization=q))
        except CardError as exc:
            errors.append(exc)
    if not keys:
        raise errors[0]
    return keys


def engine_available(
    bundle: str | Path,
    card: ModelCard,
    precision: str,
    *,
    device: DeviceInfo | None = None,
    dla_core: int | None = None,
) -> bool:
    """True when an intact engine keyed for this device, TensorRT and bundle is in bundle/engines.

    Cheap (no deserialisation, no hashing of the plan) and never raises: for backend
    auto-selection. False where TensorRT or pycuda is missing.
    """
    try:
        keys = engine_keys(card, precision, device or current_device(), dla_core)
        return any(find_engine(bundle, key, verify_hash=False).found for key in keys)
    except (EdgescreenError, OSError, ValueError):
        return False


def locate_engine(bundle: Path, keys: list[EngineKey], *, verify_hash: bool = True) -> Path:
    """The engine to load: a cached one for one of `keys`, else refuse naming the build command."""
    lookups = [find_engine(bundle, key, verify_hash=verify_hash) for key in keys]
    for found in lookups:
        if found.path is not None:
            return found.path
    # The runtime never builds: a build takes minutes on a Jetson and lives in edgescreen.export
    # (the runtime imports nothing of ours: README, Layout). jetson/build-and-selftest.sh builds them.
    dla = f" --dla {keys[0].dla_core}" if keys[0].dla_core is not None else ""
    raise StaleEngine(
        f"{lookups[0].explain()}; build one on this device with `edgescreen engine build {bundle} "
        f"--precision {keys[0].precision}{dla}`"
    )


def check_engine_file(plan: Path, keys: list[EngineKey], *, verify_hash: bool) -> None:
    """Refuse an engine file unless it carries one of `keys` (the first key's reasons if none)."""
    errors = []
    for key in keys:
        try:
            check_engine(plan, key, verify_hash=verify_hash)
            return
        except StaleEngine as exc:
            errors.append(exc)
    raise errors[0]


# -- the backend ------------------------------------------------------------------------------
class TrtBackend:
    name = "tensorrt"

    @classmethod
    def can_open(
        cls, bundle: str | Path, card: ModelCard, precision: str, **options: object
    ) -> bool:
        dla_core = options.get("dla_core")
        return engine_available(bundle, card, precision, dla_core=dla_core)  # type: ignore[arg-type]

    def __init__(
        self,
        bundle: Path,
        card: ModelCard,
        precision: str,
        *,
        dla_core: int | None = None,
        device_ordinal: int = 0,
        engine: str | Path | None = None,
        threads: int
        | None = None,  # accepted for a uniform call; TensorRT schedules its own kernels
        verify: bool = True,
        spin: bool = True,  # accepted for a uniform call: ONNX Runtime's CPU threads only
    ) -> None:
        trt = import_tensorrt()
        self._trt = trt
        self._buffers: dict[str, cuda_mem.HostDeviceBuffer] = {}
        self._stream = None
        self.context = self.engine = self._runtime = None
        self.precision = precision
        self.device = f"cuda:{device_ordinal}" + (f"+dla{dla_core}" if dla_core is not None else "")
        self._cuda_ctx = cuda_mem.CudaContext(device_ordinal)
        try:  # from here on the retained CUDA context is ours: released whatever fails
            with self._cuda_ctx:
                keys = engine_keys(card, precision, current_device(trt, device_ordinal), dla_core)
                if engine is not None:
                    # Refuse another model's, device's or TensorRT's plan before TensorRT touches it.
                    plan = Path(engine)
                    check_engine_file(plan, keys, verify_hash=verify)
                else:
                    plan = locate_engine(bundle, keys, verify_hash=verify)
                self.engine_path = plan
                # Relative to the bundle when inside it; else absolute (bundle / artifact finds both).
                plan = plan.resolve() if not plan.is_relative_to(bundle) else plan
                self.artifact = (
                    str(plan.relative_to(bundle)) if plan.is_relative_to(bundle) else str(plan)
                )
                self._load(plan, dla_core)
        except BaseException:
            self.close()
            raise

    def _load(self, plan: Path, dla_core: int | None) -> None:
        trt = self._trt
        self._runtime = trt.Runtime(_logger(trt))
        if dla_core is not None:  # a DLA plan deserialises onto the core the runtime names
            self._runtime.DLA_core = dla_core
        self.engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise StaleEngine(
                f"{plan.name}: TensorRT could not deserialize the engine (see the TensorRT log "
                "above); delete it and rebuild on this device"
            )
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendUnavailable(
                f"{plan.name}: could not create an execution context (out of GPU memory?)"
            )
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [
            n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT
        ]
        if len(inputs) != 1:
            raise BackendUnavailable(
                f"{plan.name}: expected one input tensor, the engine has {inputs}"
            )
        self.input_name = inputs[0]
        lo, _, hi = (tuple(s) for s in self.engine.get_tensor_profile_shape(self.input_name, 0))
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.sample_shape = tuple(int(d) for d in hi[1:])
        # Size every buffer once for the largest batch: the output shapes at max input shape.
        if not self.context.set_input_shape(self.input_name, tuple(hi)):
            raise BackendUnavailable(
                f"{plan.name}: the engine refused its own max shape {tuple(hi)}"
            )
        self._stream = cuda_mem.Stream()
        for name in (self.input_name, *self.output_names):
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise BackendUnavailable(
                    f"{plan.name}: output {name!r} has a data-dependent shape {shape}, "
                    "which this backend does not support"
                )
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            buf = cuda_mem.HostDeviceBuffer(int(np.prod(shape)), dtype)
            self._buffers[name] = buf
            self.context.set_tensor_address(name, buf.ptr)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self.context is None:
            raise BackendUnavailable("the tensorrt backend is closed")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 1 + len(self.sample_shape) or tuple(batch.shape[1:]) != self.sample_shape:
            raise ValueError(
                f"expected a batch of shape (N, {', '.join(map(str, self.sample_shape))}), "
                f"got {batch.shape}"
            )
        n = len(batch)
        if n == 0:
            raise ValueError("empty batch")
        parts = [self._run(batch[i : i + self.max_batch]) for i in range(0, n, self.max_batch)]
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts]) for name in self.output_names}

    def _run(self, chunk: np.ndarray) -> dict[str, np.ndarray]:
        n = len(chunk)
        if (
            n < self.min_batch
        ):  # e.g. a DLA engine pinned at one batch size: pad, then drop the padding
            pad = np.zeros((self.min_batch - n, *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        with self._cuda_ctx:
            if not self.context.set_input_shape(self.input_name, chunk.shape):
                raise ValueError(
                    f"input shape {chunk.shape} is outside the engine's profile "
                    f"(batch {self.min_batch}..{self.max_batch})"
                )
            self._buffers[self.input_name].to_device(chunk, self._stream)
            if not self.context.execute_async_v3(self._stream.handle):
                raise EdgescreenError(
                    f"TensorRT execution failed on {self.engine_path.name} "
                    "(see the TensorRT log above)"
                )
            pending = {}
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                pending[name] = (
                    shape,
                    self._buffers[name].from_device(int(np.prod(shape)), self._stream),
                )
            self._stream.synchronize()
        # Copy out of the reused page-locked buffers; FP16 outputs are widened for postprocessing.
        return {
            name: view.reshape(shape)[:n].astype(np.float32, copy=True)
            for name, (shape, view) in pending.items()
        }

    def close(self) -> None:
        if getattr(self, "_cuda_ctx", None) is None:
            return
        with self._cuda_ctx:
            self._release()
        self._cuda_ctx.release()
        self._cuda_ctx = None

    def _release(self) -> None:
        for buf in self._buffers.values():
            buf.free()
        self._buffers = {}
        if self._stream is not None:
            self._stream.free()
            self._stream = None
        # Destroy in reverse order of creation: context, engine, runtime.
        self.context = None
        self.engine = None
        self._runtime = None

    def __enter__(self) -> TrtBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
