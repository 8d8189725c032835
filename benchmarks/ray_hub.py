"""Ray Data hub batch against the SQLite batch: same tree, same bundle, counted and compared.

    python -m edgescreen.benchmarks.ray_hub --bundle BUNDLE --in DIR [--precision int8] \\
        [--actors 2] [--batch-size 16] [--kill after-commit|before-commit|none] \\
        [--work DIR] [--out benchmarks/results]

In one run, on an embedded local Ray started once (`--cpus`, default 2):
1. `edgescreen batch` (run_batch into a fresh SQLite ledger): the reference;
2. `edgescreen batch --ray` (run_ray_batch into a fresh Parquet folder), `--actors` Screener
   actors;
3. unless `--kill none`: the same again with one actor SIGKILLed at its 2nd batch (at
   `--kill`: its part written but not renamed, or renamed but not returned).
Each Ray run is checked against the ledger: lost (a content the ledger has and the Parquet
folder has not), duplicated (a key in more than one row of the raw part files, read
without read_results' de-duplication), mismatched (state, status, label, decision, paths,
error, or a probability more than 1e-6 off). Prints a markdown table; `--out` also writes
JSON + markdown. On a CPU-only machine the actors, Ray's own processes and the SQLite run
share the same cores: the rates are this machine's, not a cluster's.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

from edgescreen.runtime.batch import BatchOptions, Ledger, run_batch
from edgescreen.runtime.batch.ray_hub import (
    RayBatchOptions,
    connect,
    read_results,
    run_ray_batch,
    summarise,
)

from .report import write_named
from .system import describe, machine_tag

TOLERANCE = 1e-6


def raw_keys(out: Path) -> Counter:
    """Every key in every committed part, duplicates kept (the independent check)."""
    import pyarrow.dataset as pads

    return Counter(
        pads.dataset(str(out), format="parquet").to_table(columns=["key"])["key"].to_pylist()
    )


def compare(ledger_items: dict[str, Any], out: Path) -> dict[str, Any]:
    rows = {r["key"]: r for r in read_results(str(out)).to_pylist()}
    counts = raw_keys(out)
    mismatched, worst = [], 0.0
    for key, item in ledger_items.items():
        r = rows.get(key)
        if r is None:
            continue
        want = item.result or {}
        probs = dict(r["probabilities"] or [])
        diff = max(
            (abs(probs.get(k, float("inf")) - v) for k, v in want.get("probabilities", {}).items()),
            default=0.0,
        )
        worst = max(worst, diff)
        same = (
            (r["state"], r["status"], r["label"], r["decision"], r["error"])
            == (item.state, want.get("status"), want.get("label"), item.decision, item.error)
            and r["paths"] == sorted(item.paths)
            and probs.keys() == want.get("probabilities", {}).keys()
            and diff <= TOLERANCE
        )
        if not same:
            mismatched.append(item.path)
    return {
        "rows": len(rows),
        "lost": sorted(ledger_items[k].path for k in ledger_items.keys() - rows.keys()),
        "extra": sorted(rows[k]["path"] for k in rows.keys() - ledger_items.keys()),
        "duplicated": sorted(k for k, n in counts.items() if n > 1),
        "mismatched": mismatched,
        "max_probability_diff": worst,
    }


def run(
    bundle: Path,
    in_dir: Path,
    work: Path,
    *,
    precision: str,
    actors: int,
    batch_size: int,
    kill: str,
    cpus: int,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "date": date.today().isoformat(),
        "machine": describe(threads=cpus),
        "bundle": str(bundle),
        "in": str(in_dir),
        "precision": precision,
        "actors": actors,
        "batch_size": batch_size,
        "runs": [],
    }
    db = work / "sqlite" / "results.sqlite"
    start = time.perf_counter()
    stats = run_batch(
        BatchOptions(in_dir=in_dir, bundle=bundle, db=db, precision=precision, workers=2)
    )
    ledger = Ledger(db)
    items = {i.key: i for i in ledger.items()}
    states = ledger.counts()
    ledger.close()
    data["runs"].append(
        {
            "name": "sqlite (edgescreen batch)",
            "paths": stats.discovered,
            "contents": len(items),
            "screened": stats.screened,
            "recovered": 0,
            **{k: states[k] for k in ("done", "ungradable", "failed")},
            "elapsed_s": round(time.perf_counter() - start, 2),
            "images_per_s": round(stats.screened / stats.screening_s, 2),
            "end_to_end_per_s": round(len(items) / (time.perf_counter() - start), 2),
            "lost": 0,
            "duplicated": 0,
            "mismatched": 0,
        }
    )
    start = time.perf_counter()
    started = connect(None, num_cpus=cpus)
    data["ray_start_s"] = round(time.perf_counter() - start, 2)
    try:
        plans = [("ray", None)]
        if kill != "none":
            plans.append((f"ray, actor killed {kill}", f"{kill}:2:{work / 'killed'}"))
        for name, fault in plans:
            out = work / name.split(",")[0].replace(" ", "") / ("killed" if fault else "clean")
            s = run_ray_batch(
                RayBatchOptions(
                    in_uri=str(in_dir),
                    out_uri=str(out),
                    bundle=bundle,
                    precision=precision,
                    actors=actors,
                    batch_size=batch_size,
                    num_cpus=cpus,
                    fault=fault,
                )
            )
            check = compare(items, out)
            held = summarise(str(out))  # what the Parquet folder holds, recovered rows included
            data["runs"].append(
                {
                    "name": name,
                    "paths": s.discovered,
                    "contents": s.contents,
                    "screened": s.screened,
                    "recovered": s.recovered,
                    **{k: held[k] for k in ("done", "ungradable", "failed")},
                    "elapsed_s": round(s.elapsed_s, 2),
                    "hash_s": round(s.hash_s, 2),
                    "images_per_s": round(s.screened / s.screening_s, 2),
                    "end_to_end_per_s": round(s.contents / s.elapsed_s, 2),
                    "actor_processes": len(s.worker_pids),
                    "killed": bool(fault) and (work / "killed").exists(),
                    "lost": len(check["lost"]),
                    "duplicated": len(check["duplicated"]),
                    "mismatched": len(check["mismatched"]),
                    "check": check,
                }
            )
    finally:
        if started:
            import ray

            ray.shutdown()
    data["ok"] = all(
        r["lost"] == r["duplicated"] == r["mismatched"] == 0 and r.get("contents") == len(items)
        for r in data["runs"]
    )
    return data


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        f"# Ray hub batch vs SQLite batch ({data['date']})",
        "",
        f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores; bundle `{data['bundle']}` at "
        f"{data['precision']}; {data['actors']} actors, batch {data['batch_size']}; "
        f"local Ray started in {data['ray_start_s']} s (not in the times below).",
        "",
        "| run | paths | contents | screened | recovered | done | ungradable | failed | "
        "lost | duplicated | mismatched | actor procs | s | images/s (screening) | "
        "images/s (end to end) |",
        "|---|" + "---:|" * 14,
    ]
    for r in data["runs"]:
        lines.append(
            f"| {r['name']} | {r['paths']} | {r['contents']} | {r['screened']} | "
            f"{r['recovered']} | {r['done']} | {r['ungradable']} | {r['failed']} | {r['lost']} | "
            f"{r['duplicated']} | {r['mismatched']} | {r.get('actor_processes', '-')} | "
            f"{r['elapsed_s']} | {r['images_per_s']} | {r['end_to_end_per_s']} |"
        )
    worst = max(
        (r["check"]["max_probability_diff"] for r in data["runs"] if "check" in r), default=0
    )
    lines += [
        "",
        f"Largest probability difference from the SQLite run: {worst:.2e} (limit {TOLERANCE:g}). "
        + ("All checks pass." if data["ok"] else "**CHECKS FAILED.**"),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--bundle", required=True, type=Path)
    p.add_argument("--in", dest="in_dir", required=True, type=Path, help="the upload tree")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32")
    p.add_argument("--actors", "--workers", type=int, default=2, help="Ray Screener actors")
    p.add_argument("--batch-size", type=int, default=16, help="images per Ray batch (commit)")
    p.add_argument(
        "--kill", choices=("after-commit", "before-commit", "none"), default="after-commit"
    )
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    p.add_argument("--work", type=Path, default=None, help="keep the ledger and Parquet here")
    p.add_argument("--out", type=Path, default=None, help="write JSON + markdown here")
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="edgescreen-ray-hub-"))
    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"{work} is not empty: every run starts from nothing")
    work.mkdir(parents=True, exist_ok=True)
    try:
        data = run(
            args.bundle,
            args.in_dir,
            work,
            precision=args.precision,
            actors=args.actors,
            batch_size=args.batch_size,
            kill=args.kill,
            cpus=args.cpus,
        )
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    text = markdown(data)
    print(text)
    if args.out is not None:
        write_named(data, text, args.out, f"{machine_tag()}-{data['date']}-ray-hub")
    return 0 if data["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
