"""Latency per backend and precision, one fresh process per configuration.

A fresh process makes cold start (session or engine creation plus the first inference)
and peak memory mean something, and keeps one configuration's allocator state or
thread pool from leaking into the next. The PyTorch baseline gets its best honest
setting: `inference_mode`, the same thread count, and tcmalloc preloaded when the
machine has it (glibc malloc more than doubled eager ResNet-50 latency here); the
allocator is recorded with every row.

Worker: `python -m edgescreen.benchmarks.latency BUNDLE CONFIG BATCH ...` prints one JSON row.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .system import allocator, find_tcmalloc

if TYPE_CHECKING:  # the worker imports nothing of the runtime before its timed cold start
    from edgescreen.runtime.card import Artifact


@dataclass(frozen=True)
class Config:
    name: str  # e.g. "onnxruntime-int8-cpu"
    backend: str  # pytorch-eager | torchscript | onnxruntime | tensorrt
    precision: str  # fp32 | fp16 | int8
    artifact: str | None  # artifact key in the card, when the backend runs a bundle file


# Short names of the table's targets; they tell the two INT8 forms apart in config names.
TARGET_TAG = {"tensorrt": "trt", "cpu": "cpu"}


def onnx_config_name(artifact: Artifact) -> str:
    """`onnxruntime-<precision>`, plus `-<target>-form` for a file made for one target.

    These are the names recorded results carry: `onnxruntime-fp32`,
    `onnxruntime-int8-trt-form`, `onnxruntime-int8-cpu-form`.
    """
    tag = "" if artifact.target == "any" else f"-{TARGET_TAG[artifact.target]}-form"
    return f"onnxruntime-{artifact.precision}{tag}"


def available_configs(bundle: Path, *, checkpoint: Path | None = None) -> list[Config]:
    """Every configuration this machine can run for the bundle, baseline first."""
    import importlib.util

    from edgescreen.runtime.card import load_card

    card = load_card(bundle)
    has_torch = importlib.util.find_spec("torch") is not None
    configs = []
    if has_torch and checkpoint is not None:
        configs.append(Config("pytorch-eager-fp32", "pytorch-eager", "fp32", None))
    shipped = card.artifacts.items()
    if has_torch:
        configs += [
            Config(f"torchscript-{a.precision}", "torchscript", a.precision, key)
            for key, a in shipped
            if a.format == "torchscript"
        ]
    configs += [
        Config(onnx_config_name(a), "onnxruntime", a.precision, key)
        for key, a in shipped
        if a.format == "onnx"
    ]
    if importlib.util.find_spec("tensorrt") is not None:
        from edgescreen.runtime.backends.trt import engine_available

        for precision in ("fp16", "int8"):
            if engine_available(bundle, card, precision):
                configs.append(Config(f"tensorrt-{precision}", "tensorrt", precision, None))
    return configs


def measure(
    bundle: Path,
    config: Config,
    batch: int,
    *,
    threads: int,
    min_iters: int,
    min_seconds: float,
    warmup: int,
    checkpoint: Path | None = None,
    timeout: float = 900,
) -> dict:
    """Run one configuration in a fresh process and return its row (or the error)."""
    env = dict(os.environ)
    tcmalloc = find_tcmalloc()
    if tcmalloc and "tcmalloc" not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = ":".join(p for p in (tcmalloc, env.get("LD_PRELOAD")) if p)
    env["OMP_NUM_THREADS"] = str(threads)
    cmd = [
        sys.executable,
        "-m",
        "edgescreen.benchmarks.latency",
        str(bundle),
        json.dumps(asdict(config)),
        str(batch),
        "--threads",
        str(threads),
        "--min-iters",
        str(min_iters),
        "--min-seconds",
        str(min_seconds),
        "--warmup",
        str(warmup),
    ]
    if checkpoint is not None:
        cmd += ["--checkpoint", str(checkpoint)]
    base = {
        "config": config.name,
        "backend": config.backend,
        "precision": config.precision,
        "batch": batch,
        "threads": threads,
        "allocator": allocator(env),
    }
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**base, "error": f"timed out after {timeout:.0f}s"}
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        return {**base, "error": tail[0][:300]}
    return {**base, **json.loads(out.stdout.strip().splitlines()[-1])}


# -- worker ------------------------------------------------------------------------------------
def _runner(bundle: Path, config: Config, threads: int, checkpoint: Path | None):
    """(run, close): batch -> outputs for the configuration, created inside the timed cold
    start, and what releases it (a TensorRT engine's buffers and CUDA context)."""
    if config.backend in ("pytorch-eager", "torchscript"):
        import torch

        torch.set_num_threads(threads)
        if config.backend == "pytorch-eager":
            from edgescreen.train.checkpoint import load_trained

            model = load_trained(checkpoint).model
        else:
            from edgescreen.runtime.card import load_card

            model = torch.jit.load(str(bundle / load_card(bundle).artifacts[config.artifact].file))
        model.eval()

        def run(x: np.ndarray):
            with torch.inference_mode():
                return model(torch.from_numpy(x))

        return run, lambda: None
    from edgescreen.runtime.backends import open_backend
    from edgescreen.runtime.card import load_card

    card = load_card(bundle)
    if config.backend == "tensorrt":
        backend = open_backend(bundle, card, config.precision, "tensorrt")
    else:
        target = card.artifacts[config.artifact].target
        backend = open_backend(
            bundle,
            card,
            config.precision,
            "onnxruntime",
            threads=threads,
            device="cpu",
            target=target,
        )
    return backend.infer, backend.close


def _inputs(bundle: Path, batch: int) -> np.ndarray:
    """Real preprocessed images from the bundle's golden set when it has one."""
    from edgescreen.runtime.card import load_card

    golden = bundle / "golden" / "inputs.npy"
    if golden.exists():
        x = np.load(golden)
        reps = -(-batch // len(x))
        return np.ascontiguousarray(np.concatenate([x] * reps)[:batch], dtype=np.float32)
    shape = load_card(bundle).input.shape
    return np.random.default_rng(0).normal(size=(batch, *shape)).astype(np.float32)


def _rss_mb() -> float:
    """Peak resident memory of this process, in MB.

    VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across execve, so a worker
    started by a big parent (the demo, after training) would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("bundle", type=Path)
    p.add_argument("config")
    p.add_argument("batch", type=int)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-iters", type=int, default=20)
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--checkpoint", type=Path)
    args = p.parse_args(argv)
    config = Config(**json.loads(args.config))
    x = _inputs(args.bundle, args.batch)
    rss_before = _rss_mb()
    start = time.perf_counter()
    run, close = _runner(args.bundle, config, args.threads, args.checkpoint)
    run(x)
    cold_ms = (time.perf_counter() - start) * 1000
    for _ in range(args.warmup):
        run(x)
    times = []
    began = time.perf_counter()
    while len(times) < args.min_iters or time.perf_counter() - began < args.min_seconds:
        t = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - t) * 1000)
    close()
    times_arr = np.array(times)
    median = float(np.median(times_arr))
    print(
        json.dumps(
            {
                "iters": len(times),
                "median_ms": median,
                "p95_ms": float(np.percentile(times_arr, 95)),
                "p99_ms": float(np.percentile(times_arr, 99)),
                "mean_ms": float(times_arr.mean()),
                "per_image_ms": median / args.batch,
                "throughput_ips": args.batch * 1000 / median,
                "cold_start_ms": cold_ms,
                "peak_rss_mb": _rss_mb(),
                "rss_before_mb": rss_before,
                "error": None,
            }
        )
    )


if __name__ == "__main__":
    worker()
