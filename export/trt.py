"""Build TensorRT engines from a bundle's ONNX files, on the device that will run them.

Three build paths, picked from the TensorRT major version (see `plan_build`):

- explicit (TensorRT 9/10, and 8.x when asked): FP32/FP16 from the FP32 ONNX; INT8 from
  the Q/DQ ONNX with the INT8 flag (and FP16, so layers left unquantized need not run
  in FP32). The scales come from the file, so the engine matches what ONNX Runtime
  measured on a CPU.
- strongly-typed (TensorRT 11+): the builder precision flags are gone; the network takes
  its types from the Q/DQ file. Implicit calibration was removed, and so was FP16 by flag.
- implicit (TensorRT 8.x / JetPack 5 only by default): INT8 from the FP32 ONNX with an
  IInt8EntropyCalibrator2 fed the card's calibration images and a calibration cache.

Plans are written atomically into bundle/engines/ with a JSON sidecar (runtime/engine_cache),
and a per-device timing cache (bundle/engines/timing.cache) makes rebuilds fast.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgescreen.runtime import __version__
from edgescreen.runtime.backends import cuda_mem
from edgescreen.runtime.backends.trt import current_device, import_tensorrt
from edgescreen.runtime.card import (
    ModelCard,
    atomic_write,
    load_card,
    sha256_file,
    verify_artifacts,
)
from edgescreen.runtime.engine_cache import (
    DeviceInfo,
    engines_dir,
    find_engine,
    make_key,
    plan_path,
    source_artifact,
    trt_major,
    write_engine,
)
from edgescreen.runtime.errors import CardError, EdgescreenError
from edgescreen.runtime.prepare import prepare_batch

log = logging.getLogger(__name__)

TIMING_CACHE = "timing.cache"
MIN_INT8_CC = (6, 1)  # TensorRT's INT8 kernels need dp4a (Pascal sm_61 and later)


class BuildError(EdgescreenError):
    """The engine could not be built (bad arguments, unsupported device, parser or builder failure)."""


# -- the plan: which file, which flags (pure, tested on CPU) --------------------------------------
@dataclass(frozen=True)
class BuildPlan:
    precision: str
    quantization: str  # "explicit" | "strongly-typed" | "implicit"
    source_key: str  # card artifact key of the ONNX parsed
    source_file: str
    network_flags: tuple[str, ...]  # NetworkDefinitionCreationFlag names
    builder_flags: tuple[str, ...]  # BuilderFlag names
    profile: tuple[int, int, int]  # batch min/opt/max
    dla_core: int | None = None
    calibrate: bool = False
    notes: tuple[str, ...] = field(default=())


def plan_build(
    card: ModelCard,
    precision: str,
    *,
    trt_version: str,
    device: DeviceInfo,
    dla_core: int | None = None,
    int8_mode: str = "auto",
    has_fast_int8: bool | None = None,
    num_dla_cores: int | None = None,
) -> BuildPlan:
    """Decide the build path and flags, or refuse with the reason. No TensorRT needed."""
    if precision not in ("fp32", "fp16", "int8"):
        raise BuildError(f"unknown precision {precision!r}; use fp32, fp16 or int8")
    if int8_mode not in ("auto", "explicit", "implicit"):
        raise BuildError(f"unknown INT8 mode {int8_mode!r}; use auto, explicit or implicit")
    major = trt_major(trt_version)
    if major < 8:
        raise BuildError(
            f"TensorRT {trt_version} is too old; edgescreen needs TensorRT 8.5 or newer"
        )
    if precision == "int8":
        _check_int8_support(device, has_fast_int8)
    notes: list[str] = []
    quantization = _quantization(card, precision, major, int8_mode, notes)
    try:
        key, artifact = source_artifact(card, precision, quantization)
    except CardError as exc:
        raise BuildError(str(exc)) from None
    builder_flags = _builder_flags(precision, quantization)
    profile = tuple(card.input.batch)
    if dla_core is not None:
        _check_dla(precision, dla_core, num_dla_cores)
        builder_flags += ("GPU_FALLBACK",)  # layers DLA cannot run go to the GPU instead of failing
        opt = card.input.batch[1]
        profile = (opt, opt, opt)  # DLA has no dynamic dimensions: min = opt = max
        notes.append(f"DLA engines take a fixed batch of {opt}; smaller batches are padded")
    return BuildPlan(
        precision=precision,
        quantization=quantization,
        source_key=key,
        source_file=artifact.file,
        network_flags=_network_flags(quantization, major),
        builder_flags=builder_flags,
        profile=profile,  # type: ignore[arg-type]
        dla_core=dla_core,
        calibrate=quantization == "implicit",
        notes=tuple(notes),
    )


def _check_int8_support(device: DeviceInfo, has_fast_int8: bool | None) -> None:
    if tuple(device.compute_capability) < MIN_INT8_CC:
        board = (
            " (a Jetson Nano: Maxwell GPU, compute capability 5.3)"
            if tuple(device.compute_capability) == (5, 3)
            else ""
        )
        raise BuildError(
            f"{device.gpu_name}{board} has no INT8 support in TensorRT (compute capability "
            f"{device.compute_capability[0]}.{device.compute_capability[1]} < 6.1); "
            "build an fp16 engine instead"
        )
    if has_fast_int8 is False:
        raise BuildError(
            f"TensorRT reports no fast INT8 on {device.gpu_name} "
            "(builder.platform_has_fast_int8 is False); build an fp16 engine instead"
        )


def _quantization(
    card: ModelCard, precision: str, major: int, int8_mode: str, notes: list[str]
) -> str:
    """explicit | strongly-typed | implicit, from the TensorRT major version and the INT8 mode."""
    if major >= 11:
        if precision == "int8" and int8_mode == "implicit":
            raise BuildError(
                "TensorRT 11 removed implicit INT8 calibration (IInt8EntropyCalibrator2): it accepts "
                "only explicit quantization, the Q/DQ model.int8.onnx; drop --int8-mode implicit"
            )
        if precision == "fp16":
            raise BuildError(
                "TensorRT 11 removed the FP16 builder flag (networks are strongly typed): an FP16 "
                "engine needs an FP16-typed ONNX (ModelOpt AutoCast), which this bundle does not "
                "ship; build fp32, or int8 from the Q/DQ model"
            )
        return "strongly-typed"
    if precision != "int8":
        return "explicit"
    auto = "implicit" if major < 9 else "explicit"  # the calibrator is the 8.x default
    quantization = auto if int8_mode == "auto" else int8_mode
    if quantization == "implicit":
        if major >= 10:
            notes.append(
                "implicit INT8 calibration is deprecated since TensorRT 10.1; the Q/DQ path is preferred"
            )
        if not (card.calibration or {}).get("images"):
            raise BuildError(
                "implicit INT8 needs calibration images: the card's calibration manifest lists none "
                "(calibration.images)"
            )
    return quantization


def _network_flags(quantization: str, major: int) -> tuple[str, ...]:
    if quantization == "strongly-typed":
        return ("STRONGLY_TYPED",)
    # Explicit batch is the default (and only mode) from TensorRT 10.
    return ("EXPLICIT_BATCH",) if major < 10 else ()


def _builder_flags(precision: str, quantization: str) -> tuple[str, ...]:
    if quantization == "strongly-typed":
        return ()  # the types come from the network itself
    if precision == "fp16":
        return ("FP16",)
    if precision == "int8":
        return ("INT8", "FP16")  # FP16 for the layers the Q/DQ graph leaves in float
    return ()


def _check_dla(precision: str, dla_core: int, num_dla_cores: int | None) -> None:
    if dla_core < 0:
        raise BuildError(f"DLA core must be 0 or more, got {dla_core}")
    if num_dla_cores is not None and dla_core >= num_dla_cores:
        have = (
            f"{num_dla_cores} DLA core{'s' if num_dla_cores != 1 else ''}"
            if num_dla_cores
            else "no DLA"
        )
        raise BuildError(
            f"DLA core {dla_core} asked for, but this device has {have} "
            "(Orin AGX/NX have 2, Orin Nano none)"
        )
    if precision == "fp32":
        raise BuildError("DLA runs FP16 and INT8 only; build with --precision fp16 or int8 for DLA")


# -- calibration data (pure part of the legacy path) ------------------------------------------
def calibration_images(bundle: str | Path, card: ModelCard, *, verify: bool = True) -> list[Path]:
    """The calibration manifest's images, checked against their sha256."""
    manifest = card.calibration or {}
    entries = manifest.get("images") or []
    if not entries:
        raise BuildError("the card's calibration manifest lists no images (calibration.images)")
    paths = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "path" not in entry:
            raise CardError("each entry needs a path", field=f"calibration.images[{i}]")
        path = Path(entry["path"])
        if not path.is_absolute():
            path = Path(bundle) / path
        if not path.is_file():
            raise CardError("calibration image not found", path=path)
        if verify and entry.get("sha256") and sha256_file(path) != entry["sha256"]:
            raise CardError("calibration image differs from the sha256 in the manifest", path=path)
        paths.append(path)
    return paths


def calibration_batches(
    paths: Sequence[Path], card: ModelCard, batch_size: int
) -> Iterator[np.ndarray]:
    """Preprocessed float32 (B, C, H, W) batches, through screening's own prepare step.

    Every batch has `batch_size` images (the calibration profile is static); an incomplete
    last batch is dropped. Images are decoded lazily, one batch at a time.
    """
    if batch_size < 1:
        raise BuildError(f"calibration batch size must be at least 1, got {batch_size}")
    for start in range(0, len(paths) - batch_size + 1, batch_size):
        yield prepare_batch(paths[start : start + batch_size], card)


def calibration_batch_size(n_images: int, wanted: int) -> int:
    return max(1, min(wanted, n_images))


def make_calibrator(
    trt: Any, batches: Iterator[np.ndarray], batch_size: int, cache_file: Path
) -> Any:
    """An IInt8EntropyCalibrator2 that feeds `batches` and keeps its scales in `cache_file`."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            # pybind11 trampoline: the base __init__ must run, or TensorRT crashes on the first call.
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = batches
            self._stream = cuda_mem.Stream()
            self._buffer: cuda_mem.HostDeviceBuffer | None = None
            self.count = 0

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            try:
                batch = next(self._batches)
            except StopIteration:
                return None
            if self._buffer is None:
                self._buffer = cuda_mem.HostDeviceBuffer(batch.size, np.float32)
            self._buffer.to_device(batch, self._stream)
            self._stream.synchronize()
            self.count += 1
            return [self._buffer.ptr] * len(names)

        def read_calibration_cache(self) -> bytes | None:
            return (
                cache_file.read_bytes()
                if cache_file.is_file() and cache_file.stat().st_size
                else None
            )

        def write_calibration_cache(self, cache: Any) -> None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(cache_file, bytes(cache))

        def free(self) -> None:
            if self._buffer is not None:
                self._buffer.free()
                self._buffer = None
            self._stream.free()

    return EntropyCalibrator()


# -- TensorRT ----------------------------------------------------------------------------------
def parser_errors(parser: Any) -> list[str]:
    out = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        where = f"node {err.node()}"
        if hasattr(err, "node_name"):  # node_name()/node_operator() exist from TensorRT 8.6
            where += f" ({err.node_operator()} {err.node_name()!r})"
        out.append(f"{where}: {err.desc()}")
    return out


def _flags(enum: Any, names: Sequence[str]) -> int:
    value = 0
    for name in names:
        value |= 1 << int(getattr(enum, name))
    return value


def _timing_cache_blob(path: Path, device: DeviceInfo) -> bytes:
    """The stored timing cache if it was made by this TensorRT on this GPU, else b'' (a new one)."""
    meta = path.with_name(path.name + ".json")
    if not path.is_file() or not meta.is_file():
        return b""
    try:
        made_for = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError):
        return b""
    if made_for != _timing_meta(device):
        log.warning("timing cache %s is from another device or TensorRT; starting a new one", path)
        return b""
    return path.read_bytes()


def _timing_meta(device: DeviceInfo) -> dict[str, Any]:
    return {
        "trt_version": device.trt_version,
        "gpu_name": device.gpu_name,
        "compute_capability": list(device.compute_capability),
        "sm_count": device.sm_count,
    }


def build_engine(
    bundle: str | Path,
    precision: str = "fp16",
    *,
    workspace_mb: int = 1024,
    dla_core: int | None = None,
    timing_cache: bool | str | Path | None = True,
    int8_mode: str = "auto",
    calibration_batch: int = 8,
    force: bool = False,
    device: DeviceInfo | None = None,
    verbose: bool = False,
    trt: Any = None,
) -> Path:
    """Build (or reuse) the engine for this device; returns the plan's path in bundle/engines.

    `trt` is the tensorrt module (tests never pass one: they test `plan_build`).
    """
    bundle = Path(bundle)
    if workspace_mb < 1:
        raise BuildError(f"workspace must be at least 1 MB, got {workspace_mb}")
    card = load_card(bundle)
    trt = trt or import_tensorrt()
    device = device or current_device(trt)
    if device.trt_version != str(trt.__version__):
        raise BuildError(
            f"device descriptor says TensorRT {device.trt_version}, the module is {trt.__version__}"
        )
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    plan = plan_build(
        card,
        precision,
        trt_version=device.trt_version,
        device=device,
        dla_core=dla_core,
        int8_mode=int8_mode,
        has_fast_int8=_has_fast_int8(builder, precision, device),
        num_dla_cores=builder.num_DLA_cores if dla_core is not None else None,
    )
    for note in plan.notes:
        log.warning(note)
    key = make_key(card, precision, device, dla_core=dla_core, quantization=plan.quantization)
    if not force:
        found = find_engine(bundle, key)
        if found.path is not None:
            log.info("reusing %s", found.path)
            return found.path
    verify_artifacts(
        bundle, card, only=[plan.source_key]
    )  # never build from a file the card disowns

    network, input_name = _parse_onnx(trt, builder, logger, bundle / plan.source_file, plan)
    config = _builder_config(trt, builder, plan, card, input_name, workspace_mb)
    cache_path = _attach_timing_cache(config, bundle, timing_cache, device)
    if plan.calibrate:
        # The calibrator's pycuda buffers and stream need a current CUDA context, and
        # TensorRT calls get_batch from inside build_serialized_network: one context, pushed
        # for the whole build.
        with cuda_mem.CudaContext(0):
            calibrator = _attach_calibrator(
                trt, builder, config, bundle, card, key, input_name, calibration_batch
            )
            serialized, seconds = _serialize(builder, network, config, calibrator, plan)
    else:
        serialized, seconds = _serialize(builder, network, config, None, plan)
    target = plan_path(bundle, key)
    write_engine(
        target,
        serialized,
        key,
        built_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        build_seconds=round(seconds, 1),
        builder_flags=list(plan.builder_flags),
        network_flags=list(plan.network_flags),
        source_file=plan.source_file,
        edgescreen_version=__version__,
        workspace_mb=workspace_mb,
    )
    if cache_path is not None:
        _save_timing_cache(config, cache_path, device)
    log.warning("wrote %s in %.0f s", target, seconds)
    return target


def _has_fast_int8(builder: Any, precision: str, device: DeviceInfo) -> bool | None:
    if precision != "int8" or trt_major(device.trt_version) >= 11:
        return None
    # C++ IBuilder::platformHasFastInt8 is deprecated since 10.5 (gone in 11); it is still
    # the builder's own answer on 10.x.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return getattr(builder, "platform_has_fast_int8", None)


def _parse_onnx(trt: Any, builder: Any, logger: Any, onnx_path: Path, plan: BuildPlan):
    """(network, input tensor name) parsed from the plan's ONNX file."""
    network = builder.create_network(_flags(trt.NetworkDefinitionCreationFlag, plan.network_flags))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise BuildError(
            f"{onnx_path}: TensorRT's ONNX parser failed: " + "; ".join(parser_errors(parser))
        )
    if network.num_inputs != 1:
        raise BuildError(f"{onnx_path}: expected one network input, found {network.num_inputs}")
    return network, network.get_input(0).name


def _builder_config(
    trt: Any, builder: Any, plan: BuildPlan, card: ModelCard, input_name: str, workspace_mb: int
) -> Any:
    """Workspace, the plan's flags, the batch profile and (for DLA) the device type."""
    c, h, w = card.input.shape
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    profile = builder.create_optimization_profile()
    lo, opt, hi = plan.profile
    profile.set_shape(input_name, (lo, c, h, w), (opt, c, h, w), (hi, c, h, w))
    config.add_optimization_profile(profile)
    if plan.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
    return config


def _attach_timing_cache(
    config: Any, bundle: Path, timing_cache: bool | str | Path | None, device: DeviceInfo
) -> Path | None:
    if not timing_cache:
        return None
    path = engines_dir(bundle) / TIMING_CACHE if timing_cache is True else Path(timing_cache)
    cache = config.create_timing_cache(_timing_cache_blob(path, device))
    config.set_timing_cache(cache, ignore_mismatch=False)
    return path


def _save_timing_cache(config: Any, path: Path, device: DeviceInfo) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, memoryview(config.get_timing_cache().serialize()).tobytes())
    atomic_write(
        path.with_name(path.name + ".json"),
        json.dumps(_timing_meta(device), sort_keys=True).encode(),
    )


def _attach_calibrator(
    trt: Any,
    builder: Any,
    config: Any,
    bundle: Path,
    card: ModelCard,
    key: Any,
    input_name: str,
    calibration_batch: int,
) -> Any:
    """The legacy implicit path: a calibrator fed the card's calibration images."""
    c, h, w = card.input.shape
    paths = calibration_images(bundle, card)
    batch = calibration_batch_size(len(paths), calibration_batch)
    calib_profile = builder.create_optimization_profile()
    calib_profile.set_shape(input_name, *([(batch, c, h, w)] * 3))
    config.set_calibration_profile(calib_profile)
    calib_cache = engines_dir(bundle) / f"calibration-{key.digest()[:16]}.cache"
    calibrator = make_calibrator(trt, calibration_batches(paths, card, batch), batch, calib_cache)
    config.int8_calibrator = calibrator
    return calibrator


def _serialize(builder: Any, network: Any, config: Any, calibrator: Any, plan: BuildPlan):
    """(plan bytes, build seconds); the calibrator's buffers are freed whatever happens."""
    log.warning(
        "building %s engine from %s (%s); this takes minutes on a Jetson",
        plan.precision,
        plan.source_file,
        plan.quantization,
    )
    start = time.perf_counter()
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.free()
    if serialized is None:
        raise BuildError(
            f"TensorRT failed to build the {plan.precision} engine from {plan.source_file} "
            "(see the TensorRT log above)"
        )
    return memoryview(serialized).tobytes(), time.perf_counter() - start
