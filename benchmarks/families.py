"""Every family's tiny config, trained on synthetic data: time, validation metric, and what
selected each stage's best epoch.

    python -m edgescreen.benchmarks.families [--families ran agcnn ...] [--work DIR] \\
        [--out benchmarks/results]

Each family trains its shipped `<family>-tiny` config as is (epochs, sizes, threads) on
photos `edgescreen synth` makes for its modality (fundus 320 at 192 px, OCT 800 at 96 px,
chest X-ray 240 at 96 px; fixed seeds), with the trainer's patient-level split. The
synthetic sets are easy and small: the numbers show that each family trains end to end
and what its stages select, not how it does on real images (see docs/models.md).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from .report import write_named
from .system import describe, machine_tag

# family -> (synthetic kind, loader task, images, side)
DATA = {
    "multitask": ("fundus", "dr", 320, 192),
    "zoomin": ("fundus", "dr", 320, 192),
    "m2cnn": ("fundus", "dr", 320, 256),
    "ran": ("oct", "oct", 800, 96),
    "agcnn": ("cxr", "cxr", 240, 96),
}


def train_family(family: str, work: Path) -> dict[str, Any]:
    from edgescreen.train.config import load_config
    from edgescreen.train.data.loaders import load_generic_csv
    from edgescreen.train.data.synth import synthesize
    from edgescreen.train.loop import Trainer

    kind, task, n, side = DATA[family]
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
    return {
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
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--families", nargs="+", choices=sorted(DATA), default=list(DATA))
    p.add_argument("--work", type=Path, default=None, help="data and runs (default: a temp dir)")
    p.add_argument("--out", type=Path, default=None, help="write JSON + markdown here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgescreen-families-") as scratch:
        work = args.work or Path(scratch)
        rows = []
        for family in args.families:
            rows.append(train_family(family, work))
            print(json.dumps({k: rows[-1][k] for k in ("family", "seconds", "val_metric")}))
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
