"""`edgescreen` command line. Thin: every subcommand calls a public API.

Subcommands of the training and export stages are imported only when run, so the
runtime's commands start fast and never import torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .errors import EdgescreenError

EXIT_OK, EXIT_SOME_FAILED, EXIT_ERROR = 0, 1, 2


def _console():
    from rich.console import Console

    return Console(stderr=False, highlight=False)


def _progress(total: int, label: str, enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not enabled or total < 2,
        transient=True,
        console=_console(),
    )


# -- screen ------------------------------------------------------------------------------------
def cmd_screen(args: argparse.Namespace) -> int:
    from .screen import Screener

    results = []
    with (
        Screener(
            args.bundle, precision=args.precision, backend=args.backend, threads=args.threads
        ) as screener,
        _progress(len(args.images), "screening", not args.json) as bar,
    ):
        task = bar.add_task("screen", total=len(args.images))
        for result in screener.screen_many(args.images, batch_size=args.batch_size):
            results.append(result)
            bar.advance(task)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        _print_screen_table(results)
    return EXIT_SOME_FAILED if any(r.status == "failed" for r in results) else EXIT_OK


def _print_screen_table(results) -> None:
    from rich.table import Table

    table = Table(title="edgescreen: screening results (not for clinical use with demo models)")
    for col in ("image", "status", "result", "decision", "action"):
        table.add_column(col, overflow="fold")
    for r in results:
        if r.grade is not None:
            what = f"grade {r.grade} ({r.label})"
        elif r.positive_findings:
            what = ", ".join(r.positive_findings)
        else:
            what = r.label or ""
        table.add_row(Path(r.image).name, r.status, what, r.decision, r.action)
    _console().print(table)


# -- quality -----------------------------------------------------------------------------------
def cmd_quality(args: argparse.Namespace) -> int:
    from .errors import ImageError
    from .imageio import load_image
    from .quality import assess_quality

    rows = []
    for path in args.images:
        try:
            report = assess_quality(load_image(path), args.modality)
            rows.append({"image": str(path), **report.to_dict()})
        except ImageError as exc:
            rows.append(
                {"image": str(path), "gradable": False, "reasons": [str(exc)], "error": str(exc)}
            )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        from rich.table import Table

        table = Table(title=f"quality gate ({args.modality})")
        for col in ("image", "gradable", "reasons"):
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(
                Path(row["image"]).name,
                "yes" if row["gradable"] else "NO",
                "; ".join(row["reasons"]),
            )
        _console().print(table)
        bad = sum(not r["gradable"] for r in rows)
        _console().print(f"{len(rows) - bad} of {len(rows)} gradable")
    return EXIT_OK


# -- info --------------------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    from .card import bundle_sha256, load_card, verify_artifacts

    card = load_card(args.bundle)
    if args.verify:
        verify_artifacts(args.bundle, card)
    if args.json:
        print(
            json.dumps(
                {
                    "card": card.to_dict(),
                    "bundle_sha256": bundle_sha256(card),
                    "verified": bool(args.verify),
                },
                indent=2,
            )
        )
        return EXIT_OK
    console = _console()
    console.print(
        f"[bold]{card.name}[/bold]  task={card.task} family={card.family} modality={card.modality}"
    )
    console.print(
        f"input {card.input.name} {list(card.input.shape)} {card.input.colour}; labels: {', '.join(card.labels)}"
    )
    console.print(f"intended use: {card.intended_use}")
    for key, art in card.artifacts.items():
        console.print(
            f"  {key:<14} {art.file:<24} {art.format:<12} {art.precision:<5} {art.target:<8} {art.sha256[:12]}"
        )
    if args.verify:
        console.print(
            f"[green]verified[/green]: all {len(card.artifacts)} artifacts match their sha256"
        )
    console.print(f"bundle sha256 {bundle_sha256(card)}")
    return EXIT_OK


# -- synth -------------------------------------------------------------------------------------
def cmd_synth(args: argparse.Namespace) -> int:
    from edgescreen.train.data.synth import synthesize

    csv_path = synthesize(
        args.modality, args.n, Path(args.out), seed=args.seed, size=args.size, progress=True
    )
    print(csv_path)
    return EXIT_OK


# -- parser ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgescreen",
        description="Train, export and run medical screening models on edge hardware.",
    )
    parser.add_argument("--version", action="version", version=f"edgescreen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, fn: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=fn)
        return p

    p = add("screen", cmd_screen, "screen images with a model bundle")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    p.add_argument("--bundle", required=True, type=Path)
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32")
    p.add_argument("--backend", choices=("auto", "onnxruntime", "tensorrt"), default="auto")
    p.add_argument(
        "--threads", type=int, default=None, help="inference threads (default: backend's own)"
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", action="store_true", help="print a JSON array, one object per image")

    p = add("quality", cmd_quality, "run the image quality gate only")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    p.add_argument("--modality", choices=("fundus", "oct", "cxr"), default="fundus")
    p.add_argument("--json", action="store_true")

    p = add("info", cmd_info, "show a bundle's model card")
    p.add_argument("bundle", type=Path)
    p.add_argument("--verify", action="store_true", help="check the sha256 of every artifact")
    p.add_argument("--json", action="store_true")

    p = add("synth", cmd_synth, "generate a synthetic labelled data set (needs no torch)")
    p.add_argument("modality", choices=("fundus", "oct", "cxr"))
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256)
    _add_stage_commands(sub)
    return parser


def _add_stage_commands(sub) -> None:
    """Commands of the other stages, when their packages are installed; each module is import-light."""
    import importlib

    for module, fn in (
        ("edgescreen.runtime.batch.cli", "add_batch_command"),
        ("edgescreen.train.cli", "add_train_command"),
        ("edgescreen.export.cli", "add_export_command"),
        ("edgescreen.benchmarks.cli", "add_bench_command"),
        ("edgescreen.benchmarks.demo", "add_demo_command"),
        ("edgescreen.export.trt", "add_engine_command"),
        ("edgescreen.runtime.golden", "add_selftest_command"),
    ):
        try:
            getattr(importlib.import_module(module), fn)(sub)
        except ModuleNotFoundError:
            continue


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EdgescreenError as exc:
        print(f"edgescreen {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
