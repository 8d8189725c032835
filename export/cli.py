"""`edgescreen export` and `edgescreen engine`: import-light (no torch, no TensorRT until they run)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .torch_trt import add_torch_trt_action

EXIT_OK, EXIT_ERROR, EXIT_DRIFT = 0, 2, 3
INT8_SEARCH_DEFAULT = False


def add_export_command(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export",
        help="export a trained checkpoint to a verified model bundle (needs the export extra)",
        description="Export CHECKPOINT (model.pt or its run folder) to TorchScript, ONNX FP32/FP16 and "
        "calibrated INT8 (Q/DQ), verify every file against PyTorch and FP32, gate the drift "
        "and write the bundle atomically. DATA is a load_dataset spec (FORMAT:PATH or a folder) "
        "or split:RUN_DIR/splits.json:train|val|test[=FORMAT:PATH] (a training run's split).",
    )
    p.add_argument("checkpoint", type=Path, metavar="CHECKPOINT")
    p.add_argument(
        "--out", required=True, type=Path, help="bundle folder (replaced only when complete)"
    )
    p.add_argument(
        "--precision",
        default="fp32,fp16,int8",
        help="comma-separated subset of fp32,fp16,int8 (default: all)",
    )
    p.add_argument(
        "--calib",
        default=None,
        metavar="DATA",
        help="calibration images (default: the run's training split when splits.json is beside "
        "the checkpoint)",
    )
    p.add_argument(
        "--eval",
        default=None,
        metavar="DATA",
        help="evaluation images (default: the run's test split)",
    )
    p.add_argument("--calib-method", choices=("entropy", "percentile", "minmax"), default="entropy")
    p.add_argument(
        "--calib-size", type=int, default=512, help="calibration images, stratified (default 512)"
    )
    p.add_argument(
        "--allow-drift",
        action="store_true",
        help="write the bundle even when drift exceeds the card's limits (recorded in the card)",
    )
    p.add_argument(
        "--allow-synthetic-calibration",
        action="store_true",
        help="accept synthetic (or generated) calibration images for a real-data model (recorded)",
    )
    p.add_argument(
        "--int8-search",
        action=argparse.BooleanOptionalAction,
        default=INT8_SEARCH_DEFAULT,
        help="accuracy-aware INT8: per form, choose the calibration method and keep the fewest "
        "most harmful layers float until the drift limits hold on the validation split "
        f"(default: {'on' if INT8_SEARCH_DEFAULT else 'off'})",
    )
    p.add_argument(
        "--search-data",
        default=None,
        metavar="DATA",
        help="validation images the search judges on (default: the run's val split)",
    )
    p.add_argument(
        "--qat",
        type=int,
        default=0,
        metavar="EPOCHS",
        help="fine-tune with INT8 fake quantization (NVIDIA ModelOpt) for EPOCHS before "
        "exporting Q/DQ (needs nvidia-modelopt, in the export extra)",
    )
    p.add_argument(
        "--diagnose",
        type=Path,
        default=None,
        metavar="DIR",
        help="write the per-layer INT8 error report (markdown, JSON, PNG) of the new bundle "
        "on the validation images to DIR",
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run_export)
    return p


def run_export(args: argparse.Namespace) -> int:
    from .bundle import DriftGateError, export_bundle

    precisions = tuple(p.strip() for p in args.precision.split(",") if p.strip())
    try:
        report = export_bundle(
            args.checkpoint,
            args.out,
            precisions=precisions,
            calib=args.calib,
            eval=args.eval,
            calib_method=args.calib_method,
            calib_size=args.calib_size,
            allow_drift=args.allow_drift,
            allow_synthetic_calibration=args.allow_synthetic_calibration,
            progress=not args.json,
            threads=args.threads,
            int8_search=args.int8_search,
            search_data=args.search_data,
            qat_epochs=args.qat,
        )
    except DriftGateError as exc:
        import sys

        print(f"edgescreen export: error: {exc}", file=sys.stderr)
        return EXIT_DRIFT
    if args.diagnose is not None:
        _diagnose(args, report)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
        return EXIT_OK
    _print(report)
    return EXIT_OK


def _diagnose(args: argparse.Namespace, report) -> None:
    from .bundle import default_split
    from .data import prepare_samples, resolve
    from .diagnose import diagnose_bundle

    spec = args.search_data or default_split(Path(args.checkpoint), "val")
    data = resolve(spec, what="diagnosis")
    if data is None:
        raise SystemExit(
            "edgescreen export: --diagnose needs --search-data DATA (validation images)"
        )
    x = prepare_samples(data.samples, report.card)
    diagnose_bundle(report.bundle, x, args.diagnose, source=data.source, threads=args.threads)


def _print(report) -> None:
    from rich.console import Console
    from rich.table import Table

    from .bundle import row_cells

    table = Table(title=f"edgescreen export: {report.card.name} -> {report.bundle}")
    for col in ("precision", "file", "size MB", "metric", "Δ vs fp32 (95% CI)", "flips", "max err"):
        table.add_column(col)
    for row in report.rows:
        table.add_row(*row_cells(row))
    console = Console(highlight=False)
    console.print(table)
    gate = report.gate
    if gate["violations"]:
        console.print(
            "[yellow]drift gate FAILED, bundle written because of --allow-drift:[/yellow]"
        )
        for v in gate["violations"]:
            console.print(f"  {v}")
    elif gate["measured"]:
        console.print("[green]drift gate passed[/green]")
    if report.calibration_cache_hit is not None:
        console.print(
            f"calibration ranges: {'reused from' if report.calibration_cache_hit else 'computed, cached in'} "
            f"{report.calibration_cache}"
        )
    for row in report.rows:
        if row["flips"]:
            console.print(
                f"{row['precision']} decision flips: {', '.join(Path(f).name for f in row['flips'][:10])}"
                + (" …" if len(row["flips"]) > 10 else "")
            )


# -- engine ------------------------------------------------------------------------------------
def cmd_engine_build(args: argparse.Namespace) -> int:
    from .trt import build_engine

    path = build_engine(
        args.bundle,
        args.precision,
        workspace_mb=args.workspace,
        dla_core=args.dla,
        timing_cache=not args.no_timing_cache,
        int8_mode=args.int8_mode,
        force=args.force,
        verbose=args.verbose,
    )
    print(path)
    return 0


def add_engine_command(sub: Any) -> argparse.ArgumentParser:
    """`edgescreen engine build BUNDLE [--precision] [--workspace MB] [--dla N]`."""
    parser = sub.add_parser(
        "engine",
        help="build TensorRT engines on this device",
        description="build TensorRT engines on this device",
    )
    esub = parser.add_subparsers(dest="engine_command", required=True, metavar="ACTION")
    b = esub.add_parser(
        "build",
        help="build (or reuse) the engine for a bundle on this device",
        description="build (or reuse) the engine for a bundle on this device",
    )
    b.add_argument("bundle", type=Path)
    b.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16")
    b.add_argument(
        "--workspace", type=int, default=1024, metavar="MB", help="builder workspace (default 1024)"
    )
    b.add_argument(
        "--dla",
        type=int,
        default=None,
        metavar="N",
        help="build for DLA core N (Jetson Orin AGX/NX)",
    )
    b.add_argument(
        "--int8-mode",
        choices=("auto", "explicit", "implicit"),
        default="auto",
        help="auto: Q/DQ on TensorRT 9+, calibrator on 8.x",
    )
    b.add_argument(
        "--force", action="store_true", help="rebuild even when a matching engine exists"
    )
    b.add_argument("--no-timing-cache", action="store_true")
    b.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    b.set_defaults(func=cmd_engine_build)
    add_torch_trt_action(esub)
    return parser
