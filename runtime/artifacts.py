"""The bundle's files as one table, and the one function that picks the file a backend runs.

Export writes the rows of ARTIFACTS (and nothing else); the card lists the ones it wrote
with their sha256. Every reader (the backends, the engine builder, the golden self-test,
the benchmarks) chooses through `choose_artifact`, so "which file does INT8 on this
device run" has one answer.

INT8 ships in two forms of the same calibrated model: the symmetric Q/DQ file TensorRT
consumes (target `tensorrt`; ONNX Runtime's CUDA provider runs it too) and a CPU form
with unsigned activations that x86 ONNX Runtime runs fast (target `cpu`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .card import Artifact, ModelCard
from .errors import CardError

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class ArtifactKind:
    key: str  # the card's artifacts key
    file: str  # file name inside the bundle
    format: str  # onnx | torchscript
    precision: str
    target: str  # any | tensorrt | cpu
    form: str  # the name results and benchmark tables use


ARTIFACTS: tuple[ArtifactKind, ...] = (
    ArtifactKind("onnx-fp32", "model.onnx", "onnx", "fp32", "any", "fp32"),
    ArtifactKind("onnx-fp16", "model.fp16.onnx", "onnx", "fp16", "any", "fp16"),
    ArtifactKind("onnx-int8", "model.int8.onnx", "onnx", "int8", "tensorrt", "int8"),
    ArtifactKind("onnx-int8-cpu", "model.int8-cpu.onnx", "onnx", "int8", "cpu", "int8-cpu"),
    ArtifactKind("torchscript", "model.ts", "torchscript", "fp32", "any", "torchscript"),
)
KINDS = {k.key: k for k in ARTIFACTS}


def form_of(artifact: Artifact) -> str:
    """Display name of a card entry: its precision, or `int8-cpu` for the CPU INT8 form."""
    for k in ARTIFACTS:
        if (k.format, k.precision, k.target) == (
            artifact.format,
            artifact.precision,
            artifact.target,
        ):
            return k.form
    return artifact.precision


def _preference(backend: str, device: str) -> tuple[str, ...]:
    """Targets in the order a backend on a device prefers them."""
    if backend == "tensorrt" or device != "cpu":
        return ("tensorrt", "any", "cpu")
    return ("cpu", "any", "tensorrt")


def choose_artifact(
    card: ModelCard,
    precision: str,
    *,
    backend: str,
    device: str = "cpu",
    target: str | None = None,
    quantization: str = "explicit",
) -> tuple[str, Artifact]:
    """(key, Artifact) of the ONNX file `backend` on `device` runs (or builds from) for `precision`.

    - onnxruntime: the file of that precision; INT8 in the CPU form on a CPU, the TensorRT
      form on CUDA. `target` forces one form (the drift benchmark judges both).
    - tensorrt (the engine builder's source): FP32 and FP16 engines come from the FP32
      file (FP16 is a builder choice); INT8 from the TensorRT-form Q/DQ file, except for
      the legacy implicit path (TensorRT 8.x calibrator), which starts from FP32.
    """
    if precision not in PRECISIONS:
        raise CardError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    onnx = {k: a for k, a in card.artifacts.items() if a.format == "onnx"}
    if backend == "tensorrt":
        builds_from_fp32 = precision != "int8" or quantization == "implicit"
        wanted = "fp32" if builds_from_fp32 else "int8"
        order = ("any", "tensorrt", "cpu") if builds_from_fp32 else ("tensorrt", "any")
    else:
        wanted = precision
        order = _preference(backend, device)
    if target is not None:
        order = (target,)
    candidates = {k: a for k, a in onnx.items() if a.precision == wanted and a.target in order}
    if not candidates:
        have = sorted({form_of(a) for a in onnx.values()})
        what = f"{wanted} ONNX model" + (f" of target {target}" if target else "")
        if backend == "tensorrt" and wanted == "int8":
            what = "INT8 Q/DQ ONNX for TensorRT (precision int8, target tensorrt or any)"
        raise CardError(
            f"the bundle has no {what} (it has: {', '.join(have) or 'none'}); re-export it",
            field="artifacts",
        )
    return min(candidates.items(), key=lambda kv: order.index(kv[1].target))
