"""Training objectives by name: what a config's `loss:` means for a family's outputs.

Each takes the model's output dict and the batch target and returns one scalar. Which
output a generic loss reads is an argument (`output: global_scores`), which is how the
staged families (AG-CNN's branches, Zoom-in-Net's M/A/C nets) train one part at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from . import losses

Outputs = Mapping[str, torch.Tensor]
# `output:` names one output, or weights several ({scores: 1, mnet_scores: 1}): a weighted
# sum of the same loss on each, as Zoom-in-Net's joint stage trains M-, A- and C-Net at once.
OutputChoice = str | Mapping[str, float]


def _each(output: OutputChoice, loss: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    if isinstance(output, str):
        return loss(output)
    if not output:
        raise ValueError("loss_args.output: an empty mapping names no output")
    return sum(float(w) * loss(key) for key, w in output.items())


def _ce(
    outputs: Outputs,
    target: torch.Tensor,
    *,
    output: OutputChoice = "scores",
    label_smoothing: float = 0.0,
    **_: object,
) -> torch.Tensor:
    return _each(
        output,
        lambda k: F.cross_entropy(outputs[k], target.long(), label_smoothing=label_smoothing),
    )


def _focal(
    outputs: Outputs,
    target: torch.Tensor,
    *,
    output: OutputChoice = "scores",
    gamma: float = 2.0,
    **_: object,
) -> torch.Tensor:
    return _each(output, lambda k: losses.focal_loss(outputs[k], target, gamma=gamma))


def _bce(
    outputs: Outputs,
    target: torch.Tensor,
    *,
    output: OutputChoice = "scores",
    gamma: float = 0.0,
    pos_weight: list[float] | None = None,
    **_: object,
) -> torch.Tensor:
    weight = None if pos_weight is None else torch.tensor(pos_weight, device=target.device)
    return _each(
        output,
        lambda k: losses.binary_focal_loss(outputs[k], target, gamma=gamma, pos_weight=weight),
    )


def _multitask(
    outputs: Outputs,
    target: torch.Tensor,
    *,
    weights: Mapping[str, float] | None = None,
    focal_gamma: float = 0.0,
    focal_alpha: float | None = None,
    regression: str = "smooth_l1",
    **_: object,
) -> torch.Tensor:
    # Stage 1 of the APTOS recipe: regression: mae (CE and BCE on the other heads);
    # stage 2: regression: mse, focal_alpha: 0.25, focal_gamma: 2 (focal on both).
    return losses.multitask_loss(
        outputs,
        target,
        weights or (1.0, 1.0, 1.0),
        regression=regression,
        gamma=focal_gamma,
        alpha=focal_alpha,
    )["loss"]


def _combiner(
    outputs: Outputs, target: torch.Tensor, *, regression: str = "mse", **_: object
) -> torch.Tensor:
    # Stage 3 of the multitask recipe: fit the linear mix of the heads to the grade itself,
    # with MSE as the write-up's single linear neuron is.
    return losses.regression_loss(outputs["grade_value"], target, regression)


def _m2cnn(
    outputs: Outputs, target: torch.Tensor, *, lam: float = 1.0, **_: object
) -> torch.Tensor:
    return losses.m2cnn_loss(outputs, target, lam=lam)["loss"]


OBJECTIVES: dict[str, Callable[..., torch.Tensor]] = {
    "ce": _ce,
    "focal": _focal,
    "bce": _bce,
    "multitask": _multitask,
    "combiner": _combiner,
    "m2cnn": _m2cnn,
}


def objective(name: str, outputs: Outputs, target: torch.Tensor, **args: object) -> torch.Tensor:
    try:
        fn = OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(OBJECTIVES)}") from None
    return fn(outputs, target, **args)
