"""Camera-resolution uploads beside their 768 px copies: throughput, where the time goes, bounds.

Fundus cameras upload 10-megapixel JPEGs; the shared training sets are 768 px re-encodes of
the same photos. For each set, in one run:
- runtime: `Screener.screen_many`, as `edgescreen screen`/`batch` run it;
- per-image milliseconds of decode, quality gate, preprocessing and inference (the
  Screener's own timings);
- prepare-only (decode + gate + preprocess in the runtime's threads) and infer-only rates,
  and the two bounds they give: on a machine where prepare and inference share the CPU
  cores the bound is their summed work, 1 / (1/prepare + 1/infer); where a GPU runs the
  network it is the slower of the two;
- agreement: originals and their copies should get the same grade and decision.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from .pipeline import decode_only, infer_only, screen_timed


def pairs(fullres_dir: Path) -> list[tuple[Path, Path]]:
    """(original, 768 px copy) for each photo of a `fundus-dr-srahim-fullres`-style set."""
    copies = fullres_dir.parent / "fundus-dr-srahim"
    out = []
    with open(fullres_dir / "labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            copy = row.get("copy_in_fundus_dr_srahim")
            if copy:
                out.append((fullres_dir / row["filename"], copies / copy))
    return out


def bounds(prepare_rate: float, infer_rate: float) -> dict[str, float]:
    return {
        "shared_cores": 1.0 / (1.0 / prepare_rate + 1.0 / infer_rate),
        "separate_devices": min(prepare_rate, infer_rate),
    }


def run_camera(
    bundle: Path,
    fullres_dir: Path,
    *,
    precision: str = "int8",
    threads: int = 2,
    workers: int = 2,
    batch_size: int = 8,
    limit: int | None = None,
) -> dict[str, Any]:
    photo_pairs = pairs(Path(fullres_dir))[:limit]
    if not photo_pairs:
        raise ValueError(f"{fullres_dir}: no originals with a 768 px copy listed in labels.csv")
    out: dict[str, Any] = {"photos": len(photo_pairs), "precision": precision, "workers": workers}
    found = {}
    for name, images in (
        ("originals", [o for o, _ in photo_pairs]),
        ("copies_768", [c for _, c in photo_pairs]),
    ):
        run, results = screen_timed(
            bundle,
            images,
            precision=precision,
            threads=threads,
            workers=workers,
            batch_size=batch_size,
        )
        prepared = decode_only(bundle, images, workers=workers)
        tensors = prepared.pop("tensors")
        inferred = infer_only(
            bundle, tensors, precision=precision, threads=threads, batch_size=batch_size
        )
        run["prepare_only_per_s"] = prepared["images_per_s"]
        run["infer_only_per_s"] = inferred["images_per_s"]
        run["bounds"] = bounds(prepared["images_per_s"], inferred["images_per_s"])
        run["vs_shared_cores_bound"] = run["images_per_s"] / run["bounds"]["shared_cores"]
        run["vs_separate_devices_bound"] = run["images_per_s"] / run["bounds"]["separate_devices"]
        out[name] = run
        found[name] = [(r.status, r.grade, r.decision) for r in results]
    same = [a == b for a, b in zip(found["originals"], found["copies_768"], strict=True)]
    out["agreement"] = {
        "same_grade_and_decision": int(sum(same)),
        "of": len(same),
        "differing": [
            {"photo": o.name, "original": a, "copy": b}
            for (o, _), a, b, s in zip(
                photo_pairs, found["originals"], found["copies_768"], same, strict=True
            )
            if not s
        ],
    }
    out["originals_vs_copies_speed"] = (
        out["originals"]["images_per_s"] / out["copies_768"]["images_per_s"]
    )
    return out
