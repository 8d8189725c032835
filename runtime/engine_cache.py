"""Where TensorRT engines live in a bundle, what they are keyed by, and which may be loaded.

A TensorRT plan only runs on the TensorRT version and GPU it was built with, and only
means something for the exact ONNX file and shape profile it was built from. Each plan
in `bundle/engines/` is a plain TensorRT file (trtexec and Polygraphy read it as is)
with a JSON sidecar holding its key. An engine whose key differs from the one this
device computes is never loaded: it is rebuilt where the builder is available, or
refused with a message that says which field differs.

Everything here is pure Python: the device is described by a `DeviceInfo` that the
TensorRT backend's `current_device()` fills in from TensorRT and pycuda, and that tests
make by hand.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifacts import choose_artifact
from .card import ModelCard, atomic_write, sha256_file
from .errors import BackendUnavailable, EdgescreenError

ENGINES_DIR = "engines"
PLAN_SUFFIX = ".engine"
SIDECAR_SUFFIX = ".json"
KEY_SCHEMA = 1


class StaleEngine(EdgescreenError):
    """An engine file exists but was built for another model, device, TensorRT or profile."""


@dataclass(frozen=True)
class DeviceInfo:
    """What an engine is tied to on the machine that runs it."""

    gpu_name: str  # e.g. "Orin", "NVIDIA H100 80GB HBM3"
    compute_capability: tuple[int, int]  # (8, 7) on Orin, (5, 3) on a Jetson Nano
    trt_version: str  # tensorrt.__version__, e.g. "10.3.0"
    # Orin Nano and AGX Orin share the name "Orin" and sm_87; the SM count tells them apart.
    sm_count: int = 0

    @property
    def sm(self) -> str:
        return f"sm{self.compute_capability[0]}{self.compute_capability[1]}"


@dataclass(frozen=True)
class EngineKey:
    """Every input that makes two engines interchangeable. Any change gives another digest."""

    model_sha256: str  # sha256 of the ONNX file the plan is built from (from the card)
    precision: str
    trt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    sm_count: int
    input_shape: tuple[int, int, int]  # C, H, W
    profile: tuple[int, int, int]  # batch min/opt/max the plan accepts
    dla_core: int | None = None
    # "explicit" (Q/DQ or float), "strongly-typed" (TRT 11+), "implicit" (TRT 8.x calibrator).
    quantization: str = "explicit"
    calibration_sha256: str | None = None  # implicit INT8: hash of the calibration manifest
    schema: int = KEY_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in ("compute_capability", "input_shape", "profile"):
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineKey:
        try:
            values = dict(data)
            for name in ("compute_capability", "input_shape", "profile"):
                values[name] = tuple(int(v) for v in values[name])
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in values.items() if k in known})
        except (KeyError, TypeError, ValueError) as exc:
            raise StaleEngine(f"engine key is malformed ({type(exc).__name__}: {exc})") from None

    def digest(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def file_name(self) -> str:
        """`fp16-sm87-trt10.3.0-<digest16>.engine`: readable, and unique per key."""
        sm = f"sm{self.compute_capability[0]}{self.compute_capability[1]}"
        dla = f"-dla{self.dla_core}" if self.dla_core is not None else ""
        return f"{self.precision}-{sm}{dla}-trt{self.trt_version}-{self.digest()[:16]}{PLAN_SUFFIX}"

    def differences(self, other: EngineKey) -> list[str]:
        """Human-readable list of fields where `other` (what a file holds) differs from self."""
        out = []
        mine, theirs = self.to_dict(), other.to_dict()
        labels = {
            "model_sha256": "model",
            "trt_version": "TensorRT",
            "gpu_name": "GPU",
            "compute_capability": "compute capability",
            "sm_count": "SM count",
            "input_shape": "input shape",
            "profile": "batch profile (min/opt/max)",
            "dla_core": "DLA core",
        }
        for name in mine:
            if mine[name] != theirs.get(name):
                want, got = mine[name], theirs.get(name)
                if name.endswith("sha256") and isinstance(want, str) and isinstance(got, str):
                    want, got = want[:12] + "…", got[:12] + "…"
                out.append(
                    f"{labels.get(name, name)}: engine has {got!r}, this device needs {want!r}"
                )
        return out


# -- which ONNX file an engine is built from --------------------------------------------------
def source_artifact(
    card: ModelCard, precision: str, quantization: str = "explicit"
) -> tuple[str, Any]:
    """(artifact key, Artifact) the builder parses for a precision (see choose_artifact)."""
    return choose_artifact(card, precision, backend="tensorrt", quantization=quantization)


def calibration_digest(card: ModelCard) -> str | None:
    if not card.calibration:
        return None
    return hashlib.sha256(json.dumps(card.calibration, sort_keys=True).encode()).hexdigest()


def make_key(
    card: ModelCard,
    precision: str,
    device: DeviceInfo,
    *,
    dla_core: int | None = None,
    quantization: str = "explicit",
) -> EngineKey:
    """The key an engine for this card, precision and device must carry.

    DLA has no dynamic dimensions, so a DLA engine's profile is pinned at the card's opt batch.
    """
    _, artifact = source_artifact(card, precision, quantization)
    lo, opt, hi = card.input.batch
    profile = (opt, opt, opt) if dla_core is not None else (lo, opt, hi)
    return EngineKey(
        model_sha256=artifact.sha256,
        precision=precision,
        trt_version=device.trt_version,
        gpu_name=device.gpu_name,
        compute_capability=tuple(device.compute_capability),  # type: ignore[arg-type]
        sm_count=device.sm_count,
        input_shape=tuple(card.input.shape),
        profile=profile,  # type: ignore[arg-type]
        dla_core=dla_core,
        quantization=quantization,
        calibration_sha256=calibration_digest(card) if quantization == "implicit" else None,
    )


# -- files ----------------------------------------------------------------------------------
def engines_dir(bundle: str | Path) -> Path:
    return Path(bundle) / ENGINES_DIR


def plan_path(bundle: str | Path, key: EngineKey) -> Path:
    return engines_dir(bundle) / key.file_name()


def sidecar_path(plan: str | Path) -> Path:
    plan = Path(plan)
    return plan.with_name(plan.name + SIDECAR_SUFFIX)


def write_engine(plan: Path, data: bytes, key: EngineKey, **extra: Any) -> Path:
    """Write the plan, then its sidecar, each atomically; the sidecar holds the plan's sha256."""
    plan.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(plan, bytes(data))
    sidecar = {
        "key": key.to_dict(),
        "digest": key.digest(),
        "plan_sha256": hashlib.sha256(bytes(data)).hexdigest(),
        **extra,
    }
    atomic_write(
        sidecar_path(plan), (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode()
    )
    return plan


def read_sidecar(plan: str | Path) -> dict[str, Any]:
    path = sidecar_path(plan)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StaleEngine(
            f"{plan}: no sidecar {path.name}, so nothing says which model, device and "
            "TensorRT it was built for; rebuild it with `edgescreen engine build`"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StaleEngine(f"{path}: sidecar is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("key"), dict):
        raise StaleEngine(f"{path}: sidecar has no engine key")
    return data


def check_engine(
    plan: str | Path, expected: EngineKey, *, verify_hash: bool = True
) -> dict[str, Any]:
    """Raise StaleEngine unless `plan` is intact and was built for exactly `expected`."""
    plan = Path(plan)
    if not plan.is_file():
        raise StaleEngine(f"{plan}: engine file not found")
    sidecar = read_sidecar(plan)
    found = EngineKey.from_dict(sidecar["key"])
    diffs = expected.differences(found)
    if diffs:
        raise StaleEngine(
            f"{plan.name} was built for another model or device and will not be loaded "
            f"({'; '.join(diffs)}); rebuild it on this device with "
            f"`edgescreen engine build BUNDLE --precision {expected.precision}`"
        )
    if verify_hash and sidecar.get("plan_sha256") != sha256_file(plan):
        raise StaleEngine(
            f"{plan.name}: file does not match the sha256 in its sidecar (truncated or "
            "modified); delete it and rebuild"
        )
    return sidecar


@dataclass
class Lookup:
    """Result of looking for an engine: the usable one, or why none is."""

    key: EngineKey
    path: Path | None
    refused: list[str]  # one line per engine file of this precision that was not usable

    @property
    def found(self) -> bool:
        return self.path is not None

    def explain(self) -> str:
        if self.path is not None:
            return f"engine {self.path.name} matches this device"
        if not self.refused:
            return f"no {self.key.precision} engine for this device yet"
        return f"no usable {self.key.precision} engine for this device: " + " | ".join(self.refused)


def find_engine(bundle: str | Path, key: EngineKey, *, verify_hash: bool = True) -> Lookup:
    """The engine for `key` if one is there and intact; else the reasons each candidate was refused."""
    plan = plan_path(bundle, key)
    refused = []
    if plan.is_file():
        try:
            check_engine(plan, key, verify_hash=verify_hash)
            return Lookup(key, plan, [])
        except StaleEngine as exc:
            refused.append(str(exc))
    folder = engines_dir(bundle)
    if folder.is_dir():
        for other in sorted(folder.glob(f"{key.precision}-*{PLAN_SUFFIX}")):
            if other == plan:
                continue
            try:
                check_engine(other, key, verify_hash=False)
            except StaleEngine as exc:
                refused.append(str(exc))
            else:  # same key under another name (renamed by hand): still usable
                return Lookup(key, other, refused)
    return Lookup(key, None, refused)


# -- TensorRT versions ---------------------------------------------------------------------
def trt_major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise BackendUnavailable(f"cannot read the TensorRT version {version!r}") from None


def default_quantization(trt_version: str, precision: str) -> str:
    """How this TensorRT builds a precision: see export/trt.py for the three paths."""
    major = trt_major(trt_version)
    if major >= 11:
        return "strongly-typed"
    if precision == "int8" and major < 9:
        return "implicit"
    return "explicit"


def quantizations(trt_version: str, precision: str) -> tuple[str, ...]:
    """Every way this TensorRT can have built a precision, its default first.

    `edgescreen engine build --int8-mode` may pick the non-default INT8 path; the runtime must
    still find that engine (its key records which path made it).
    """
    default = default_quantization(trt_version, precision)
    if precision == "int8" and trt_major(trt_version) < 11:
        return (default, "implicit" if default == "explicit" else "explicit")
    return (default,)
