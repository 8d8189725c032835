"""The package's shape: no import cycles, and a CLI that says which extra a command needs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _import_graph():
    spec = importlib.util.spec_from_file_location(
        "import_graph", ROOT / "tools" / "import_graph.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_cycle_inside_the_package():
    graph = _import_graph()
    edges = graph.graph(ROOT)
    assert len(edges) > 50  # the walk found the package
    assert graph.cycles(edges) == []


def test_the_cycle_finder_finds_a_function_local_cycle(tmp_path):
    """A cycle hidden behind a function-local import is still a cycle."""
    graph = _import_graph()
    for pkg in graph.PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "runtime" / "a.py").write_text("from . import b\n")
    (tmp_path / "runtime" / "b.py").write_text("def f():\n    from .a import g\n")
    assert graph.cycles(graph.graph(tmp_path)) == [["edgescreen.runtime.a", "edgescreen.runtime.b"]]


# As if only `pip install 'edgescreen[runtime]'` had run: the train/export packages are absent.
_RUNTIME_ONLY = """
import json, sys
for name in ("torch", "torchvision", "timm", "albumentations", "onnx", "matplotlib"):
    sys.modules[name] = None  # import fails, find_spec says absent
from edgescreen.runtime.cli import build_parser, main
sub = next(a for a in build_parser()._actions if a.dest == "command")
helps = {c.dest: c.help for c in sub._choices_actions}
code = main(["train", "--config", "x"])
print(json.dumps({"helps": helps, "train_exit": code}))
"""


def test_cli_with_only_the_runtime_extra_lists_what_each_command_needs():
    out = subprocess.run(
        [sys.executable, "-c", _RUNTIME_ONLY], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    helps = result["helps"]
    # Every command is listed, none silently missing.
    for name in ("screen", "quality", "info", "batch", "selftest", "engine", "synth", "bench"):
        assert name in helps and "needs the" not in helps[name], name
    assert "needs the train extra: pip install 'edgescreen[train]'" in helps["train"]
    assert "needs the export extra: pip install 'edgescreen[export]'" in helps["export"]
    assert "needs the export extra" in helps["demo"]
    assert result["train_exit"] == 2
    assert "edgescreen train: needs the train extra" in out.stderr and "torch" in out.stderr


def test_backend_choices_come_from_the_registry():
    from edgescreen.runtime.backends import REGISTRY
    from edgescreen.runtime.cli import build_parser

    screen = build_parser()._subparsers._group_actions[0].choices["screen"]
    choices = next(a.choices for a in screen._actions if a.dest == "backend")
    assert list(choices) == ["auto", *REGISTRY]
