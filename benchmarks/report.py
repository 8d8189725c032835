"""Benchmark results: one JSON file, a markdown table and PNG plots per run."""

from __future__ import annotations

import json
import math
from datetime import date
from pathlib import Path
from typing import Any

SCHEMA = "edgescreen-bench/1"

# Keys every results file carries (checked by validate_results and by the test suite).
REQUIRED = {
    "schema": str,
    "date": str,
    "machine": dict,
    "bundle": dict,
    "latency": list,
    "ratios": dict,
    "floors": list,
}
LATENCY_ROW = {
    "config": str,
    "backend": str,
    "precision": str,
    "batch": int,
    "threads": int,
    "allocator": str,
}
LATENCY_OK = {
    "median_ms": float,
    "p95_ms": float,
    "p99_ms": float,
    "throughput_ips": float,
    "cold_start_ms": float,
    "peak_rss_mb": float,
}


def validate_results(data: dict[str, Any]) -> None:
    """Raise ValueError naming the first missing or mistyped field."""

    def check(obj: dict, spec: dict, where: str) -> None:
        for key, kind in spec.items():
            if key not in obj:
                raise ValueError(f"{where}.{key} is missing")
            value = obj[key]
            ok = (
                isinstance(value, int | float) and not isinstance(value, bool)
                if kind is float
                else isinstance(value, kind)
            )
            if not ok:
                raise ValueError(
                    f"{where}.{key} should be {kind.__name__}, got {type(value).__name__}"
                )

    check(data, REQUIRED, "results")
    if data["schema"] != SCHEMA:
        raise ValueError(f"results.schema is {data['schema']!r}, expected {SCHEMA!r}")
    for i, row in enumerate(data["latency"]):
        check(row, LATENCY_ROW, f"latency[{i}]")
        if row.get("error") is None:
            check(row, LATENCY_OK, f"latency[{i}]")
    for i, row in enumerate(data.get("drift", [])):
        check(row, {"precision": str, "metric_name": str}, f"drift[{i}]")
    for i, row in enumerate(data["floors"]):
        check(row, {"name": str, "passed": bool}, f"floors[{i}]")


def latency_ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Speed-ups against PyTorch eager FP32 at the same batch size (same run, same threads)."""
    ok = {(r["config"], r["batch"]): r for r in rows if r.get("error") is None}
    ratios = {}
    for (name, batch), row in ok.items():
        base = ok.get(("pytorch-eager-fp32", batch))
        if base and name != "pytorch-eager-fp32":
            ratios[f"{name}_vs_eager_fp32_b{batch}"] = base["median_ms"] / row["median_ms"]
    return ratios


def results_path(out_dir: Path, machine_tag: str, when: date | None = None) -> Path:
    return Path(out_dir) / f"{machine_tag}-{(when or date.today()).isoformat()}.json"


def write_named(data: dict[str, Any], text: str, out_dir: Path, stem: str) -> Path:
    """A side benchmark's record: OUT/STEM.json (the data) and OUT/STEM.md (its table)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / stem
    path.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(text, encoding="utf-8")
    print(f"wrote {path}.json and .md")
    return path


def write_results(data: dict[str, Any], out_dir: Path, machine_tag: str) -> dict[str, Path]:
    validate_results(data)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = results_path(out_dir, machine_tag)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    md = path.with_suffix(".md")
    md.write_text(markdown(data))
    written = {"json": path, "markdown": md}
    written.update(plots(data, path.with_suffix("")))
    return written


def fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def md_cell(text: str) -> str:
    """A markdown table cell: a literal | (as in |ΔQWK|) would start a new column."""
    return text.replace("|", "\\|")


def _ci(row: dict[str, Any]) -> str:
    """`, 95% CI a-b%` of a flip rate, when the row has its Wilson interval."""
    ci = row.get("flip_rate_ci95")
    return f", 95% CI {fmt(100 * ci[0], 1)}-{fmt(100 * ci[1], 1)}%" if ci else ""


def isa_note(machine: dict[str, Any]) -> str:
    """` (amx, avx512vnni, ...)`: the INT8 instruction sets, which decide INT8's speed-up."""
    features = machine.get("cpu_features")
    return f" ({', '.join(features)})" if features else ""


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        f"# edgescreen benchmark: {data['bundle'].get('name')} ({data['date']})",
        "",
        f"Machine: {m.get('cpu')}{isa_note(m)}, {m.get('cores')} cores, "
        f"GPU: {m.get('gpu') or 'none'}; "
        f"{m.get('threads')} inference threads; allocator for PyTorch: "
        f"{next((r['allocator'] for r in data['latency']), 'n/a')}.",
        "",
        "## Latency",
        "",
        "| config | batch | median ms | p95 ms | p99 ms | images/s | cold start ms | peak RSS MB | vs eager FP32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["latency"]:
        if r.get("error"):
            lines.append(
                f"| {r['config']} | {r['batch']} | failed: {r['error'][:60]} | | | | | | |"
            )
            continue
        ratio = data["ratios"].get(f"{r['config']}_vs_eager_fp32_b{r['batch']}")
        lines.append(
            f"| {r['config']} | {r['batch']} | {fmt(r['median_ms'])} | {fmt(r['p95_ms'])} | "
            f"{fmt(r['p99_ms'])} | {fmt(r['throughput_ips'], 1)} | {fmt(r['cold_start_ms'], 0)} | "
            f"{fmt(r['peak_rss_mb'], 0)} | {fmt(ratio) + '×' if ratio else '–'} |"
        )
    p = data.get("pipeline")
    if p:
        lines += [
            "",
            f"## End-to-end pipeline ({p['images']} real photos, {p['precision']}, "
            f"batch {p['batch_size']}, {p['workers']} decode workers)",
            "",
            "| pipeline | images/s |",
            "|---|---|",
        ]
        for key in ("runtime", "naive", "decode_only", "infer_only"):
            if key in p:
                lines.append(f"| {key.replace('_', '-')} | {fmt(p[key]['images_per_s'], 1)} |")
        lines.append("")
        if "runtime_vs_naive" in p:
            lines.append(f"Runtime vs naive: **{p['runtime_vs_naive']:.2f}×**. ")
        lines.append(
            f"Runtime vs the slower of its decode-only and infer-only bounds: **{p['runtime_vs_bound']:.2f}×**"
            + (
                f"; vs their summed work (the bound where both share the CPU cores): "
                f"**{p['runtime_vs_shared_bound']:.2f}×**."
                if "runtime_vs_shared_bound" in p
                else "."
            )
        )
    cam = data.get("camera")
    if cam:
        lines += [
            "",
            f"## Camera-resolution uploads ({cam['photos']} originals beside their 768 px copies, "
            f"{cam['precision']}, {cam['workers']} prepare workers)",
            "",
            "| input | images/s | decode ms | gate ms | preprocess ms | infer ms | bound (shared cores) | bound (GPU) | decoding alone |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for key in ("originals", "copies_768"):
            r, ms = cam[key], cam[key]["ms_per_image"]
            lines.append(
                f"| {key.replace('_', ' ')} | {fmt(r['images_per_s'], 1)} | {fmt(ms['decode'], 1)} | "
                f"{fmt(ms['quality'], 1)} | {fmt(ms['preprocess'], 1)} | {fmt(ms['infer'], 1)} | "
                f"{fmt(r['bounds']['shared_cores'], 1)} ({r['vs_shared_cores_bound']:.2f}×) | "
                f"{fmt(r['bounds']['separate_devices'], 1)} ({r['vs_separate_devices_bound']:.2f}×) | "
                + (
                    f"{fmt(r['decode_alone_per_s'], 1)} ({r['vs_decode_alone']:.2f}×) |"
                    if "decode_alone_per_s" in r
                    else "- |"
                )
            )
        agree = cam["agreement"]
        lines += [
            "",
            f"Originals and copies get the same grade and decision for "
            f"{agree['same_grade_and_decision']} of {agree['of']}.",
        ]
    if data.get("drift"):
        lines += [
            "",
            f"## Drift against FP32 ({data.get('drift_data', 'evaluation set')})",
            "",
            "| precision | metric | value | Δ vs fp32 (95% CI) | flips (rate, Wilson 95% CI) | "
            "flips in FP16 band | label changes (in FP16 band) | median / p95 \\|Δ p\\| | "
            "sensitivity | specificity | ECE | max err |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in data["drift"]:
            ci = f"{fmt(r.get('delta'), 4)} ({fmt(r.get('ci_low'), 4)}, {fmt(r.get('ci_high'), 4)})"
            changes = r.get("label_changes", "–")
            if "label_changes_in_fp16_band" in r:
                changes = f"{changes} ({r['label_changes_in_fp16_band']})"
            lines.append(
                f"| {r['precision']} | {r['metric_name']} | {fmt(r.get('metric'), 4)} | {ci} | "
                f"{r.get('flips', '–')} ({fmt(100 * r.get('flip_rate', float('nan')), 1)}%{_ci(r)}) | "
                f"{r.get('flips_in_fp16_band', '–')} | {changes} | "
                f"{fmt(r.get('median_abs_dp'), 4)} / {fmt(r.get('p95_abs_dp'), 4)} | "
                f"{fmt(r.get('sensitivity'), 3)} | {fmt(r.get('specificity'), 3)} | "
                f"{fmt(r.get('ece'), 3)} | {fmt(r.get('max_abs_err'), 4)} |"
            )
        band = data["drift"][0].get("fp16_band")
        if band:
            widths = ", ".join(f"{k} {v:.4f}" for k, v in band.items())
            lines += [
                "",
                f"FP16's band (its largest change to each thresholded value): {widths}; "
                f"{data['drift'][0].get('images_in_fp16_band', 0)} of "
                f"{data['drift'][0].get('images', '?')} images lie within it of a threshold, "
                "where FP16's own rounding can already change the result.",
            ]
    if data["floors"]:
        lines += [
            "",
            "## Floors",
            "",
            "| floor | measured | required | passed | what moved it |",
            "|---|---|---|---|---|",
        ]
        for f in data["floors"]:
            lines.append(
                f"| {md_cell(f['name'])} | {fmt(f.get('value'), 3)} | {f.get('required', '')} | "
                f"{'yes' if f['passed'] else '**no**'} | {f.get('note', '')} |"
            )
    return "\n".join(lines) + "\n"


def plots(data: dict[str, Any], stem: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = {}
    rows = [r for r in data["latency"] if r.get("error") is None]
    if rows:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
        for ax, batch in zip(axes, (1, 8), strict=True):
            sel = [r for r in rows if r["batch"] == batch]
            names = [r["config"] for r in sel]
            med = [r["per_image_ms"] for r in sel]
            p95 = [r["p95_ms"] / batch - r["per_image_ms"] for r in sel]
            ax.barh(names, med, xerr=[[0] * len(sel), p95], color="#4878a8", capsize=3)
            ax.set_title(f"batch {batch}: ms/image (median; whisker p95)")
            ax.invert_yaxis()
            ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        path = stem.parent / f"{stem.name}-latency.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written["latency_plot"] = path
    drift = [
        r for r in data.get("drift", []) if r.get("delta") is not None and r["precision"] != "fp32"
    ]
    if drift:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        names = [r["precision"] for r in drift]
        deltas = [r["delta"] for r in drift]
        err = [
            [d - r["ci_low"] for d, r in zip(deltas, drift, strict=True)],
            [r["ci_high"] - d for d, r in zip(deltas, drift, strict=True)],
        ]
        ax.errorbar(deltas, names, xerr=err, fmt="o", capsize=4, color="#a84848")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(f"Δ {drift[0]['metric_name']} vs FP32 with 95% bootstrap CI")
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        path = stem.parent / f"{stem.name}-drift.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written["drift_plot"] = path
    return written
