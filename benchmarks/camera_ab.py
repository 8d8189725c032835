"""Camera uploads, this tree beside an earlier checkout: alternated runs, one table.

    python -m edgescreen.benchmarks.camera_ab BUNDLE FULLRES --against DIR [--rounds 3] [--out D]

`DIR` is a checkout of an earlier commit (`git worktree add /tmp/before COMMIT`). Three modes,
each run in its own process, in turn, `--rounds` times, so that a noisy machine slows all
of them alike:
- `full decode` (the earlier checkout, decoding at full resolution: how screening worked
  before reduced decoding, the issue's baseline);
- `before` (the earlier checkout as it was);
- `now` (this tree).
Every mode runs this tree's camera benchmark (benchmarks/camera.py) on the runtime it
names, so all three are measured the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path
from statistics import median
from typing import Any

PACKAGES = ("runtime", "train", "export")
# Runs one mode and prints run_camera's JSON on a line of its own, after "RESULT ".
# "full": every upload decoded at full resolution (decode_for replaced before the benchmark
# imports it; prepare_source looks it up in its module at each call).
_ONE = """
import json, sys
if sys.argv[1] == "full":
    import edgescreen.runtime.prepare as prepare
    from edgescreen.runtime.imageio import Decoded, decode
    def decode_for(source, card, *, name=None):
        if isinstance(source, Decoded):
            return source
        return decode(source, name=name, max_pixels=card.input.max_pixels)
    prepare.decode_for = decode_for
from edgescreen.benchmarks.camera import run_camera
print("RESULT " + json.dumps(run_camera(sys.argv[2], sys.argv[3], precision=sys.argv[4])))
"""


def _namespace(checkout: Path, here: Path, into: Path) -> Path:
    """An `edgescreen` package whose runtime is the checkout's and whose benchmarks are ours."""
    pkg = into / "edgescreen"
    pkg.mkdir()
    for name in PACKAGES:
        (pkg / name).symlink_to(checkout.resolve() / name)
    (pkg / "benchmarks").symlink_to(here)
    return into


def run_modes(
    bundle: Path, fullres: Path, against: Path, *, rounds: int, precision: str = "int8"
) -> dict[str, list[dict[str, Any]]]:
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    here = Path(__file__).resolve().parent
    runs: dict[str, list[dict[str, Any]]] = {"full decode": [], "before": [], "now": []}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "earlier").mkdir()
        (Path(tmp) / "now").mkdir()
        earlier_path = _namespace(Path(against), here, Path(tmp) / "earlier")
        now_path = _namespace(here.parent, here, Path(tmp) / "now")  # this tree, not an install
        earlier = dict(os.environ, PYTHONPATH=str(earlier_path))
        envs = {
            "full decode": earlier,
            "before": earlier,
            "now": dict(os.environ, PYTHONPATH=str(now_path)),
        }
        for r in range(rounds):
            for mode, env in envs.items():
                args = ["full" if mode == "full decode" else "as-is", str(bundle), str(fullres)]
                done = subprocess.run(
                    [sys.executable, "-c", _ONE, *args, precision],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                found = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
                if done.returncode or not found:
                    raise RuntimeError(
                        f"round {r + 1}, {mode}: the run failed (exit {done.returncode}):\n"
                        f"{done.stderr[-4000:]}"
                    )
                runs[mode].append(json.loads(found[-1].removeprefix("RESULT ")))
                orig = runs[mode][-1]["originals"]
                print(f"round {r + 1} {mode}: originals {orig['images_per_s']:.1f}/s", flush=True)
    return runs


def summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per mode and input, each round's figures; ratios to full decode taken round by round."""

    def per_round(mode: str, key: str, field: str) -> list[float]:
        return [run[key][field] for run in runs[mode]]

    out: dict[str, Any] = {}
    for mode in runs:
        row: dict[str, Any] = {}
        for key in ("originals", "copies_768"):
            row[key] = {
                field: per_round(mode, key, field)
                for field in ("images_per_s", "decode_alone_per_s", "prepare_only_per_s")
            }
            row[key]["ms_per_image"] = {
                stage: [run[key]["ms_per_image"][stage] for run in runs[mode]]
                for stage in runs[mode][0][key]["ms_per_image"]
            }
        row["agreement"] = [run["agreement"]["same_grade_and_decision"] for run in runs[mode]]
        row["vs_full_decode"] = [
            a / b
            for a, b in zip(
                per_round(mode, "originals", "images_per_s"),
                per_round("full decode", "originals", "images_per_s"),
                strict=True,
            )
        ]
        out[mode] = row
    return out


def _span(values: list[float], digits: int = 1) -> str:
    lo, mid, hi = min(values), median(values), max(values)
    return f"{mid:.{digits}f} [{lo:.{digits}f}-{hi:.{digits}f}]"


def markdown(table: dict[str, Any], *, machine: str, source: str, photos: int) -> str:
    lines = [
        f"# Camera-resolution uploads, before and after ({date.today().isoformat()}, {machine})",
        "",
        source,
        "",
        "Median [range] over the rounds. ms per image are the Screener's own stage timings "
        "(decode includes finding the disc where the decode scale depends on it).",
        "",
        "| mode | input | images/s | vs full decode | decoding alone /s | prepare only /s "
        "| decode / gate / preprocess / infer ms | same grade and decision |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, row in table.items():
        for key in ("originals", "copies_768"):
            r = row[key]
            ms = " / ".join(f"{median(v):.1f}" for v in r["ms_per_image"].values())
            ratio = _span(row["vs_full_decode"], 2) + "×" if key == "originals" else "-"
            agree = f"{_span(row['agreement'], 0)} of {photos}" if key == "originals" else ""
            lines.append(
                f"| {mode} | {key.replace('_', ' ')} | {_span(r['images_per_s'])} | {ratio} | "
                f"{_span(r['decode_alone_per_s'])} | {_span(r['prepare_only_per_s'])} | {ms} | "
                f"{agree} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("fullres", type=Path, help="a fundus-dr-srahim-fullres-style folder")
    p.add_argument("--against", type=Path, required=True, help="checkout of an earlier commit")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--precision", default="int8", choices=("fp32", "fp16", "int8"))
    p.add_argument("--out", type=Path, default=None, help="write JSON and markdown here")
    args = p.parse_args(argv)

    from .report import isa_note, write_named
    from .system import describe, machine_tag

    runs = run_modes(
        args.bundle, args.fullres, args.against, rounds=args.rounds, precision=args.precision
    )
    table = summary(runs)
    info = describe(2)
    gpu = info.get("gpu") or "none"
    machine = f"{info.get('cpu', '?')}{isa_note(info)}, {info.get('cores')} cores, GPU: {gpu}"
    photos = runs["now"][0]["photos"]
    source = (
        f"{photos} originals (3872x2592 JPEG) of {args.fullres} beside their 768 px copies; "
        f"bundle {args.bundle} ({args.precision}); 2 prepare workers, 2 inference threads; "
        f"`before` = {args.against}; {args.rounds} rounds of the three modes in turn, each a "
        "process of its own. Command: `python -m edgescreen.benchmarks.camera_ab "
        f"{args.bundle} {args.fullres} --against {args.against} --rounds {args.rounds}`."
    )
    md = markdown(table, machine=machine, source=source, photos=photos)
    print(md)
    if args.out:
        data = {
            "benchmark": "camera_ab",
            "date": date.today().isoformat(),
            "machine": machine,
            "source": source,
            "summary": table,
            "runs": runs,
        }
        write_named(data, md, args.out, f"{machine_tag()}-{data['date']}-camera-ab")


if __name__ == "__main__":
    main()
