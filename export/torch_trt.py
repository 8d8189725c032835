"""Torch-TensorRT path: compile a trained model with TensorRT from PyTorch (ir="dynamo").

An alternative to ONNX -> engine for hosts with torch (not the Jetson runtime, which
stays torch-free). INT8 is explicit quantization: NVIDIA ModelOpt (`mtq.quantize` with
INT8_DEFAULT_CFG: per-channel weights, per-tensor activations) inserts and calibrates Q/DQ
nodes on the card's calibration images, and Torch-TensorRT turns them into TensorRT Q/DQ
layers, the same scheme as model.int8.onnx. The legacy torch_tensorrt.ptq calibrators
belonged to the TorchScript frontend and are not used.

How FP16 is asked for depends on the torch-tensorrt release (read from the 2.9-2.14
sources, see docs/tensorrt-api.md): up to 2.10 `enabled_precisions`; in 2.11/2.12
`use_explicit_typing` defaults to True and refuses reduced `enabled_precisions`, so it is
turned off; from 2.13 (TensorRT 11, strongly typed) `enabled_precisions` no longer reaches
the dynamo compiler at all and FP16 comes from `enable_autocast`. `compile_options` picks
by the compiler's own signature, so a silent FP32 engine labelled FP16 cannot happen.

The result is saved with torch_tensorrt.save (an ExportedProgram) and checked against the
bundle's golden FP32 outputs with the same comparison as the device self-test.
Everything heavy is imported inside the functions.
"""

from __future__ import annotations

import argparse
import inspect
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from edgescreen.runtime.card import load_card
from edgescreen.runtime.errors import BackendUnavailable, EdgescreenError
from edgescreen.runtime.golden import SelfTestReport, load_golden, run_selftest


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


def _parameters(fn: Any) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return frozenset()


def _accepts(fn: Any, name: str) -> bool:
    return name in _parameters(fn)


def compile_options(precision: str, compiler_params: frozenset[str], torch: Any) -> dict[str, Any]:
    """The precision options for this torch-tensorrt, from `torch_tensorrt.dynamo.compile`'s parameters.

    `torch` is the module (or anything with float32/float16/int8 attributes), so the choice
    is tested on a CPU with the parameter sets of real releases.
    """
    if precision not in ("fp32", "fp16", "int8"):
        raise EdgescreenError(f"unknown precision {precision!r}; use fp32, fp16 or int8")
    if "enabled_precisions" not in compiler_params:
        # 2.13+: strongly typed. Q/DQ nodes carry INT8; FP16 needs autocast, or we'd get FP32.
        if precision != "fp16":
            return {}
        if "enable_autocast" not in compiler_params:
            raise BackendUnavailable(
                "this torch-tensorrt accepts neither enabled_precisions nor enable_autocast; "
                "cannot ask it for FP16"
            )
        return {"enable_autocast": True, "autocast_low_precision_type": torch.float16}
    options: dict[str, Any] = {
        "enabled_precisions": {
            "fp32": {torch.float32},
            "fp16": {torch.float16, torch.float32},
            # FP16 too, for the layers ModelOpt leaves unquantized (as the ONNX INT8 engine).
            "int8": {torch.int8, torch.float16, torch.float32},
        }[precision]
    }
    if "use_explicit_typing" in compiler_params:
        options["use_explicit_typing"] = False  # 2.11/2.12 default True refuses the set above
    return options


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
    options: dict[str, Any] = {
        "ir": "dynamo",
        "min_block_size": 1,
        "workspace_size": workspace_mb << 20,
        **compile_options(precision, _parameters(torch_tensorrt.dynamo.compile), torch),
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
    params = _parameters(torch_tensorrt.save)
    options = save_options(params, torch, spec, card.input.batch, (c, h, w))
    torch_tensorrt.save(compiled, str(target), **options)
    return target


def save_options(
    save_params: frozenset[str], torch: Any, spec: Any, batch: tuple[int, int, int], sample: tuple
) -> dict[str, Any]:
    """How to keep the dynamic batch through torch_tensorrt.save's re-trace.

    Given one concrete tensor, save re-traces with that shape and the saved program only
    takes batch `opt`. Releases whose save takes `dynamic_shapes` get an example at opt plus
    a batch Dim over the card's profile (torch.export's own form); older ones get the
    min/opt/max Input spec the program was compiled with.
    """
    lo, opt, hi = batch
    key = "arg_inputs" if "arg_inputs" in save_params else "inputs"
    if "dynamic_shapes" in save_params:
        example = torch.randn(opt, *sample, device="cuda")
        dim = torch.export.Dim("batch", min=lo, max=hi)
        return {key: [example], "dynamic_shapes": {"x": {0: dim}}}  # ExportView.forward(x)
    return {key: [spec]}


def load_torch_trt(path: str | Path) -> Any:
    """The saved program as a callable module (needs torch_tensorrt imported for its runtime ops)."""
    _torch, torch_tensorrt, _ = _imports()
    # torch_tensorrt.load (not torch.export.load): it registers the TensorRT engine op first
    # where torch-tensorrt runs without its C++ runtime.
    return torch_tensorrt.load(str(path)).module()


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


class TorchTrtRunner:
    """A compiled Torch-TensorRT module behind the runtime's backend interface, so the golden
    self-test judges it exactly as it judges an ONNX Runtime or TensorRT backend."""

    name = "torch-tensorrt"
    device = "cuda:0"

    def __init__(self, module: Any, card: Any, artifact: str) -> None:
        self.module, self.artifact = module, artifact
        self.output_names = [o.name for o in card.outputs]
        # The saved program takes the card's whole batch profile: run chunks as they come
        # (padding only below the minimum), so a program frozen at one batch size fails here.
        self.min_batch, _, self.max_batch = card.input.batch

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        step, pad = self.max_batch, self.min_batch
        parts = [
            run_torch_trt(self.module, batch[i : i + step], self.output_names, pad_to=pad)
            for i in range(0, len(batch), step)
        ]
        return {k: np.concatenate([p[k] for p in parts]) for k in self.output_names}

    def close(self) -> None:
        self.module = None


def verify_torch_trt(module_or_path: Any, bundle: str | Path, precision: str) -> SelfTestReport:
    """Judge a compiled (or saved) module against the golden FP32 outputs, like `selftest`."""
    bundle = Path(bundle)
    card = load_card(bundle)
    module = (
        load_torch_trt(module_or_path) if isinstance(module_or_path, str | Path) else module_or_path
    )
    runner = TorchTrtRunner(
        module, card, str(module_or_path) if isinstance(module_or_path, str | Path) else "<module>"
    )
    report = run_selftest(runner, card, load_golden(bundle), precision)
    report.bundle = str(bundle)
    return report


def compile_checkpoint(
    checkpoint: str | Path,
    bundle: str | Path,
    precision: str = "fp16",
    *,
    out: str | Path | None = None,
    workspace_mb: int = 1024,
    calibration_batch: int = 8,
) -> tuple[Path, SelfTestReport]:
    """A trained checkpoint -> saved Torch-TensorRT program, judged against the bundle's golden set.

    The module compiled is the one the bundle's ONNX was traced from (export_view, SAME
    padding frozen at the card's size), so its outputs come in the card's order. INT8
    calibrates on the card's calibration manifest, preprocessed by the runtime.
    """
    from edgescreen.train.checkpoint import load_trained

    from .graph_crop import export_view
    from .trt import calibration_batch_size, calibration_batches, calibration_images

    _imports(int8=precision == "int8")  # fail on a missing package before loading anything
    bundle = Path(bundle)
    card = load_card(bundle)
    trained = load_trained(checkpoint)
    if list(trained.card.labels) != list(card.labels) or tuple(trained.card.input.shape) != tuple(
        card.input.shape
    ):
        raise EdgescreenError(
            f"{checkpoint}: this checkpoint's labels/input ({trained.card.labels}, "
            f"{trained.card.input.shape}) differ from the bundle's ({card.labels}, {card.input.shape})"
        )
    module = export_view(trained.model, tuple(card.input.shape)).eval()
    calibration = None
    if precision == "int8":
        paths = calibration_images(bundle, card)
        size = calibration_batch_size(len(paths), calibration_batch)
        calibration = calibration_batches(paths, card, size)
    saved = compile_torch_trt(
        module, bundle, precision, calibration=calibration, out=out, workspace_mb=workspace_mb
    )
    return saved, verify_torch_trt(saved, bundle, precision)


def cmd_torch_trt(args: argparse.Namespace) -> int:
    saved, report = compile_checkpoint(
        args.checkpoint, args.bundle, args.precision, out=args.out, workspace_mb=args.workspace
    )
    if args.json:
        print(json.dumps({"saved": str(saved), **report.to_dict()}, indent=2))
    else:
        print(saved)
        print(report.summary())
    return 0 if report.ready else 1


def add_torch_trt_action(esub: Any) -> argparse.ArgumentParser:
    """`edgescreen engine torch-trt BUNDLE --checkpoint CKPT [--precision fp16|int8]`."""
    p = esub.add_parser(
        "torch-trt",
        help="compile a checkpoint with Torch-TensorRT (GPU host with torch) and self-test it",
        description="compile a trained checkpoint with Torch-TensorRT (dynamo), save it in "
        "BUNDLE/engines and judge it against the bundle's golden outputs; exit 1 if not ready",
    )
    p.add_argument("bundle", type=Path)
    p.add_argument("--checkpoint", type=Path, required=True, help="model.pt (or its folder)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16")
    p.add_argument("--out", type=Path, default=None, help="default BUNDLE/engines/torch_trt-P.ep")
    p.add_argument("--workspace", type=int, default=1024, metavar="MB")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_torch_trt)
    return p
