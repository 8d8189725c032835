"""Every family's tiny config, trained on synthetic data: time, validation metric, and what
selected each stage's best epoch.

    python -m edgescreen.benchmarks.families [--families ran agcnn ...] [--work DIR] \\
        [--out benchmarks/results] [--drift [--int8-search]]

Each family trains its shipped `<family>-tiny` config as is (epochs, sizes, threads) on
photos `edgescreen synth` makes for its modality (fundus 320 at 192 px, OCT 800 at 96 px,
chest X-ray 240 at 96 px; fixed seeds), with the trainer's patient-level split. The
synthetic sets are easy and small: the numbers show that each family trains end to end
and what its stages select, not how it does on real images (see docs/models.md).

With --drift each trained model is also exported (FP32, FP16, both INT8 forms; calibrated
on its training split) and every precision's drift against FP32 is measured on its
held-out test split (`edgescreen.benchmarks.drift`), one table per family. The drift gate
is recorded, not enforced: a family that misses it is still measured and reported.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .report import fmt, write_named
from .system import describe, machine_tag

if TYPE_CHECKING:  # export pulls in torch and onnx: imported only when --drift runs
    from edgescreen.export.bundle import ExportReport

# family -> (synthetic kind, loader task, images, side)
DATA = {
    "multitask": ("fundus", "dr", 320, 192),
    "zoomin": ("fundus", "dr", 320, 192),
    "m2cnn": ("fundus", "dr", 320, 256),
    "ran": ("oct", "oct", 800, 96),
    "agcnn": ("cxr", "cxr", 240, 96),
}


def train_family(family: str, work: Path, images: int | None = None) -> dict[str, Any]:
    """The family's JSON row (time, validation metric, stage selection)."""
    return _train(family, work, images)[0]


def _train(family: str, work: Path, images: int | None = None) -> tuple[dict[str, Any], Path]:
    """The family's JSON row and its checkpoint (splits.json beside it, for --drift).

    `images` replaces DATA's count (a bigger test split for a tighter drift interval)."""
    from edgescreen.train.config import load_config
    from edgescreen.train.data.loaders import load_generic_csv
    from edgescreen.train.data.synth import synthesize
    from edgescreen.train.loop import Trainer

    kind, task, n, side = DATA[family]
    n = images or n
    data_dir = work / f"{kind}-{n}-{side}"
    if not (data_dir / "labels.csv").is_file():
        synthesize(kind, n, data_dir, seed=11, size=side)
    cfg = load_config(f"{family}-tiny")
    start = time.perf_counter()
    cpu = time.process_time()
    result = Trainer(
        cfg,
        load_generic_csv(data_dir / "labels.csv", task),
        work / f"run-{family}",
        cache_dir=work / "cache",
        progress=False,
    ).run()
    stages = result.card.data_manifest.get("training", {}).get("stages", [])
    summary = {
        "family": family,
        "config": cfg.name,
        "images": n,
        "side": side,
        "seconds": round(time.perf_counter() - start, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1),
        "metric": result.metric_name,
        "val_metric": result.val_metric,
        "stages": stages,
        "history": [
            {k: row.get(k) for k in ("stage", "epoch", "loss", "select", "select_metric", "metric")}
            for row in result.history
        ],
    }
    return summary, result.checkpoint


# Table order: the reference first, then each reduced precision (the card lists FP16 first).
ORDER = ("fp32", "fp16", "int8", "int8-cpu")


def split_spec(checkpoint: Path, part: str) -> str:
    """The trainer's own patient-level split, as export reads it (hash-checked)."""
    return f"split:{checkpoint.parent / 'splits.json'}:{part}"


def export_for_drift(checkpoint: Path, bundle: Path, *, int8_search: bool = False) -> ExportReport:
    """FP32, FP16 and both INT8 forms, as the demo exports (benchmarks/demo.py export_step)."""
    from edgescreen.export import export_bundle

    return export_bundle(
        checkpoint,
        bundle,
        precisions=("fp32", "fp16", "int8"),
        # Calibrate on training patients, judge on held-out ones: never the same images.
        calib=split_spec(checkpoint, "train"),
        eval=split_spec(checkpoint, "test"),
        # Measure and report a family that misses the gate rather than refuse its bundle.
        allow_drift=True,
        # Everything here is synthetic by design, calibration included (module doc).
        allow_synthetic_calibration=True,
        progress=False,
        # The search tunes on the run's validation split, disjoint from both of the above.
        int8_search=int8_search,
    )


def drift_family(
    checkpoint: Path, bundle: Path, *, int8_search: bool = False, threads: int = 2
) -> dict[str, Any]:
    """Export the trained model, then every shipped precision's drift on its test split."""
    from edgescreen.benchmarks.drift import drift_rows
    from edgescreen.export.data import resolve

    start = time.perf_counter()
    report = export_for_drift(checkpoint, bundle, int8_search=int8_search)
    exported = time.perf_counter()
    test = resolve(split_spec(checkpoint, "test"), what="evaluation").samples
    rows = sorted(
        drift_rows(bundle, test, threads=threads),
        key=lambda r: ORDER.index(r["precision"]) if r["precision"] in ORDER else len(ORDER),
    )
    return {
        "bundle": str(bundle),
        "evaluation": split_spec(checkpoint, "test"),
        "test_images": len(test),
        "int8_search": int8_search,
        "gate": report.gate,
        "export_seconds": round(exported - start, 1),
        "drift_seconds": round(time.perf_counter() - exported, 1),
        "rows": rows,
    }


def markdown(data: dict[str, Any]) -> str:
    lines = [
        f"# Tiny configs on synthetic data, {data['date']}",
        "",
        f"Machine: {data['machine'].get('cpu')}, {data['machine'].get('cores')} cores. "
        "Command: `python -m edgescreen.benchmarks.families`.",
        "",
        "| family | images | train s (CPU s) | validation metric | stage: selected by, best epoch, metric |",
        "|---|---|---|---|---|",
    ]
    for r in data["families"]:
        stages = "; ".join(
            f"{s.get('name')}: {s.get('select')}, {s.get('best_epoch')}, "
            f"{(s.get('best_metric') or 0):.3f}"
            for s in r["stages"]
        )
        lines.append(
            f"| {r['family']} | {r['images']} @ {r['side']} px | {r['seconds']:.0f} "
            f"({r['cpu_seconds']:.0f}) | {r['metric']} {r['val_metric']:.3f} | {stages} |"
        )
    text = "\n".join(lines) + "\n"
    # Only runs with --drift carry a "drift" entry: without it the output is as it was.
    return text + "".join(
        drift_table(r["family"], r["drift"]) for r in data["families"] if "drift" in r
    )


def _flips(r: dict[str, Any]) -> str:
    """`k/n (Wilson 95% CI a-b%)`: on a few dozen test images the interval is the finding."""
    text = f"{r['flips']}/{r['images']}"
    ci = r.get("flip_rate_ci95")
    if ci:
        text += f" ({fmt(100 * ci[0], 1)}-{fmt(100 * ci[1], 1)}%)"
    return text


def _signed(value: Any) -> str:
    """`+0.0123`: a difference reads as one only with its sign."""
    return "–" if value is None or math.isnan(value) else f"{value:+.4f}"


def drift_row_cells(r: dict[str, Any]) -> list[str]:
    """One drift_rows row as the table's cells (dashes for what the task does not have)."""
    delta = f"{_signed(r.get('delta'))} ({_signed(r.get('ci_low'))}, {_signed(r.get('ci_high'))})"
    return [
        r["precision"],
        r["metric_name"],
        fmt(r.get("metric"), 4),
        delta,
        _flips(r),
        fmt(r.get("flips_in_fp16_band"), 0),
        fmt(r.get("label_changes"), 0),  # none for CXR: its argmax is no result
        f"{fmt(r.get('median_abs_dp'), 4)} / {fmt(r.get('p95_abs_dp'), 4)}",
        str(r["images"]),
    ]


def drift_table(family: str, drift: dict[str, Any]) -> str:
    """One family's drift against FP32, as markdown, with what was measured on what."""
    gate = drift["gate"]
    verdict = "passed" if gate.get("passed") else "missed (recorded, not enforced)"
    lines = [
        "",
        f"## {family}: drift against FP32 on {drift['test_images']} held-out test images",
        "",
        f"Export calibrated on the run's training split; INT8 search "
        f"{'on' if drift['int8_search'] else 'off'}; drift gate {verdict}.",
        "",
        # Escaped pipes: a bare |Δp| would split the header into extra columns.
        "| precision | metric | value | Δ vs fp32 (95% CI) | flips (Wilson 95% CI) | "
        "flips in FP16 band | label changes | median / p95 \\|Δp\\| | images |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(drift_row_cells(r)) + " |" for r in drift["rows"]]
    if gate.get("violations"):
        lines += ["", "Drift gate violations: " + "; ".join(gate["violations"]) + "."]
    return "\n".join(lines) + "\n"


def run_family(family: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train one family and, with --drift, export and measure it while its run is on disk."""
    row, checkpoint = _train(family, work, args.images)
    print(json.dumps({k: row[k] for k in ("family", "seconds", "val_metric")}))
    if args.drift:
        row["drift"] = drift_family(
            checkpoint, work / f"bundle-{family}", int8_search=args.int8_search
        )
        print(json.dumps({"family": family, "drift_gate_passed": row["drift"]["gate"]["passed"]}))
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--families", nargs="+", choices=sorted(DATA), default=list(DATA))
    p.add_argument("--work", type=Path, default=None, help="data and runs (default: a temp dir)")
    p.add_argument("--out", type=Path, default=None, help="write JSON + markdown here")
    p.add_argument(
        "--drift",
        action="store_true",
        help="also export FP32/FP16/INT8 and measure drift against FP32 on the test split",
    )
    p.add_argument(
        "--int8-search", action="store_true", help="with --drift: accuracy-aware INT8 PTQ"
    )
    p.add_argument(
        "--images",
        type=int,
        default=None,
        help="synthetic images per family instead of the table's (e.g. 1340 for ~200 test)",
    )
    args = p.parse_args(argv)
    if args.images is not None and args.images < 40:
        p.error("--images must be at least 40 (the trainer's splits need a few per class)")
    if args.int8_search and not args.drift:
        p.error("--int8-search only applies with --drift")
    with tempfile.TemporaryDirectory(prefix="edgescreen-families-") as scratch:
        work = args.work or Path(scratch)
        rows = [run_family(family, work, args) for family in args.families]
    data = {
        "benchmark": "families",
        "date": date.today().isoformat(),
        "machine": describe(0),
        "families": rows,
    }
    text = markdown(data)
    print(text)
    if args.out is not None:
        write_named(data, text, args.out, f"{machine_tag()}-{data['date']}-families")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
