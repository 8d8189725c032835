"""Stratified patient k-fold training and the fold ensemble exported as one model.

`train_folds` holds a test split out once (the run's ordinary train/val/test split, or the
data set's official one), deals the remaining patients into K stratified folds with
`patient_kfold`, and trains one model per fold with that fold's patients as its
validation set. The test split is never seen by any fold: it stays for export's
evaluation, like a single run's.

The K fold models are then averaged into one `FoldEnsemble`: same output keys and roles
as a single model, each output the mean of the folds' (logits averaged, not
probabilities: the card's activation still applies once, after averaging). Its card's cut
points and referral threshold are fitted on the out-of-fold predictions (every pool image
predicted by the one fold model that did not train on it), and so are its validation
metrics: the ensemble itself has trained on every pool image.

Layout of `out`::

    fold-0/ ... fold-{K-1}/   ordinary training runs (model.pt, card.json, splits.json)
    model.pt                  the ensemble, loadable by `load_trained` / `edgescreen export`
    card.json, splits.json    train = every fold's patients, val empty, test = the held-out split
    folds.json                per-fold metrics and validation patients

The ensemble checkpoint rebuilds through the family's builder with `folds=K` in the
config's model arguments; today the `multitask` family's builder accepts it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgescreen.runtime.card import ModelCard

from .config import TrainConfig
from .data.records import LabelledSet, Sample
from .data.splits import patient_kfold
from .models.common import FoldEnsemble

# Families whose builder takes `folds=K` and returns a FoldEnsemble of K members.
ENSEMBLE_FAMILIES = ("multitask",)


@dataclass
class FoldSummary:
    fold: int
    out_dir: Path
    metric_name: str
    val_metric: float
    validation: dict[str, Any]
    val_patients: list[str]
    val_images: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "fold": self.fold,
            "run": self.out_dir.name,
            "metric_name": self.metric_name,
            "val_metric": _json_number(self.val_metric),
            "validation": {k: _plain(v) for k, v in self.validation.items()},
            "val_images": self.val_images,
            "val_patients": self.val_patients,
            "seconds": round(self.seconds, 1),
        }


@dataclass
class KFoldResult:
    out_dir: Path
    folds: list[FoldSummary]
    test_images: int
    oof: dict[str, Any]  # out-of-fold metrics, with the ensemble card's fitted thresholds
    checkpoint: Path | None  # the ensemble's model.pt (None for a family without one)
    card: ModelCard | None
    seconds: float


def fold_splits(
    data: LabelledSet | Sequence[LabelledSet], cfg: TrainConfig, k: int
) -> tuple[list[tuple[list[Sample], list[Sample]]], list[Sample]]:
    """([(train, val)] * k, test): the run's test split held out, the rest in patient folds."""
    from .loop import split_samples

    splits = split_samples(data, cfg)
    pool = splits["train"] + splits["val"]
    return patient_kfold(pool, k, seed=cfg.seed), splits["test"]


def train_folds(
    cfg: TrainConfig,
    data: LabelledSet | Sequence[LabelledSet],
    out_dir: str | Path,
    *,
    folds: int,
    resume: bool = False,
    ensemble: bool = True,
    **trainer_kwargs: Any,
) -> KFoldResult:
    """Train `folds` fold models under `out_dir`, then (for ENSEMBLE_FAMILIES) the ensemble.

    `trainer_kwargs` go to each fold's Trainer (device, cache_dir, progress, on_epoch_end).
    With `resume`, a fold whose model.pt exists is not trained again and an unfinished one
    continues from its last.pt.
    """
    from .checkpoint import load_trained
    from .loop import Trainer

    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sets = [data] if isinstance(data, LabelledSet) else list(data)
    parts, test = fold_splits(sets, cfg, folds)
    summaries: list[FoldSummary] = []
    members: list[nn.Module] = []
    oof_outputs: list[dict[str, np.ndarray]] = []
    oof_y: list[np.ndarray] = []
    for f, (train, val) in enumerate(parts):
        fold_dir = out / f"fold-{f}"
        fold_set = LabelledSet(
            name=f"{sets[0].name}-fold{f}",
            task=sets[0].task,
            labels=sets[0].labels,
            samples=_tagged(train, "train") + _tagged(val, "val") + _tagged(test, "test"),
        )
        fold_cfg = dataclasses.replace(cfg, name=f"{cfg.name}-fold{f}")
        t0 = time.perf_counter()
        trainer = Trainer(fold_cfg, fold_set, fold_dir, **trainer_kwargs)
        if not (resume and (fold_dir / "model.pt").is_file()):
            trainer.run(resume=resume)
        trained = load_trained(fold_dir / "model.pt")
        val_metrics = trained.card.metrics.get("validation", {})
        summaries.append(
            FoldSummary(
                fold=f,
                out_dir=fold_dir,
                metric_name=_metric_name(trained.card),
                val_metric=float(val_metrics.get("metric", float("nan"))),
                validation=val_metrics,
                val_patients=sorted({s.patient for s in val}),
                val_images=len(val),
                seconds=time.perf_counter() - t0,
            )
        )
        oof_outputs.append(trainer.predict(trained.model, "val"))
        oof_y.append(np.array([s.label for s in val]))
        members.append(trained.model)

    oof = {k: np.concatenate([o[k] for o in oof_outputs]) for k in oof_outputs[0]}
    y = np.concatenate(oof_y)
    checkpoint = card = None
    oof_metrics: dict[str, Any]
    if ensemble and cfg.family in ENSEMBLE_FAMILIES:
        checkpoint, card, oof_metrics = _save_ensemble(cfg, members, out, oof, y, summaries)
    else:
        oof_metrics = _oof_metrics(cfg, members[0], sets[0].labels, oof, y)
    _write_folds_json(out, cfg, summaries, oof_metrics, len(test), checkpoint)
    return KFoldResult(
        out, summaries, len(test), oof_metrics, checkpoint, card, time.perf_counter() - start
    )


def _save_ensemble(
    cfg: TrainConfig,
    members: list[nn.Module],
    out: Path,
    oof: dict[str, np.ndarray],
    y: np.ndarray,
    summaries: list[FoldSummary],
) -> tuple[Path, ModelCard, dict[str, Any]]:
    from .loop import card_for, fit_thresholds, task_metrics

    k = len(members)
    model = FoldEnsemble(members).eval()
    ens_cfg = dataclasses.replace(cfg, name=f"{cfg.name}-{k}fold", model={**cfg.model, "folds": k})
    first = json.loads((summaries[0].out_dir / "card.json").read_text())
    labels = tuple(first["labels"])
    card = card_for(ens_cfg, model, labels)
    card = card.replace(decision=fit_thresholds(card, oof, y, cfg.target_sensitivity))
    metrics = task_metrics(card, oof, y)
    manifest = _ensemble_splits(out, summaries[0].out_dir)
    card = card.replace(
        metrics={"validation": {k_: v for k_, v in metrics.items() if k_ != "metric_name"}},
        versions=dict(first.get("versions", {})),
        data_manifest={
            "splits": manifest,
            "split_file": "splits.json",
            "validation": "out-of-fold: each image predicted by the fold model that did "
            "not train on it; cut points and referral threshold fitted on the same",
            "folds": [s.to_dict() for s in summaries],
            "training": first.get("data_manifest", {}).get("training", {}),
        },
    )
    (out / "card.json").write_text(json.dumps(card.to_dict(), indent=2, sort_keys=True) + "\n")
    # The fold models' selected stages agree in count (one config); hooks replay up to it.
    stage = max(
        torch.load(s.out_dir / "model.pt", map_location="cpu", weights_only=False)["stage"]
        for s in summaries
    )
    tmp = out / ".model.pt.tmp"
    torch.save(
        {
            "config": ens_cfg.to_dict(),
            "stage": stage,
            "model": model.state_dict(),
            "card": card.to_dict(),
        },
        tmp,
    )
    os.replace(tmp, out / "model.pt")
    return out / "model.pt", card, metrics


def _oof_metrics(cfg, model, labels, oof, y) -> dict[str, Any]:
    from .loop import card_for, fit_thresholds, task_metrics

    card = card_for(cfg, model, labels)
    card = card.replace(decision=fit_thresholds(card, oof, y, cfg.target_sensitivity))
    return task_metrics(card, oof, y)


def _ensemble_splits(out: Path, fold0: Path) -> dict[str, Any]:
    """splits.json for the ensemble: every fold's patients trained it; test as the folds'."""
    fold_splits_json = json.loads((fold0 / "splits.json").read_text())
    manifest = {
        "train": fold_splits_json["train"] + fold_splits_json["val"],
        "val": [],
        "test": fold_splits_json["test"],
    }
    (out / "splits.json").write_text(json.dumps(manifest, indent=1))
    return {
        name: {"images": len(part), "patients": len({e["patient"] for e in part})}
        for name, part in manifest.items()
    }


def _write_folds_json(out, cfg, summaries, oof_metrics, test_images, checkpoint) -> None:
    doc = {
        "config": cfg.name,
        "folds": [s.to_dict() for s in summaries],
        "out_of_fold": {k: _plain(v) for k, v in oof_metrics.items()},
        "test_images": test_images,
        "ensemble": str(checkpoint) if checkpoint else None,
    }
    (out / "folds.json").write_text(json.dumps(doc, indent=2) + "\n")


def _tagged(samples: Sequence[Sample], split: str) -> list[Sample]:
    # Official-split tags: the fold's Trainer then uses exactly these parts.
    return [dataclasses.replace(s, split=split) for s in samples]


def _metric_name(card: ModelCard) -> str:
    from edgescreen.runtime.evaluation import METRIC_OF_TASK

    return METRIC_OF_TASK[card.task]


def _json_number(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _plain(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return _json_number(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value
