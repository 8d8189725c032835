"""`config.pbtxt` for each model of the repository, as protobuf text Triton parses.

Configs are built as plain dicts and written by `to_pbtxt`; tests parse every file with
Triton's own `ModelConfig` message (tritonclient), so a field name or type Triton does not
know fails there, not in a hub's deployment. Tensor names, types and dims come from the
ONNX file itself (read with ONNX Runtime), never from a guess, and the batch limit from
the card's TensorRT batch profile.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..card import ModelCard

# ONNX Runtime's type strings -> Triton's data types.
ORT_TO_TRITON = {
    "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16",
    "tensor(double)": "TYPE_FP64",
    "tensor(int64)": "TYPE_INT64",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int8)": "TYPE_INT8",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(bool)": "TYPE_BOOL",
}
# The screening model's tensors: a client sends encoded image bytes (and, optionally, the
# name results carry) and gets the JSON of one ScreeningResult per image.
IMAGE_INPUT, NAME_INPUT, RESULT_OUTPUT = "IMAGE", "NAME", "RESULT"
QUEUE_DELAY_US = 5000  # how long the dynamic batcher waits to fill a batch


class Sym(str):
    """An enum value (TYPE_FP32, KIND_CPU): written bare, not quoted."""


class Map(dict):
    """A protobuf map field: written as repeated `{ key: ... value: ... }` entries."""


@dataclass(frozen=True)
class TensorSig:
    name: str
    data_type: str  # TYPE_*
    dims: tuple[int, ...]  # without the batch dimension; -1 where the file leaves it free


def onnx_signature(path: str | Path) -> tuple[list[TensorSig], list[TensorSig]]:
    """Inputs and outputs of an ONNX file as Triton sees them (batch dimension dropped)."""
    import onnxruntime as ort  # the runtime extra; only the repository writer needs it

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3  # only the signature is wanted: no optimiser chatter
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def sig(arg: Any) -> TensorSig:
        if arg.type not in ORT_TO_TRITON:
            raise ValueError(
                f"{path}: tensor {arg.name!r} has type {arg.type}, not one Triton maps"
            )
        dims = tuple(d if isinstance(d, int) and d > 0 else -1 for d in arg.shape[1:])
        return TensorSig(arg.name, ORT_TO_TRITON[arg.type], dims)

    return [sig(a) for a in session.get_inputs()], [sig(a) for a in session.get_outputs()]


def _tensors(sigs: list[TensorSig]) -> list[dict[str, Any]]:
    out = []
    for s in sigs:
        tensor: dict[str, Any] = {"name": s.name, "data_type": Sym(s.data_type)}
        if s.dims:
            tensor["dims"] = list(s.dims)
        else:  # shape (N,): Triton wants one dim per sample, reshaped away
            tensor.update(dims=[1], reshape={"shape": []})
        out.append(tensor)
    return out


def _dynamic_batching(card: ModelCard) -> dict[str, Any]:
    _, opt, hi = card.input.batch
    preferred = sorted({opt, hi})
    return {"preferred_batch_size": preferred, "max_queue_delay_microseconds": QUEUE_DELAY_US}


def network_config(
    name: str,
    card: ModelCard,
    inputs: list[TensorSig],
    outputs: list[TensorSig],
    *,
    backend: str,
    warmup_files: list[str] = (),  # type: ignore[assignment]
    cc_model_filenames: dict[str, str] | None = None,
    default_model_filename: str | None = None,
) -> dict[str, Any]:
    """Config of the bare network for Triton's `onnxruntime` or `tensorrt` backend."""
    if backend not in ("onnxruntime", "tensorrt"):
        raise ValueError(f"unknown Triton backend {backend!r}")
    config: dict[str, Any] = {
        "name": name,
        "platform": "onnxruntime_onnx" if backend == "onnxruntime" else "tensorrt_plan",
        "backend": backend,
        "max_batch_size": card.input.batch[2],
        "input": _tensors(inputs),
        "output": _tensors(outputs),
        "dynamic_batching": _dynamic_batching(card),
        # Plans run only on a GPU; ONNX Runtime takes a GPU where the container has one.
        "instance_group": [
            {"count": 1, "kind": Sym("KIND_GPU" if backend == "tensorrt" else "KIND_AUTO")}
        ],
    }
    if default_model_filename:
        config["default_model_filename"] = default_model_filename
    if cc_model_filenames:
        config["cc_model_filenames"] = Map(cc_model_filenames)
    if warmup_files:
        (sig,) = inputs
        config["model_warmup"] = [
            {
                "name": f"golden-{i}",
                "batch_size": 1,
                "inputs": Map(
                    {
                        sig.name: {
                            "data_type": Sym(sig.data_type),
                            "dims": list(sig.dims),
                            "input_data_file": file,
                        }
                    }
                ),
            }
            for i, file in enumerate(warmup_files)
        ]
    return config


def screen_config(
    name: str,
    card: ModelCard,
    *,
    parameters: dict[str, str],
    dynamic_batching: bool = True,
    instances: int = 1,
) -> dict[str, Any]:
    """Config of the Python-backend model that screens encoded images end to end."""
    string = Sym("TYPE_STRING")
    config: dict[str, Any] = {
        "name": name,
        "backend": "python",
        "max_batch_size": card.input.batch[2],
        "input": [
            {"name": IMAGE_INPUT, "data_type": string, "dims": [1]},
            {"name": NAME_INPUT, "data_type": string, "dims": [1], "optional": True},
        ],
        "output": [{"name": RESULT_OUTPUT, "data_type": string, "dims": [1]}],
        "instance_group": [{"count": instances, "kind": Sym("KIND_CPU")}],
        "parameters": Map({k: {"string_value": v} for k, v in parameters.items()}),
    }
    if dynamic_batching:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": QUEUE_DELAY_US}
    return config


# -- protobuf text ----------------------------------------------------------------------------
def to_pbtxt(message: dict[str, Any]) -> str:
    return "".join(_fields(message, 0))


def _fields(message: dict[str, Any], depth: int):
    pad = "  " * depth
    for key, value in message.items():
        if isinstance(value, Map):
            for k, v in value.items():
                if isinstance(v, dict):
                    yield f"{pad}{key} {{\n{pad}  key: {_scalar(k)}\n{pad}  value {{\n"
                    yield from _fields(v, depth + 2)
                    yield f"{pad}  }}\n{pad}}}\n"
                else:
                    yield f"{pad}{key} {{ key: {_scalar(k)} value: {_scalar(v)} }}\n"
        elif isinstance(value, dict):
            yield f"{pad}{key} {{\n"
            yield from _fields(value, depth + 1)
            yield f"{pad}}}\n"
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                yield f"{pad}{key} {{\n"
                yield from _fields(item, depth + 1)
                yield f"{pad}}}\n"
        elif isinstance(value, list):
            yield f"{pad}{key}: [{', '.join(_scalar(v) for v in value)}]\n"
        else:
            yield f"{pad}{key}: {_scalar(value)}\n"


def _scalar(value: Any) -> str:
    if isinstance(value, Sym):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)  # a valid protobuf text string too
