"""`edgescreen` command line. Thin: every subcommand calls a public API.

Subcommands of the other stages are listed in STAGE_COMMANDS; their modules are
import-light, so the runtime's commands start fast and never import torch.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .backends import backend_names
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
            args.bundle,
            precision=args.precision,
            backend=args.backend,
            threads=args.threads,
            dla_core=args.dla,
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
    if args.heatmap is not None:  # after the results: a problem here never hides them
        _write_heatmaps(results, args.heatmap, screener.card)
    return EXIT_SOME_FAILED if any(r.status == "failed" for r in results) else EXIT_OK


HEATMAP_SIDE = 384


def _write_heatmaps(results, folder: Path, card) -> None:
    """One `<photo>.heatmap.jpg` per screened photo: its heatmap over what the model saw.

    The photo is decoded again here (only when asked for): screening keeps no pixels.
    """
    import cv2
    import numpy as np

    from .overlay import overlay
    from .prepare import decode_for

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"edgescreen screen: cannot write heatmaps to {folder}: {exc}", file=sys.stderr)
        return
    taken: set[str] = set()
    for i, r in enumerate(results):
        if r.status != "ok" or r.heatmap is None:
            continue
        name = f"{Path(r.image).name}.heatmap.jpg"
        if name in taken:  # same file name in two folders: keep both, say which is which
            name = f"{Path(r.image).name}.{i}.heatmap.jpg"
        taken.add(name)
        try:
            image = decode_for(r.image, card).image
            bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
            if bgr.dtype != np.uint8:
                bgr = cv2.convertScaleAbs(bgr, alpha=255.0 / 65535.0)
            m = r.quality.get("measurements", {})
            picture = overlay(
                bgr, r.heatmap, m, crop_to_disc=card.preprocessing.crop_to_disc, side=HEATMAP_SIDE
            )
            if not cv2.imwrite(str(folder / name), picture):
                raise OSError(f"cannot write {folder / name}")
        except (EdgescreenError, OSError) as exc:
            print(f"edgescreen screen: no heatmap for {r.image}: {exc}", file=sys.stderr)


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
    p.add_argument("--backend", choices=("auto", *backend_names()), default="auto")
    p.add_argument(
        "--threads", type=int, default=None, help="inference threads (default: backend's own)"
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--dla", type=int, default=None, metavar="N", help="TensorRT engine of DLA core N (Orin)"
    )
    p.add_argument(
        "--heatmap",
        type=Path,
        default=None,
        metavar="DIR",
        help="write each photo's heatmap overlay to DIR/<photo>.heatmap.jpg",
    )
    p.add_argument("--json", action="store_true", help="print a JSON array, one object per image")

    p = add("quality", cmd_quality, "run the image quality gate only")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    p.add_argument("--modality", choices=("fundus", "oct", "cxr"), default="fundus")
    p.add_argument("--json", action="store_true")

    p = add("info", cmd_info, "show a bundle's model card")
    p.add_argument("bundle", type=Path)
    p.add_argument("--verify", action="store_true", help="check the sha256 of every artifact")
    p.add_argument("--json", action="store_true")

    _add_stage_commands(sub)
    return parser


@dataclass(frozen=True)
class StageCommand:
    module: str  # import-light module with an add_*_command(sub) function
    adder: str
    extra: str | None  # the edgescreen extra it needs, or None for the runtime's own
    needs: tuple[str, ...] = ()  # packages that extra brings, checked without importing them


# Every subcommand that lives outside runtime/cli.py, named here so none can vanish silently:
# a missing extra gives a command that says what to install, a broken import fails loudly.
STAGE_COMMANDS: dict[str, StageCommand] = {
    "batch": StageCommand("edgescreen.runtime.batch.cli", "add_batch_command", None),
    "selftest": StageCommand("edgescreen.runtime.golden", "add_selftest_command", None),
    # Regional hubs: the repository writer needs only the runtime; `serve` runs the
    # tritonserver binary of the separate .venv-triton environment (runtime/triton/server.py).
    "triton": StageCommand("edgescreen.runtime.triton.cli", "add_triton_command", None),
    "serve": StageCommand("edgescreen.runtime.triton.cli", "add_serve_command", None),
    # Builds TensorRT engines on the device: needs TensorRT when run, never torch.
    "engine": StageCommand("edgescreen.export.cli", "add_engine_command", None),
    "synth": StageCommand("edgescreen.train.cli", "add_synth_command", None),
    "train": StageCommand(
        "edgescreen.train.cli", "add_train_command", "train", ("torch", "timm", "albumentations")
    ),
    "export": StageCommand(
        "edgescreen.export.cli", "add_export_command", "export", ("torch", "onnx")
    ),
    "bench": StageCommand("edgescreen.benchmarks.cli", "add_bench_command", None),
    "demo": StageCommand(
        "edgescreen.benchmarks.demo", "add_demo_command", "export", ("torch", "onnx")
    ),
}


def installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def _add_stage_commands(sub) -> None:
    for name, stage in STAGE_COMMANDS.items():
        missing = [p for p in stage.needs if not installed(p)]
        if missing:
            _add_missing_extra(sub, name, stage.extra, missing)
        else:
            getattr(importlib.import_module(stage.module), stage.adder)(sub)


def _add_missing_extra(sub, name: str, extra: str | None, missing: list[str]) -> None:
    hint = f"needs the {extra} extra: pip install 'edgescreen[{extra}]'"
    p = sub.add_parser(
        name, help=f"({hint})", description=f"edgescreen {name} {hint}", add_help=True
    )
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def refuse(_args: argparse.Namespace) -> int:
        print(f"edgescreen {name}: {hint} (missing: {', '.join(missing)})", file=sys.stderr)
        return EXIT_ERROR

    p.set_defaults(func=refuse, takes_any_arguments=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "takes_any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
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
