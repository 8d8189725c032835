"""How many calibration images INT8 needs (issue 13, item 5): sweep the calibration-set size.

For each size (e.g. 32, 64, 128, all) and several seeded draws of that many images
(stratified by class, `calibration.select`), the activation ranges are computed afresh and
both INT8 forms are quantized twice: plain PTQ (the default exclusions) and with the
bundle's own mixed-precision plan (its chosen method and float layers, held fixed so only
the calibration set changes). Each is judged on the VALIDATION photos, through the
runtime's ONNX Runtime backend, as the accuracy-aware search judges (the TensorRT form with
Q/DQ unfused): decision flips, ΔQWK, median and p95 |Δ referral probability|.

    python -m edgescreen.benchmarks.calib_size --work ~/edgescreen-demo --seed 0 \
        --out benchmarks/results

`--work` is an `edgescreen demo` folder (its run, bundle and patient split, rebuilt from
the seed). The default calibration size (export's `calib_size`) is set from this table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

from .report import fmt, md_cell

SIZES = (32, 64, 128, None)  # None: every calibration image
DRAWS = 3


def sweep(
    bundle: Path,
    calib: Sequence[Any],
    validation: Sequence[Any],
    *,
    sizes: Sequence[int | None] = SIZES,
    draws: int = DRAWS,
    threads: int | None = None,
    log=print,
) -> list[dict[str, Any]]:
    """One row per (size, draw, form, plan) with its drift on `validation`."""
    from edgescreen.export import calibration as C
    from edgescreen.export import ptq_search as P
    from edgescreen.export.data import labels_of, prepare_samples
    from edgescreen.export.quantize import quantize
    from edgescreen.export.verify import run_shipped
    from edgescreen.runtime.card import load_card

    card = load_card(bundle)
    fp32 = bundle / "model.onnx"
    plans = (card.calibration or {}).get("mixed_precision", {}).get("forms", {})
    C.check_disjoint(calib, validation)
    x = prepare_samples(validation, card)
    ref = run_shipped(bundle, card, "fp32", x, threads=threads)
    ev = P.Evaluator(
        card, x, labels_of(validation), [s.ref for s in validation], ref, threads=threads
    )
    rows: list[dict[str, Any]] = []
    scratch = Path(tempfile.mkdtemp(prefix="edgescreen-calib-size-"))
    try:
        shutil.copy(fp32, scratch / "model.onnx")
        for size in sizes:
            n_draws = 1 if size is None or size >= len(calib) else draws
            for draw in range(n_draws):
                chosen = C.select(calib, size, seed=draw)
                caches: dict[str, Path] = {}
                for form in P.FILES:
                    plan = plans.get(form, {})
                    method = plan.get("method", "entropy")
                    if method not in caches:
                        caches[method] = scratch / f"ranges-{len(chosen)}-{draw}-{method}.json"
                        t = time.perf_counter()
                        C.compute_ranges(
                            fp32, card, method, caches[method],
                            lambda idx, ch=chosen: prepare_samples([ch[i] for i in idx], card),
                            len(chosen),
                        )  # fmt: skip
                        log(
                            f"{len(chosen)} images draw {draw} {method}: ranges in {time.perf_counter() - t:.0f}s"
                        )
                    variants = {"PTQ": []}
                    if plan.get("float_nodes"):
                        variants["searched plan"] = [n["name"] for n in plan["float_nodes"]]
                    for name, keep in variants.items():
                        quantize(
                            fp32, scratch / P.FILES[form], target=form, method=method,
                            cache_file=caches[method], keep_float=keep,
                        )  # fmt: skip
                        tr = ev.judge(scratch, form, method, keep)
                        row = {
                            "size": len(chosen),
                            "all": size is None or size >= len(calib),
                            "draw": draw,
                            "form": form,
                            "plan": name,
                            "method": method,
                            "float_layers": len(keep),
                            "flips": tr.flips,
                            "images": tr.images,
                            "delta_qwk": tr.delta,
                            "median_dp": tr.median_dp,
                            "p95_dp": tr.p95_dp,
                        }
                        rows.append(row)
                        log(json.dumps(row))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return rows


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median and range over draws, per (form, plan, size)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["form"], r["plan"], r["size"]), []).append(r)
    out = []
    for (form, plan, size), rs in sorted(groups.items()):
        entry: dict[str, Any] = {"form": form, "plan": plan, "size": size, "draws": len(rs)}
        for key in ("flips", "delta_qwk", "median_dp", "p95_dp"):
            vals = [abs(r[key]) if key == "delta_qwk" else r[key] for r in rs]
            entry[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
        entry["images"] = rs[0]["images"]
        out.append(entry)
    return out


def markdown(summary: Sequence[dict[str, Any]], *, machine: str, source: str) -> str:
    def cell(d: dict[str, float], digits: int = 4) -> str:
        med, lo, hi = (fmt(float(d[k]), digits) for k in ("median", "min", "max"))
        return med if lo == hi else f"{med} [{lo}-{hi}]"

    lines = [
        "# INT8 calibration-set size sweep",
        "",
        f"Machine: {machine}. {md_cell(source)}",
        "Median [range] over seeded stratified draws of each size; judged on the validation "
        "photos (never the test split), TensorRT form with Q/DQ unfused.",
        "",
        "| form | plan | calibration images | draws | flips | \\|ΔQWK\\| | median \\|Δp\\| | p95 \\|Δp\\| |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in summary:
        lines.append(
            f"| {e['form']} | {e['plan']} | {e['size']} | {e['draws']} | "
            f"{cell(e['flips'], 1)} of {e['images']} | {cell(e['delta_qwk'])} | "
            f"{cell(e['median_dp'])} | {cell(e['p95_dp'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m edgescreen.benchmarks.calib_size", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--work", type=Path, required=True, help="an `edgescreen demo` folder")
    ap.add_argument("--seed", type=int, default=0, help="the seed that demo ran with")
    ap.add_argument(
        "--sizes", type=int, nargs="+", default=None, help="sizes (default 32 64 128 and all)"
    )
    ap.add_argument("--draws", type=int, default=DRAWS)
    ap.add_argument("--out", type=Path, default=None, help="write JSON and markdown here")
    args = ap.parse_args(argv)

    from .demo import SHARED_FUNDUS, prepare_data
    from .report import write_named
    from .system import describe, machine_tag

    _, calib, search, _ = prepare_data(
        args.work, real_dir=SHARED_FUNDUS, n_synth=600, seed=args.seed
    )
    sizes = [*args.sizes, None] if args.sizes else list(SIZES)
    rows = sweep(args.work / "bundle", calib, search, sizes=sizes, draws=args.draws)
    summary = summarise(rows)
    source = (
        f"Demo bundle {args.work / 'bundle'} (seed {args.seed}); {len(calib)} real "
        f"training-patient calibration photos, {len(search)} real validation photos."
    )
    machine = describe(2).get("cpu", "?")
    md = markdown(summary, machine=str(machine), source=source)
    print(md)
    if args.out:
        data = {
            "benchmark": "calib_size",
            "date": date.today().isoformat(),
            "machine": machine,
            "source": source,
            "rows": rows,
            "summary": summary,
        }
        write_named(data, md, args.out, f"{machine_tag()}-{data['date']}-calib-size")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
