"""`edgescreen bench BUNDLE --data DATA`: latency, pipeline and drift in one run, one results file."""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path
from typing import Any

FLOORS = {
    # name: (ratio or drift key, comparison, required)
    "INT8 CPU-form vs PyTorch eager FP32, batch 1": (
        "onnxruntime-int8-cpu-form_vs_eager_fp32_b1",
        ">=",
        4.0,
    ),
    "runtime pipeline vs naive pipeline": ("runtime_vs_naive", ">=", 4.0),
    # The pipeline runs the network on the CPU, where prepare and inference share the cores:
    # its bound is their summed work (the slower of the two applies with an accelerator).
    "runtime pipeline vs its bound (summed work, shared CPU cores)": (
        "runtime_vs_shared_bound",
        ">=",
        0.8,
    ),
    "INT8 (TensorRT form) |ΔQWK|": ("int8|abs_delta", "<=", 0.01),
    "INT8 (TensorRT form) decision flips": ("int8|flip_rate", "<=", 0.01),
    "INT8 (TensorRT form) median |Δ referral p|": ("int8|median_abs_dp", "<=", 0.005),
    "INT8 (TensorRT form) p95 |Δ referral p|": ("int8|p95_abs_dp", "<=", 0.02),
    "INT8 (CPU form) |ΔQWK|": ("int8-cpu|abs_delta", "<=", 0.01),
    "INT8 (CPU form) decision flips": ("int8-cpu|flip_rate", "<=", 0.01),
    "INT8 (CPU form) median |Δ referral p|": ("int8-cpu|median_abs_dp", "<=", 0.005),
    "INT8 (CPU form) p95 |Δ referral p|": ("int8-cpu|p95_abs_dp", "<=", 0.02),
    "FP16 |ΔQWK|": ("fp16|abs_delta", "<=", 0.002),
}


def evaluate_floors(data: dict[str, Any]) -> list[dict[str, Any]]:
    values: dict[str, float] = dict(data["ratios"])
    pipeline = data.get("pipeline") or {}
    for key in ("runtime_vs_naive", "runtime_vs_bound", "runtime_vs_shared_bound"):
        if key in pipeline:
            values[key] = pipeline[key]
    for row in data.get("drift", []):
        if row.get("delta") is not None:
            values[f"{row['precision']}|abs_delta"] = abs(row["delta"])
        for key in ("flip_rate", "median_abs_dp", "p95_abs_dp"):
            if row.get(key) is not None:
                values[f"{row['precision']}|{key}"] = row[key]
    floors = []
    for name, (key, op, required) in FLOORS.items():
        if key not in values:
            continue
        if (
            name.endswith("|ΔQWK|")
            and data.get("drift")
            and data["drift"][0].get("metric_name") != "qwk"
        ):
            continue  # the QWK floors are for DR models
        value = values[key]
        passed = value >= required if op == ">=" else value <= required
        floor = {
            "name": name,
            "value": value,
            "required": f"{op} {required}",
            "passed": bool(passed),
        }
        note = _drift_note(data, key)
        if note:
            floor["note"] = note
        floors.append(floor)
    return floors


def _drift_note(data: dict[str, Any], key: str) -> str | None:
    """What moved a drift floor's figure: how many results changed, and how many of them lay
    within FP16's own error band of a threshold (benchmarks/drift.py)."""
    if "|" not in key:
        return None
    precision, what = key.split("|")
    row = next((r for r in data.get("drift", []) if r["precision"] == precision), None)
    if row is None:
        return None
    n = row.get("images", "?")
    if what == "abs_delta" and "label_changes" in row:
        text = f"{row['label_changes']} of {n} grades changed"
        if "label_changes_in_fp16_band" in row:
            text += f", {row['label_changes_in_fp16_band']} of them within FP16's band"
        return text
    if what == "flip_rate" and "flips" in row:
        text = f"{row['flips']} of {n} decisions flipped"
        if "flips_in_fp16_band" in row:
            text += f", {row['flips_in_fp16_band']} of them within FP16's band"
        return text
    return None


def run_bench(
    bundle: Path,
    *,
    eval_samples=None,
    images: list[Path] | None = None,
    checkpoint: Path | None = None,
    out: Path | None = Path("benchmarks/results"),
    threads: int = 2,
    batches: tuple[int, ...] = (1, 8),
    min_seconds: float = 3.0,
    min_iters: int = 20,
    progress: bool = True,
    drift_label: str | None = None,
    camera: Path | None = None,
) -> dict[str, Any]:
    """Run the suites and (when `out` is set) write the results; returns the results dict."""
    from edgescreen.runtime.card import bundle_sha256, load_card

    from .latency import available_configs, measure
    from .pipeline import run_pipeline
    from .report import latency_ratios, write_results
    from .system import describe, machine_tag

    bundle = Path(bundle)
    card = load_card(bundle)
    configs = available_configs(bundle, checkpoint=checkpoint)
    rows = []
    jobs = [(c, b) for b in batches for c in configs]
    with _progress(progress) as bar:
        task = bar.add_task("latency", total=len(jobs))
        for config, batch in jobs:
            bar.update(task, description=f"latency {config.name} b{batch}")
            rows.append(
                measure(
                    bundle,
                    config,
                    batch,
                    threads=threads,
                    min_iters=min_iters,
                    min_seconds=min_seconds,
                    warmup=3,
                    checkpoint=checkpoint,
                )
            )
            bar.advance(task)
    data: dict[str, Any] = {
        "schema": "edgescreen-bench/1",
        "date": date.today().isoformat(),
        "machine": describe(threads),
        "bundle": {
            "name": card.name,
            "task": card.task,
            "family": card.family,
            "sha256": bundle_sha256(card),
            "input": list(card.input.shape),
        },
        "latency": rows,
        "ratios": latency_ratios(rows),
    }
    if images is None and eval_samples is not None:
        images = [s.path for s in eval_samples if s.path is not None]
    if images:
        int8 = any(a.precision == "int8" for a in card.artifacts.values())
        data["pipeline"] = run_pipeline(
            bundle,
            images,
            checkpoint=checkpoint,
            precision="int8" if int8 else "fp32",
            threads=threads,
        )
    if camera is not None:
        from .camera import run_camera

        int8 = any(a.precision == "int8" for a in card.artifacts.values())
        data["camera"] = run_camera(
            bundle, camera, precision="int8" if int8 else "fp32", threads=threads
        )
    if eval_samples:
        from .drift import drift_rows

        data["drift"] = drift_rows(bundle, eval_samples, progress=progress)
        data["drift_data"] = drift_label or f"{len(eval_samples)} evaluation images"
    data["floors"] = evaluate_floors(data)
    if out is not None:
        data["written"] = {k: str(v) for k, v in write_results(data, out, machine_tag()).items()}
    return data


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not enabled,
        transient=True,
    )


def add_bench_command(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="latency, pipeline and drift benchmarks over a bundle",
        description="Benchmark a bundle: latency per backend/precision, the end-to-end "
        "pipeline on real images, and drift of every precision against FP32.",
    )
    p.add_argument("bundle", type=Path)
    p.add_argument(
        "--data", help="labelled evaluation data: FORMAT:PATH or a folder with labels.csv"
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="model.pt from `edgescreen train`: adds the PyTorch baseline",
    )
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="use at most N evaluation images")
    p.add_argument(
        "--min-seconds", type=float, default=3.0, help="timing per latency configuration"
    )
    p.add_argument(
        "--camera",
        type=Path,
        default=None,
        metavar="DIR",
        help="camera-resolution originals (fundus-dr-srahim-fullres layout): pipeline beside "
        "their 768 px copies",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    samples = None
    if args.data:
        from edgescreen.train.data.loaders import load_dataset

        samples = load_dataset(args.data).samples[: args.limit]
    data = run_bench(
        args.bundle,
        eval_samples=samples,
        checkpoint=args.checkpoint,
        out=args.out,
        threads=args.threads,
        min_seconds=args.min_seconds,
        progress=not args.json,
        drift_label=args.data,
        camera=args.camera,
    )
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        from .report import markdown

        print(markdown(data))
        print("\n".join(f"wrote {p}" for p in data.get("written", {}).values()))
    return 0
