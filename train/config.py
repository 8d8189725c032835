"""Training configuration: YAML in `train/configs/`, validated like the model card.

A run is a list of stages (the families' papers train in stages: AG-CNN global → local →
fusion, Zoom-in-Net M → A → C, multitask pre-train → focal → combiner, M²CNN cell by
cell). Each stage names what it trains, its loss, optimiser and epochs, and an optional
model method to call first (`grow` for M²CNN).

Every stage keeps its own best epoch, chosen by the validation metric of the output it
`select`s (by default the output its loss trains), and the next stage starts from those
weights; the run's model is the last stage's best epoch (AG-CNN: "in each stage, we use
the model with the highest AUC on the validation set").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgescreen.runtime.errors import CardError, EdgescreenError
from edgescreen.runtime.schema import from_data, to_data

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class StageConfig:
    name: str
    epochs: int
    loss: str  # a key of edgescreen.train.objectives.OBJECTIVES
    loss_args: dict[str, Any] = field(default_factory=dict)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: Literal["adamw", "sgd"] = "adamw"
    batch_size: int = 32
    # Parameter-name prefixes. `train` empty means everything not frozen trains.
    train: tuple[str, ...] = ()
    freeze: tuple[str, ...] = ()
    before: str | None = None  # model method called when the stage starts, e.g. "grow"
    input_size: int | None = None  # M²CNN: this cell's input resolution
    warmup_epochs: int = 0
    # The model output key whose validation metric (the task's: mean AUROC, QWK, accuracy)
    # picks this stage's best epoch. None: the loss's `loss_args.output`, else the
    # exported outputs as the card reads them (the fused answer).
    select: str | None = None
    # Gradient accumulation: one optimizer (and scheduler) step every `accumulate`
    # mini-batches, each batch's loss scaled by 1/accumulate (Zoom-in-Net: every 12).
    accumulate: int = 1
    # False: every nn.Dropout* module stays in eval mode while this stage trains.
    dropout: bool = True

    @property
    def selects(self) -> str | None:
        """The output key that selects the best epoch; None means the exported outputs."""
        output = self.loss_args.get("output")
        return self.select or (output if isinstance(output, str) and output else None)

    def validate(self, where: str) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise CardError("epochs >= 0, batch_size >= 1 and lr > 0 are required", field=where)
        if self.accumulate < 1:
            raise CardError(
                f"must be an integer >= 1 (optimizer step every N mini-batches), got {self.accumulate}",
                field=f"{where}.accumulate",
            )
        if self.select is not None and not self.select.strip():
            raise CardError(
                "must name a model output key (e.g. global_scores) or be left out",
                field=f"{where}.select",
            )
        if self.warmup_epochs < 0:
            raise CardError("must be >= 0", field=f"{where}.warmup_epochs")


@dataclass(frozen=True)
class TrainConfig:
    name: str
    family: str
    task: Literal["dr_grading", "oct_classification", "cxr_findings"]
    model: dict[str, Any]  # keyword arguments of the family's builder
    input_size: int  # the exported model's input (final stage's for M²CNN)
    stages: tuple[StageConfig, ...]
    working_size: int | None = None  # canonical picture resolution before augmentation
    channels: int | None = None
    # Overrides of the modality's default preprocessing recipe (PreprocessConfig fields).
    preprocessing: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    num_workers: int = 0
    threads: int | None = None
    class_balance: bool = True
    augment_strength: float = 1.0
    target_sensitivity: float = 0.90  # referral threshold fitted for this sensitivity (DR)
    amp: bool = True  # used on CUDA only
    # Zoom-in-Net: training batches carry both eyes of a patient where the set has them
    # (train/data/dataset.py fellow_eyes); validation and test stay one image, as served.
    pair_eyes: bool = False

    def validate(self, where: str) -> None:
        if not self.stages:
            raise CardError("at least one stage is required", field=f"{where}stages")

    @property
    def modality(self) -> str:
        return {"dr_grading": "fundus", "oct_classification": "oct", "cxr_findings": "cxr"}[
            self.task
        ]

    def to_dict(self) -> dict[str, Any]:
        return to_data(self)


def load_config(path_or_name: str | Path) -> TrainConfig:
    """A YAML path, or the name of a shipped config (e.g. `multitask-tiny`)."""
    import yaml

    path = Path(path_or_name)
    if not path.exists() and (CONFIG_DIR / f"{path_or_name}.yaml").exists():
        path = CONFIG_DIR / f"{path_or_name}.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        shipped = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise EdgescreenError(f"{path}: config not found (shipped configs: {shipped})") from None
    except yaml.YAMLError as exc:
        raise EdgescreenError(f"{path}: not valid YAML ({exc})") from None
    try:
        return from_data(TrainConfig, data, "")
    except CardError as exc:
        raise CardError(str(exc), path=path) from None
