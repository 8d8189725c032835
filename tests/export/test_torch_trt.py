"""Torch-TensorRT path.

CPU part: the precision options are chosen from the compiler's own parameters (given here
as data, the parameter names of real torch-tensorrt releases), and the command names the
missing package. The tensorrt/gpu part compiles a tiny checkpoint's exported bundle at
FP16 and INT8, reloads the saved program and judges it against the golden outputs; it
skips where torch-tensorrt or a GPU is missing.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from edgescreen.runtime.errors import BackendUnavailable

torch = pytest.importorskip("torch")

from edgescreen.export.torch_trt import compile_options, save_options  # noqa: E402

HAVE_TORCH_TRT = importlib.util.find_spec("torch_tensorrt") is not None

# Parameter names of torch_tensorrt.dynamo.compile that decide the precision options, read
# from the released wheels (the full signatures have ~50 names each).
PARAMS_2_9 = frozenset(
    {"exported_program", "arg_inputs", "enabled_precisions", "use_explicit_typing"}
)
PARAMS_2_12 = PARAMS_2_9 | {"enable_autocast", "autocast_low_precision_type"}
PARAMS_2_14 = frozenset(
    {"exported_program", "arg_inputs", "enable_autocast", "autocast_low_precision_type"}
)


def test_weakly_typed_releases_get_enabled_precisions():
    opts = compile_options("fp16", PARAMS_2_9, torch)
    # 2.9-2.12 have use_explicit_typing; 2.11/2.12 default it to True, which refuses FP16 here.
    assert opts == {
        "enabled_precisions": {torch.float16, torch.float32},
        "use_explicit_typing": False,
    }
    assert compile_options("int8", PARAMS_2_12, torch)["enabled_precisions"] == {
        torch.int8,
        torch.float16,
        torch.float32,
    }
    assert compile_options("fp32", frozenset({"enabled_precisions"}), torch) == {
        "enabled_precisions": {torch.float32}
    }


def test_strongly_typed_releases_get_autocast_for_fp16():
    """torch-tensorrt 2.13+ drops enabled_precisions on the dynamo path: without autocast an
    "fp16" compile would silently give an FP32 engine."""
    assert compile_options("fp16", PARAMS_2_14, torch) == {
        "enable_autocast": True,
        "autocast_low_precision_type": torch.float16,
    }
    assert compile_options("int8", PARAMS_2_14, torch) == {}  # Q/DQ nodes carry the types
    assert compile_options("fp32", PARAMS_2_14, torch) == {}
    with pytest.raises(BackendUnavailable, match="FP16"):
        compile_options("fp16", frozenset({"exported_program"}), torch)


def test_save_keeps_the_dynamic_batch():
    """A saved program re-traced from one concrete tensor takes only that batch size."""
    import types

    made = []
    fake_torch = types.SimpleNamespace(
        randn=lambda *shape, device: made.append((shape, device)) or "example",
        export=types.SimpleNamespace(Dim=lambda name, min, max: (name, min, max)),
    )
    spec = object()  # the min/opt/max Input the program was compiled with
    newer = save_options(
        frozenset({"arg_inputs", "dynamic_shapes"}), fake_torch, spec, (1, 8, 32), (3, 64, 64)
    )
    assert newer == {"arg_inputs": ["example"], "dynamic_shapes": {"x": {0: ("batch", 1, 32)}}}
    assert made == [((8, 3, 64, 64), "cuda")]
    assert save_options(frozenset({"inputs"}), fake_torch, spec, (1, 8, 32), (3, 64, 64)) == {
        "inputs": [spec]
    }


@pytest.mark.skipif(HAVE_TORCH_TRT, reason="checks the message where torch-tensorrt is missing")
def test_command_without_torch_tensorrt_names_the_package(tmp_path, capsys):
    from conftest import make_bundle

    from edgescreen.runtime.cli import main

    bundle = make_bundle(tmp_path / "dr", size=32)
    code = main(["engine", "torch-trt", str(bundle), "--checkpoint", str(tmp_path / "none.pt")])
    assert code != 0
    assert "pip install torch-tensorrt" in capsys.readouterr().err


# -- on a GPU with torch-tensorrt ---------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pytest.importorskip("torch_tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from export_helpers import export_tiny_bundle

    return export_tiny_bundle(tmp_path_factory.mktemp("torch-trt"))


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_compile_save_reload_and_selftest(exported, precision):
    if precision == "int8":
        pytest.importorskip("modelopt.torch.quantization")
    import time

    from edgescreen.export.torch_trt import compile_checkpoint, load_torch_trt, run_torch_trt
    from edgescreen.runtime.card import load_card

    ckpt, bundle = exported
    start = time.perf_counter()
    saved, report = compile_checkpoint(ckpt, bundle, precision, workspace_mb=256)
    print(f"torch-tensorrt {precision}: compiled in {time.perf_counter() - start:.1f} s")
    assert saved.is_file() and saved.parent == bundle / "engines"
    assert report.backend == "torch-tensorrt" and report.ready, report.summary()

    card = load_card(bundle)
    names = [o.name for o in card.outputs]
    module = load_torch_trt(saved)
    x = np.random.default_rng(0).normal(0, 1, (card.input.batch[2], *card.input.shape))
    for n in (1, card.input.batch[1], card.input.batch[2]):  # the dynamic batch survived saving
        out = run_torch_trt(module, x[:n].astype(np.float32), names)
        assert all(v.shape[0] == n for v in out.values())
