"""Load what `edgescreen train` wrote: the model rebuilt and its card fragment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from edgescreen.runtime.card import ModelCard
from edgescreen.runtime.errors import EdgescreenError
from edgescreen.runtime.schema import from_data

from .config import TrainConfig
from .loop import _stage_hook
from .models import build_model


@dataclass
class TrainedModel:
    model: torch.nn.Module  # in eval mode, on the CPU
    card: ModelCard  # no artifacts yet: export adds them
    config: TrainConfig


def load_trained(path: str | Path) -> TrainedModel:
    """`model.pt` (or the folder holding it) -> the model as it was at its best epoch."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise EdgescreenError(
            f"{path}: no such checkpoint; pass the model.pt `edgescreen train` wrote "
            "(or its run folder)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - not a torch file at all (an .onnx, a bundle...)
        raise EdgescreenError(
            f"{path}: not a training checkpoint ({type(exc).__name__}); pass the model.pt "
            "`edgescreen train` wrote (or its run folder)"
        ) from None
    _check_finished(path, state)
    cfg = from_data(TrainConfig, state["config"], "config")
    torch.manual_seed(cfg.seed)
    # The checkpoint holds every weight: don't load (or require) pretrained ones again.
    model = build_model(
        cfg.family, **{**cfg.model, "pretrained": False} if "pretrained" in cfg.model else cfg.model
    )
    for stage in cfg.stages[: state["stage"] + 1]:  # replay stage hooks (M²CNN's cells)
        model = _stage_hook(model, stage)
    model.load_state_dict(state["model"])
    return TrainedModel(model.eval(), ModelCard.from_dict(state["card"]), cfg)


def _check_finished(path: Path, state: object) -> None:
    """best.pt / last.pt are the loop's per-epoch checkpoints (weights, optimizer, RNG, for
    --resume); only model.pt, written when training finishes, holds the card export needs."""
    if isinstance(state, dict) and {"config", "stage", "model", "card"} <= state.keys():
        return
    if isinstance(state, dict) and "optimizer" in state and "epoch" in state:
        model_pt = path.parent / "model.pt"
        if model_pt.is_file():
            hint = f"pass {model_pt} (or the run folder {path.parent}) instead"
        else:
            hint = (
                f"{model_pt} is written when training finishes: finish the run with "
                f"`edgescreen train --config ... --data ... --out {path.parent} --resume`, "
                f"then pass {model_pt}"
            )
        raise EdgescreenError(
            f"{path} is a per-epoch training checkpoint (kept for --resume), not the "
            f"finished model: {hint}"
        )
    raise EdgescreenError(
        f"{path}: not a finished training run's model.pt (it has no model card); pass the "
        "model.pt `edgescreen train` wrote (or its run folder)"
    )
