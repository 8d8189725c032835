#!/usr/bin/env python3
"""Is edgescreen's TensorRT runtime installed here?  Exit 0 when it is, 1 when not.

    python3 jetson/check-runtime.py                 installed: no GPU, no CUDA driver needed
    python3 jetson/check-runtime.py --cuda          and it runs: import, start CUDA, name the GPU
    python3 jetson/check-runtime.py --venv-pycuda   (with either) pycuda must be the venv's own

Without --cuda nothing that loads libcuda is imported: tensorrt and pycuda's extension are only
found (importlib.util.find_spec), which is what `docker build` can check. Importing
pycuda.driver or tensorrt loads libcuda.so.1, which inside a container only the NVIDIA runtime
provides (mounted from the host at `docker run --runtime nvidia`, not during a build).
--cuda is the run-time check: the Dockerfile's header and setup.sh run it.
--venv-pycuda (setup.sh) refuses a pycuda from outside the venv, e.g. Ubuntu's python3-pycuda,
which is built against the system numpy and fails under the venv's numpy 2.
Standard library only, Python >= 3.10 (JetPack 6).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path

# Modules found by file only: none of these imports libcuda (pycuda/__init__.py is a version).
FOUND = ("tensorrt", "pycuda", "pycuda._driver", "numpy")
# Imported for real: the runtime is torch-free and CUDA-free at import time.
IMPORTED = ("edgescreen.runtime.cli",)


def origin(name: str) -> str | None:
    """Where `name` would be imported from, or None when it is missing (or its parent fails)."""
    try:
        spec = importlib.util.find_spec(name)
    except Exception:  # a parent package that cannot be imported, e.g. a broken install
        return None
    return None if spec is None else (spec.origin or "namespace")


def check_installed(problems: list[str]) -> None:
    for name in FOUND:
        where = origin(name)
        print(f"{name}: {where or 'MISSING'}")
        if where is None:
            problems.append(f"{name} is not installed")
    for name in IMPORTED:
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            problems.append(f"{name} does not import: {type(exc).__name__}: {exc}")
            print(f"{name}: FAILS")
        else:
            print(f"{name}: {module.__file__}")


def check_venv_pycuda(problems: list[str]) -> None:
    if sys.prefix == sys.base_prefix:
        problems.append("--venv-pycuda: this python is not a venv")
        return
    where = origin("pycuda")
    if where is None:
        return  # already reported
    prefix = Path(sys.prefix).resolve()
    if prefix not in Path(where).resolve().parents:
        problems.append(
            f"pycuda comes from {where}, not from the venv {prefix}: build it in the venv "
            "(CUDA_ROOT=/usr/local/cuda pip install --ignore-installed --no-build-isolation pycuda)"
        )


def check_cuda(problems: list[str]) -> None:
    try:
        import numpy
        import pycuda.driver as cuda
        import tensorrt
    except Exception as exc:
        problems.append(f"import failed: {type(exc).__name__}: {exc}")
        return
    try:
        cuda.init()
        name = cuda.Device(0).name()
    except Exception as exc:
        problems.append(
            f"CUDA does not start: {type(exc).__name__}: {exc} (in a container: "
            "--runtime nvidia --group-add video)"
        )
        return
    print(f"TensorRT {tensorrt.__version__}, numpy {numpy.__version__}, on {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuda", action="store_true", help="import for real and start CUDA")
    parser.add_argument("--venv-pycuda", action="store_true", help="pycuda must be the venv's")
    args = parser.parse_args(argv)
    problems: list[str] = []
    check_installed(problems)
    if args.venv_pycuda:
        check_venv_pycuda(problems)
    if args.cuda and not problems:
        check_cuda(problems)
    for p in problems:
        print(f"check-runtime: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
