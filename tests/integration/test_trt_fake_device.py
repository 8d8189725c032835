"""Our TensorRT code end to end on a CPU, against strict TEST DOUBLES of TensorRT and pycuda.

tests/trt_doubles.py says what the doubles check; none of this is a TensorRT result. Each
test here failed before the fix it is named after (the Jetson review).
"""

from __future__ import annotations

import gc
import json

import cv2
import numpy as np
import pytest
from trt_doubles import FakeCuda, FakeTrt, install_fake_cuda, install_fake_trt

from edgescreen.runtime.card import artifact_entry, load_card, save_card, sha256_file
from edgescreen.runtime.engine_cache import DeviceInfo, StaleEngine, read_sidecar

ORIN = DeviceInfo("Orin", (8, 7), "10.3.0", 8)


@pytest.fixture
def device(monkeypatch, tmp_path):
    """A fake Orin: pycuda and tensorrt doubles installed, run-time state in tmp_path."""
    cuda = install_fake_cuda(monkeypatch, FakeCuda("Orin", (8, 7), 8))
    trt = install_fake_trt(monkeypatch, FakeTrt(cuda))
    monkeypatch.setenv("EDGESCREEN_STATE_DIR", str(tmp_path / "state"))
    return cuda, trt


@pytest.fixture
def bundle(tmp_path):
    """A tiny DR bundle with a (stand-in) Q/DQ file, a golden set and calibration images."""
    from conftest import fundus_like, make_bundle

    from edgescreen.export.golden import write_golden
    from edgescreen.runtime.backends import infer_in_batches, open_backend

    root = make_bundle(tmp_path / "dr", size=32)
    (root / "model.int8.onnx").write_bytes((root / "model.onnx").read_bytes())
    calib = []
    for i in range(5):
        path = root / "calib" / f"c{i}.jpg"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), fundus_like(i, side=96))
        calib.append({"path": f"calib/{path.name}", "sha256": sha256_file(path)})
    card = load_card(root)
    arts = dict(card.artifacts)
    arts["onnx-int8"] = artifact_entry(
        root, "model.int8.onnx", format="onnx", precision="int8", target="tensorrt"
    )
    card = card.replace(artifacts=arts, calibration={"images": calib})
    save_card(card, root)
    x = np.random.default_rng(0).normal(0, 1, (4, *card.input.shape)).astype(np.float32)
    with open_backend(root, card, "fp32", "onnxruntime") as ort_backend:
        write_golden(root, x, infer_in_batches(ort_backend, x, 4), [f"g{i}" for i in range(4)])
    return root


def _photos(folder, n):
    from conftest import fundus_like

    folder.mkdir()
    for i in range(n):
        cv2.imwrite(str(folder / f"p{i}.jpg"), fundus_like(10 + i, side=300))
    return sorted(folder.glob("*.jpg"))


def _snapshot(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")}


def test_implicit_calibrator_builds_inside_a_pushed_context(device, bundle):
    """#2: the calibrator's buffers and TensorRT's get_batch calls need a current context."""
    from edgescreen.export.trt import build_engine

    cuda, trt = device
    plan = build_engine(bundle, "int8", int8_mode="implicit", trt=trt, device=ORIN)
    assert read_sidecar(plan)["key"]["quantization"] == "implicit"
    assert trt.calls.count(("calibration_batch",)) >= 1
    assert list((bundle / "engines").glob("calibration-*.cache"))
    assert (bundle / "engines" / "timing.cache").read_bytes() == b"timing-cache"
    assert cuda.stack == []  # the build's context was popped again


def test_engine_of_a_non_default_int8_mode_is_found_and_runs(device, bundle):
    """#3: the runtime keyed engines with the default mode only and refused its own."""
    from edgescreen.export.trt import build_engine
    from edgescreen.runtime.backends import open_backend

    cuda, trt = device
    plan = build_engine(bundle, "int8", int8_mode="implicit", trt=trt, device=ORIN)
    card = load_card(bundle)
    with open_backend(bundle, card, "int8", "tensorrt") as backend:
        assert backend.engine_path == plan
        x = np.random.default_rng(1).normal(0, 1, (3, *card.input.shape)).astype(np.float32)
        assert backend.infer(x)["scores"].shape == (3, len(card.labels))


def test_screening_with_a_read_only_bundle_writes_nothing_into_it(device, bundle, tmp_path):
    """#1: the service's bundle is read-only; the self-test pass goes to the state directory."""
    from edgescreen.export.trt import build_engine
    from edgescreen.runtime.screen import Screener

    cuda, trt = device
    build_engine(bundle, "fp16", trt=trt, device=ORIN)
    before = _snapshot(bundle)
    photos = _photos(tmp_path / "in", 3)
    for _ in range(2):  # the second start reuses the recorded pass
        with Screener(bundle, precision="fp16", backend="tensorrt") as screener:
            results = list(screener.screen_many(photos))
            assert screener.audit["backend"] == "tensorrt"
        assert [r.status for r in results] == ["ok"] * 3
    assert _snapshot(bundle) == before
    assert len(list((tmp_path / "state" / "selftest").glob("*.json"))) == 1
    assert cuda.live_contexts == 0 and cuda.stack == []


def test_dla_engine_gets_its_core_and_pads_small_batches(device, bundle, tmp_path):
    """#8: Runtime.DLA_core was never set before deserialising; DLA profiles are min=opt=max."""
    from edgescreen.export.trt import build_engine
    from edgescreen.runtime.backends import open_backend

    cuda, trt = device
    card = load_card(bundle)
    build_engine(bundle, "fp16", dla_core=1, trt=trt, device=ORIN, timing_cache=False)
    opt = card.input.batch[1]
    with open_backend(bundle, card, "fp16", "tensorrt", dla_core=1) as backend:
        assert trt.runtimes[-1].DLA_core == 1 and backend.device == "cuda:0+dla1"
        assert backend.min_batch == backend.max_batch == opt > 3
        x = np.random.default_rng(2).normal(0, 1, (3, *card.input.shape)).astype(np.float32)
        got = backend.infer(x)  # 3 images padded up to the profile's fixed batch, then cut
        assert got["scores"].shape == (3, len(card.labels))
    with open_backend(bundle, card, "fp32", "onnxruntime") as ort_backend:
        want = ort_backend.infer(x)
    np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-5, atol=1e-6)
    from edgescreen.runtime.screen import Screener

    with Screener(bundle, precision="fp16", backend="tensorrt", dla_core=1) as screener:
        assert [r.status for r in screener.screen_many(_photos(tmp_path / "in", 2))] == ["ok"] * 2


def test_a_failed_open_releases_the_cuda_context(device, bundle):
    """#11: the context was retained before the engine lookup and kept when it raised."""
    from edgescreen.runtime.backends import open_backend

    cuda, trt = device
    with pytest.raises(StaleEngine, match="no fp16 engine for this device yet") as caught:
        open_backend(bundle, load_card(bundle), "fp16", "tensorrt")
    gc.collect()
    assert cuda.live_contexts == 0 and cuda.stack == [], caught.value


def test_a_failing_engine_is_refused_and_not_remembered(device, bundle, tmp_path):
    """The self-test runs on the engine a screening will use; a bad one never screens."""
    from edgescreen.export.trt import build_engine
    from edgescreen.runtime.errors import BackendUnavailable
    from edgescreen.runtime.screen import Screener

    cuda, trt = device
    build_engine(bundle, "fp16", trt=trt, device=ORIN)
    golden = bundle / "golden" / "manifest.json"
    manifest = json.loads(golden.read_text())
    manifest["tolerances"]["fp16"]["max_rel"] = -1.0  # no engine can meet it
    golden.write_text(json.dumps(manifest))
    with pytest.raises(BackendUnavailable, match="failed its self-test"):
        Screener(bundle, precision="fp16", backend="tensorrt")
    assert not (tmp_path / "state" / "selftest").exists()
    gc.collect()
    assert cuda.live_contexts == 0


def test_a_dla_core_without_its_engine_says_how_to_build_it(device, bundle, monkeypatch):
    """--dla with the default backend: TensorRT when the DLA engine exists, else a clear refusal
    naming the build command with --dla (it used to fall to ONNX Runtime and crash)."""
    from edgescreen.export.trt import build_engine
    from edgescreen.runtime.errors import BackendUnavailable
    from edgescreen.runtime.screen import Screener

    cuda, trt = device
    build_engine(bundle, "fp16", trt=trt, device=ORIN)  # a GPU engine only
    with pytest.raises(BackendUnavailable, match=r"DLA core 1.*--precision fp16 --dla 1"):
        Screener(bundle, precision="fp16", dla_core=1)
    build_engine(bundle, "fp16", dla_core=1, trt=trt, device=ORIN, timing_cache=False)
    with Screener(bundle, precision="fp16", dla_core=1) as screener:  # auto finds it
        assert screener.audit["device"] == "cuda:0+dla1"
    with pytest.raises(BackendUnavailable, match="TensorRT engines only"):
        Screener(bundle, precision="fp16", backend="onnxruntime", dla_core=1)


def test_a_malformed_selftest_marker_means_test_again(device, bundle, tmp_path):
    from edgescreen.export.trt import build_engine
    from edgescreen.runtime.screen import Screener

    cuda, trt = device
    build_engine(bundle, "fp16", trt=trt, device=ORIN)
    with Screener(bundle, precision="fp16", backend="tensorrt"):
        pass
    (marker,) = (tmp_path / "state" / "selftest").glob("*.json")
    marker.write_text("[]")
    with Screener(bundle, precision="fp16", backend="tensorrt"):
        pass
    assert json.loads(marker.read_text())["ready"] is True
