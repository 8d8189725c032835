"""Camera-resolution uploads beside their 768 px copies: throughput, where the time goes, bounds.

Fundus cameras upload 10-megapixel JPEGs; the shared training sets are 768 px re-encodes of
the same photos. For each set, in one run:
- runtime: `Screener.screen_many`, as `edgescreen screen`/`batch` run it;
- per-image milliseconds of decode, quality gate, preprocessing and inference (the
  Screener's own timings);
- decode-alone (the one JPEG decode at the scale screening ends up at, in the runtime's
  threads), prepare-only (decode + gate + preprocess) and infer-only rates,
  and the two bounds they give: on a machine where prepare and inference share the CPU
  cores the bound is their summed work, 1 / (1/prepare + 1/infer); where a GPU runs the
  network it is the slower of the two;
- agreement: originals and their copies should get the same grade and decision.
"""

from __future__ import annotations

import csv
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from edgescreen.runtime.card import load_card
from edgescreen.runtime.imageio import decode
from edgescreen.runtime.prepare import decode_for

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


def decode_alone(bundle: Path, images: list[Path], *, workers: int) -> float:
    """Images/s of the JPEG decode alone, at the scale screening ends up decoding each at.

    decode_for may decode a photo twice and finds the disc to choose its scale; this times
    only the one decode that a perfect choice would make, so the gate, the crop and any
    second decode all count against the pipeline, not against this bound.
    """
    card = load_card(bundle)
    # Just under the shorter side screening decoded each photo to: as min_side it picks the
    # same DCT reduction directly (a reduced JPEG's size is rounded up, hence the - 1).
    jobs = [(p, max(1, min(decode_for(p, card).image.shape[:2]) - 1)) for p in images]  # untimed
    with ThreadPoolExecutor(max_workers=workers) as pool:
        start = time.perf_counter()
        for _ in pool.map(
            lambda job: decode(job[0], max_pixels=card.input.max_pixels, min_side=job[1]), jobs
        ):
            pass
        seconds = time.perf_counter() - start
    return len(images) / seconds


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
        run["decode_alone_per_s"] = decode_alone(bundle, images, workers=workers)
        run["vs_decode_alone"] = run["images_per_s"] / run["decode_alone_per_s"]
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
