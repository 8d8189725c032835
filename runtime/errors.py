"""Errors every stage raises. Each names the file or field it is about, so a user can act."""

from __future__ import annotations

from pathlib import Path


class EdgescreenError(Exception):
    """Base class: anything edgescreen refuses on purpose, with a message for a person."""


class CardError(EdgescreenError):
    """model.json is missing, malformed, of an unknown schema version, or fails a hash check."""

    def __init__(self, problem: str, *, field: str | None = None, path: str | Path | None = None):
        self.problem = problem
        self.field = field
        self.path = str(path) if path is not None else None
        where = " ".join(p for p in (f"{self.path}:" if self.path else "", field or "") if p)
        super().__init__(f"{where}: {problem}" if where else problem)


class ImageError(EdgescreenError):
    """An image could not be read or is unusable (the path and the problem are in the message)."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class BackendUnavailable(EdgescreenError):
    """A backend's library (onnxruntime, tensorrt, pycuda) is missing or cannot run here."""
