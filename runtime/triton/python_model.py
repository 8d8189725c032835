"""The `edgescreen` model of a Triton repository: encoded images in, results out.

Triton's Python backend imports this inside its stub process, where the module
`triton_python_backend_utils` exists. One `execute` call receives every request the dynamic
batcher gathered; their images go through one Screener call, so decoding and the quality
gate run in the Screener's thread pool and the network sees one batch. A result is the JSON
of the ScreeningResult `edgescreen screen --json` prints for the same image.

A bad image (not an image, truncated, too dark) is a result with status `failed` or
`ungradable`, like everywhere else in the runtime; only a request that breaks the protocol
(an image over the size limit, a tensor that is not bytes) gets an error response, and only
that request: the others in the batch are answered as usual.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .config import IMAGE_INPUT, NAME_INPUT, RESULT_OUTPUT


class RequestError(ValueError):
    """A request this model cannot take; its message goes back to that client."""


class TritonNetwork:
    """A Backend that runs the network as another model of the same server (BLS)."""

    name = "triton"
    device = "triton"

    def __init__(self, pb_utils: Any, model_name: str, input_name: str, outputs: list[str]):
        self._pb = pb_utils
        self.artifact = model_name
        self._input = input_name
        self._outputs = outputs

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        pb = self._pb
        request = pb.InferenceRequest(
            model_name=self.artifact,
            requested_output_names=self._outputs,
            inputs=[pb.Tensor(self._input, np.ascontiguousarray(batch, dtype=np.float32))],
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"network model {self.artifact}: {response.error().message()}")
        return {n: pb.get_output_tensor_by_name(response, n).as_numpy() for n in self._outputs}

    def close(self) -> None:
        pass


class TritonPythonModel:
    """Triton's Python-backend interface: initialize, execute, finalize."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils  # only inside Triton's stub

        from ..screen import Screener

        self._pb = pb_utils
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        bundle = Path(args["model_repository"]) / args["model_version"] / params["bundle"]
        self.max_image_bytes = int(params.get("max_image_bytes") or 64 << 20)
        threads = int(params["threads"]) if params.get("threads") else None
        backend: Any = params.get("backend") or "auto"
        if params.get("network_model"):
            from ..card import load_card

            card = load_card(bundle)
            backend = TritonNetwork(
                pb_utils, params["network_model"], card.input.name, [o.name for o in card.outputs]
            )
        self.screener = Screener(
            bundle,
            precision=params.get("precision") or "fp32",
            backend=backend,
            threads=threads,
            workers=int(params.get("workers") or 2),
        )
        pb_utils.Logger.log_info(
            f"edgescreen: {self.screener.card.name} {self.screener.precision} on "
            f"{self.screener.backend.name} ({self.screener.backend.device}), "
            f"max batch {config.get('max_batch_size')}"
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self._pb
        responses: list[Any] = [None] * len(requests)
        images: list[bytes] = []
        names: list[str] = []
        owners: list[int] = []  # which request each image came from
        for i, request in enumerate(requests):
            try:
                got, got_names = self._read(request, first=len(images))
            except RequestError as exc:
                responses[i] = pb.InferenceResponse(
                    output_tensors=[], error=pb.TritonError(str(exc))
                )
                continue
            images += got
            names += got_names
            owners += [i] * len(got)
        per_request: dict[int, list[str]] = {}
        if images:
            results = self.screener.screen_many(images, names=names, batch_size=len(images))
            for owner, result in zip(owners, results, strict=True):
                per_request.setdefault(owner, []).append(result.to_json())
        for i, texts in per_request.items():
            data = np.array([[t.encode()] for t in texts], dtype=np.object_)
            responses[i] = pb.InferenceResponse(output_tensors=[pb.Tensor(RESULT_OUTPUT, data)])
        return responses

    def finalize(self) -> None:
        self.screener.close()

    # -- requests -------------------------------------------------------------------------
    def _read(self, request: Any, *, first: int) -> tuple[list[bytes], list[str]]:
        pb = self._pb
        tensor = pb.get_input_tensor_by_name(request, IMAGE_INPUT)
        if tensor is None:
            raise RequestError(f"the request has no {IMAGE_INPUT} input (encoded image bytes)")
        raw = tensor.as_numpy().reshape(-1)
        images = []
        for j, item in enumerate(raw):
            if not isinstance(item, bytes):
                raise RequestError(f"{IMAGE_INPUT}[{j}] is not bytes (send TYPE_STRING / BYTES)")
            if len(item) > self.max_image_bytes:
                raise RequestError(
                    f"{IMAGE_INPUT}[{j}] is {len(item) / 2**20:.1f} MiB, over this server's "
                    f"limit of {self.max_image_bytes / 2**20:.0f} MiB"
                )
            images.append(item)
        name_tensor = pb.get_input_tensor_by_name(request, NAME_INPUT)
        if name_tensor is None:
            names = [f"image-{first + j}" for j in range(len(images))]
        else:
            given = name_tensor.as_numpy().reshape(-1)
            if len(given) != len(images):
                raise RequestError(f"{len(given)} names for {len(images)} images")
            names = [
                n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in given
            ]
        return images, names
