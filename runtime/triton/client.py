"""Send encoded images to the `edgescreen` model and read back ScreeningResult dicts."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import IMAGE_INPUT, NAME_INPUT, RESULT_OUTPUT
from .repository import SCREEN_MODEL


class ScreenClient:
    """A tritonclient connection (HTTP or gRPC). Each thread of a load test needs its own."""

    def __init__(
        self,
        url: str = "127.0.0.1:8000",
        *,
        protocol: str = "http",
        model: str = SCREEN_MODEL,
        timeout: float = 120.0,
    ) -> None:
        self.protocol = protocol
        self.model = model
        self.timeout = timeout
        if protocol == "http":
            import tritonclient.http as client  # the `serve` extra

            self._client = client.InferenceServerClient(url, network_timeout=timeout)
        elif protocol == "grpc":
            import tritonclient.grpc as client

            self._client = client.InferenceServerClient(url)
        else:
            raise ValueError(f"protocol must be http or grpc, not {protocol!r}")
        self._module = client

    def screen(
        self, images: Sequence[bytes], names: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """One request carrying `images`; results in the same order."""
        inputs = [self._bytes_input(IMAGE_INPUT, images)]
        if names is not None:
            inputs.append(self._bytes_input(NAME_INPUT, [n.encode() for n in names]))
        output = self._module.InferRequestedOutput(RESULT_OUTPUT)
        kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        response = self._client.infer(self.model, inputs, outputs=[output], **kwargs)
        return [json.loads(item) for item in response.as_numpy(RESULT_OUTPUT).reshape(-1)]

    def screen_files(self, paths: Sequence[str | Path]) -> list[dict[str, Any]]:
        """Screen files by their bytes, named as `edgescreen screen` names them."""
        return self.screen([Path(p).read_bytes() for p in paths], [str(p) for p in paths])

    def _bytes_input(self, name: str, values: Sequence[bytes]) -> Any:
        data = np.empty((len(values), 1), dtype=np.object_)
        for i, value in enumerate(values):
            data[i, 0] = value
        tensor = self._module.InferInput(name, list(data.shape), "BYTES")
        tensor.set_data_from_numpy(data)
        return tensor

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ScreenClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# The server environment runs NumPy 1 (Triton's stub needs it), this one NumPy 2: their exp()
# may differ in the last bit of a float64, so probabilities agree to ~1e-16, not bit for bit.
FLOAT_TOLERANCE = 1e-9


def result_differences(local: Any, served: Any, where: str = "") -> list[str]:
    """Where two results differ (timings excluded); floats within FLOAT_TOLERANCE are equal."""
    if isinstance(local, dict) and isinstance(served, dict):
        out = []
        for key in sorted(set(local) | set(served)):
            if key == "timings_ms" and not where:
                continue
            if key not in local or key not in served:
                out.append(f"{where}{key}: only in {'local' if key in local else 'served'}")
            else:
                out += result_differences(local[key], served[key], f"{where}{key}.")
        return out
    if isinstance(local, list) and isinstance(served, list) and len(local) == len(served):
        return [
            d
            for i, (a, b) in enumerate(zip(local, served, strict=True))
            for d in result_differences(a, b, f"{where}{i}.")
        ]
    if (
        isinstance(local, float)
        and isinstance(served, int | float)
        and not isinstance(served, bool)
    ):
        if math.isclose(local, served, rel_tol=FLOAT_TOLERANCE, abs_tol=FLOAT_TOLERANCE):
            return []
    elif local == served:
        return []
    return [f"{where.rstrip('.')}: {local!r} != {served!r}"]
