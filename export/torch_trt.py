"""Torch-TensorRT path: compile a trained model with TensorRT from PyTorch (ir="dynamo").

An alternative to ONNX -> engine for hosts with torch (not the Jetson runtime, which
stays torch-free). FP16 by builder precision; INT8 by explicit quantization: NVIDIA
ModelOpt (`mtq.quantize` with INT8_DEFAULT_CFG: per-channel weights, per-tensor
activations) inserts and calibrates Q/DQ nodes on the card's calibration images, and
Torch-TensorRT turns them into TensorRT Q/DQ layers, the same scheme as model.int8.onnx.
The legacy torch_tensorrt.ptq DataLoaderCalibrator belonged to the TorchScript frontend
and is not used. The result is saved with torch_tensorrt.save (an ExportedProgram) and
checked against the bundle's golden FP32 outputs with the same comparison as the device
self-test. Everything heavy is imported inside the functions.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from edgescreen.runtime.card import load_card
from edgescreen.runtime.errors import BackendUnavailable, EdgescreenError
from edgescreen.runtime.golden import SelfTestReport, compare, load_golden


def _imports(int8: bool = False) -> tuple[Any, Any, Any]:
    try:
        import torch
        import torch_tensorrt
    except ImportError as exc:
        raise BackendUnavailable(
            f"the torch-tensorrt path needs {exc.name}: pip install torch-tensorrt "
            "(matching your torch and CUDA)"
        ) from None
    mtq = None
    if int8:
        try:
            import modelopt.torch.quantization as mtq
        except ImportError:
            raise BackendUnavailable(
                "INT8 with torch-tensorrt needs NVIDIA ModelOpt: pip install nvidia-modelopt"
            ) from None
    return torch, torch_tensorrt, mtq


def _accepts(fn: Any, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def compile_torch_trt(
    model: Any,
    bundle: str | Path,
    precision: str = "fp16",
    *,
    calibration: Iterable[np.ndarray] | None = None,
    out: str | Path | None = None,
    workspace_mb: int = 1024,
) -> Path:
    """Compile `model` (eval mode, FP32) for this GPU and save it; returns the saved file.

    `calibration`: float32 (B, C, H, W) batches preprocessed like screening (for INT8;
    export.trt.calibration_batches makes them from the card's manifest).
    """
    if precision not in ("fp16", "int8", "fp32"):
        raise EdgescreenError(f"unknown precision {precision!r}; use fp32, fp16 or int8")
    torch, torch_tensorrt, mtq = _imports(int8=precision == "int8")
    if not torch.cuda.is_available():
        raise BackendUnavailable("torch-tensorrt needs a CUDA GPU; none is visible to torch")
    bundle = Path(bundle)
    card = load_card(bundle)
    c, h, w = card.input.shape
    lo, opt, hi = card.input.batch
    model = model.eval().cuda()

    if precision == "int8":
        batches = list(calibration or [])
        if not batches:
            raise EdgescreenError(
                "INT8 needs calibration batches (the card's calibration images, preprocessed)"
            )

        def forward_loop(m: Any) -> None:
            with torch.no_grad():
                for batch in batches:
                    m(torch.from_numpy(np.ascontiguousarray(batch, np.float32)).cuda())

        mtq.quantize(model, mtq.INT8_DEFAULT_CFG, forward_loop=forward_loop)

    spec = torch_tensorrt.Input(
        min_shape=(lo, c, h, w),
        opt_shape=(opt, c, h, w),
        max_shape=(hi, c, h, w),
        dtype=torch.float32,
    )
    precisions = {
        "fp32": {torch.float32},
        "fp16": {torch.float16, torch.float32},
        "int8": {torch.int8, torch.float16, torch.float32},
    }[precision]
    options: dict[str, Any] = {
        "ir": "dynamo",
        "enabled_precisions": precisions,
        "min_block_size": 1,
        "workspace_size": workspace_mb << 20,
    }
    options["arg_inputs" if _accepts(torch_tensorrt.compile, "arg_inputs") else "inputs"] = [spec]
    if precision == "int8":
        from modelopt.torch.quantization.utils import export_torch_mode

        with export_torch_mode(), torch.no_grad():  # lets torch.export trace ModelOpt's quantizers
            compiled = torch_tensorrt.compile(model, **options)
    else:
        with torch.no_grad():
            compiled = torch_tensorrt.compile(model, **options)

    target = Path(out) if out else bundle / "engines" / f"torch_trt-{precision}.ep"
    target.parent.mkdir(parents=True, exist_ok=True)
    example = [torch.randn(opt, c, h, w, device="cuda")]
    key = "arg_inputs" if _accepts(torch_tensorrt.save, "arg_inputs") else "inputs"
    torch_tensorrt.save(compiled, str(target), **{key: example})
    return target


def load_torch_trt(path: str | Path) -> Any:
    """The saved program as a callable module (needs torch_tensorrt imported for its runtime ops)."""
    torch, _torch_tensorrt, _ = _imports()
    return torch.export.load(str(path)).module()


def run_torch_trt(
    module: Any, batch: np.ndarray, output_names: list[str], *, pad_to: int | None = None
) -> dict[str, np.ndarray]:
    """Run one float32 batch; outputs named in card order. Pads to `pad_to` rows if given."""
    import torch

    n = len(batch)
    x = np.ascontiguousarray(batch, np.float32)
    if pad_to and n < pad_to:
        x = np.concatenate([x, np.zeros((pad_to - n, *x.shape[1:]), np.float32)])
    with torch.no_grad():
        out = module(torch.from_numpy(x).cuda())
    if isinstance(out, dict):
        values = [out[k] for k in output_names]
    elif isinstance(out, (tuple, list)):
        values = list(out)
    else:
        values = [out]
    if len(values) != len(output_names):
        raise EdgescreenError(
            f"the module returned {len(values)} outputs, the card names {output_names}"
        )
    return {k: v.float().cpu().numpy()[:n] for k, v in zip(output_names, values, strict=True)}


def verify_torch_trt(module_or_path: Any, bundle: str | Path, precision: str) -> SelfTestReport:
    """Judge a compiled (or saved) module against the golden FP32 outputs, like `selftest`."""
    bundle = Path(bundle)
    card = load_card(bundle)
    golden = load_golden(bundle)
    module = (
        load_torch_trt(module_or_path) if isinstance(module_or_path, str | Path) else module_or_path
    )
    names = [o.name for o in card.outputs]
    opt = card.input.batch[1]
    parts = [
        run_torch_trt(module, golden.inputs[i : i + opt], names, pad_to=opt)
        for i in range(0, len(golden.inputs), opt)
    ]
    got = {k: np.concatenate([p[k] for p in parts]) for k in names}
    reasons, errors, agreement, flips, tol = compare(card, golden, got, precision)
    return SelfTestReport(
        bundle=str(bundle),
        precision=precision,
        backend="torch-tensorrt",
        device="cuda:0",
        ready=not reasons,
        reasons=reasons,
        count=len(golden.inputs),
        errors=errors,
        decision_agreement=agreement,
        flips=flips,
        tolerances=tol,
    )
