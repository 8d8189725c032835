"""Load what `edgescreen train` wrote: the model rebuilt and its card fragment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from edgescreen.runtime.card import ModelCard
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
    state = torch.load(path, map_location="cpu", weights_only=False)
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
