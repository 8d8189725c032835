"""Lay out a Triton model repository from a bundle.

    REPO/
      edgescreen/                 Python backend: bytes in, ScreeningResult JSON out
        config.pbtxt
        1/model.py                imports edgescreen.runtime.triton.python_model
        1/bundle/                 a verified copy of the bundle (card, ONNX files, golden set)
      network-onnx-fp32/          the bare network for Triton's onnxruntime backend
        config.pbtxt              (one model per ONNX form in the card: fp32, fp16, int8,
        1/model.onnx               int8-cpu), warmed up with the bundle's golden inputs
        warmup/golden-0 ...
      network-trt-fp16/           only where this bundle holds engines built on a device:
        config.pbtxt              cc_model_filenames maps each compute capability to its plan
        1/model-sm87.plan

The `edgescreen` model is what a client calls. By default it runs the network in its own
process through the runtime's backends (the same code `edgescreen screen` runs, and the
only way on a server without Triton's onnxruntime/tensorrt backends, such as the one in
nvidia-pytriton); `network_model=...` makes it call one of the network models above
through Triton's business-logic scripting instead (NVIDIA's containers).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..artifacts import ARTIFACTS
from ..card import CARD_FILE, ModelCard, load_card, verify_artifacts
from ..engine_cache import PLAN_SUFFIX, engines_dir, read_sidecar
from ..errors import CardError
from ..golden import load_golden
from .config import network_config, onnx_signature, screen_config, to_pbtxt

SCREEN_MODEL = "edgescreen"
MODEL_VERSION = "1"
WARMUP_IMAGES = 2  # golden inputs replayed at load: enough to page the weights in
PYTHON_MODEL_FILE = (
    '"""Triton Python-backend entry point: the model lives in the edgescreen runtime."""\n'
    "from edgescreen.runtime.triton.python_model import TritonPythonModel  # noqa: F401\n"
)


@dataclass
class Repository:
    path: Path
    models: dict[str, str] = field(default_factory=dict)  # name -> what it is
    parameters: dict[str, str] = field(default_factory=dict)  # the edgescreen model's

    def to_dict(self) -> dict:
        return {"path": str(self.path), "models": self.models}


def network_name(form: str, backend: str = "onnx") -> str:
    return f"network-{backend}-{form}"


def write_repository(
    bundle: str | Path,
    out: str | Path,
    *,
    precision: str = "fp32",
    backend: str = "auto",
    network_model: str | None = None,
    dynamic_batching: bool = True,
    instances: int = 1,
    workers: int = 2,
    threads: int | None = None,
    max_image_mb: float = 64.0,
) -> Repository:
    """Write a repository Triton loads as is. `out` must be empty or absent."""
    bundle = Path(bundle)
    card = load_card(bundle)
    verify_artifacts(bundle, card)  # never publish a bundle whose files changed after export
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: not empty; pass a new directory for the repository")
    out.mkdir(parents=True, exist_ok=True)
    repo = Repository(out)
    warmup = _golden_inputs(bundle)
    for kind in ARTIFACTS:
        artifact = card.artifacts.get(kind.key)
        if artifact is None or kind.format != "onnx":
            continue
        name = network_name(kind.form)
        _write_onnx_model(out / name, name, card, bundle / artifact.file, warmup)
        repo.models[name] = f"{kind.file} on Triton's onnxruntime backend"
    for precision_, plans in _engines_by_precision(bundle).items():
        name = network_name(precision_, "trt")
        _write_trt_model(out / name, name, card, bundle, plans)
        repo.models[name] = f"TensorRT plans for {', '.join(sorted(plans))} on the tensorrt backend"
    if network_model is not None and network_model not in repo.models:
        raise CardError(
            f"network model {network_model!r} is not in the repository "
            f"(it has: {', '.join(repo.models)})"
        )
    parameters = {
        "bundle": "bundle",  # relative to the model version folder
        "precision": precision,
        "backend": backend,
        "network_model": network_model or "",
        "workers": str(workers),
        "threads": "" if threads is None else str(threads),
        "max_image_bytes": str(int(max_image_mb * 1024 * 1024)),
    }
    repo.parameters = parameters
    write_screen_model(
        out / SCREEN_MODEL,
        bundle,
        card,
        parameters=parameters,
        dynamic_batching=dynamic_batching,
        instances=instances,
    )
    how = f"through {network_model}" if network_model else "in process"
    repo.models[SCREEN_MODEL] = (
        f"decode, quality gate, preprocess, {precision} network {how}, decide"
    )
    (out / "edgescreen-repository.json").write_text(
        json.dumps({"bundle": str(bundle.resolve()), "card": card.name, **repo.to_dict()}, indent=2)
        + "\n",
        encoding="utf-8",
    )
    return repo


def write_screen_model(
    folder: Path,
    bundle: Path,
    card: ModelCard,
    *,
    parameters: dict[str, str],
    dynamic_batching: bool = True,
    instances: int = 1,
) -> None:
    """The `edgescreen` Python-backend model (named after its folder) with its bundle copy."""
    (folder / MODEL_VERSION).mkdir(parents=True)
    config = screen_config(
        folder.name,
        card,
        parameters=parameters,
        dynamic_batching=dynamic_batching,
        instances=instances,
    )
    (folder / "config.pbtxt").write_text(to_pbtxt(config), encoding="utf-8")
    (folder / MODEL_VERSION / "model.py").write_text(PYTHON_MODEL_FILE, encoding="utf-8")
    _copy_bundle(bundle, card, folder / MODEL_VERSION / "bundle")


def _golden_inputs(bundle: Path) -> np.ndarray | None:
    try:
        return load_golden(bundle).inputs[:WARMUP_IMAGES]
    except CardError:
        return None  # a bundle without a golden set loads without warm-up


def _write_onnx_model(
    folder: Path, name: str, card: ModelCard, source: Path, warmup: np.ndarray | None
) -> None:
    inputs, outputs = onnx_signature(source)
    (folder / MODEL_VERSION).mkdir(parents=True)
    shutil.copyfile(source, folder / MODEL_VERSION / "model.onnx")
    files = _write_warmup(folder, inputs[0].data_type, warmup) if len(inputs) == 1 else []
    config = network_config(name, card, inputs, outputs, backend="onnxruntime", warmup_files=files)
    (folder / "config.pbtxt").write_text(to_pbtxt(config), encoding="utf-8")


def _write_warmup(folder: Path, data_type: str, warmup: np.ndarray | None) -> list[str]:
    if warmup is None:
        return []
    dtype = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16}.get(data_type)
    if dtype is None:
        return []
    (folder / "warmup").mkdir()
    files = []
    for i, image in enumerate(warmup):
        file = f"golden-{i}"
        (folder / "warmup" / file).write_bytes(np.ascontiguousarray(image, dtype=dtype).tobytes())
        files.append(file)
    return files


def _engines_by_precision(bundle: Path) -> dict[str, dict[str, Path]]:
    """precision -> {"8.7": plan} for the GPU (not DLA) engines built into this bundle."""
    found: dict[str, dict[str, Path]] = {}
    folder = engines_dir(bundle)
    if not folder.is_dir():
        return found
    for plan in sorted(folder.glob(f"*{PLAN_SUFFIX}")):
        try:
            key = read_sidecar(plan)["key"]
        except Exception:  # noqa: BLE001 - a plan without a readable sidecar is not published
            continue
        if key.get("dla_core") is not None:
            continue  # Triton's tensorrt backend schedules GPU instances; DLA plans stay out
        major, minor = key["compute_capability"]
        found.setdefault(key["precision"], {}).setdefault(f"{major}.{minor}", plan)
    return found


def _write_trt_model(
    folder: Path, name: str, card: ModelCard, bundle: Path, plans: dict[str, Path]
) -> None:
    fp32 = card.artifacts.get("onnx-fp32")
    if fp32 is None:
        raise CardError("the bundle has engines but no FP32 ONNX to read tensor types from")
    inputs, outputs = onnx_signature(bundle / fp32.file)  # plans keep the FP32 file's I/O
    (folder / MODEL_VERSION).mkdir(parents=True)
    files = {}
    for cc, plan in plans.items():
        file = f"model-sm{cc.replace('.', '')}.plan"
        shutil.copyfile(plan, folder / MODEL_VERSION / file)
        files[cc] = file
    config = network_config(
        name,
        card,
        inputs,
        outputs,
        backend="tensorrt",
        cc_model_filenames=files,
        default_model_filename=next(iter(files.values())),
    )
    (folder / "config.pbtxt").write_text(to_pbtxt(config), encoding="utf-8")


def _copy_bundle(bundle: Path, card: ModelCard, target: Path) -> None:
    """The card, its ONNX files and the golden set (TorchScript and engines are not needed)."""
    target.mkdir(parents=True)
    shutil.copyfile(bundle / CARD_FILE, target / CARD_FILE)
    for artifact in card.artifacts.values():
        if artifact.format == "onnx":
            shutil.copyfile(bundle / artifact.file, target / artifact.file)
    golden = bundle / "golden"
    if golden.is_dir():
        shutil.copytree(golden, target / "golden")
