"""End to end: real fundus photos through a small ONNX model and a card that names it."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from edgescreen.runtime.card import bundle_sha256, load_card
from edgescreen.runtime.errors import BackendUnavailable, CardError
from edgescreen.runtime.imageio import load_image
from edgescreen.runtime.postprocess import grades_from_values, interpret_batch
from edgescreen.runtime.preprocess import preprocess
from edgescreen.runtime.screen import Screener


@pytest.fixture(scope="module")
def real_photos(fundus_dir):
    with open(fundus_dir / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [fundus_dir / r["filename"] for r in rows[::40]]  # 10 photos across all grades


def test_screens_real_photos_like_the_model_does(dr_bundle, real_photos):
    import onnxruntime as ort

    card = load_card(dr_bundle)
    session = ort.InferenceSession(
        str(dr_bundle / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    with Screener(dr_bundle, backend="onnxruntime") as screener:
        results = list(screener.screen_many(real_photos, batch_size=4))
    assert [r.image for r in results] == [str(p) for p in real_photos]
    for path, r in zip(real_photos, results, strict=True):
        assert r.status == "ok", r.action
        # The same numbers an independent ONNX Runtime session gives on the same preprocessing.
        x = preprocess(load_image(path), card.preprocessing)[None]
        scores = session.run(["scores"], {"input": x})[0][0]
        assert r.grade == int(np.argmax(scores))
        probs = np.array(list(r.probabilities.values()))
        assert probs.sum() == pytest.approx(1.0, abs=1e-6)
        expected = "urgent" if r.grade >= 3 else "refer" if r.grade >= 2 else "rescreen"
        assert r.decision == expected and r.action == card.decision.actions[expected]
        assert r.audit["bundle_sha256"] == bundle_sha256(card) and r.audit["precision"] == "fp32"
        assert r.heatmap is not None and r.heatmap.min() >= 0.0 and r.heatmap.max() <= 1.0
        assert {"decode", "quality", "preprocess", "infer"} <= set(r.timings_ms)
        assert r.to_dict()["grade"] == r.grade  # JSON carries the grade under "grade"


def test_batching_does_not_change_results(dr_bundle, real_photos):
    with Screener(dr_bundle) as screener:
        one = [screener.screen(p) for p in real_photos[:5]]
        many = list(screener.screen_many(real_photos[:5], batch_size=3))
    for a, b in zip(one, many, strict=True):
        assert a.grade == b.grade
        for k in a.probabilities:
            assert a.probabilities[k] == pytest.approx(b.probabilities[k], abs=1e-5)


def test_bad_and_ungradable_images_do_not_stop_the_batch(dr_bundle, real_photos, tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    photo = cv2.cvtColor(load_image(real_photos[0]), cv2.COLOR_RGB2BGR)
    blurred = tmp_path / "blurred.jpg"
    cv2.imwrite(str(blurred), cv2.GaussianBlur(photo, (0, 0), 12))
    images = [real_photos[1], corrupt, blurred, tmp_path / "missing.jpg", real_photos[2]]
    with Screener(dr_bundle) as screener:
        results = list(screener.screen_many(images, batch_size=2))
    assert [r.status for r in results] == ["ok", "failed", "ungradable", "failed", "ok"]
    assert "corrupt.jpg" in results[1].error
    assert "missing.jpg" in results[3].error and "not found" in results[3].error
    assert results[2].decision == "ungradable" and "retake" in results[2].action
    assert any("blur" in reason for reason in results[2].quality["reasons"])


def test_arrays_can_be_screened(dr_bundle, real_photos):
    with Screener(dr_bundle) as screener:
        r = screener.screen(load_image(real_photos[0]), name="camera-frame-1")
    assert r.image == "camera-frame-1" and r.status == "ok"


def test_tampered_bundle_is_refused(dr_bundle, tmp_path):
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(dr_bundle, bundle)
    with open(bundle / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(CardError, match="model.onnx.*sha256 mismatch"):
        Screener(bundle)


def test_missing_precision_and_backend_are_clear(dr_bundle):
    with pytest.raises(CardError, match="no int8 ONNX model"):
        Screener(dr_bundle, precision="int8")
    with pytest.raises(BackendUnavailable, match="tensorrt"):
        Screener(dr_bundle, backend="tensorrt")


def test_cutpoints_grade_a_regression_output():
    assert list(
        grades_from_values(np.array([-0.2, 0.49, 0.5, 1.7, 3.6, 9.0]), (0.5, 1.5, 2.5, 3.5))
    ) == [0, 0, 1, 2, 4, 4]


def test_referable_threshold_refers_a_low_grade(dr_bundle):
    card = load_card(dr_bundle)
    card = card.replace(
        decision=card.decision.__class__(**{**card.decision.__dict__, "referable_threshold": 0.3})
    )
    scores = np.log(np.array([[0.6, 0.05, 0.2, 0.1, 0.05], [0.9, 0.05, 0.03, 0.01, 0.01]]))
    a, b = interpret_batch(card, {"scores": scores, "heatmap": np.zeros((2, 1, 4, 4), np.float32)})
    assert a.grade == 0 and a.decision == "refer" and a.referable_probability == pytest.approx(0.35)
    assert b.decision == "rescreen"


def test_oct_and_cxr_decisions(tmp_path):
    from conftest import make_bundle

    oct_card = load_card(make_bundle(tmp_path / "oct", "oct_classification", size=64))
    eye = np.eye(4) * 10
    got = [
        i.decision
        for i in interpret_batch(oct_card, {"scores": eye, "heatmap": np.ones((4, 1, 4, 4))})
    ]
    assert got == ["urgent", "refer", "routine", "none"]  # CNV, DME, DRUSEN, NORMAL
    cxr_card = load_card(make_bundle(tmp_path / "cxr", "cxr_findings", size=64))
    scores = np.full((2, 14), -5.0)
    scores[0, 1] = 3.0  # Cardiomegaly
    a, b = interpret_batch(cxr_card, {"scores": scores, "heatmap": np.ones((2, 1, 4, 4))})
    assert a.positive_findings == ["Cardiomegaly"] and a.decision == "refer"
    assert "radiologist" in a.action
    assert b.positive_findings == [] and b.decision == "none"


def test_a_new_engine_is_selftested_once_and_refused_when_it_fails(tmp_path, monkeypatch):
    """The self-test runs on the open backend itself (no second engine), once per new plan,
    and remembers a pass in the state directory, never in the (read-only) bundle.

    The TensorRT run itself needs a GPU; here a stand-in backend answers with the golden
    outputs (a good engine) or with shifted ones (a bad one).
    """
    import json

    from conftest import make_bundle

    from edgescreen.export.golden import write_golden
    from edgescreen.runtime.backends import open_backend
    from edgescreen.runtime.golden import ensure_selftest, load_golden

    state = tmp_path / "state"
    monkeypatch.setenv("EDGESCREEN_STATE_DIR", str(state))
    bundle = make_bundle(tmp_path / "b", size=32)
    card = load_card(bundle)
    x = np.random.default_rng(0).normal(0, 1, (4, *card.input.shape)).astype(np.float32)
    with open_backend(bundle, card, "fp32", "onnxruntime") as ort_backend:
        write_golden(bundle, x, ort_backend.infer(x), [f"g{i}" for i in range(4)])
    golden = load_golden(bundle)
    engine = bundle / "engines" / "fp16-sm87.engine"
    engine.parent.mkdir()
    engine.write_bytes(b"plan v1")
    calls = []

    class StandIn:
        name, device, artifact = "tensorrt", "cuda:0", "engines/fp16-sm87.engine"

        def __init__(self, shift: float) -> None:
            self.shift = shift

        def infer(self, batch):
            calls.append(len(batch))
            return {k: v[: len(batch)] + self.shift for k, v in golden.outputs.items()}

    before = sorted(p for p in bundle.rglob("*"))
    with pytest.raises(BackendUnavailable, match="failed its self-test.*relative error"):
        ensure_selftest(StandIn(5.0), bundle, card, "fp16")
    assert not state.exists()

    ensure_selftest(StandIn(0.0), bundle, card, "fp16")
    ensure_selftest(StandIn(0.0), bundle, card, "fp16")  # unchanged engine: no second run
    (marker_path,) = (state / "selftest").glob("*.json")
    marker = json.loads(marker_path.read_text())
    assert marker["ready"] is True and len(calls) == 2  # the failed run, then one passing run
    assert sorted(p for p in bundle.rglob("*")) == before  # nothing written into the bundle
    engine.write_bytes(b"plan v2, rebuilt")
    ensure_selftest(StandIn(0.0), bundle, card, "fp16")
    assert len(calls) == 3


def test_the_callers_name_wins(dr_bundle, fundus_dir):
    from edgescreen.runtime.imageio import decode

    photo = next((fundus_dir / "images").glob("*.jpg"))
    with Screener(dr_bundle) as s:
        assert s.screen(decode(photo, name="decoded-name"), name="given-name").image == "given-name"
        assert s.screen(decode(photo, name="decoded-name")).image == "decoded-name"


def test_inference_threads_sleep_between_batches_in_the_pipeline(dr_bundle):
    """The prepare workers need the cores between inference calls: ORT must not spin there,
    while a backend opened alone (latency benchmarks) keeps ORT's default."""
    key = "session.intra_op.allow_spinning"
    with Screener(dr_bundle, backend="onnxruntime") as screener:
        assert screener.backend.session.get_session_options().get_session_config_entry(key) == "0"
    from edgescreen.runtime.backends import open_backend
    from edgescreen.runtime.card import load_card

    with (
        open_backend(dr_bundle, load_card(dr_bundle), "fp32", "onnxruntime") as alone,
        pytest.raises(Exception, match="does not have configuration"),  # ORT's default
    ):
        alone.session.get_session_options().get_session_config_entry(key)
