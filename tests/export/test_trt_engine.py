"""TensorRT engines from a real exported bundle: FP16 and explicit-quantization INT8.

Needs TensorRT, pycuda and a GPU; skips cleanly anywhere else (every test here is marked).
The bundle is a random-init multitask-tiny model exported by export_bundle, so the INT8
engine is built from the same Q/DQ model.int8.onnx the CPU judged (emulated Q/DQ). Each
test prints the build time and the engine's latency next to ONNX Runtime's on the CPU:
recorded, never asserted.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu, pytest.mark.slow]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    pytest.importorskip("tensorrt")
    pytest.importorskip("pycuda.driver")
    from export_helpers import export_tiny_bundle

    return export_tiny_bundle(tmp_path_factory.mktemp("trt-engine"))[1]


def _median_ms(fn, x: np.ndarray, repeat: int = 50) -> float:
    fn(x)  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


# precision -> (ONNX judged on the CPU, emulate Q/DQ, tolerance on max |error| / max |value|)
CASES = {  # engine precision -> (ONNX Runtime reference precision, INT8 form, unfused Q/DQ, tolerance)
    "fp16": ("fp32", None, False, 3e-2),
    # TensorRT fuses Q/DQ into int8 kernels; the emulated graph rounds the same way but
    # accumulates in float: allow a few quantisation steps of the output range.
    "int8": ("int8", "tensorrt", True, 1.5e-1),
}


@pytest.mark.parametrize("precision", sorted(CASES))
def test_engine_matches_onnxruntime_and_passes_the_selftest(bundle, precision):
    from edgescreen.export.trt import build_engine
    from edgescreen.runtime.backends import open_backend
    from edgescreen.runtime.backends.trt import current_device, engine_key
    from edgescreen.runtime.card import load_card
    from edgescreen.runtime.engine_cache import check_engine, read_sidecar
    from edgescreen.runtime.golden import selftest

    ref_precision, target, unfused, tol = CASES[precision]
    card = load_card(bundle)
    start = time.perf_counter()
    plan = build_engine(bundle, precision, workspace_mb=512)
    build_s = time.perf_counter() - start
    check_engine(plan, engine_key(card, precision, current_device()))
    assert read_sidecar(plan)["key"]["quantization"] == "explicit"

    x = np.random.default_rng(0).normal(0, 1, (8, *card.input.shape)).astype(np.float32)
    ort_backend = open_backend(
        bundle, card, ref_precision, "onnxruntime", device="cpu", target=target, unfused_qdq=unfused
    )
    want = ort_backend.infer(x)
    with open_backend(bundle, card, precision, "tensorrt") as backend:
        got = backend.infer(x)
        for o in card.outputs:
            scale = np.abs(want[o.name]).max() + 1e-6
            err = np.abs(got[o.name] - want[o.name]).max() / scale
            assert got[o.name].shape == want[o.name].shape and err < tol, (o.name, err)
        trt_ms = _median_ms(backend.infer, x[:1])
    ort_ms = _median_ms(ort_backend.infer, x[:1])
    ort_backend.close()
    print(
        f"tensorrt {precision}: built in {build_s:.1f} s; batch 1 {trt_ms:.2f} ms on the GPU, "
        f"ONNX Runtime CPU {ort_ms:.2f} ms"
    )

    report = selftest(bundle, precision, "tensorrt")
    assert report.ready, report.summary()


def test_calibrator_path_builds_on_tensorrt_10(bundle):
    """The legacy IInt8EntropyCalibrator2 path (TensorRT 8.x's default) still builds on 10.x
    when asked, fed by the card's calibration manifest, and writes its calibration cache."""
    import tensorrt as trt

    from edgescreen.export.trt import build_engine
    from edgescreen.runtime.engine_cache import read_sidecar

    if int(trt.__version__.split(".")[0]) >= 11:
        pytest.skip("TensorRT 11 removed implicit INT8 calibration")
    plan = build_engine(bundle, "int8", int8_mode="implicit", workspace_mb=512)
    assert read_sidecar(plan)["key"]["quantization"] == "implicit"
    assert list((bundle / "engines").glob("calibration-*.cache"))
