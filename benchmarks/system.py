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


# The instruction sets that decide INT8 and FP16 speed on a CPU, best first within each
# architecture: one Xeon model name covers machines with and without AMX, whose INT8/FP32
# ratios differ several-fold, so results carry the best one in their name.
INT8_ISAS = (
    ("amx_int8", "amx"),
    ("avx512_vnni", "avx512vnni"),
    ("avx_vnni", "avxvnni"),
    ("avx512f", "avx512"),
    ("avx2", "avx2"),
    ("i8mm", "i8mm"),  # ARM (Jetson Orin's Cortex-A78AE has dotprod, not i8mm)
    ("asimddp", "dotprod"),
    ("asimd", "neon"),
)


def cpu_features(cpuinfo: str | None = None) -> list[str]:
    """The INT8_ISAS this CPU has (from /proc/cpuinfo's flags or Features), best first."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
    match = re.search(r"^(?:flags|Features)[ \t]*:[ \t]*(.*)$", cpuinfo, re.MULTILINE)
    have = set(match.group(1).split()) if match else set()
    return [short for flag, short in INT8_ISAS if flag in have]


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
    """A short file-name-safe name for the machine: the GPU, or the CPU model and its best INT8
    instruction set (cpu_features), then the core count."""
    gpu = gpu_name()
    slug = re.sub(r"[^a-z0-9]+", "-", (gpu or cpu_name()).lower()).strip("-")
    slug = re.sub(r"-(cpu|processor|core-tm|r)-", "-", slug)[:40].strip("-")
    isa = [] if gpu else cpu_features()[:1]
    return "-".join([slug, *isa, f"{os.cpu_count()}c"])


def describe(threads: int) -> dict[str, object]:
    return {
        "cpu": cpu_name(),
        "cpu_features": cpu_features(),
        "cores": os.cpu_count(),
        "gpu": gpu_name(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "threads": threads,
        "tcmalloc_available": find_tcmalloc() is not None,
        "versions": versions(),
    }
