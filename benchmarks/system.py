"""What a result was measured on: CPU, GPU, threads, allocator, library versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

TCMALLOC_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4",
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
)


def find_tcmalloc() -> str | None:
    return next((p for p in TCMALLOC_CANDIDATES if Path(p).exists()), None)


def allocator(env: dict[str, str] | None = None) -> str:
    preload = (env or os.environ).get("LD_PRELOAD", "")
    return "tcmalloc" if "tcmalloc" in preload else "glibc malloc"


def cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        match = re.search(r"model name\s*:\s*(.+)", text) or re.search(r"Model\s*:\s*(.+)", text)
        if match:
            return match.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return (
            out.stdout.strip().splitlines()[0]
            if out.returncode == 0 and out.stdout.strip()
            else None
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def versions() -> dict[str, str]:
    found = {}
    for dist in (
        "edgescreen",
        "numpy",
        "opencv-python-headless",
        "onnxruntime",
        "onnxruntime-gpu",
        "onnx",
        "torch",
        "timm",
        "tensorrt",
    ):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def machine_tag() -> str:
    """A short file-name-safe name for the machine: cpu model and core count (or GPU)."""
    name = gpu_name() or cpu_name()
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    slug = re.sub(r"-(cpu|processor|core-tm|r)-", "-", slug)[:40].strip("-")
    return f"{slug}-{os.cpu_count()}c"


def describe(threads: int) -> dict[str, object]:
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "gpu": gpu_name(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "threads": threads,
        "tcmalloc_available": find_tcmalloc() is not None,
        "versions": versions(),
    }
