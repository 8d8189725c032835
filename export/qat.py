"""Quantization-aware fine-tuning (`edgescreen export --qat EPOCHS`) with NVIDIA Model Optimizer.

`modelopt.torch.quantization` with its INT8 config (per-channel symmetric weights,
per-tensor symmetric activations: TensorRT's scheme) inserts fake quantizers at every
convolution's input and weights and fine-tunes the weights through them. The loss is
self-distillation: the quantized student matches the FP32 model's own outputs (grade value,
logits), normalised by their spread, so no labels, task objective or training config is
needed, and what is optimised is exactly what the drift gate measures: agreement with FP32.
BatchNorm statistics stay frozen. Linear layers (the heads after global pooling) keep their
quantizers off, as PTQ keeps the heads float.

The student trains on the grid the exported Q/DQ files will use, so nothing is re-calibrated
afterwards (re-calibrating after fine-tuning undid what the fine-tuning learnt: on the demo
model its median |Δ referral p| came out worse than plain PTQ's search):

- activations: each quantized conv input's amax is the PTQ calibration's range for that
  tensor (`conv_ranges`: the cache quantize.py reads), so the exported scale equals the
  trained one (ORT's symmetric INT8 scale is absmax/127, ModelOpt's amax/127);
- weights: each conv's per-channel amax is kept at max |w| of the channel after every
  step, which is what quantize.py computes from the exported weights;
- the convs the TensorRT form keeps float (its input convs) train float too.

The fine-tuned weights (quantizers removed) are exported to a QAT source ONNX with the same
tensor names as the FP32 export, and both Q/DQ forms are made from it by quantize.py with
those same cached ranges. The shipped model.onnx stays the original FP32 model: drift is
measured against it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgescreen.runtime.errors import EdgescreenError

INSTALL_HINT = (
    "--qat needs NVIDIA Model Optimizer: pip install 'edgescreen[export]' "
    "(or pip install nvidia-modelopt)"
)


def require_modelopt():
    try:
        import modelopt.torch.quantization as mtq
    except ImportError as exc:
        raise EdgescreenError(f"{INSTALL_HINT} ({exc})") from None
    return mtq


@dataclass(frozen=True)
class ConvRange:
    """One Conv of the FP32 ONNX, in graph order: its weight shape and its input's range."""

    node: str
    weight_shape: tuple[int, ...]
    amax: float | None  # None: the cache has no range for its input


def conv_ranges(fp32_onnx: str | Path, cache_file: str | Path) -> list[ConvRange]:
    """The calibrated input range of every Conv in `fp32_onnx` (ORT's TensorsData cache)."""
    import onnx
    from onnxruntime.quantization.calibrate import load_tensors_data

    graph = onnx.load(str(fp32_onnx)).graph
    shapes = {i.name: tuple(i.dims) for i in graph.initializer}
    data = load_tensors_data(cache_file).data
    out = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        rng = data.get(node.input[0])
        amax = (
            float(np.abs(np.concatenate([np.ravel(v) for v in rng.range_value])).max())
            if rng is not None
            else None
        )
        out.append(ConvRange(node.name, shapes.get(node.input[1], ()), amax))
    return out


def _conv_order(model, x1: np.ndarray) -> list:
    """The Conv2d modules in the order one forward pass runs them."""
    import torch

    order: list = []
    hooks = [
        m.register_forward_pre_hook(lambda mod, _args: order.append(mod))
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            model(torch.from_numpy(x1))
    finally:
        for h in hooks:
            h.remove()
    return order


def _align(model, x1: np.ndarray, ranges: Sequence[ConvRange]) -> list[tuple[Any, ConvRange]]:
    """Pair each torch conv with its ONNX Conv: same execution order, same weight shape."""
    mods = _conv_order(model, x1)
    if len(mods) != len(ranges) or any(
        tuple(m.weight.shape) != r.weight_shape for m, r in zip(mods, ranges, strict=False)
    ):
        raise EdgescreenError(
            f"QAT: the model's {len(mods)} convolutions do not line up with the ONNX "
            f"export's {len(ranges)} Conv nodes (order or weight shapes differ)"
        )
    return list(zip(mods, ranges, strict=True))


def _quantize_same_padding_convs(mtq) -> None:
    """timm's Conv2dSame (TF 'SAME' padding: EfficientNet-Lite's stem and strided depthwise
    convs) subclasses nn.Conv2d, but ModelOpt converts registered classes only, so those
    convs would train float while both Q/DQ files quantize them. Register them as convs."""
    try:
        from timm.layers import Conv2dSame
    except ImportError:  # pragma: no cover - timm is in the train extra
        return
    from modelopt.torch.quantization.nn import QuantModuleRegistry
    from modelopt.torch.quantization.nn.modules.quant_conv import _QuantConv2d

    if Conv2dSame not in QuantModuleRegistry:
        QuantModuleRegistry.register({Conv2dSame: "timm.Conv2dSame"})(_QuantConv2d)


def _sync_weight_amax(pairs) -> None:
    """Per-channel weight amax = max |w| of the channel: what quantize.py will compute."""
    import torch

    with torch.no_grad():
        for mod, _ in pairs:
            wq = getattr(mod, "weight_quantizer", None)
            if wq is not None and wq.is_enabled:
                wq.amax = mod.weight.detach().abs().amax(dim=(1, 2, 3), keepdim=True)


def _batches(x: np.ndarray, size: int, rng: np.random.Generator | None = None):
    order = rng.permutation(len(x)) if rng is not None else np.arange(len(x))
    for start in range(0, len(x), size):
        yield x[order[start : start + size]]


def _outputs(out) -> list:
    return list(out) if isinstance(out, tuple | list) else [out]


def _unfrozen(module):
    """A deep copy of an export view still runs the *original* modules' weights where
    graph_crop.freeze_same_padding bound a per-instance forward (a closure over the module
    it froze: deepcopy does not copy functions). Drop those instance forwards so each copy
    runs its own weights through its class's forward (dynamic SAME padding: the same
    numbers at the card's input size), which ModelOpt's quantized modules wrap."""
    for m in module.modules():
        m.__dict__.pop("forward", None)
    return module


def qat_finetune(
    view,
    train_x: np.ndarray,
    *,
    epochs: int,
    ranges: Sequence[ConvRange] | None = None,
    float_convs: Sequence[str] = (),
    lr: float = 1e-5,
    batch: int = 16,
    seed: int = 0,
    calib_x: np.ndarray | None = None,
    skip_outputs: Sequence[int] = (),
    log: Callable[[str], None] = lambda s: None,
) -> tuple[Any, dict[str, Any]]:
    """Fine-tune a copy of `view` with INT8 fake quantization for `epochs` passes over
    `train_x`; returns the fine-tuned float module (quantizers removed) and a record.

    `ranges` (conv_ranges of the FP32 export and its calibration cache) fixes each conv's
    input amax to the range the Q/DQ export will use; without it ModelOpt's max calibration
    on `calib_x` sets them. Convs whose ONNX node is in `float_convs` train unquantized.
    lr 1e-5 (Adam): at 1e-4 the first epoch on the demo model made its median |Δ referral
    p| 0.13, worse than not fine-tuning (0.05); at 1e-5 it fell to 0.013."""
    import torch

    mtq = require_modelopt()
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    teacher = view.eval()  # only ever run under no_grad
    student = _unfrozen(copy.deepcopy(view)).eval()
    calib_x = train_x if calib_x is None else calib_x

    def forward_loop(model):
        with torch.no_grad():
            for xb in _batches(calib_x, batch):
                model(torch.from_numpy(xb))

    _quantize_same_padding_convs(mtq)
    mtq.quantize(student, mtq.INT8_DEFAULT_CFG, forward_loop=forward_loop)
    pairs = _align(student, train_x[:1], ranges) if ranges is not None else []
    floated = set(float_convs)
    for mod, r in pairs:
        if r.node in floated:
            mod.input_quantizer.disable()
            mod.weight_quantizer.disable()
        elif r.amax is not None:
            mod.input_quantizer.amax = torch.tensor(max(r.amax, 1e-8))
    _sync_weight_amax(pairs)
    for module in student.modules():  # heads stay float, as in PTQ
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "QuantLinear":
            for q in ("input_quantizer", "weight_quantizer", "output_quantizer"):
                quantizer = getattr(module, q, None)
                if quantizer is not None:
                    quantizer.disable()
    with torch.no_grad():
        ref = [_outputs(teacher(torch.from_numpy(xb))) for xb in _batches(train_x, batch)]
    keep = [k for k in range(len(ref[0])) if k not in set(skip_outputs)]
    spread = [
        max(float(torch.cat([r[k] for r in ref]).float().std()), 1e-6) for k in range(len(ref[0]))
    ]
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for epoch in range(epochs):
        total, n = 0.0, 0
        for xb in _batches(train_x, batch, rng):
            xt = torch.from_numpy(xb)
            with torch.no_grad():
                target = _outputs(teacher(xt))
            got = _outputs(student(xt))  # eval mode: BatchNorm statistics frozen
            loss = sum(
                torch.mean(((got[k].float() - target[k].float()) / spread[k]) ** 2) for k in keep
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            _sync_weight_amax(pairs)
            total += float(loss.detach()) * len(xb)
            n += len(xb)
        losses.append(total / max(n, 1))
        log(f"qat epoch {epoch + 1}/{epochs}: distillation loss {losses[-1]:.5f}")
    # Back to a plain float module with the fine-tuned weights (quantizer state dropped).
    from .graph_crop import freeze_same_padding

    fresh = _unfrozen(copy.deepcopy(view)).eval()
    own = fresh.state_dict()
    tuned = {k: v for k, v in student.state_dict().items() if k in own}
    missing = [k for k in own if k not in tuned]
    if missing:
        raise EdgescreenError(f"QAT: fine-tuned state lacks {missing[:3]}")
    fresh.load_state_dict(tuned)
    fresh.requires_grad_(False)
    freeze_same_padding(fresh, tuple(train_x.shape[1:]))  # static padding again, for ONNX
    record = {
        "tool": "nvidia-modelopt modelopt.torch.quantization INT8_DEFAULT_CFG",
        "activation_ranges": "the PTQ calibration's (kept for export)"
        if ranges is not None
        else "ModelOpt max calibration",
        "weight_ranges": "per-channel max |w|, kept after every step"
        if ranges is not None
        else "ModelOpt max calibration",
        "convs_float": sorted(floated & {r.node for _, r in pairs}),
        "loss": "self-distillation to the FP32 model's outputs (normalised MSE)",
        "epochs": epochs,
        "lr": lr,
        "batch": batch,
        "images": len(train_x),
        "loss_per_epoch": [round(v, 6) for v in losses],
        "seconds": round(time.perf_counter() - t0, 1),
        "linear_layers_float": True,
    }
    return fresh, record
