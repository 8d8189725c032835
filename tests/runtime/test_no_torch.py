"""The Jetson runtime must never import torch (nor the other training-only packages)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "torchvision", "timm", "albumentations", "onnx", "tensorrt", "pycuda")


def test_screening_never_imports_torch(dr_bundle, fundus_dir):
    photo = next((fundus_dir / "images").glob("*.jpg"))
    code = f"""
import json, sys
from edgescreen.runtime.screen import Screener
from edgescreen.runtime import cli, metrics, quality, preprocess, card
with Screener({str(dr_bundle)!r}) as s:
    r = s.screen({str(photo)!r})
assert r.status == "ok", r.action
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_cli_help_never_imports_torch():
    code = """
import sys
from edgescreen.runtime.cli import build_parser
build_parser()
print([m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime', 'onnx')])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
