"""TorchScript: traced and frozen, the card in `_extra_files["model.json"]`."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from edgescreen.runtime.card import ModelCard, card_bytes

from .onnx_export import model_card_fragment

CARD_EXTRA = "model.json"


def export_torchscript(view: torch.nn.Module, card: ModelCard, path: str | Path) -> Path:
    example = torch.zeros(2, *card.input.shape)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(view.eval(), (example,), check_trace=False)
        frozen = torch.jit.freeze(traced)
    frozen.save(str(path), _extra_files={CARD_EXTRA: card_bytes(model_card_fragment(card))})
    return Path(path)


def load_torchscript(path: str | Path) -> tuple[torch.jit.ScriptModule, bytes]:
    extra = {CARD_EXTRA: b""}
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", FutureWarning
        )  # torch.jit is deprecated; the file format is not
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return module, extra[CARD_EXTRA]
