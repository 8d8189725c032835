"""`edgescreen batch`: the subcommand, built on run_batch and the report writers."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

from ..backends import backend_names
from ..card import is_referral

EXIT_OK, EXIT_SOME_FAILED = 0, 1


def add_batch_command(sub) -> None:
    p = sub.add_parser(
        "batch",
        help="screen a folder of uploads into a resumable SQLite ledger",
        description="Screen every image under IN_DIR (recursively) into a crash-safe ledger. "
        "Rerun the same command to resume after a crash: nothing is lost or "
        "screened twice.",
    )
    p.add_argument("in_dir", type=_tree, metavar="IN_DIR", help="a folder (with --ray: or a URI)")
    p.add_argument("--bundle", required=True, type=Path)
    p.add_argument(
        "--db", type=Path, help="the ledger (SQLite; created 0600); required without --ray"
    )
    p.add_argument(
        "--watch", action="store_true", help="keep screening new uploads until SIGINT/SIGTERM"
    )
    p.add_argument(
        "--poll", type=float, default=2.0, help="seconds between polls in --watch (default 2)"
    )
    p.add_argument("--workers", type=int, default=2, help="decode/preprocess threads (default 2)")
    p.add_argument(
        "--threads", type=int, default=None, help="inference threads (default: backend's own)"
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32")
    p.add_argument("--backend", choices=("auto", *backend_names()), default="auto")
    p.add_argument(
        "--dla", type=int, default=None, metavar="N", help="TensorRT engine of DLA core N (Orin)"
    )
    p.add_argument("--report", type=Path, help="write a self-contained HTML report here")
    p.add_argument("--csv", type=Path, help="write a flat CSV export here")
    p.add_argument(
        "--pseudonymise",
        action="store_true",
        help="replace file names and patient ids in exports with keyed hashes (key: DB.key)",
    )
    p.add_argument(
        "--json", action="store_true", help="print the summary as JSON (no progress bar)"
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="screen on Ray Data (the hub extra) into Parquet at --out: an embedded local Ray, "
        "or the cluster at ADDRESS; IN_DIR and --out may be URIs pyarrow opens (s3://...)",
    )
    p.add_argument(
        "--out", help="with --ray: the Parquet dataset (folder or URI), keyed by content"
    )
    p.add_argument("--actors", type=int, default=2, help="with --ray: Screener actors (default 2)")
    p.set_defaults(func=cmd_batch)


def _tree(value: str) -> Path | str:
    """IN_DIR: a folder, kept as a Path; a URI stays a string (only --ray reads those)."""
    return value if "://" in value else Path(value)


def cmd_batch(args: argparse.Namespace) -> int:
    from ..errors import EdgescreenError

    if args.ray is not None:
        return cmd_batch_ray(args)
    if args.db is None or isinstance(args.in_dir, str):
        raise EdgescreenError(
            "give --db (the SQLite ledger) and a local IN_DIR, or --ray --out OUT for Parquet"
        )
    from ..card import load_card
    from .ledger import Ledger
    from .patients import group
    from .pipeline import BatchOptions, install_stop_handlers, run_batch
    from .report import load_key, write_csv, write_html

    opts = BatchOptions(
        in_dir=args.in_dir,
        bundle=args.bundle,
        db=args.db,
        precision=args.precision,
        backend=args.backend,
        workers=args.workers,
        threads=args.threads,
        dla_core=args.dla,
        batch_size=args.batch_size,
        watch=args.watch,
        poll_s=args.poll,
    )
    stop = threading.Event()
    restore = install_stop_handlers(stop)
    try:
        with _Bar(enabled=not args.json and sys.stderr.isatty()) as bar:
            stats = run_batch(opts, progress=bar, stop=stop)
    finally:
        restore()
    ledger = Ledger(args.db)
    try:
        counts, referrals = ledger.counts(), ledger.referrals()
        patients = group(list(ledger.items()), args.in_dir)
        key = load_key(args.db) if args.pseudonymise else None
        exports = {}
        if args.csv:
            write_csv(ledger, args.in_dir, args.csv, key=key)
            exports["csv"] = str(args.csv)
        if args.report:
            write_html(ledger, args.in_dir, args.report, key=key, card=load_card(args.bundle))
            exports["report"] = str(args.report)
    finally:
        ledger.close()
    summary = {
        "done": counts["done"],
        "ungradable": counts["ungradable"],
        "failed": counts["failed"],
        "pending": counts["pending"],
        "referrals": referrals,
        "patients": len(patients),
        "patient_referrals": sum(is_referral(p.decision) for p in patients),
        "this_run": {
            "discovered": stats.discovered,
            "new": stats.new_items,
            "aliases": stats.aliases,
            "screened": stats.screened,
            **stats.finished,
            "images_per_s": round(stats.screened / stats.screening_s, 2)
            if stats.screening_s
            else None,
            "elapsed_s": round(stats.elapsed_s, 2),
            "interrupted": stats.interrupted,
        },
        "db": str(args.db),
        **exports,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    return EXIT_SOME_FAILED if counts["failed"] else EXIT_OK


def cmd_batch_ray(args: argparse.Namespace) -> int:
    """`batch --ray`: run_ray_batch, then the counts read back from the Parquet dataset."""
    from ..errors import EdgescreenError
    from .ray_hub import RayBatchOptions, run_ray_batch, summarise

    unsupported = [
        f for f in ("watch", "report", "csv", "pseudonymise", "dla", "db") if getattr(args, f)
    ]
    if unsupported or not args.out:
        raise EdgescreenError(
            "--ray writes Parquet to --out (required); "
            + (f"not with --{', --'.join(unsupported)}" if unsupported else "no --out given")
        )
    opts = RayBatchOptions(
        in_uri=str(args.in_dir),
        out_uri=args.out,
        bundle=args.bundle,
        precision=args.precision,
        backend=args.backend,
        address=args.ray or None,
        actors=args.actors,
        batch_size=args.batch_size,
        threads=args.threads or 1,  # actors share the cores: one inference thread each
        workers=args.workers,
    )
    with _Bar(enabled=not args.json and sys.stderr.isatty()) as bar:
        stats = run_ray_batch(opts, progress=bar)
    counts = summarise(args.out)
    summary = {
        **counts,
        "pending": 0,
        "this_run": {
            "discovered": stats.discovered,
            "new": stats.new_items,
            "aliases": stats.aliases,
            "screened": stats.screened,
            "recovered": stats.recovered,
            **stats.finished,
            "images_per_s": round(stats.screened / stats.screening_s, 2)
            if stats.screening_s
            else None,
            "elapsed_s": round(stats.elapsed_s, 2),
            "interrupted": False,
            "actor_processes": len(stats.worker_pids),
        },
        "out": args.out,
        "patients": 0,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
        print(f"parquet: {args.out}")
    return EXIT_SOME_FAILED if counts["failed"] else EXIT_OK


def _print_summary(s: dict) -> None:
    from rich.console import Console

    console = Console(highlight=False)
    run = s["this_run"]
    rate = f" at {run['images_per_s']} images/s" if run["images_per_s"] else ""
    console.print(
        f"this run: screened {run['screened']}{rate}; {run['new']} new, {run['aliases']} aliases"
        + (" (interrupted: rerun to finish)" if run["interrupted"] else "")
    )
    console.print(
        f"[bold]{s['done']}[/bold] done · [bold]{s['ungradable']}[/bold] ungradable · "
        f"[bold]{s['failed']}[/bold] failed · [bold]{s['referrals']}[/bold] referrals"
        + (f" · {s['pending']} pending" if s["pending"] else "")
        + (
            f" · {s['patients']} patients, {s['patient_referrals']} to refer"
            if s["patients"]
            else ""
        )
    )
    for k in ("report", "csv"):
        if k in s:
            console.print(f"{k}: {s[k]}")


class _Bar:
    """rich progress bar with rate and ETA, fed by run_batch's Progress callbacks."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress = None
        self.task = None

    def __enter__(self) -> _Bar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("screening"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} img/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[tally]}"),
                console=Console(stderr=True),
                transient=True,
            )
            self.progress.start()
        self.tally = {"done": 0, "ungradable": 0, "failed": 0}
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def pending(self, n: int) -> None:
        if self.progress is None:
            return
        if self.task is None:
            self.task = self.progress.add_task("screen", total=n, rate="-", tally="")
        else:
            task = self.progress.tasks[0]
            self.progress.update(self.task, total=task.completed + n)

    def advance(self, state: str) -> None:
        self.tally[state] = self.tally.get(state, 0) + 1
        if self.progress is None or self.task is None:
            return
        speed = self.progress.tasks[0].speed
        self.progress.update(
            self.task,
            advance=1,
            rate=f"{speed:.1f}" if speed else "-",
            tally=" ".join(f"{k} {v}" for k, v in self.tally.items()),
        )


def main(argv=None) -> int:
    """`python -m edgescreen.runtime.batch.cli batch ...`: the subcommand on its own."""
    from ..errors import EdgescreenError

    parser = argparse.ArgumentParser(prog="edgescreen")
    add_batch_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except EdgescreenError as exc:
        print(f"edgescreen batch: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
