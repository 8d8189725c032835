"""`edgescreen train` and `edgescreen synth`: import-light, so building the CLI parser never imports torch."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_train_command(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from a config (needs the train extra)",
        description="Train a screening model; writes model.pt, card.json and checkpoints to --out.",
    )
    p.add_argument(
        "--config", required=True, help="YAML path or shipped config name, e.g. multitask-tiny"
    )
    p.add_argument(
        "--data",
        required=True,
        action="append",
        help="FORMAT:PATH or a folder with labels.csv (repeat to combine sets)",
    )
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="prepared-image cache (default ~/.cache/edgescreen)",
    )
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    p.add_argument(
        "--folds",
        type=int,
        default=None,
        metavar="K",
        help="stratified patient K-fold: train K models under --out/fold-N (each validated on "
        "its held-out patients, the test split untouched), then their average as one model "
        "(--out/model.pt, exported like any other)",
    )
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .data.loaders import load_dataset
    from .loop import train

    cfg = load_config(args.config)
    sets = [load_dataset(spec) for spec in args.data]
    for ls in sets:
        print(ls.summary())
    if args.folds is not None:
        return _run_folds(cfg, sets, args)
    result = train(
        cfg,
        sets,
        args.out,
        resume=args.resume,
        device=args.device,
        cache_dir=args.cache,
        progress=not args.json,
    )
    summary = {
        "checkpoint": str(result.checkpoint),
        "card": str(result.out_dir / "card.json"),
        "metric": result.metric_name,
        "value": result.val_metric,
        "seconds": round(result.seconds, 1),
        "validation": result.card.metrics.get("validation", {}),
    }
    print(
        json.dumps(summary, indent=2)
        if args.json
        else f"done in {result.seconds:.0f}s: validation {result.metric_name} {result.val_metric:.4f} -> {result.checkpoint}"
    )
    return 0


def _run_folds(cfg, sets, args: argparse.Namespace) -> int:
    from edgescreen.runtime.errors import EdgescreenError

    from .kfold import train_folds

    if args.folds < 2:
        raise EdgescreenError(f"--folds must be at least 2, got {args.folds}")
    result = train_folds(
        cfg,
        sets,
        args.out,
        folds=args.folds,
        resume=args.resume,
        device=args.device,
        cache_dir=args.cache,
        progress=not args.json,
    )
    summary = {
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "folds": [f.to_dict() for f in result.folds],
        "out_of_fold": {k: v for k, v in result.oof.items() if k != "metric_name"},
        "test_images": result.test_images,
        "seconds": round(result.seconds, 1),
    }
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    for f in result.folds:
        print(
            f"fold {f.fold}: validation {f.metric_name} {f.val_metric:.4f} on {f.val_images} "
            f"images ({len(f.val_patients)} patients) -> {f.out_dir / 'model.pt'}"
        )
    name = result.oof.get("metric_name", "metric")
    where = result.checkpoint or f"{result.out_dir} (no ensemble for {cfg.family})"
    print(
        f"done in {result.seconds:.0f}s: out-of-fold {name} {result.oof['metric']:.4f}, "
        f"{result.test_images} test images held out -> {where}"
    )
    return 0


def add_synth_command(sub) -> None:
    p = sub.add_parser(
        "synth",
        help="generate a synthetic labelled data set (needs no torch)",
        description="generate a synthetic labelled data set (needs no torch)",
    )
    p.add_argument("modality", choices=("fundus", "oct", "cxr"))
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256)
    p.set_defaults(func=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    from .data.synth import synthesize

    print(
        synthesize(args.modality, args.n, args.out, seed=args.seed, size=args.size, progress=True)
    )
    return 0
