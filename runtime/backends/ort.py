"""ONNX Runtime backend: CPU by default, CUDA when the GPU build and a GPU are present."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifacts import choose_artifact
from ..card import ModelCard, verify_artifacts
from ..errors import BackendUnavailable

try:
    import onnxruntime as ort
except ImportError:  # pragma: no cover - exercised only where onnxruntime is absent
    raise BackendUnavailable(
        "the onnxruntime backend needs onnxruntime: pip install 'edgescreen[runtime]'"
    ) from None


class OrtBackend:
    name = "onnxruntime"

    @classmethod
    def can_open(
        cls, bundle: str | Path, card: ModelCard, precision: str, **options: object
    ) -> bool:
        # Every bundle ships ONNX (a missing precision is reported when opened); DLA is not ours.
        return options.get("dla_core") is None

    def __init__(
        self,
        bundle: Path,
        card: ModelCard,
        precision: str,
        *,
        threads: int | None = None,
        device: str = "auto",
        target: str | None = None,
        unfused_qdq: bool = False,
        verify: bool = True,
        dla_core: int | None = None,
        spin: bool = True,
    ) -> None:
        """`unfused_qdq` runs Q/DQ nodes as written (quantize, dequantize, float op) instead
        of fusing them into ORT's x86 integer kernels, whose int16 intermediate saturation
        adds error TensorRT does not have: it is how the TensorRT-form INT8 file is judged
        on a CPU.

        `spin=False` lets ORT's threads sleep as soon as a run ends. By default they
        busy-wait a while for the next run, which is fastest when the model has the cores
        to itself; when other threads need them between runs (the Screener's prepare
        workers) the spinning takes their time (measured on 2 cores, the Screener on the 40
        camera originals with and without it in two alternated rounds of
        benchmarks/camera.py: 8-20% more images/s; not kept as a results file)."""
        if dla_core is not None:
            raise BackendUnavailable(
                "a DLA core runs TensorRT engines only: screen with --backend tensorrt"
            )
        available = ort.get_available_providers()
        cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in available
        if device == "cuda" and not cuda:
            raise BackendUnavailable(
                "device 'cuda' asked for, but this onnxruntime has no CUDA "
                "provider: pip install onnxruntime-gpu"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            if unfused_qdq
            else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        )
        options.log_severity_level = (
            3  # errors only: ORT's optimizer warnings are not for technicians
        )
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")

        def open_file(device_kind: str, providers: list[str]):
            key, artifact = choose_artifact(
                card, precision, backend=self.name, device=device_kind, target=target
            )
            if (
                verify
            ):  # only the file about to run: hashing every artifact costs seconds on a Jetson
                verify_artifacts(bundle, card, only=[key])
            session = ort.InferenceSession(
                str(bundle / artifact.file), sess_options=options, providers=providers
            )
            return key, artifact, session

        # The device decides the INT8 form, so it is known before the file is chosen.
        if cuda:
            key, artifact, self.session = open_file(
                "cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]
            )
            fell_back = self.session.get_providers()[0] != "CUDAExecutionProvider"
            if (
                fell_back
                and target is None
                and choose_artifact(card, precision, backend=self.name)[0] != key
            ):
                # The GPU build fell back to the CPU (no GPU, a CUDA/cuDNN mismatch): run the
                # form made, and measured, for the CPU.
                key, artifact, self.session = open_file("cpu", ["CPUExecutionProvider"])
        else:
            key, artifact, self.session = open_file("cpu", ["CPUExecutionProvider"])
        self.artifact = artifact.file
        self.precision = precision
        self.device = (
            "cuda:0" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        )
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        values = self.session.run(self.output_names, {self.input_name: batch})
        return dict(zip(self.output_names, values, strict=True))

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]

    def __enter__(self) -> OrtBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
