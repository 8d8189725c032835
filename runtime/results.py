"""What one screened image yields: JSON-serialisable, with an audit trail.

`ok`, `ungradable` and `failed` are the only ways a result is made (the Screener and the
batch ledger both use them), so every failed image reads the same wherever it failed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from .postprocess import Interpretation

Status = Literal["ok", "ungradable", "failed"]


@dataclass
class ScreeningResult:
    image: str
    status: Status
    task: str
    decision: str  # urgent | refer | routine | rescreen | none | ungradable | failed
    action: str  # the sentence a technician reads
    label: str | None = None  # predicted class (DR grade name, OCT class, top CXR finding)
    grade: int | None = None  # DR only
    probabilities: dict[str, float] = field(default_factory=dict)
    positive_findings: list[str] = field(default_factory=list)  # CXR only
    referable_probability: float | None = None  # DR only: P(grade >= refer grade)
    quality: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    notes: str | None = None  # what the decoder noticed (e.g. only the first frame was screened)
    timings_ms: dict[str, float] = field(default_factory=dict)
    audit: dict[str, Any] = field(default_factory=dict)
    heatmap: np.ndarray | None = field(default=None, repr=False)  # not in JSON; see report

    @classmethod
    def ok(
        cls,
        image: str,
        found: Interpretation,
        *,
        task: str,
        quality: dict[str, Any],
        timings_ms: dict[str, float],
        audit: dict[str, Any],
    ) -> ScreeningResult:
        return cls(
            image=image,
            status="ok",
            task=task,
            decision=found.decision,
            action=found.action,
            label=found.label,
            grade=found.grade,
            probabilities=found.probabilities,
            positive_findings=found.positive_findings,
            referable_probability=found.referable_probability,
            quality=quality,
            timings_ms=timings_ms,
            audit=dict(audit),
            heatmap=found.heatmap,
        )

    @classmethod
    def ungradable(
        cls,
        image: str,
        *,
        task: str,
        retake: str,
        reasons: list[str],
        quality: dict[str, Any],
        timings_ms: dict[str, float],
        audit: dict[str, Any],
    ) -> ScreeningResult:
        """`retake` is the card's ungradable action; the gate's reasons say what to change."""
        return cls(
            image=image,
            status="ungradable",
            task=task,
            decision="ungradable",
            action=f"{retake} ({'; '.join(reasons)})",
            quality=quality,
            timings_ms=timings_ms,
            audit=dict(audit),
        )

    @classmethod
    def failed(
        cls,
        image: str,
        error: str,
        *,
        task: str,
        audit: dict[str, Any],
        timings_ms: dict[str, float] | None = None,
    ) -> ScreeningResult:
        return cls(
            image=image,
            status="failed",
            task=task,
            decision="failed",
            action=f"could not screen this image, check the file and retake: {error}",
            error=error,
            timings_ms=dict(timings_ms or {}),
            audit=dict(audit),
        )

    def to_dict(self) -> dict[str, Any]:
        # Shallow on purpose: asdict() deep-copies the heatmap array for nothing (ms per image).
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "heatmap"}
        data["heatmap_shape"] = None if self.heatmap is None else list(self.heatmap.shape)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)
