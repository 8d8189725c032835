"""Several `edgescreen demo` runs side by side: each floor's median and range over the seeds.

    python -m edgescreen.benchmarks.seeds WORK [WORK ...] [--out benchmarks/results]

Each WORK is a finished demo's folder (its demo-summary.json names the benchmark results
it wrote). The demo's figures move with its seed (which synthetic photos, which patients
train, validate and are held out), so a floor is judged on the median over the seeds and
reported with its range; one seed's pass or miss is luck. Per seed and precision the table
also keeps what lies behind a drift figure: flips (and how many lay within FP16's own error
band of a threshold), grade changes, and what the INT8 search kept float and what that cost.
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import date
from pathlib import Path
from typing import Any

from .report import md_cell, write_named

DRIFT_KEYS = ("metric", "delta", "flips", "flips_in_fp16_band", "label_changes", "median_abs_dp",
              "p95_abs_dp", "images")  # fmt: skip


def load_run(work: Path) -> dict[str, Any]:
    """One demo's summary, its benchmark results and its card's INT8 search record."""
    work = Path(work)
    summary_path = work / "demo-summary.json"
    if not summary_path.is_file():
        raise SystemExit(f"{work}: no demo-summary.json (is the demo finished?)")
    summary = json.loads(summary_path.read_text())
    bench = json.loads(Path(summary["bench"]["json"]).read_text())
    card = json.loads((Path(summary["bundle"]) / "model.json").read_text())
    search = (card.get("calibration") or {}).get("mixed_precision", {}).get("forms", {})
    return {
        "work": str(work),
        "seconds": summary["seconds"],
        "held_out_qwk_fp32": next(
            (r["metric"] for r in bench["drift"] if r["precision"] == "fp32"), None
        ),
        "floors": {f["name"]: f for f in bench["floors"]},
        "drift": {r["precision"]: {k: r.get(k) for k in DRIFT_KEYS} for r in bench["drift"]},
        "search": {
            form: {
                "float_layers": len(r.get("float_nodes", [])),
                "method": r.get("method"),
                "cpu_latency_ms": r.get("cpu_latency_ms", {}),
            }
            for form, r in search.items()
        },
    }


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per floor: every seed's value, their median and range, and the median's verdict."""
    floors = []
    for name, first in runs[0]["floors"].items():
        values = [r["floors"][name]["value"] for r in runs if name in r["floors"]]
        median = statistics.median(values)
        op, required = first["required"].split()
        passed = median >= float(required) if op == ">=" else median <= float(required)
        floors.append(
            {
                "name": name,
                "values": values,
                "median": median,
                "range": [min(values), max(values)],
                "required": first["required"],
                "median_passed": bool(passed),
                "seeds_passed": sum(
                    r["floors"][name]["passed"] for r in runs if name in r["floors"]
                ),
            }
        )
    return {"runs": runs, "floors": floors}


def markdown(data: dict[str, Any]) -> str:
    runs = data["runs"]
    qwk = [r["held_out_qwk_fp32"] for r in runs]
    lines = [
        f"# {len(runs)} demo seeds, {data['date']}",
        "",
        f"Machine: {data['machine']}. Demo folders: {', '.join(r['work'] for r in runs)}. "
        f"FP32 QWK on each seed's held-out real photos: {', '.join(f'{q:.3f}' for q in qwk)}.",
        "",
        "| floor | per seed | median | range | required | median passes | seeds passing |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in data["floors"]:
        per = ", ".join(f"{v:.4g}" for v in f["values"])
        lines.append(
            f"| {md_cell(f['name'])} | {per} | {f['median']:.4g} | {f['range'][0]:.4g}-"
            f"{f['range'][1]:.4g} | {f['required']} | {'yes' if f['median_passed'] else '**no**'} "
            f"| {f['seeds_passed']}/{len(f['values'])} |"
        )
    lines += [
        "",
        "| seed folder | precision | QWK | Δ | flips (in FP16 band) | grade changes | "
        "median / p95 \\|Δp\\| | images |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        for precision, d in r["drift"].items():
            lines.append(
                f"| {r['work']} | {precision} | {d['metric']:.4f} | {d['delta']:+.4f} | "
                f"{d['flips']} ({d.get('flips_in_fp16_band', '–')}) | {d.get('label_changes', '–')} "
                f"| {d['median_abs_dp']:.4f} / {d['p95_abs_dp']:.4f} | {d['images']} |"
            )
    lines += [
        "",
        "| seed folder | INT8 form | layers kept float | method | CPU ms: FP32 / full INT8 / searched |",
        "|---|---|---|---|---|",
    ]
    for r in runs:
        for form, s in r["search"].items():
            lat = s["cpu_latency_ms"]
            ms = " / ".join(
                f"{lat[k]:.2f}" if k in lat else "–"
                for k in ("fp32_ms", "full_int8_ms", "with_float_layers_ms")
            )
            lines.append(f"| {r['work']} | {form} | {s['float_layers']} | {s['method']} | {ms} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("works", nargs="+", type=Path, help="finished demo folders")
    p.add_argument("--out", type=Path, default=None, help="write JSON + markdown here")
    args = p.parse_args(argv)
    from .system import describe, machine_tag

    data = {
        "benchmark": "demo_seeds",
        "date": date.today().isoformat(),
        "machine": describe(2).get("cpu", "?"),
        **combine([load_run(w) for w in args.works]),
    }
    text = markdown(data)
    print(text)
    if args.out is not None:
        write_named(data, text, args.out, f"{machine_tag()}-{data['date']}-demo-seeds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
