"""The wheel ships edgescreen.{runtime,train,export} and never bare top-level names."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_only_the_edgescreen_namespace(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("edgescreen-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.startswith("edgescreen-")}
    assert top == {"edgescreen"}
    for pkg in ("runtime", "train", "export"):
        assert f"edgescreen/{pkg}/__init__.py" in names
    assert "edgescreen/runtime/backends/ort.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "edgescreen = edgescreen.runtime.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
