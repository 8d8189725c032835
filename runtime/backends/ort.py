"""ONNX Runtime backend: CPU by default, CUDA when the GPU build and a GPU are present."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BackendUnavailable

try:
    import onnxruntime as ort
except ImportError:  # pragma: no cover - exercised only where onnxruntime is absent
    raise BackendUnavailable(
        "the onnxruntime backend needs onnxruntime: pip install 'edgescreen[runtime]'"
    ) from None


class OrtBackend:
    name = "onnxruntime"

    def __init__(
        self, model_path: str | Path, *, threads: int | None = None, device: str = "auto"
    ) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = (
            3  # errors only: ORT's optimizer warnings are not for technicians
        )
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        available = ort.get_available_providers()
        want_cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in available
        if device == "cuda" and not want_cuda:
            raise BackendUnavailable(
                "device 'cuda' asked for, but this onnxruntime has no CUDA "
                "provider: pip install onnxruntime-gpu"
            )
        providers = (
            ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if want_cuda
            else ["CPUExecutionProvider"]
        )
        self.session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=providers
        )
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
