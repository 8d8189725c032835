"""Quantization-aware fine-tuning (`edgescreen export --qat EPOCHS`) with NVIDIA Model Optimizer.

`modelopt.torch.quantization` with its INT8 config (per-channel symmetric weights,
per-tensor symmetric activations, max calibration: TensorRT's scheme) inserts fake
quantizers into the trained model, calibrates them on the governed calibration images and
fine-tunes the weights through them. The loss is self-distillation: the quantized student
matches the FP32 model's own outputs (grade value, logits), normalised by their spread, so
no labels, task objective or training config is needed, and what is optimised is exactly
what the drift gate measures: agreement with FP32. BatchNorm statistics stay frozen.
Linear layers (the heads after global pooling) keep their quantizers off, as PTQ keeps the
heads float.

The fine-tuned weights (quantizers removed) are exported to a QAT source ONNX and both Q/DQ
forms are made from it by quantize.py with freshly calibrated ranges (the TensorRT form
symmetric with zero points 0, the CPU form U8S8), so the two forms and any mixed-precision
search share one path with PTQ. The shipped model.onnx stays the original FP32 model: drift
is measured against it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
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
    lr: float = 1e-4,
    batch: int = 16,
    seed: int = 0,
    calib_x: np.ndarray | None = None,
    skip_outputs: Sequence[int] = (),
    log: Callable[[str], None] = lambda s: None,
) -> tuple[Any, dict[str, Any]]:
    """Fine-tune a copy of `view` with INT8 fake quantization for `epochs` passes over
    `train_x`; returns the fine-tuned float module (quantizers removed) and a record."""
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

    mtq.quantize(student, mtq.INT8_DEFAULT_CFG, forward_loop=forward_loop)
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
        "tool": "nvidia-modelopt modelopt.torch.quantization INT8_DEFAULT_CFG (max calibration)",
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
