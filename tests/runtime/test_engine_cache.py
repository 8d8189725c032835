"""Engine cache keys, sidecars and the refusal of stale or foreign engines (pure Python)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from edgescreen.runtime.card import artifact_entry, load_card, save_card
from edgescreen.runtime.engine_cache import (
    DeviceInfo,
    EngineKey,
    StaleEngine,
    check_engine,
    default_quantization,
    find_engine,
    make_key,
    plan_path,
    read_sidecar,
    sidecar_path,
    source_artifact,
    write_engine,
)
from edgescreen.runtime.errors import CardError

ORIN = DeviceInfo(gpu_name="Orin", compute_capability=(8, 7), trt_version="10.3.0", sm_count=8)
NANO = DeviceInfo(
    gpu_name="NVIDIA Tegra X1", compute_capability=(5, 3), trt_version="8.2.1", sm_count=1
)


@pytest.fixture
def bundle(tmp_path):
    from conftest import make_bundle

    return make_bundle(tmp_path / "dr", size=32)


def _key(**changes) -> EngineKey:
    base = EngineKey(
        model_sha256="a" * 64,
        precision="fp16",
        trt_version="10.3.0",
        gpu_name="Orin",
        compute_capability=(8, 7),
        sm_count=8,
        input_shape=(3, 32, 32),
        profile=(1, 8, 32),
    )
    return dataclasses.replace(base, **changes)


def test_same_inputs_same_key(bundle):
    card = load_card(bundle)
    a, b = make_key(card, "fp16", ORIN), make_key(load_card(bundle), "fp16", ORIN)
    assert a == b and a.digest() == b.digest() and a.file_name() == b.file_name()
    assert a.file_name().startswith("fp16-sm87-trt10.3.0-") and a.file_name().endswith(".engine")
    assert a.model_sha256 == card.artifacts["onnx-fp32"].sha256
    assert a.profile == card.input.batch


@pytest.mark.parametrize(
    "change",
    [
        {"model_sha256": "b" * 64},
        {"precision": "int8"},
        {"trt_version": "10.4.0"},
        {"gpu_name": "H100"},
        {"compute_capability": (8, 6)},
        {"sm_count": 16},
        {"input_shape": (3, 64, 64)},
        {"profile": (1, 4, 32)},
        {"dla_core": 0},
        {"quantization": "implicit"},
        {"calibration_sha256": "c" * 64},
    ],
)
def test_any_field_change_changes_the_key(change):
    assert _key(**change).digest() != _key().digest()
    assert _key(**change).file_name() != _key().file_name()
    assert _key().differences(_key(**change))


def test_key_dict_round_trip():
    key = _key(dla_core=1)
    again = EngineKey.from_dict(json.loads(json.dumps(key.to_dict())))
    assert again == key and again.digest() == key.digest()
    with pytest.raises(StaleEngine, match="malformed"):
        EngineKey.from_dict({"precision": "fp16"})


def test_dla_key_pins_the_profile(bundle):
    card = load_card(bundle)
    key = make_key(card, "fp16", ORIN, dla_core=0)
    opt = card.input.batch[1]
    assert key.profile == (opt, opt, opt) and "-dla0-" in key.file_name()


def test_int8_source_is_the_tensorrt_qdq_file(bundle):
    card = load_card(bundle)
    with pytest.raises(CardError, match="no INT8 Q/DQ ONNX"):
        source_artifact(card, "int8")
    # Two INT8 forms: the CPU one must never be what TensorRT parses.
    for name, target in (("model.int8.cpu.onnx", "cpu"), ("model.int8.onnx", "tensorrt")):
        (bundle / name).write_bytes((bundle / "model.onnx").read_bytes() + target.encode())
    arts = dict(card.artifacts)
    arts["onnx-int8-cpu"] = artifact_entry(
        bundle, "model.int8.cpu.onnx", format="onnx", precision="int8", target="cpu"
    )
    arts["onnx-int8"] = artifact_entry(
        bundle, "model.int8.onnx", format="onnx", precision="int8", target="tensorrt"
    )
    card = card.replace(artifacts=arts)
    assert source_artifact(card, "int8")[0] == "onnx-int8"
    assert (
        source_artifact(card, "int8", "implicit")[0] == "onnx-fp32"
    )  # legacy calibrator starts from FP32
    assert make_key(card, "int8", ORIN).model_sha256 == arts["onnx-int8"].sha256
    card = card.replace(calibration={"images": [{"path": "x.png", "sha256": "0" * 64}]})
    implicit = make_key(card, "int8", ORIN, quantization="implicit")
    assert implicit.calibration_sha256 and implicit.model_sha256 == arts["onnx-fp32"].sha256


def test_sidecar_round_trip_and_plain_plan(bundle):
    key = make_key(load_card(bundle), "fp16", ORIN)
    data = b"\x00plan bytes as TensorRT wrote them"
    plan = write_engine(plan_path(bundle, key), data, key, build_seconds=1.0)
    assert plan.read_bytes() == data  # nothing glued in front: trtexec reads it as is
    side = read_sidecar(plan)
    assert (
        side["key"] == key.to_dict()
        and side["digest"] == key.digest()
        and side["build_seconds"] == 1.0
    )
    assert check_engine(plan, key)["plan_sha256"]
    assert find_engine(bundle, key).path == plan


def test_foreign_engine_is_refused_with_the_reason(bundle):
    card = load_card(bundle)
    orin_key = make_key(card, "fp16", ORIN)
    plan = write_engine(plan_path(bundle, orin_key), b"orin plan", orin_key)
    newer = dataclasses.replace(ORIN, trt_version="10.7.0")
    with pytest.raises(
        StaleEngine, match=r"TensorRT: engine has '10.3.0', this device needs '10.7.0'"
    ):
        check_engine(plan, make_key(card, "fp16", newer))
    other_gpu = DeviceInfo(
        gpu_name="NVIDIA GeForce RTX 3060", compute_capability=(8, 6), trt_version="10.3.0"
    )
    with pytest.raises(StaleEngine, match="GPU: engine has 'Orin'") as err:
        check_engine(plan, make_key(card, "fp16", other_gpu))
    assert "compute capability" in str(err.value) and "edgescreen engine build" in str(err.value)
    found = find_engine(bundle, make_key(card, "fp16", newer))
    assert found.path is None and "10.3.0" in found.explain()


def test_stale_engine_after_reexport_is_refused(bundle):
    from conftest import build_tiny_onnx

    card = load_card(bundle)
    key = make_key(card, "fp16", ORIN)
    write_engine(plan_path(bundle, key), b"plan", key)
    build_tiny_onnx(bundle / "model.onnx", channels=3, size=32, num_labels=len(card.labels), seed=5)
    card = card.replace(
        artifacts={
            "onnx-fp32": artifact_entry(bundle, "model.onnx", format="onnx", precision="fp32")
        }
    )
    save_card(card, bundle)
    new_key = make_key(load_card(bundle), "fp16", ORIN)
    found = find_engine(bundle, new_key)
    assert not found.found and "model: engine has" in found.explain()


def test_corrupt_or_unkeyed_engine_is_refused(bundle):
    key = make_key(load_card(bundle), "fp16", ORIN)
    plan = write_engine(plan_path(bundle, key), b"plan", key)
    plan.write_bytes(b"pla")  # truncated copy
    with pytest.raises(StaleEngine, match="does not match the sha256"):
        check_engine(plan, key)
    sidecar_path(plan).unlink()
    with pytest.raises(StaleEngine, match="no sidecar"):
        check_engine(plan, key)
    sidecar_path(plan).write_text("{not json")
    with pytest.raises(StaleEngine, match="not valid JSON"):
        check_engine(plan, key)


def test_default_quantization_by_version():
    assert default_quantization("8.5.2", "int8") == "implicit"
    assert default_quantization("8.5.2", "fp16") == "explicit"
    assert default_quantization("10.3.0", "int8") == "explicit"
    assert default_quantization("11.0.0", "int8") == "strongly-typed"
    assert NANO.sm == "sm53"
