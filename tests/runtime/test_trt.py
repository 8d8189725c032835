"""TensorRT backend.

CPU part: the backend is importable without TensorRT, fails with the install step,
and `engine_available` is False. The tensorrt/gpu part builds a real engine from the
tiny test bundle and compares it with ONNX Runtime; it skips where TensorRT is absent.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from edgescreen.runtime.backends import open_backend
from edgescreen.runtime.card import load_card
from edgescreen.runtime.errors import BackendUnavailable

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from conftest import make_bundle

    return make_bundle(tmp_path_factory.mktemp("trt") / "dr", size=64)


# -- CPU ----------------------------------------------------------------------------------------
@pytest.mark.skipif(HAVE_TRT, reason="checks the message where TensorRT is missing")
def test_missing_tensorrt_gives_the_install_hint(bundle):
    with pytest.raises(
        BackendUnavailable,
        match=r"sudo apt install python3-libnvinfer .*CUDA_ROOT=/usr/local/cuda pip install pycuda",
    ):
        open_backend(bundle, load_card(bundle), "fp16", "tensorrt")


def test_module_imports_without_tensorrt():
    import sys

    from edgescreen.runtime.backends import trt

    assert callable(trt.engine_available)
    if not HAVE_TRT:
        assert "tensorrt" not in sys.modules and "pycuda" not in sys.modules


@pytest.mark.skipif(HAVE_TRT, reason="where TensorRT is missing")
def test_engine_available_is_false_without_tensorrt(bundle):
    from edgescreen.runtime.backends.trt import engine_available

    assert engine_available(bundle, load_card(bundle), "fp16") is False


def test_engine_available_with_a_described_device(bundle):
    """With a device descriptor given, the lookup itself is pure: present/absent/foreign."""
    from edgescreen.runtime.backends.trt import engine_available
    from edgescreen.runtime.engine_cache import (
        DeviceInfo,
        make_key,
        plan_path,
        sidecar_path,
        write_engine,
    )

    card = load_card(bundle)
    orin = DeviceInfo("Orin", (8, 7), "10.3.0", 8)
    assert not engine_available(bundle, card, "fp16", device=orin)
    key = make_key(card, "fp16", orin)
    plan = write_engine(plan_path(bundle, key), b"plan", key)
    try:
        assert engine_available(bundle, card, "fp16", device=orin)
        assert not engine_available(bundle, card, "fp32", device=orin)
        newer = DeviceInfo("Orin", (8, 7), "10.4.0", 8)
        assert not engine_available(bundle, card, "fp16", device=newer)
        assert not engine_available(
            bundle, card, "int8", device=orin
        )  # no Q/DQ file in this bundle
    finally:
        plan.unlink()
        sidecar_path(plan).unlink()


def test_auto_without_an_engine_opens_onnxruntime_and_names_are_checked(bundle):
    card = load_card(bundle)
    with open_backend(bundle, card, "fp32") as backend:  # no engine for this device: ORT
        assert (backend.name, backend.artifact) == ("onnxruntime", "model.onnx")
    with pytest.raises(BackendUnavailable, match="onnxruntime, tensorrt"):
        open_backend(bundle, card, "fp32", "openvino")


# -- TensorRT on a GPU --------------------------------------------------------------------------
def _ort(bundle, x):
    import onnxruntime as ort

    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": x}), strict=True))


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("precision,rtol", [("fp32", 1e-2), ("fp16", 3e-2)])
def test_real_engine_matches_onnxruntime(bundle, precision, rtol):
    pytest.importorskip("tensorrt")
    pytest.importorskip("pycuda")
    from edgescreen.export.trt import build_engine
    from edgescreen.runtime.backends.trt import current_device, engine_key
    from edgescreen.runtime.engine_cache import check_engine

    plan = build_engine(bundle, precision, workspace_mb=256)
    check_engine(plan, engine_key(load_card(bundle), precision, current_device()))
    assert (bundle / "engines" / "timing.cache").is_file()
    x = np.random.default_rng(0).normal(0, 1, (8, 3, 64, 64)).astype(np.float32)
    want = _ort(bundle, x)
    with open_backend(bundle, load_card(bundle), precision, "tensorrt") as backend:
        assert backend.device.startswith("cuda") and backend.engine_path == plan
        for n in (1, 8):  # dynamic batch
            got = backend.infer(x[:n])
            for name in ("scores", "heatmap"):
                assert got[name].shape == want[name][:n].shape and got[name].dtype == np.float32
                scale = np.abs(want[name][:n]).max() + 1e-6
                assert np.abs(got[name] - want[name][:n]).max() / scale < rtol, name
        big = np.concatenate([x] * 5)  # 40 > profile max 32: split into two runs
        assert backend.infer(big)["scores"].shape == (40, len(load_card(bundle).labels))


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.slow
def test_engine_cache_is_reused_and_foreign_plans_refused(bundle):
    pytest.importorskip("tensorrt")
    pytest.importorskip("pycuda")
    import json

    from edgescreen.export.trt import build_engine
    from edgescreen.runtime.engine_cache import StaleEngine, read_sidecar, sidecar_path

    first = build_engine(bundle, "fp16", workspace_mb=256)
    mtime = first.stat().st_mtime_ns
    assert (
        build_engine(bundle, "fp16", workspace_mb=256) == first
        and first.stat().st_mtime_ns == mtime
    )
    # Opening the backend as the Screener does finds the same cached engine.
    card = load_card(bundle)
    with open_backend(bundle, card, "fp16", "tensorrt") as backend:
        assert backend.engine_path == first
    # A plan whose sidecar claims another TensorRT is refused before deserialisation.
    side = read_sidecar(first)
    side["key"]["trt_version"] = "9.9.9"
    foreign = first.with_name("fp16-foreign.engine")
    foreign.write_bytes(first.read_bytes())
    sidecar_path(foreign).write_text(json.dumps(side))
    with pytest.raises(StaleEngine, match="9.9.9"):
        open_backend(bundle, card, "fp16", "tensorrt", engine=foreign)


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.slow
def test_selftest_on_tensorrt(bundle):
    pytest.importorskip("tensorrt")
    pytest.importorskip("pycuda")
    from edgescreen.export.golden import write_golden
    from edgescreen.runtime.golden import selftest

    x = np.random.default_rng(1).normal(0, 1, (12, 3, 64, 64)).astype(np.float32)
    write_golden(bundle, x, _ort(bundle, x), [f"g{i}" for i in range(12)])
    report = selftest(bundle, "fp16", "tensorrt")
    assert report.ready, report.summary()
