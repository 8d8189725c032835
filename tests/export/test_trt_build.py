"""Engine builder: argument validation and build-path selection on CPU.

`plan_build` is pure. `FakeTrt` is the TEST DOUBLE of tests/trt_doubles.py: it records
which flags and profile the builder sets and serialises a stand-in plan (never a TensorRT
result), so writing the engine, its sidecar and the timing cache run on a CPU too. Real
builds are the tensorrt-marked tests.
"""

from __future__ import annotations

import numpy as np
import pytest
import trt_doubles

from edgescreen.export.cli import add_engine_command
from edgescreen.export.trt import (
    BuildError,
    build_engine,
    calibration_batch_size,
    calibration_batches,
    calibration_images,
    plan_build,
)
from edgescreen.runtime.card import artifact_entry, load_card, save_card
from edgescreen.runtime.engine_cache import DeviceInfo, read_sidecar

ORIN = DeviceInfo("Orin", (8, 7), "10.3.0", 8)
NANO = DeviceInfo("NVIDIA Tegra X1", (5, 3), "8.2.1", 1)
XAVIER = DeviceInfo("Xavier", (7, 2), "8.5.2", 8)


@pytest.fixture
def bundle(tmp_path):
    from conftest import make_bundle

    root = make_bundle(tmp_path / "dr", size=32)
    card = load_card(root)
    (root / "model.int8.onnx").write_bytes(
        (root / "model.onnx").read_bytes()
    )  # stands in for the Q/DQ file
    arts = dict(card.artifacts)
    arts["onnx-int8"] = artifact_entry(
        root, "model.int8.onnx", format="onnx", precision="int8", target="tensorrt"
    )
    save_card(card.replace(artifacts=arts), root)
    return root


def test_trt10_fp16_and_int8_paths(bundle):
    card = load_card(bundle)
    fp16 = plan_build(card, "fp16", trt_version="10.3.0", device=ORIN)
    assert (fp16.quantization, fp16.source_file, fp16.builder_flags, fp16.network_flags) == (
        "explicit",
        "model.onnx",
        ("FP16",),
        (),
    )
    assert fp16.profile == card.input.batch
    int8 = plan_build(card, "int8", trt_version="10.3.0", device=ORIN)
    assert int8.quantization == "explicit" and int8.source_file == "model.int8.onnx"
    assert int8.builder_flags == ("INT8", "FP16") and not int8.calibrate
    fp32 = plan_build(card, "fp32", trt_version="10.3.0", device=ORIN)
    assert fp32.builder_flags == () and fp32.source_file == "model.onnx"


def test_trt8_defaults_to_the_legacy_calibrator(bundle):
    card = load_card(bundle)
    with pytest.raises(BuildError, match="calibration images"):
        plan_build(card, "int8", trt_version="8.5.2", device=XAVIER)
    card = card.replace(calibration={"images": [{"path": "a.png", "sha256": None}]})
    legacy = plan_build(card, "int8", trt_version="8.5.2", device=XAVIER)
    assert legacy.quantization == "implicit" and legacy.calibrate
    assert legacy.source_file == "model.onnx" and legacy.network_flags == ("EXPLICIT_BATCH",)
    assert legacy.builder_flags == ("INT8", "FP16")
    qdq = plan_build(card, "int8", trt_version="8.5.2", device=XAVIER, int8_mode="explicit")
    assert qdq.quantization == "explicit" and qdq.source_file == "model.int8.onnx"
    on10 = plan_build(card, "int8", trt_version="10.3.0", device=ORIN, int8_mode="implicit")
    assert on10.calibrate and any("deprecated" in n for n in on10.notes)


def test_trt11_is_strongly_typed_and_refuses_implicit(bundle):
    card = load_card(bundle).replace(calibration={"images": [{"path": "a.png"}]})
    dev = DeviceInfo("Thor", (11, 0), "11.0.0", 20)
    int8 = plan_build(card, "int8", trt_version="11.0.0", device=dev)
    assert int8.network_flags == ("STRONGLY_TYPED",) and int8.builder_flags == ()
    with pytest.raises(
        BuildError, match="TensorRT 11 removed implicit INT8.*explicit quantization"
    ):
        plan_build(card, "int8", trt_version="11.0.0", device=dev, int8_mode="implicit")
    with pytest.raises(BuildError, match="FP16 builder flag"):
        plan_build(card, "fp16", trt_version="11.0.0", device=dev)


def test_jetson_nano_int8_is_refused_with_the_reason(bundle):
    card = load_card(bundle)
    with pytest.raises(BuildError, match=r"Jetson Nano: Maxwell GPU, compute capability 5.3.*fp16"):
        plan_build(card, "int8", trt_version="8.2.1", device=NANO)
    assert plan_build(card, "fp16", trt_version="8.2.1", device=NANO).builder_flags == ("FP16",)
    with pytest.raises(BuildError, match="platform_has_fast_int8"):
        plan_build(card, "int8", trt_version="10.3.0", device=ORIN, has_fast_int8=False)


def test_dla_validation(bundle):
    card = load_card(bundle)
    dla = plan_build(card, "fp16", trt_version="10.3.0", device=ORIN, dla_core=1, num_dla_cores=2)
    opt = card.input.batch[1]
    assert dla.builder_flags == ("FP16", "GPU_FALLBACK") and dla.profile == (opt, opt, opt)
    with pytest.raises(BuildError, match="has no DLA"):
        plan_build(card, "fp16", trt_version="10.3.0", device=ORIN, dla_core=0, num_dla_cores=0)
    with pytest.raises(BuildError, match="2 DLA cores"):
        plan_build(card, "fp16", trt_version="10.3.0", device=ORIN, dla_core=2, num_dla_cores=2)
    with pytest.raises(BuildError, match="FP16 and INT8 only"):
        plan_build(card, "fp32", trt_version="10.3.0", device=ORIN, dla_core=0, num_dla_cores=2)


def test_argument_validation(bundle):
    card = load_card(bundle)
    with pytest.raises(BuildError, match="unknown precision"):
        plan_build(card, "bf16", trt_version="10.3.0", device=ORIN)
    with pytest.raises(BuildError, match="unknown INT8 mode"):
        plan_build(card, "int8", trt_version="10.3.0", device=ORIN, int8_mode="magic")
    with pytest.raises(BuildError, match="too old"):
        plan_build(card, "fp16", trt_version="7.2.3", device=ORIN)
    with pytest.raises(BuildError, match="workspace"):
        build_engine(bundle, "fp16", workspace_mb=0)


# -- calibration data: the pure part of the legacy path ------------------------------------
def test_calibration_images_and_batches(bundle, tmp_path):
    import cv2

    from edgescreen.runtime.card import sha256_file
    from edgescreen.runtime.errors import CardError
    from edgescreen.runtime.imageio import load_image
    from edgescreen.runtime.preprocess import preprocess

    rng = np.random.default_rng(0)
    paths = []
    for i in range(7):
        p = bundle / "calib" / f"c{i}.png"
        p.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(p), rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
        paths.append(p)
    entries = [{"path": f"calib/c{i}.png", "sha256": sha256_file(p)} for i, p in enumerate(paths)]
    card = load_card(bundle).replace(calibration={"images": entries})
    found = calibration_images(bundle, card)
    assert found == paths
    batches = list(calibration_batches(found, card, 3))
    assert [b.shape for b in batches] == [
        (3, 3, 32, 32)
    ] * 2  # the 7th image is dropped: static profile
    assert batches[0].dtype == np.float32
    np.testing.assert_array_equal(
        batches[1][0], preprocess(load_image(paths[3]), card.preprocessing)
    )
    assert calibration_batch_size(7, 8) == 7 and calibration_batch_size(100, 8) == 8
    entries[2]["sha256"] = "0" * 64
    with pytest.raises(CardError, match="differs from the sha256"):
        calibration_images(bundle, card.replace(calibration={"images": entries}))
    with pytest.raises(CardError, match="not found"):
        calibration_images(bundle, card.replace(calibration={"images": [{"path": "nope.png"}]}))


# -- builds against the TensorRT test double (tests/trt_doubles.py): it records what
# build_engine asks and serialises a stand-in plan, so writing the engine runs here too ------------
def FakeTrt(version="10.3.0", parse_ok=True, build_ok=True):  # noqa: N802 - reads as the double
    return trt_doubles.FakeTrt(None, version=version, parse_ok=parse_ok, build_ok=build_ok)


def test_a_failed_build_writes_nothing(bundle):
    trt = FakeTrt(build_ok=False)
    with pytest.raises(BuildError, match="failed to build the int8 engine"):
        build_engine(bundle, "int8", workspace_mb=256, trt=trt, device=ORIN)
    assert trt.calls[-1] == ("build",)
    assert not list((bundle / "engines").glob("*.engine"))  # nothing written on failure
    assert not (bundle / "engines" / "timing.cache").exists()


def test_build_engine_sets_the_planned_flags(bundle):
    trt = FakeTrt()
    plan = build_engine(bundle, "int8", workspace_mb=256, trt=trt, device=ORIN)
    calls = trt.calls
    assert ("network", 0) in calls  # TensorRT 10: create_network(0), explicit batch is the default
    assert ("parse", str(bundle / "model.int8.onnx")) in calls
    assert ("workspace", 256 << 20) in calls
    assert [c[1] for c in calls if c[0] == "flag"] == ["INT8", "FP16"]
    lo, opt, hi = load_card(bundle).input.batch
    assert ("profile", "input", (lo, 3, 32, 32), (opt, 3, 32, 32), (hi, 3, 32, 32)) in calls
    assert ("timing_cache", 0) in calls and ("set_timing_cache", False) in calls
    assert calls[-1] == ("build",)
    # The plan, its sidecar and the timing cache are written, and a second build reuses it.
    assert plan.is_file() and read_sidecar(plan)["source_file"] == "model.int8.onnx"
    assert (bundle / "engines" / "timing.cache").is_file()
    again = FakeTrt()
    assert build_engine(bundle, "int8", workspace_mb=256, trt=again, device=ORIN) == plan
    assert ("build",) not in again.calls


def test_build_engine_dla_and_trt8_network_flags(bundle):
    trt = FakeTrt()
    build_engine(bundle, "fp16", dla_core=1, trt=trt, device=ORIN, timing_cache=False)
    assert ("config", "default_device_type", "DLA") in trt.calls and (
        "config",
        "DLA_core",
        1,
    ) in trt.calls
    assert [c[1] for c in trt.calls if c[0] == "flag"] == ["FP16", "GPU_FALLBACK"]
    assert not any(c[0] == "timing_cache" for c in trt.calls)
    old = FakeTrt("8.6.1")
    build_engine(bundle, "fp16", trt=old, device=DeviceInfo("Xavier", (7, 2), "8.6.1", 8))
    assert ("network", 1 << 0) in old.calls  # EXPLICIT_BATCH before TensorRT 10


def test_parser_errors_are_reported_with_their_desc(bundle):
    with pytest.raises(BuildError, match=r"node 3 \(Conv 'conv0'\): weights are not initializers"):
        build_engine(bundle, "fp16", trt=FakeTrt(parse_ok=False), device=ORIN)


def test_missing_tensorrt_names_the_install_step(bundle):
    pytest.importorskip("numpy")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        from edgescreen.runtime.errors import BackendUnavailable

        with pytest.raises(BackendUnavailable, match="python3-libnvinfer"):
            build_engine(bundle, "fp16")
    else:
        pytest.skip("TensorRT is installed here")


def test_cli_parser():
    import argparse

    parser = argparse.ArgumentParser()
    add_engine_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["engine", "build", "b", "--precision", "int8", "--workspace", "512", "--dla", "0"]
    )
    assert (args.precision, args.workspace, args.dla, args.int8_mode) == ("int8", 512, 0, "auto")
    assert callable(args.func)
