"""End-to-end screening throughput on real photos, and how close it is to its bounds.

Four numbers from one run, side by side:
- runtime: `Screener.screen_many` (decode + quality gate + preprocessing in a thread pool
  overlapping batched inference), the way `edgescreen screen`/`batch` run;
- naive: PIL decode, the same preprocessing (the one prepare step, ungated), one eager
  PyTorch FP32 call per image — what a notebook does;
- decode-only: decode + quality gate + preprocessing alone (`prepare_source`, the
  Screener's per-image step), with the runtime's threads;
- infer-only: the backend alone on the batches of the images the gate passed.
The runtime cannot beat the slower of the two bounds; where prepare and inference share the
same CPU cores it cannot beat their summed work either, 1 / (1/prepare + 1/infer). Both
bounds and the ratio to each are reported.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from edgescreen.runtime.backends import open_backend
from edgescreen.runtime.card import load_card
from edgescreen.runtime.prepare import prepare, prepare_source
from edgescreen.runtime.screen import Screener


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


STAGES = ("decode", "quality", "preprocess", "infer")


def screen_timed(
    bundle: Path, images: list[Path], *, precision: str, threads: int, workers: int, batch_size: int
) -> tuple[dict[str, Any], list]:
    """The Screener as `edgescreen screen`/`batch` run it: rate, stage times, and the results."""
    with Screener(
        bundle, precision=precision, backend="onnxruntime", threads=threads, workers=workers
    ) as s:
        list(s.screen_many(images[:batch_size], batch_size=batch_size))  # warm-up
        start = time.perf_counter()
        results = list(s.screen_many(images, batch_size=batch_size))
        seconds = time.perf_counter() - start
    summary = {
        "images": len(images),
        "seconds": seconds,
        "images_per_s": _rate(len(images), seconds),
        "ok": sum(r.status == "ok" for r in results),
        "precision": precision,
        "batch_size": batch_size,
        "ms_per_image": {
            stage: float(np.mean([r.timings_ms.get(stage, 0.0) for r in results]))
            for stage in STAGES
        },
    }
    return summary, results


def runtime_pipeline(
    bundle: Path, images: list[Path], *, precision: str, threads: int, workers: int, batch_size: int
) -> dict[str, Any]:
    return screen_timed(
        bundle, images, precision=precision, threads=threads, workers=workers, batch_size=batch_size
    )[0]


def decode_only(bundle: Path, images: list[Path], *, workers: int) -> dict[str, Any]:
    """Decode + quality gate + preprocessing, exactly the Screener's per-image step."""
    card = load_card(bundle)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        start = time.perf_counter()
        prepared = list(pool.map(lambda path: prepare_source(path, card), images))
        seconds = time.perf_counter() - start
    return {
        "images": len(images),
        "seconds": seconds,
        "images_per_s": _rate(len(images), seconds),
        "ok": sum(p.status == "ok" for p in prepared),
        "tensors": [p.tensor for p in prepared if p.tensor is not None],
    }


def infer_only(
    bundle: Path, tensors: list[np.ndarray], *, precision: str, threads: int, batch_size: int
) -> dict[str, Any]:
    batches = [np.stack(tensors[i : i + batch_size]) for i in range(0, len(tensors), batch_size)]
    if not batches:  # no image passed the gate: nothing to infer
        return {"images": 0, "seconds": 0.0, "images_per_s": float("nan")}
    with open_backend(
        bundle, load_card(bundle), precision, "onnxruntime", threads=threads, device="cpu"
    ) as backend:
        backend.infer(batches[0])
        start = time.perf_counter()
        for b in batches:
            backend.infer(b)
        seconds = time.perf_counter() - start
    return {
        "images": len(tensors),
        "seconds": seconds,
        "images_per_s": _rate(len(tensors), seconds),
    }


def naive_pipeline(checkpoint: Path, images: list[Path], *, threads: int) -> dict[str, Any]:
    import torch
    from PIL import Image

    from edgescreen.train.checkpoint import load_trained

    torch.set_num_threads(threads)
    trained = load_trained(checkpoint)
    model, card = trained.model, trained.card

    def one(path: Path):
        with Image.open(path) as im:
            array = np.asarray(im.convert("RGB"))
        tensor = prepare(array, card, gate=False).tensor  # the same preprocessing, no gate
        with torch.inference_mode():
            return model(torch.from_numpy(tensor)[None])

    one(images[0])  # warm-up
    start = time.perf_counter()
    for path in images:
        one(path)
    seconds = time.perf_counter() - start
    return {"images": len(images), "seconds": seconds, "images_per_s": _rate(len(images), seconds)}


def run_pipeline(
    bundle: Path,
    images: list[Path],
    *,
    checkpoint: Path | None,
    precision: str = "int8",
    threads: int = 2,
    workers: int = 2,
    batch_size: int = 8,
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "images": len(images),
        "precision": precision,
        "threads": threads,
        "workers": workers,
        "batch_size": batch_size,
    }
    result["runtime"] = runtime_pipeline(
        bundle, images, precision=precision, threads=threads, workers=workers, batch_size=batch_size
    )
    decoded = decode_only(bundle, images, workers=workers)
    tensors = decoded.pop("tensors")
    result["decode_only"] = decoded
    result["infer_only"] = infer_only(
        bundle, tensors, precision=precision, threads=threads, batch_size=batch_size
    )
    # Where prepare and inference share the CPU cores the bound is their summed work; with a
    # GPU running the network it is the slower of the two. Both are reported.
    prepare_rate, infer_rate = (
        result["decode_only"]["images_per_s"],
        result["infer_only"]["images_per_s"],
    )
    result["bounds"] = {
        "shared_cores": 1.0 / (1.0 / prepare_rate + 1.0 / infer_rate),
        "separate_devices": min(prepare_rate, infer_rate),
    }
    rate = result["runtime"]["images_per_s"]
    result["runtime_vs_bound"] = rate / result["bounds"]["separate_devices"]
    result["runtime_vs_shared_bound"] = rate / result["bounds"]["shared_cores"]
    if checkpoint is not None:
        result["naive"] = naive_pipeline(checkpoint, images, threads=threads)
        result["runtime_vs_naive"] = (
            result["runtime"]["images_per_s"] / result["naive"]["images_per_s"]
        )
    return result
