"""Staged training with exact resume, best-checkpoint selection and fitted thresholds.

Determinism is by construction rather than by saved state: the batch order, the
augmentation and the dropout seed of every epoch derive from (seed, stage, epoch), so a
run resumed from the checkpoint of epoch k draws exactly what the unstopped run drew.
RNG states are saved as well, for code that draws outside those seeds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from edgescreen.runtime import evaluation, metrics
from edgescreen.runtime.card import ModelCard, OutputSpec, new_card
from edgescreen.runtime.errors import CardError
from edgescreen.runtime.postprocess import activate
from edgescreen.runtime.preprocess import PreprocessConfig
from edgescreen.runtime.schema import from_data

from .config import StageConfig, TrainConfig
from .data.dataset import ScreeningDataset
from .data.records import LabelledSet, Sample
from .data.splits import carve_validation, check_disjoint, patient_split, sample_hash
from .models import build_model
from .objectives import objective

CHECKPOINT, BEST, CARD = "last.pt", "best.pt", "card.json"
DEFAULT_CUTPOINTS = (0.5, 1.5, 2.5, 3.5)


def default_cache_dir() -> Path:
    return (
        Path(os.environ.get("EDGESCREEN_CACHE", Path.home() / ".cache" / "edgescreen")) / "prepared"
    )


@dataclass
class TrainResult:
    out_dir: Path
    checkpoint: Path
    card: ModelCard
    metric_name: str
    val_metric: float
    history: list[dict[str, Any]]
    seconds: float


class StopTraining(Exception):
    """Raised by an `on_epoch_end` callback to stop (tests use it to simulate a crash)."""


def split_samples(
    data: LabelledSet | Sequence[LabelledSet], cfg: TrainConfig
) -> dict[str, list[Sample]]:
    """Official train/val/test where the set has them, else a stratified patient-level split.

    Samples marked "trainval" (NIH's train_val_list.txt) never reach test: validation is
    carved from them by patient, and test is the official test list alone.
    """
    sets = [data] if isinstance(data, LabelledSet) else list(data)
    official: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    trainval: list[Sample] = []
    rest: list[Sample] = []
    for s in (s for ls in sets for s in ls.samples):
        (trainval if s.split == "trainval" else official.get(s.split, rest)).append(s)
    if trainval:
        for name, part in carve_validation(trainval, cfg.split, seed=cfg.seed).items():
            official[name].extend(part)
    if rest:
        for name, part in patient_split(rest, cfg.split, seed=cfg.seed).items():
            official[name].extend(part)
    check_disjoint(official)
    if not official["train"] or not official["val"]:
        raise ValueError(
            f"need training and validation images, got {[(k, len(v)) for k, v in official.items()]}"
        )
    return official


def preprocessing_for(cfg: TrainConfig, size: int | None = None) -> PreprocessConfig:
    """The runtime recipe this model trains with (and the card will carry)."""
    base = PreprocessConfig.default(cfg.modality, size or cfg.input_size).to_dict()
    if cfg.channels:
        base.update(channels=cfg.channels, mean=[0.5] * cfg.channels, std=[0.5] * cfg.channels)
    return PreprocessConfig.from_dict({**base, **cfg.preprocessing}, where="config.preprocessing")


def card_for(
    cfg: TrainConfig, model: torch.nn.Module, labels: tuple[str, ...], **extra: Any
) -> ModelCard:
    """The card the runtime would read for this model; cut points stay at x.5 until fitted."""
    from edgescreen.runtime.card import default_decision

    outputs = tuple(
        OutputSpec(name, role, act) for name, (role, act) in model.export_outputs.items()
    )
    decision = default_decision(cfg.task, labels)
    if any(o.role == "grade_value" for o in outputs):
        decision = dataclasses.replace(decision, cutpoints=DEFAULT_CUTPOINTS)
    return new_card(
        name=cfg.name,
        task=cfg.task,
        family=cfg.family,
        preprocessing=preprocessing_for(cfg),
        outputs=outputs,
        labels=labels,
        decision=decision,
        **extra,
    )


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        data: LabelledSet | Sequence[LabelledSet],
        out_dir: str | Path,
        *,
        device: str = "cpu",
        cache_dir: str | Path | None = None,
        progress: bool = True,
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(device)
        self.progress = progress
        self.on_epoch_end = on_epoch_end
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        sets = [data] if isinstance(data, LabelledSet) else list(data)
        self.labels = sets[0].labels
        self.splits = split_samples(sets, cfg)
        self.multilabel = cfg.task == "cxr_findings"
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self._write_split_manifest()

    # -- data -----------------------------------------------------------------------------
    def _write_split_manifest(self) -> None:
        # Which image went where, by content: export refuses calibration images that overlap evaluation.
        # Labels too, so export can rebuild a split without knowing which loader read it.
        manifest = {
            name: [
                {
                    "ref": s.ref,
                    "patient": s.patient,
                    "sha256": sample_hash(s),
                    "label": list(s.label) if isinstance(s.label, tuple) else s.label,
                    "file": s.path is not None,
                }
                for s in part
            ]
            for name, part in self.splits.items()
        }
        (self.out / "splits.json").write_text(json.dumps(manifest, indent=1))

    def data_manifest(self) -> dict[str, Any]:
        def counts(part: list[Sample]) -> dict[str, int]:
            y = _targets(part)
            if self.multilabel:
                return (
                    {label: int(y[:, k].sum()) for k, label in enumerate(self.labels)}
                    if len(y)
                    else {}
                )
            return {label: int((y == k).sum()) for k, label in enumerate(self.labels)}

        return {
            "splits": {
                name: {
                    "images": len(part),
                    "patients": len({s.patient for s in part}),
                    "class_counts": counts(part),
                }
                for name, part in self.splits.items()
            },
            "split_file": "splits.json",
        }

    def _loader(
        self, split: str, size: int, *, train: bool, batch_size: int, epoch_seed: int
    ) -> DataLoader:
        pre = preprocessing_for(self.cfg, size)
        working = max(self.cfg.working_size or size, size)
        ds = ScreeningDataset(
            self.splits[split],
            pre,
            train=train,
            working_size=working,
            cache_dir=self.cache_dir,
            seed=self.cfg.seed,
            pair_eyes=train and self.cfg.pair_eyes,
        )
        if train and self.cfg.augment_strength != 1.0:
            from .augment import build_augmentation

            ds.augmentation = build_augmentation(
                self.cfg.modality, strength=self.cfg.augment_strength
            )
        ds.set_epoch(epoch_seed)
        generator = torch.Generator().manual_seed(epoch_seed)
        sampler = None
        if train and self.cfg.class_balance and not self.multilabel:
            sampler = WeightedRandomSampler(
                self._balance_weights(ds), len(ds), replacement=True, generator=generator
            )
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            generator=generator,
            num_workers=self.cfg.num_workers,
            drop_last=False,
            persistent_workers=False,
        )

    @staticmethod
    def _balance_weights(ds: ScreeningDataset) -> torch.Tensor:
        # Square-root balancing: rare grades are seen more often without drowning the common ones.
        y = ds.targets().astype(int)
        counts = np.bincount(y, minlength=y.max() + 1).astype(float)
        return torch.as_tensor(1.0 / np.sqrt(counts[y]), dtype=torch.double)

    # -- stages -------------------------------------------------------------------------
    def _set_trainable(
        self, model: torch.nn.Module, stage: StageConfig
    ) -> list[torch.nn.Parameter]:
        params = []
        for name, p in model.named_parameters():
            wanted = (not stage.train or name.startswith(stage.train)) and not name.startswith(
                stage.freeze or ("\0",)
            )
            p.requires_grad_(wanted)
            if wanted:
                params.append(p)
        if not params:
            raise ValueError(
                f"stage {stage.name!r} trains no parameters (train={stage.train}, freeze={stage.freeze})"
            )
        return params

    def _optimizer(self, params, stage: StageConfig, steps: int):
        if stage.optimizer == "sgd":
            opt = torch.optim.SGD(
                params, lr=stage.lr, momentum=0.9, weight_decay=stage.weight_decay, nesterov=True
            )
        else:
            opt = torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay)
        warm = stage.warmup_epochs / max(stage.epochs, 1)

        def schedule(step: int) -> float:  # linear warm-up, then cosine to 5% of the peak
            t = step / max(steps, 1)
            if t < warm:
                return max(t / warm, 0.05)
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (t - warm) / max(1 - warm, 1e-8)))

        return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)

    def _build(self, upto_stage: int) -> torch.nn.Module:
        """The model as it is during `upto_stage`: stage-start hooks (M²CNN grow) replayed."""
        torch.manual_seed(self.cfg.seed)
        model = build_model(self.cfg.family, **self.cfg.model)
        for stage in self.cfg.stages[: upto_stage + 1]:
            model = _stage_hook(model, stage)
        return model.to(self.device)

    def _stage_size(self, stage: StageConfig) -> int:
        return stage.input_size or self.cfg.input_size

    # -- run ----------------------------------------------------------------------------
    def run(self, *, resume: bool = False) -> TrainResult:
        """Train every stage; each picks its best epoch by its `select`ed output's validation
        metric, and the next stage starts from those weights. The run's model is the last
        stage's best epoch."""
        cfg, start_time = self.cfg, time.perf_counter()
        state = self._load(CHECKPOINT) if resume and (self.out / CHECKPOINT).exists() else None
        if resume and state is None:
            print(f"no checkpoint in {self.out}: starting from scratch")
        stage_i, epoch = (state["stage"], state["epoch"]) if state else (0, 0)
        history: list[dict[str, Any]] = state["history"] if state else []
        # Per stage: {"stage", "name", "select", "epoch", "metric", "file"} of its best epoch.
        best: list[dict[str, Any] | None] = state["best"] if state else [None] * len(cfg.stages)
        model = self._build(stage_i)
        if state:
            model.load_state_dict(state["model"])
            _set_rng(state["rng"])
        opt = sched = None

        for si in range(stage_i, len(cfg.stages)):
            stage = cfg.stages[si]
            if si > stage_i:
                epoch = 0
                model = _stage_hook(model, stage).to(self.device)
            size = self._stage_size(stage)
            select = stage.selects
            if stage.epochs:
                self._check_select(model, stage, size)
            params = self._set_trainable(model, stage)
            batches = math.ceil(len(self.splits["train"]) / stage.batch_size)
            opt, sched = self._optimizer(
                params, stage, math.ceil(batches / stage.accumulate) * stage.epochs
            )
            if state and si == stage_i:
                opt.load_state_dict(state["optimizer"])
                sched.load_state_dict(state["scheduler"])
            for ep in range(epoch, stage.epochs):
                epoch_seed = _epoch_seed(cfg.seed, si, ep)
                torch.manual_seed(epoch_seed)
                loss = self._train_epoch(
                    model,
                    stage,
                    opt,
                    sched,
                    size,
                    epoch_seed,
                    f"{stage.name} {ep + 1}/{stage.epochs}",
                )
                val, chosen = self._validate(model, size, select)
                row = {
                    "stage": stage.name,
                    "epoch": ep + 1,
                    "loss": loss,
                    **val,
                    "select": select or "exported",
                    "select_metric": chosen,
                }
                history.append(row)
                mine = best[si]
                improved = mine is None or chosen > mine["metric"]
                if improved:
                    best[si] = {
                        "stage": si,
                        "name": stage.name,
                        "select": select or "exported",
                        "epoch": ep + 1,
                        "metric": chosen,
                        "file": stage_best_file(si),
                    }
                    self._save_weights(stage_best_file(si), model, best[si])
                self._save(CHECKPOINT, model, si, ep + 1, opt, sched, history, best)
                if self.progress:
                    print(
                        f"[{stage.name}] epoch {ep + 1}/{stage.epochs} loss {loss:.4f} "
                        f"val {val['metric_name']} {val['metric']:.4f} "
                        f"{select or 'exported'} {chosen:.4f}{' *' if improved else ''}",
                        flush=True,
                    )
                if self.on_epoch_end:
                    self.on_epoch_end(row)
            if stage.epochs == 0:
                self._save(CHECKPOINT, model, si, 0, opt, sched, history, best)
            if best[si] is not None:  # hand the stage's best epoch on, not its last
                weights = self._load(best[si]["file"])
                model.load_state_dict(weights["model"])
        last = len(cfg.stages) - 1
        final = best[last] or {
            "stage": last,
            "name": cfg.stages[last].name,
            "select": cfg.stages[last].selects or "exported",
            "epoch": 0,
            "metric": float("nan"),
        }
        self._save(BEST, model, last, cfg.stages[last].epochs, opt, sched, history, best, final)
        return self._finish(time.perf_counter() - start_time, history)

    def _check_select(self, model: torch.nn.Module, stage: StageConfig, size: int) -> None:
        """Refuse a `select` the model does not output before spending an epoch on it."""
        key = stage.selects
        if key is None:
            return
        model.eval()
        channels = preprocessing_for(self.cfg, size).channels
        with torch.no_grad():
            out = model(torch.zeros(2, channels, size, size, device=self.device))
        if key not in out:
            field = "select" if stage.select else "loss_args.output"
            raise ValueError(
                f"stage {stage.name!r}: {field} {key!r} is not an output of the "
                f"{type(model).__name__} model (its outputs: {', '.join(out)})"
            )
        wrong = out[key].dim() != 2 or out[key].shape[1] != len(self.labels)
        if wrong and key not in model.export_outputs:
            raise ValueError(
                f"stage {stage.name!r}: select {key!r} has shape {tuple(out[key].shape)}; "
                f"a selecting output needs one score per label ({len(self.labels)})"
            )

    def _validate(
        self, model: torch.nn.Module, size: int, select: str | None
    ) -> tuple[dict[str, Any], float]:
        """Metrics of the exported outputs on val, and the metric that selects (see select_card)."""
        extra = () if select is None or select in model.export_outputs else (select,)
        outputs = self.predict(model, "val", size, extra=extra)
        y = _targets(self.splits["val"])
        card = card_for(self.cfg, model, self.labels)
        val = task_metrics(card, outputs, y)
        if select is None:
            return val, val["metric"]
        return val, task_metrics(select_card(card, select), outputs, y)["metric"]

    def _train_epoch(self, model, stage, opt, sched, size, epoch_seed, label) -> float:
        model.train()
        # A frozen part must stay frozen: its BatchNorm statistics too, not only its weights.
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in module.parameters()
            ):
                module.eval()
            if not stage.dropout and isinstance(module, torch.nn.modules.dropout._DropoutNd):
                module.eval()
        loader = self._loader(
            "train", size, train=True, batch_size=stage.batch_size, epoch_seed=epoch_seed
        )
        use_amp = self.cfg.amp and self.device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        total, count, n = 0.0, 0, len(loader)
        every = stage.accumulate
        opt.zero_grad(set_to_none=True)
        for i, (x, y) in enumerate(_progress(loader, label, self.progress)):
            x, y = x.to(self.device), y.to(self.device)
            with torch.autocast(self.device.type, enabled=use_amp):
                outputs = model(x)
                loss = objective(
                    stage.loss,
                    outputs,
                    y,
                    model=model,
                    num_classes=len(self.labels),
                    **stage.loss_args,
                )
            # The last group of an epoch may be short: divide by its real length, so every
            # optimizer step follows a mean of batch gradients.
            group = min(every, n - (i // every) * every)
            scaler.scale(loss / group).backward()
            if (i + 1) % every == 0 or i + 1 == n:
                scaler.step(opt)
                scaler.update()
                sched.step()
                opt.zero_grad(set_to_none=True)
            total += float(loss.detach()) * len(x)
            count += len(x)
        return total / max(count, 1)

    @torch.inference_mode()
    def predict(
        self,
        model: torch.nn.Module,
        split: str,
        size: int | None = None,
        *,
        extra: Sequence[str] = (),
    ) -> dict[str, np.ndarray]:
        """Exported outputs of the model over a split, as the runtime would receive them,
        plus the training-only outputs named in `extra`."""
        model.eval()
        loader = self._loader(
            split, size or self.cfg.input_size, train=False, batch_size=32, epoch_seed=0
        )
        chunks: dict[str, list[np.ndarray]] = {}
        for x, _ in loader:
            out = model(x.to(self.device))
            for name in (*model.export_outputs, *extra):
                chunks.setdefault(name, []).append(out[name].float().cpu().numpy())
        return {k: np.concatenate(v) for k, v in chunks.items()}

    def evaluate(
        self, model, split: str, size: int | None = None, card: ModelCard | None = None
    ) -> dict[str, Any]:
        outputs = self.predict(model, split, size)
        card = card or card_for(self.cfg, model, self.labels)
        return task_metrics(card, outputs, _targets(self.splits[split]))

    def _finish(self, seconds: float, history: list[dict[str, Any]]) -> TrainResult:
        best = self._load(BEST)
        model = self._build(best["stage"])
        model.load_state_dict(best["model"])
        outputs = self.predict(model, "val")
        y_val = _targets(self.splits["val"])
        card = card_for(self.cfg, model, self.labels)
        card = card.replace(
            decision=fit_thresholds(card, outputs, y_val, self.cfg.target_sensitivity)
        )
        val = task_metrics(card, outputs, y_val)
        card = card.replace(
            metrics={"validation": {k: v for k, v in val.items() if k != "metric_name"}},
            versions=_versions(),
            data_manifest={**self.data_manifest(), "training": self._provenance(best)},
        )
        (self.out / CARD).write_text(json.dumps(card.to_dict(), indent=2, sort_keys=True) + "\n")
        # What export needs: weights, the config that rebuilds the model, the card fragment.
        tmp = self.out / ".model.pt.tmp"
        torch.save(
            {
                "config": self.cfg.to_dict(),
                "stage": best["stage"],
                "model": best["model"],
                "card": card.to_dict(),
            },
            tmp,
        )
        os.replace(tmp, self.out / "model.pt")
        return TrainResult(
            self.out,
            self.out / "model.pt",
            card,
            val["metric_name"],
            val["metric"],
            history,
            seconds,
        )

    def _provenance(self, final_state: dict[str, Any]) -> dict[str, Any]:
        """How the weights came to be: initial weights, and each stage's selected epoch."""
        stages = []
        for stage, chosen in zip(self.cfg.stages, final_state["best"], strict=True):
            stages.append(
                {
                    "name": stage.name,
                    "epochs": stage.epochs,
                    "select": stage.selects or "exported",
                    "best_epoch": chosen["epoch"] if chosen else None,
                    "best_metric": _json_number(chosen["metric"]) if chosen else None,
                }
            )
        final = final_state.get("final") or {}
        return {
            "initial_weights": initial_weights(self.cfg),
            "stages": stages,
            "selection": "each stage keeps its best validation epoch by its select output "
            "and hands it to the next; the model is the last stage's best epoch",
            "final": {"stage": final.get("name"), "epoch": final.get("epoch")},
        }

    # -- checkpoints ----------------------------------------------------------------------
    def _save(self, name, model, stage, epoch, opt, sched, history, best, final=None) -> None:
        state = {
            "config": self.cfg.to_dict(),
            "stage": stage,
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": opt.state_dict() if opt is not None else None,
            "scheduler": sched.state_dict() if sched is not None else None,
            "history": history,
            "best": best,  # per stage: its best epoch (see run)
            "final": final,  # best.pt only: which stage's best epoch the model is
            "rng": _get_rng(),
        }
        self._write(name, state)

    def _save_weights(self, name: str, model: torch.nn.Module, meta: dict[str, Any]) -> None:
        """A stage's best epoch: what the next stage (and a resumed run) starts from."""
        self._write(
            name,
            {
                "config": self.cfg.to_dict(),
                "stage": meta["stage"],
                "epoch": meta["epoch"],
                "model": model.state_dict(),
                "selected": meta,
            },
        )

    def _write(self, name: str, state: dict[str, Any]) -> None:
        tmp = self.out / f".{name}.tmp"
        torch.save(state, tmp)  # temp file + rename: a crash never leaves half a checkpoint
        os.replace(tmp, self.out / name)

    def _load(self, name: str) -> dict[str, Any]:
        path = self.out / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (was the run folder pruned?)")
        state = torch.load(path, map_location=self.device, weights_only=False)
        # Normalised, so a config written before a field was added still compares equal.
        try:
            written = from_data(TrainConfig, state["config"], "config").to_dict()
        except CardError:
            written = state["config"]
        if written != self.cfg.to_dict():
            raise ValueError(f"{path} was written by a different config; use a new --out")
        if "best" in state and not isinstance(state["best"], list):
            raise ValueError(
                f"{path} was written by an older edgescreen that kept no per-stage best "
                "weights; it cannot be resumed: train again with a new --out"
            )
        return state


def initial_weights(cfg: TrainConfig) -> dict[str, Any]:
    """What the backbone weights started from, for the card; says so plainly when nothing."""
    source = cfg.model.get("pretrained") or None
    if source is None:
        return {
            "source": "none",
            "statement": "trained from scratch: no pretrained (ImageNet) weights were loaded",
        }
    if source == "imagenet-lite":
        return {
            "source": "imagenet-lite",
            "statement": "backbone initialised from the EfficientNet-Lite ImageNet checkpoint",
        }
    path = Path(str(source))
    out: dict[str, Any] = {
        "source": "file",
        "file": path.name,
        "statement": f"backbone initialised from the local weights file {path.name}",
    }
    if path.is_file():
        from edgescreen.runtime.card import sha256_file

        out["sha256"] = sha256_file(path)
    return out


def stage_best_file(stage: int) -> str:
    """The run folder's file holding stage `stage`'s (0-based) best epoch weights."""
    return f"best.stage{stage}.pt"


def select_card(card: ModelCard, select: str) -> ModelCard:
    """The card read through `select` alone: an exported output as its own spec, a
    training-only output (AG-CNN's global_scores) as the task's scores, same activation."""
    heat = tuple(o for o in card.outputs if o.role == "heatmap")
    own = next((o for o in card.outputs if o.name == select), None)
    if own is None:
        scores = card.output("scores")
        activation = scores.activation if scores else "softmax"
        if card.task == "cxr_findings":
            activation = "sigmoid"
        own = OutputSpec(select, "scores", activation)
    if own.role == "heatmap":
        raise ValueError(f"select {select!r} is a heat map, which has no validation metric")
    return card.replace(outputs=(own, *heat))


# -- task metrics and thresholds ----------------------------------------------------------
def _targets(samples: Sequence[Sample]) -> np.ndarray:
    return np.array([s.label for s in samples])


def task_metrics(card: ModelCard, outputs: dict[str, np.ndarray], y: np.ndarray) -> dict[str, Any]:
    """The runtime's task metrics; an undefined AUROC counts as 0 when choosing the best epoch."""
    out = evaluation.task_metrics(card, outputs, y)
    if card.task == "cxr_findings":
        out["metric"] = out["mean_auroc"] = _finite(out["mean_auroc"])
    return out


def fit_thresholds(
    card: ModelCard, outputs: dict[str, np.ndarray], y: np.ndarray, target_sensitivity: float
):
    """QWK-optimal cut points, referral threshold for a sensitivity, per-finding Youden."""
    dec = card.decision
    changes: dict[str, Any] = {}
    if card.task == "dr_grading":
        value = card.output("grade_value")
        if value is not None:
            changes["cutpoints"] = tuple(
                float(c)
                for c in metrics.optimise_qwk_cutpoints(
                    y,
                    np.ravel(outputs[value.name]),
                    len(card.labels),
                    init=np.array(DEFAULT_CUTPOINTS),
                )
            )
        scores = card.output("scores")
        referable = y >= dec.refer_min_grade
        if scores is not None and referable.any() and (~referable).any():
            p = activate(outputs[scores.name], scores.activation)[:, dec.refer_min_grade :].sum(
                axis=1
            )
            changes["referable_threshold"] = float(
                metrics.threshold_for_sensitivity(referable, p, target_sensitivity)
            )
    elif card.task == "cxr_findings":
        probs = activate(outputs[card.output("scores").name], "sigmoid")
        thresholds = dict(dec.thresholds)
        for k, label in enumerate(card.labels):
            if 0 < y[:, k].sum() < len(y):
                thresholds[label] = float(
                    np.clip(metrics.youden_threshold(y[:, k], probs[:, k]), 0.0, 1.0)
                )
        changes["thresholds"] = thresholds
    return dataclasses.replace(dec, **changes)


# -- helpers -------------------------------------------------------------------------------
def _stage_hook(model: torch.nn.Module, stage: StageConfig) -> torch.nn.Module:
    """Run the stage's `before` method; a method may return a new model (M²CNN's next cell)."""
    if not stage.before:
        return model
    hook = getattr(model, stage.before, None)
    if hook is None:
        raise ValueError(
            f"stage {stage.name!r}: the {type(model).__name__} model has no method {stage.before!r}"
        )
    result = hook()
    return result if isinstance(result, torch.nn.Module) else model


def _epoch_seed(seed: int, stage: int, epoch: int) -> int:
    return (seed * 1_000_003 + stage * 10_007 + epoch) & 0x7FFFFFFF


def _json_number(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _finite(value: float) -> float:
    return float(value) if np.isfinite(value) else 0.0


def _get_rng() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _versions() -> dict[str, str]:
    import timm

    from edgescreen.runtime import __version__

    return {
        "edgescreen": __version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
    }


def _progress(loader, label: str, enabled: bool):
    if not enabled:
        yield from loader
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
    ) as bar:
        task = bar.add_task(label, total=len(loader))
        for item in loader:
            yield item
            bar.advance(task)


def train(cfg: TrainConfig, data, out_dir, *, resume: bool = False, **kwargs: Any) -> TrainResult:
    return Trainer(cfg, data, out_dir, **kwargs).run(resume=resume)
