"""The one artifact chooser: which bundle file a backend runs, for every precision x backend x device."""

from __future__ import annotations

import pytest

from edgescreen.runtime.artifacts import ARTIFACTS, choose_artifact, form_of
from edgescreen.runtime.card import Artifact, load_card
from edgescreen.runtime.errors import CardError

SHA = "0" * 64


@pytest.fixture(scope="module")
def card(tmp_path_factory):
    from conftest import make_bundle

    bundle = make_bundle(tmp_path_factory.mktemp("art") / "dr", size=32)
    full = {
        k.key: Artifact(k.file, SHA, k.format, k.precision, k.target)  # type: ignore[arg-type]
        for k in ARTIFACTS
    }
    return load_card(bundle).replace(artifacts=full)


# (precision, backend, device) -> the key that must run
CASES = [
    ("fp32", "onnxruntime", "cpu", "onnx-fp32"),
    ("fp32", "onnxruntime", "cuda", "onnx-fp32"),
    ("fp16", "onnxruntime", "cpu", "onnx-fp16"),
    ("fp16", "onnxruntime", "cuda", "onnx-fp16"),
    ("int8", "onnxruntime", "cpu", "onnx-int8-cpu"),
    ("int8", "onnxruntime", "cuda", "onnx-int8"),  # ORT's CUDA provider takes the TensorRT form
    ("fp32", "tensorrt", "cuda", "onnx-fp32"),
    ("fp16", "tensorrt", "cuda", "onnx-fp32"),  # FP16 is a builder flag on the FP32 graph
    ("int8", "tensorrt", "cuda", "onnx-int8"),
]


@pytest.mark.parametrize("precision,backend,device,key", CASES)
def test_chooser_table(card, precision, backend, device, key):
    assert choose_artifact(card, precision, backend=backend, device=device)[0] == key


def test_forced_form_and_legacy_calibrator(card):
    assert choose_artifact(card, "int8", backend="onnxruntime", target="tensorrt")[0] == "onnx-int8"
    assert (
        choose_artifact(card, "int8", backend="tensorrt", quantization="implicit")[0] == "onnx-fp32"
    )


def test_missing_precision_names_what_the_bundle_has(card):
    fp32_only = card.replace(artifacts={"onnx-fp32": card.artifacts["onnx-fp32"]})
    with pytest.raises(CardError, match=r"no int8 ONNX model.*it has: fp32"):
        choose_artifact(fp32_only, "int8", backend="onnxruntime")
    with pytest.raises(CardError, match="INT8 Q/DQ ONNX for TensorRT"):
        choose_artifact(fp32_only, "int8", backend="tensorrt")
    with pytest.raises(CardError, match="unknown precision"):
        choose_artifact(card, "int4", backend="onnxruntime")


def test_forms_are_the_names_results_use(card):
    assert sorted(form_of(a) for a in card.artifacts.values()) == [
        "fp16",
        "fp32",
        "int8",
        "int8-cpu",
        "torchscript",
    ]


def test_onnxruntime_on_cuda_opens_the_tensorrt_form(tmp_path, monkeypatch):
    """The device is known before the file is chosen (it used to pick the CPU form on CUDA)."""
    import shutil

    import onnxruntime as ort
    from conftest import make_bundle

    from edgescreen.runtime.backends import open_backend
    from edgescreen.runtime.card import artifact_entry

    bundle = make_bundle(tmp_path / "b", size=32)
    for key in ("onnx-int8", "onnx-int8-cpu"):  # same bytes: only the choice is under test
        shutil.copy(bundle / "model.onnx", bundle / dict((k.key, k.file) for k in ARTIFACTS)[key])
    card = load_card(bundle)
    entries = dict(card.artifacts)
    for k in ARTIFACTS:
        if k.key in ("onnx-int8", "onnx-int8-cpu"):
            entries[k.key] = artifact_entry(
                bundle, k.file, format="onnx", precision="int8", target=k.target
            )
    card = card.replace(artifacts=entries)
    with open_backend(bundle, card, "int8", "onnxruntime", device="cpu") as cpu:
        assert cpu.artifact == "model.int8-cpu.onnx"
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real])
    real_session = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession", _CpuSession(real_session))
    with open_backend(bundle, card, "int8", "onnxruntime", device="cuda") as gpu:
        assert gpu.artifact == "model.int8.onnx" and gpu.device == "cuda:0"
    # A GPU build whose CUDA does not start falls back to the CPU: then the CPU form runs.
    monkeypatch.setattr(ort, "InferenceSession", _CpuSession(real_session, falls_back=True))
    with open_backend(bundle, card, "int8", "onnxruntime") as fallen:
        assert fallen.artifact == "model.int8-cpu.onnx" and fallen.device == "cpu"


class _CpuSession:
    """Stands in for a CUDA session on a machine without a GPU: checks what was asked for and,
    unless `falls_back`, answers as a CUDA session would."""

    def __init__(self, real, falls_back=False):
        self.real, self.falls_back = real, falls_back

    def __call__(self, path, sess_options=None, providers=None):
        session = self.real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])
        if providers[0] == "CUDAExecutionProvider" and not self.falls_back:
            session.get_providers = lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return session
