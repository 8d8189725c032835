"""edgescreen.export: trained checkpoint -> verified model bundle (TorchScript, ONNX FP32/FP16, INT8 Q/DQ).

Import-light: `export_bundle` and friends load torch only when first used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DriftGateError", "ExportReport", "export_bundle"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import bundle

        return getattr(bundle, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
