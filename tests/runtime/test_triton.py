"""Triton: the repository's configs parse with Triton's own ModelConfig, and a real
tritonserver (nvidia-pytriton's binary, Python backend, on 127.0.0.1) screens like the runtime.

CI (.ci/run) builds the server environment (.venv-triton) and sets EDGESCREEN_REQUIRE_TRITON=1,
so there a missing server fails instead of skipping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import fundus_like, make_bundle

from edgescreen.runtime.card import load_card
from edgescreen.runtime.engine_cache import EngineKey, plan_path, write_engine
from edgescreen.runtime.errors import BackendUnavailable
from edgescreen.runtime.screen import Screener
from edgescreen.runtime.triton.config import Map, Sym, to_pbtxt
from edgescreen.runtime.triton.repository import SCREEN_MODEL, write_repository

REQUIRED = bool(os.environ.get("EDGESCREEN_REQUIRE_TRITON"))


def _model_config():
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        if REQUIRED:
            pytest.fail("tritonclient is required here (EDGESCREEN_REQUIRE_TRITON)")
        pytest.skip("tritonclient not installed (pip install -e '.[serve]')")
    return text_format, model_config_pb2


def _parse(path: Path):
    text_format, pb = _model_config()
    return text_format.Parse(path.read_text(encoding="utf-8"), pb.ModelConfig())


def _fake_engine(bundle: Path, precision: str, cc: tuple[int, int], dla: int | None = None):
    card = load_card(bundle)
    key = EngineKey(
        model_sha256=card.artifacts["onnx-fp32"].sha256,
        precision=precision,
        trt_version="10.3.0",
        gpu_name="Orin" if cc == (8, 7) else "Xavier",
        compute_capability=cc,
        sm_count=16,
        input_shape=card.input.shape,
        profile=card.input.batch,
        dla_core=dla,
    )
    write_engine(plan_path(bundle, key), b"plan bytes " + bytes(str(cc), "ascii"), key)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("triton") / "dr", size=96)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i in range(6):
        path = folder / f"eye-{i}.jpg"
        cv2.imwrite(str(path), fundus_like(i, 320), [cv2.IMWRITE_JPEG_QUALITY, 92])
        paths.append(path)
    dark = folder / "dark.png"
    cv2.imwrite(str(dark), np.zeros((200, 200, 3), np.uint8))  # ungradable: no fundus
    return [*paths, dark]


# -- the repository ---------------------------------------------------------------------------
def test_pbtxt_writer_maps_enums_and_escapes():
    text = to_pbtxt(
        {
            "name": 'a "quoted" name',
            "kind": Sym("KIND_CPU"),
            "flag": True,
            "dims": [3, -1],
            "parameters": Map({"k": {"string_value": "v"}}),
            "cc_model_filenames": Map({"8.7": "m.plan"}),
        }
    )
    assert 'name: "a \\"quoted\\" name"' in text
    assert "kind: KIND_CPU" in text and "flag: true" in text and "dims: [3, -1]" in text
    assert 'cc_model_filenames { key: "8.7" value: "m.plan" }' in text


def test_every_config_parses_with_tritons_model_config(tmp_path):
    bundle = make_bundle(tmp_path / "dr", size=96)
    _fake_engine(bundle, "fp16", (8, 7))
    _fake_engine(bundle, "fp16", (7, 2))
    _fake_engine(bundle, "fp16", (8, 7), dla=0)  # DLA plans are not Triton's to schedule
    card = load_card(bundle)
    repo = write_repository(bundle, tmp_path / "repo", precision="fp32", max_image_mb=8)
    assert set(repo.models) == {"network-onnx-fp32", "network-trt-fp16", SCREEN_MODEL}

    onnx = _parse(tmp_path / "repo" / "network-onnx-fp32" / "config.pbtxt")
    assert onnx.platform == "onnxruntime_onnx" and onnx.backend == "onnxruntime"
    assert onnx.max_batch_size == card.input.batch[2]
    assert [(t.name, list(t.dims)) for t in onnx.input] == [("input", [3, 96, 96])]
    assert [t.name for t in onnx.output] == ["scores", "heatmap"]
    assert list(onnx.output[0].dims) == [len(card.labels)]
    assert list(onnx.dynamic_batching.preferred_batch_size) == sorted(set(card.input.batch[1:]))
    assert (tmp_path / "repo" / "network-onnx-fp32" / "1" / "model.onnx").is_file()

    trt = _parse(tmp_path / "repo" / "network-trt-fp16" / "config.pbtxt")
    assert trt.platform == "tensorrt_plan"
    assert dict(trt.cc_model_filenames) == {"8.7": "model-sm87.plan", "7.2": "model-sm72.plan"}
    for file in trt.cc_model_filenames.values():
        assert (tmp_path / "repo" / "network-trt-fp16" / "1" / file).is_file()

    screen = _parse(tmp_path / "repo" / SCREEN_MODEL / "config.pbtxt")
    assert screen.backend == "python" and screen.max_batch_size == card.input.batch[2]
    assert [(t.name, t.optional) for t in screen.input] == [("IMAGE", False), ("NAME", True)]
    assert screen.HasField("dynamic_batching")
    params = {k: v.string_value for k, v in screen.parameters.items()}
    assert params["precision"] == "fp32" and params["max_image_bytes"] == str(8 << 20)
    copied = tmp_path / "repo" / SCREEN_MODEL / "1" / "bundle"
    assert load_card(copied) == card


def test_warmup_replays_the_golden_inputs(tmp_path):
    from edgescreen.runtime.golden import load_golden

    bundle = _bundle_with_golden(tmp_path)
    write_repository(bundle, tmp_path / "repo")
    config = _parse(tmp_path / "repo" / "network-onnx-fp32" / "config.pbtxt")
    golden = load_golden(bundle).inputs
    assert len(config.model_warmup) == min(2, len(golden))
    for i, warm in enumerate(config.model_warmup):
        spec = warm.inputs["input"]
        data = (
            tmp_path / "repo" / "network-onnx-fp32" / "warmup" / spec.input_data_file
        ).read_bytes()
        np.testing.assert_array_equal(
            np.frombuffer(data, np.float32).reshape(golden[i].shape), golden[i]
        )


def _bundle_with_golden(tmp_path: Path) -> Path:
    from edgescreen.export.golden import write_golden

    bundle = make_bundle(tmp_path / "dr", size=96)
    rng = np.random.default_rng(0)
    inputs = rng.normal(0, 1, (3, 3, 96, 96)).astype(np.float32)
    with Screener(bundle, backend="onnxruntime") as screener:
        outputs = screener.backend.infer(inputs)
    write_golden(bundle, inputs, outputs, [f"g{i}.jpg" for i in range(3)])
    return bundle


def test_repository_refuses_a_used_folder_and_an_unknown_network(tmp_path, bundle):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("")
    with pytest.raises(FileExistsError, match="not empty"):
        write_repository(bundle, tmp_path / "used")
    with pytest.raises(Exception, match="network-trt-int8"):
        write_repository(bundle, tmp_path / "new", network_model="network-trt-int8")


def test_cli_writes_a_repository(tmp_path, bundle):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgescreen.runtime.cli",
            "triton",
            str(bundle),
            "--out",
            str(tmp_path / "repo"),
            "--precision",
            "fp32",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert SCREEN_MODEL in json.loads(out.stdout)["models"]


# -- a real server ----------------------------------------------------------------------------
def _install():
    from edgescreen.runtime.triton.server import find_install

    try:
        return find_install()
    except BackendUnavailable as exc:
        if REQUIRED:
            pytest.fail(f"the Triton server is required here (EDGESCREEN_REQUIRE_TRITON): {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    from edgescreen.runtime.triton.server import TritonServer

    _model_config()  # the client needs tritonclient too
    install = _install()
    repo = tmp_path_factory.mktemp("served") / "repo"
    write_repository(bundle, repo, precision="fp32", max_image_mb=1)
    with TritonServer(repo, install=install) as running:
        yield running


@pytest.fixture
def client(server):
    from edgescreen.runtime.triton.client import ScreenClient

    with ScreenClient(server.http_url) as c:
        yield c


def _same(local: list[dict], served: list[dict]) -> None:
    from edgescreen.runtime.triton.client import result_differences

    assert len(local) == len(served)
    for a, b in zip(local, served, strict=True):
        assert result_differences(a, b) == [], a["image"]


def test_served_results_equal_the_runtimes(client, bundle, photos):
    served = client.screen_files(photos)
    with Screener(bundle, backend="onnxruntime") as screener:
        local = [json.loads(r.to_json()) for r in screener.screen_many(photos)]
    assert [r["status"] for r in served][-1] == "ungradable"
    assert {r["status"] for r in served[:-1]} == {"ok"}
    _same(local, served)


def test_result_comparison_finds_real_differences():
    from edgescreen.runtime.triton.client import result_differences

    a = {"decision": "refer", "probabilities": {"x": 0.5}, "timings_ms": {"decode": 1.0}}
    assert result_differences(a, {**a, "timings_ms": {"decode": 9.0}}) == []
    assert result_differences(a, {**a, "probabilities": {"x": 0.5 + 1e-15}}) == []
    assert result_differences(a, {**a, "probabilities": {"x": 0.5001}}) == [
        "probabilities.x: 0.5 != 0.5001"
    ]
    assert result_differences(a, {**a, "decision": "routine"}) == ["decision: 'refer' != 'routine'"]


def test_grpc_gives_the_same_results(server, client, photos):
    from edgescreen.runtime.triton.client import ScreenClient

    with ScreenClient(server.grpc_url, protocol="grpc") as grpc:
        _same(client.screen_files(photos[:2]), grpc.screen_files(photos[:2]))


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(server, client, photos):
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    (not_image,) = client.screen([b"%PDF-1.4 not a photo"], ["upload.pdf"])
    assert not_image["status"] == "failed" and "not a readable image" in not_image["error"]

    with pytest.raises(InferenceServerException, match="over this server's limit of 1 MiB"):
        client.screen([b"\xff\xd8" + bytes(2 << 20)])

    wrong = http.InferInput("IMAGE", [1, 3], "FP32")  # a float tensor where bytes belong
    wrong.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(InferenceServerException, match="IMAGE"):
        client._client.infer(SCREEN_MODEL, [wrong])

    missing = http.InferInput("NAME", [1, 1], "BYTES")
    missing.set_data_from_numpy(np.array([[b"x"]], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="IMAGE"):
        client._client.infer(SCREEN_MODEL, [missing])

    assert server.process.poll() is None
    (after,) = client.screen_files(photos[:1])
    assert after["status"] == "ok"


def test_concurrent_clients_all_answered(server, photos):
    """8 clients at once, bounded: 4 requests each, every one answered, none lost."""
    from edgescreen.runtime.triton.client import ScreenClient

    answers: list[str] = []
    errors: list[BaseException] = []

    def one_client(k: int) -> None:
        try:
            with ScreenClient(server.http_url) as c:
                for j in range(4):
                    path = photos[(k + j) % 6]
                    (r,) = c.screen_files([path])
                    answers.append(r["image"] if r["status"] == "ok" else r["status"])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one_client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert sorted(answers) == sorted(str(photos[(k + j) % 6]) for k in range(8) for j in range(4))


def test_serve_command_listens_on_loopback_and_stops_on_sigint(bundle, tmp_path):
    _install()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgescreen.runtime.cli",
            "serve",
            str(bundle),
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        where = json.loads(line)
        assert where["http"].startswith("127.0.0.1:") and where["grpc"].startswith("127.0.0.1:")
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(60)
    assert rc == 0
    time.sleep(0.1)
