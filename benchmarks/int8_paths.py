"""INT8 paths side by side (issue 13): plain PTQ, the accuracy-aware search, QAT, QAT + search.

Each bundle was exported from the same trained model (same FP32 ONNX) by a different INT8
path; this judges both of its INT8 forms against that FP32 on the same photos, through the
runtime's ONNX Runtime backend (the TensorRT form with Q/DQ unfused, as TensorRT computes
it): decision flips with their 95% Wilson interval, ΔQWK, median and p95 |Δ referral
probability|, and how many layers each path kept float.

    python -m edgescreen.benchmarks.int8_paths --work ~/edgescreen-demo --seed 0 \
        --bundle ptq=DIR --bundle search=DIR --bundle qat=DIR --out benchmarks/results

`--work` is an `edgescreen demo` folder: its validation photos (what the search judged on)
and held-out photos (what nothing was tuned on) are rebuilt from the seed. Make the bundles
with `edgescreen export` (`--int8-search`, `--qat EPOCHS`) or `export_bundle`.

`--latency` also times each bundle's CPU form and the shared FP32 model in ONNX Runtime at
batch 1, in alternating rounds in one process (the median of each round's median; a
noisy machine moves all of them together, so compare within one run only).
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

from .report import fmt, isa_note

FORMS = ("tensorrt", "cpu")
THREADS = 2  # ONNX Runtime threads for --latency, as the demo's benchmark runs


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def path_of(card) -> str:
    """How a bundle's INT8 was made, from its card."""
    cal = card.calibration or {}
    qat = cal.get("qat")
    parts = [f"QAT {qat['epochs']} epochs" if qat else "PTQ"]
    if cal.get("mixed_precision"):
        parts.append("search")
    return " + ".join(parts)


def judge_bundles(
    bundles: dict[str, Path], splits: dict[str, Sequence[Any]], *, threads: int | None = None
) -> list[dict[str, Any]]:
    """One row per (bundle, form, split)."""
    from edgescreen.export import ptq_search as P
    from edgescreen.export.data import labels_of, prepare_samples
    from edgescreen.export.verify import run_shipped
    from edgescreen.runtime.card import load_card
    from edgescreen.runtime.errors import EdgescreenError
    from edgescreen.runtime.metrics import wilson_interval

    cards = {label: load_card(path) for label, path in bundles.items()}
    first = next(iter(bundles.values()))
    fp32_sha = _sha(first / "model.onnx")
    for path in bundles.values():
        if _sha(path / "model.onnx") != fp32_sha:
            raise EdgescreenError(
                f"{path}: its FP32 model differs from {first}'s; compare one model"
            )
    card = cards[next(iter(bundles))]
    rows = []
    for split, samples in splits.items():
        x, y = prepare_samples(samples, card), labels_of(samples)
        ref = run_shipped(first, card, "fp32", x, threads=threads)
        ev = P.Evaluator(card, x, y, [s.ref for s in samples], ref, threads=threads)
        for label, path in bundles.items():
            plans = (cards[label].calibration or {}).get("mixed_precision", {}).get("forms", {})
            for form in FORMS:
                floats = [n["name"] for n in plans.get(form, {}).get("float_nodes", [])]
                tr = ev.judge(path, form, "", floats)
                lo, hi = wilson_interval(tr.flips, tr.images)
                rows.append(
                    {
                        "bundle": label,
                        "path": path_of(cards[label]),
                        "form": form,
                        "split": split,
                        "images": tr.images,
                        "flips": tr.flips,
                        "flip_rate_ci95": [lo, hi],
                        "delta_qwk": tr.delta,
                        "median_dp": tr.median_dp,
                        "p95_dp": tr.p95_dp,
                        "float_layers": len(floats),
                    }
                )
    return rows


def cpu_latencies(
    bundles: dict[str, Path], *, rounds: int = 5, runs: int = 80, threads: int = THREADS
) -> dict[str, dict[str, Any]]:
    """Batch-1 ONNX Runtime latency of FP32 and of each bundle's CPU form, side by side."""
    import numpy as np

    from edgescreen.export.ptq_search import boundaries, cpu_latency_ms
    from edgescreen.runtime.card import load_card

    first = next(iter(bundles.values()))
    shape = load_card(first).input.shape
    x1 = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32)
    files = {"fp32": first / "model.onnx"}
    files.update({label: path / "model.int8-cpu.onnx" for label, path in bundles.items()})
    times: dict[str, list[float]] = {label: [] for label in files}
    for _ in range(rounds):
        for label, path in files.items():
            times[label].append(cpu_latency_ms(path, x1, runs=runs, threads=threads))
    return {
        label: {
            "median_ms": round(float(np.median(t)), 3),
            "rounds_ms": [round(v, 3) for v in t],
            "boundaries": None if label == "fp32" else boundaries(files[label]),
        }
        for label, t in times.items()
    }


def latency_markdown(lat: dict[str, dict[str, Any]], threads: int) -> str:
    fp32 = lat["fp32"]["median_ms"]
    lines = [
        "",
        f"CPU form at batch 1, ONNX Runtime, {threads} threads, rounds alternated in one run:",
        "",
        "| model | median ms | vs FP32 | float/INT8 boundaries | rounds ms |",
        "|---|---|---|---|---|",
    ]
    for label, r in lat.items():
        b = "–" if r["boundaries"] is None else str(r["boundaries"])
        rounds = ", ".join(f"{v:.2f}" for v in r["rounds_ms"])
        lines.append(
            f"| {label} | {r['median_ms']:.2f} | {fp32 / r['median_ms']:.2f}× | {b} | {rounds} |"
        )
    return "\n".join(lines) + "\n"


def markdown(rows: Sequence[dict[str, Any]], *, machine: str, source: str) -> str:
    lines = [
        "# INT8 paths side by side",
        "",
        f"Machine: {machine}. {source}",
        "",
        "| split | bundle | path | form | layers float | flips (Wilson 95%) | ΔQWK "
        "| median \\|Δp\\| | p95 \\|Δp\\| |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["flip_rate_ci95"]
        lines.append(
            f"| {r['split']} | {r['bundle']} | {r['path']} | {r['form']} | {r['float_layers']} | "
            f"{r['flips']}/{r['images']} ({100 * lo:.1f}-{100 * hi:.1f}%) | "
            f"{r['delta_qwk']:+.4f} | {fmt(r['median_dp'], 4)} | {fmt(r['p95_dp'], 4)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m edgescreen.benchmarks.int8_paths",
        description=__doc__.split("\n")[0],
    )
    ap.add_argument("--work", type=Path, required=True, help="an `edgescreen demo` folder")
    ap.add_argument("--seed", type=int, default=0, help="the seed that demo ran with")
    ap.add_argument(
        "--bundle", action="append", required=True, metavar="LABEL=DIR", help="repeatable"
    )
    ap.add_argument("--out", type=Path, default=None, help="write JSON and markdown here")
    ap.add_argument(
        "--latency", action="store_true", help="also time each CPU form beside FP32 (batch 1)"
    )
    args = ap.parse_args(argv)
    bundles = {}
    for item in args.bundle:
        label, sep, folder = item.partition("=")
        if not sep:
            ap.error(f"--bundle {item!r}: expected LABEL=DIR")
        bundles[label] = Path(folder)

    from .demo import SHARED_FUNDUS, prepare_data
    from .report import write_named
    from .system import describe, machine_tag

    _, _, search, held = prepare_data(
        args.work, real_dir=SHARED_FUNDUS, n_synth=600, seed=args.seed
    )
    rows = judge_bundles(bundles, {"validation": search, "held-out": held})
    info = describe(THREADS)
    machine = f"{info.get('cpu', '?')}{isa_note(info)}"
    source = (
        f"Demo folder {args.work} (seed {args.seed}): {len(search)} real validation photos "
        f"(the search judges there), {len(held)} real held-out photos (nothing tuned on them). "
        "Bundles: " + ", ".join(f"{k} = {v}" for k, v in bundles.items()) + "."
    )
    md = markdown(rows, machine=machine, source=source)
    lat = cpu_latencies(bundles, threads=THREADS) if args.latency else None
    if lat is not None:
        md += latency_markdown(lat, threads=THREADS)
    print(md)
    if args.out:
        data = {
            "benchmark": "int8_paths",
            "date": date.today().isoformat(),
            "machine": machine,
            "source": source,
            "rows": rows,
            "cpu_latency": lat,
        }
        write_named(data, md, args.out, f"{machine_tag()}-{data['date']}-int8-paths")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
