"""Triton under load, on loopback: served results against the runtime's, and dynamic batching.

    python -m edgescreen.benchmarks.triton_load --bundle BUNDLE --images DIR \\
        [--precision int8] [--clients 8] [--seconds 30] [--rounds 2] [--out benchmarks/results]

One tritonserver (nvidia-pytriton's binary, from the .venv-triton environment) loads two
copies of the `edgescreen` model from one repository: `edgescreen` with dynamic batching
and `edgescreen-single` without it (one request per execution), same instances, workers
and threads. In one run:

1. equality: every image of DIR screened through the server (one request per image) and
   by a local Screener, same bundle and precision; results compared field by field
   (timings excluded; floats to 1e-9, see runtime/triton/client.py);
2. load: `clients` threads, each with its own HTTP connection, send one image per request
   for `seconds` per round to each model in turn, `rounds` times, so the two are measured
   side by side on the same noisy machine. Throughput, p50/p95/p99 latency and errors per
   round; the batching gain is the ratio of the two throughputs within each round;
3. where the time goes: in the same round, while the server idles, the same Screener in
   this process at one image per call and at `clients` per call: median ms per stage, the
   network's share of the work, the gain batching the network alone could give (Amdahl),
   and the gain the Screener gets in process (its worker threads decode a batch in
   parallel, which one image per call cannot use).

On a CPU-only machine the clients, the server's decode/quality gate and the network share
the same cores: the figures are this machine's, not a GPU server's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from edgescreen.runtime.card import load_card
from edgescreen.runtime.screen import Screener
from edgescreen.runtime.triton.client import ScreenClient, result_differences
from edgescreen.runtime.triton.repository import SCREEN_MODEL, write_repository, write_screen_model
from edgescreen.runtime.triton.server import TritonServer

from .report import write_named
from .system import describe, machine_tag

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}
SINGLE_MODEL = f"{SCREEN_MODEL}-single"


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def compare(server: TritonServer, bundle: Path, images: list[Path], precision: str) -> dict:
    with ScreenClient(server.http_url) as client:
        served = [client.screen_files([p])[0] for p in images]
    with Screener(bundle, precision=precision, backend="onnxruntime") as screener:
        local = [json.loads(r.to_json()) for r in screener.screen_many(images)]
    differing = {}
    for a, b in zip(local, served, strict=True):
        found = result_differences(a, b)
        if found:
            differing[a["image"]] = found[:5]
    return {
        "images": len(images),
        "equal": len(images) - len(differing),
        "differing": differing,
        "decisions_equal": sum(
            a["decision"] == b["decision"] for a, b in zip(local, served, strict=True)
        ),
    }


def load_phase(
    url: str,
    model: str,
    payloads: list[bytes],
    clients: int,
    seconds: float,
    protocol: str = "http",
) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client_loop(k: int) -> None:
        with ScreenClient(url, model=model, protocol=protocol) as client:
            i = k
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                try:
                    (result,) = client.screen([payloads[i % len(payloads)]])
                    failed = result["status"] == "failed"
                except Exception as exc:  # noqa: BLE001 - counted, reported
                    failed, result = True, {"error": f"{type(exc).__name__}: {exc}"}
                took = time.perf_counter() - start
                with lock:
                    latencies.append(took)
                    if failed:
                        errors.append(result.get("error") or "failed")
                i += clients

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    ms = np.array(latencies) * 1000
    return {
        "model": model,
        "requests": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:3],
        "seconds": round(wall, 2),
        "images_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
        "p95_ms": float(np.percentile(ms, 95)) if len(ms) else None,
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
    }


STAGES = ("decode", "quality", "preprocess", "infer", "postprocess")


def in_process_phase(
    bundle: Path, payloads: list[bytes], precision: str, workers: int, batch: int, seconds: float
) -> dict[str, Any]:
    """The same Screener in this process, `batch` images per call: what batching can gain at
    best here, without the server, the clients or the protocol. Median ms per image by stage."""
    with Screener(bundle, precision=precision, backend="onnxruntime", workers=workers) as s:
        list(s.screen_many(payloads[:batch], batch_size=batch))  # warm
        stop_at = time.perf_counter() + seconds
        began, done, i = time.perf_counter(), 0, 0
        timings: dict[str, list[float]] = {k: [] for k in STAGES}
        while time.perf_counter() < stop_at:
            chunk = [payloads[(i + j) % len(payloads)] for j in range(batch)]
            for result in s.screen_many(chunk, batch_size=batch):
                for k in STAGES:
                    if k in result.timings_ms:
                        timings[k].append(result.timings_ms[k])
            done, i = done + batch, i + batch
        wall = time.perf_counter() - began
    return {
        "batch": batch,
        "images": done,
        "images_per_s": done / wall,
        "stage_ms": {k: float(np.median(v)) for k, v in timings.items() if v},
    }


def batching_bound(one: dict[str, Any], many: dict[str, Any]) -> dict[str, float]:
    """What a batch can gain from the network alone (Amdahl), beside what it gained in process.

    `amdahl_bound`: the per-image work at batch 1 over the same with the network's per-image
    time at the larger batch; decoding, the quality gate and preprocessing stay per image.
    The Screener also spreads a batch's decoding over its worker threads, which one image per
    call cannot use: `in_process_gain` (measured) holds both effects.
    """
    a, b = one["stage_ms"], many["stage_ms"]
    total = sum(a.values())
    batched = total - a.get("infer", 0.0) + b.get("infer", 0.0)
    return {
        "network_share_batch1": a.get("infer", 0.0) / total if total else 0.0,
        "amdahl_bound": total / batched if batched else float("nan"),
        "in_process_gain": many["images_per_s"] / one["images_per_s"],
    }


def run(
    bundle: Path,
    image_dir: Path,
    *,
    precision: str,
    clients: int,
    seconds: float,
    rounds: int,
    workers: int,
    protocol: str = "http",
) -> dict[str, Any]:
    images = images_in(image_dir)
    if not images:
        raise SystemExit(f"{image_dir}: no images")
    card = load_card(bundle)
    payloads = [p.read_bytes() for p in images]
    with tempfile.TemporaryDirectory(prefix="edgescreen-triton-bench-") as scratch:
        repo = write_repository(
            bundle, Path(scratch) / "repo", precision=precision, workers=workers
        )
        write_screen_model(
            repo.path / SINGLE_MODEL,
            bundle,
            card,
            parameters=repo.parameters,
            dynamic_batching=False,
        )
        with TritonServer(repo.path, models=(SCREEN_MODEL, SINGLE_MODEL)) as server:
            equality = compare(server, bundle, images, precision)
            url = server.grpc_url if protocol == "grpc" else server.http_url
            for model in (SCREEN_MODEL, SINGLE_MODEL):  # warm both before timing either
                load_phase(url, model, payloads, clients, 2.0, protocol)
            rows = []
            for r in range(rounds):
                batched = load_phase(url, SCREEN_MODEL, payloads, clients, seconds, protocol)
                single = load_phase(url, SINGLE_MODEL, payloads, clients, seconds, protocol)
                # The server idles meanwhile: the Screener alone, at batch 1 and at the
                # batch the 8 clients can fill, on the same cores in the same round.
                one = in_process_phase(bundle, payloads, precision, workers, 1, seconds / 3)
                many = in_process_phase(bundle, payloads, precision, workers, clients, seconds / 3)
                rows.append(
                    {
                        "round": r + 1,
                        "dynamic_batching": batched,
                        "one_at_a_time": single,
                        "gain": batched["images_per_s"] / single["images_per_s"],
                        "in_process": {"batch_1": one, f"batch_{clients}": many},
                        **batching_bound(one, many),
                    }
                )
    gains = [row["gain"] for row in rows]
    return {
        "benchmark": "triton_load",
        "date": date.today().isoformat(),
        "machine": describe(workers),
        "bundle": str(bundle),
        "model": card.name,
        "precision": precision,
        "images": len(images),
        "image_dir": str(image_dir),
        "clients": clients,
        "protocol": protocol,
        "seconds_per_phase": seconds,
        "workers": workers,
        "equality": equality,
        "rounds": rows,
        "gain_range": [min(gains), max(gains)],
    }


def markdown(data: dict[str, Any]) -> str:
    eq = data["equality"]
    lines = [
        f"# Triton load, {data['model']} {data['precision']}, {data['date']}",
        "",
        f"Machine: {data['machine'].get('cpu', '?')}; {data['clients']} {data['protocol']} "
        "clients on loopback, "
        f"{data['seconds_per_phase']:.0f} s per phase, {data['images']} images from "
        f"`{data['image_dir']}`.",
        "",
        f"Served results equal to `edgescreen screen --json`: **{eq['equal']} / {eq['images']}** "
        f"(decisions {eq['decisions_equal']} / {eq['images']}).",
        "",
        "| round | model | images/s | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in data["rounds"]:
        for key in ("dynamic_batching", "one_at_a_time"):
            p = row[key]
            lines.append(
                f"| {row['round']} | {key.replace('_', ' ')} | {p['images_per_s']:.1f} | "
                f"{p['p50_ms']:.0f} | {p['p95_ms']:.0f} | {p['p99_ms']:.0f} | {p['errors']} |"
            )
    lo, hi = data["gain_range"]
    lines += ["", f"Dynamic batching gain (same round): {lo:.2f}x to {hi:.2f}x.", ""]
    if all("in_process" in row for row in data["rounds"]):
        lines += [
            "Where the time goes: the same Screener in one process (no server, no clients), "
            f"one image per call against {data['clients']} per call, median ms per image:",
            "",
            "| round | batch | images/s | "
            + " | ".join(f"{k} ms" for k in STAGES)
            + " | network share | network-only bound | in-process gain |",
            "|---|---|---|" + "---|" * len(STAGES) + "---|---|---|",
        ]
        for row in data["rounds"]:
            for p in row["in_process"].values():
                ms = " | ".join(f"{p['stage_ms'].get(k, float('nan')):.2f}" for k in STAGES)
                extra = (
                    f"{100 * row['network_share_batch1']:.0f}% | {row['amdahl_bound']:.2f}x | "
                    f"{row['in_process_gain']:.2f}x"
                    if p["batch"] == 1
                    else " | |"
                )
                lines.append(
                    f"| {row['round']} | {p['batch']} | {p['images_per_s']:.1f} | {ms} | {extra} |"
                )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--bundle", required=True, type=Path)
    p.add_argument("--images", required=True, type=Path, help="folder of photos to send")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=30.0, help="per model per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="decode/preprocess threads per instance")
    p.add_argument("--protocol", choices=("http", "grpc"), default="http")
    p.add_argument("--out", type=Path, default=None, help="write JSON + markdown here")
    args = p.parse_args(argv)
    data = run(
        args.bundle,
        args.images,
        precision=args.precision,
        clients=args.clients,
        seconds=args.seconds,
        rounds=args.rounds,
        workers=args.workers,
        protocol=args.protocol,
    )
    text = markdown(data)
    print(text)
    if args.out is not None:
        write_named(data, text, args.out, f"{machine_tag()}-{data['date']}-triton-{args.protocol}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
