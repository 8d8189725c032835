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

import argparse
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
from edgescreen.runtime.card import (
    ModelCard,
    atomic_write,
    load_card,
    sha256_file,
    verify_artifacts,
)
from edgescreen.runtime.engine_cache import (
    DeviceInfo,
    EngineKey,
    current_device,
    engines_dir,
    find_engine,
    make_key,
    plan_path,
    source_artifact,
    trt_major,
    write_engine,
)
from edgescreen.runtime.errors import BackendUnavailable, CardError, EdgescreenError

log = logging.getLogger(__name__)

INSTALL_HINT = "sudo apt install python3-libnvinfer python3-pycuda"
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
    notes: list[str] = []

    if precision == "int8":
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
        quantization = "strongly-typed"
    elif precision == "int8":
        if int8_mode == "auto":
            quantization = "implicit" if major < 9 else "explicit"
        else:
            quantization = int8_mode
        if quantization == "implicit" and major >= 10:
            notes.append(
                "implicit INT8 calibration is deprecated since TensorRT 10.1; the Q/DQ path is preferred"
            )
    else:
        quantization = "explicit"

    if quantization == "implicit" and not (card.calibration or {}).get("images"):
        raise BuildError(
            "implicit INT8 needs calibration images: the card's calibration manifest lists none "
            "(calibration.images)"
        )

    try:
        key, artifact = source_artifact(card, precision, quantization)
    except CardError as exc:
        raise BuildError(str(exc)) from None

    if quantization == "strongly-typed":
        network_flags: tuple[str, ...] = ("STRONGLY_TYPED",)
    elif major < 10:
        network_flags = (
            "EXPLICIT_BATCH",
        )  # explicit batch is the default (and only mode) from TensorRT 10
    else:
        network_flags = ()

    builder_flags: list[str] = []
    if quantization != "strongly-typed":
        if precision == "fp16":
            builder_flags.append("FP16")
        elif precision == "int8":
            builder_flags += ["INT8", "FP16"]  # FP16 for the layers the Q/DQ graph leaves in float

    lo, opt, hi = card.input.batch
    profile = (lo, opt, hi)
    if dla_core is not None:
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
            raise BuildError(
                "DLA runs FP16 and INT8 only; build with --precision fp16 or int8 for DLA"
            )
        builder_flags.append(
            "GPU_FALLBACK"
        )  # layers DLA cannot run go to the GPU instead of failing
        profile = (opt, opt, opt)  # DLA has no dynamic dimensions: min = opt = max
        notes.append(f"DLA engines take a fixed batch of {opt}; smaller batches are padded")

    return BuildPlan(
        precision=precision,
        quantization=quantization,
        source_key=key,
        source_file=artifact.file,
        network_flags=network_flags,
        builder_flags=tuple(builder_flags),
        profile=profile,
        dla_core=dla_core,
        calibrate=quantization == "implicit",
        notes=tuple(notes),
    )


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
    """Preprocessed float32 (B, C, H, W) batches, exactly as screening preprocesses.

    Every batch has `batch_size` images (the calibration profile is static); an incomplete
    last batch is dropped. Images are decoded lazily, one batch at a time.
    """
    from edgescreen.runtime.imageio import load_image
    from edgescreen.runtime.preprocess import preprocess

    if batch_size < 1:
        raise BuildError(f"calibration batch size must be at least 1, got {batch_size}")
    for start in range(0, len(paths) - batch_size + 1, batch_size):
        chunk = paths[start : start + batch_size]
        yield np.stack([preprocess(load_image(p), card.preprocessing) for p in chunk]).astype(
            np.float32
        )


def calibration_batch_size(n_images: int, wanted: int) -> int:
    return max(1, min(wanted, n_images))


def make_calibrator(
    trt: Any, batches: Iterator[np.ndarray], batch_size: int, cache_file: Path
) -> Any:
    """An IInt8EntropyCalibrator2 that feeds `batches` and keeps its scales in `cache_file`."""
    from edgescreen.runtime.backends import cuda_mem

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

    return EntropyCalibrator()


# -- TensorRT ----------------------------------------------------------------------------------
def import_tensorrt() -> Any:
    try:
        import tensorrt as trt  # noqa: PLC0415 - optional, heavy
    except ImportError:
        raise BackendUnavailable(
            f"building engines needs TensorRT: {INSTALL_HINT} (JetPack 6); "
            "on a GPU host: pip install tensorrt pycuda"
        ) from None
    return trt


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
    has_fast_int8 = None
    if precision == "int8" and trt_major(device.trt_version) < 11:
        # C++ IBuilder::platformHasFastInt8 is deprecated since 10.5 (gone in 11); it is still
        # the builder's own answer on 10.x.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            has_fast_int8 = getattr(builder, "platform_has_fast_int8", None)
    plan = plan_build(
        card,
        precision,
        trt_version=device.trt_version,
        device=device,
        dla_core=dla_core,
        int8_mode=int8_mode,
        has_fast_int8=has_fast_int8,
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

    network = builder.create_network(_flags(trt.NetworkDefinitionCreationFlag, plan.network_flags))
    parser = trt.OnnxParser(network, logger)
    onnx_path = bundle / plan.source_file
    if not parser.parse_from_file(str(onnx_path)):
        raise BuildError(
            f"{onnx_path}: TensorRT's ONNX parser failed: " + "; ".join(parser_errors(parser))
        )
    if network.num_inputs != 1:
        raise BuildError(f"{onnx_path}: expected one network input, found {network.num_inputs}")
    input_name = network.get_input(0).name
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

    cache_path = None
    if timing_cache:
        cache_path = (
            engines_dir(bundle) / TIMING_CACHE if timing_cache is True else Path(timing_cache)
        )
        cache = config.create_timing_cache(_timing_cache_blob(cache_path, device))
        config.set_timing_cache(cache, ignore_mismatch=False)

    calibrator = None
    if plan.calibrate:
        paths = calibration_images(bundle, card)
        batch = calibration_batch_size(len(paths), calibration_batch)
        calib_profile = builder.create_optimization_profile()
        calib_profile.set_shape(input_name, *([(batch, c, h, w)] * 3))
        config.set_calibration_profile(calib_profile)
        calib_cache = engines_dir(bundle) / f"calibration-{key.digest()[:16]}.cache"
        calibrator = make_calibrator(
            trt, calibration_batches(paths, card, batch), batch, calib_cache
        )
        config.int8_calibrator = calibrator

    log.warning(
        "building %s engine from %s (%s); this takes minutes on a Jetson",
        precision,
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
            f"TensorRT failed to build the {precision} engine from {plan.source_file} "
            "(see the TensorRT log above)"
        )
    seconds = time.perf_counter() - start

    target = plan_path(bundle, key)
    write_engine(
        target,
        memoryview(serialized).tobytes(),
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
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache_path, memoryview(config.get_timing_cache().serialize()).tobytes())
        atomic_write(
            cache_path.with_name(cache_path.name + ".json"),
            json.dumps(_timing_meta(device), sort_keys=True).encode(),
        )
    log.warning("wrote %s in %.0f s", target, seconds)
    return target


def key_summary(key: EngineKey) -> str:
    cc = ".".join(map(str, key.compute_capability))
    return (
        f"{key.precision} {key.quantization}, TensorRT {key.trt_version}, {key.gpu_name} (cc {cc}), "
        f"batch {'/'.join(map(str, key.profile))}, model {key.model_sha256[:12]}"
    )


# -- CLI ---------------------------------------------------------------------------------------
def cmd_engine_build(args: argparse.Namespace) -> int:
    path = build_engine(
        args.bundle,
        args.precision,
        workspace_mb=args.workspace,
        dla_core=args.dla,
        timing_cache=not args.no_timing_cache,
        int8_mode=args.int8_mode,
        force=args.force,
        verbose=args.verbose,
    )
    print(path)
    return 0


def add_engine_command(sub: Any) -> argparse.ArgumentParser:
    """`edgescreen engine build BUNDLE [--precision] [--workspace MB] [--dla N]`."""
    parser = sub.add_parser(
        "engine",
        help="build TensorRT engines on this device",
        description="build TensorRT engines on this device",
    )
    esub = parser.add_subparsers(dest="engine_command", required=True, metavar="ACTION")
    b = esub.add_parser(
        "build",
        help="build (or reuse) the engine for a bundle on this device",
        description="build (or reuse) the engine for a bundle on this device",
    )
    b.add_argument("bundle", type=Path)
    b.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16")
    b.add_argument(
        "--workspace", type=int, default=1024, metavar="MB", help="builder workspace (default 1024)"
    )
    b.add_argument(
        "--dla",
        type=int,
        default=None,
        metavar="N",
        help="build for DLA core N (Jetson Orin AGX/NX)",
    )
    b.add_argument(
        "--int8-mode",
        choices=("auto", "explicit", "implicit"),
        default="auto",
        help="auto: Q/DQ on TensorRT 9+, calibrator on 8.x",
    )
    b.add_argument(
        "--force", action="store_true", help="rebuild even when a matching engine exists"
    )
    b.add_argument("--no-timing-cache", action="store_true")
    b.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    b.set_defaults(func=cmd_engine_build)
    from .torch_trt import add_torch_trt_action

    add_torch_trt_action(esub)
    return parser
