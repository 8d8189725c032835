"""What one screened image yields: JSON-serialisable, with an audit trail."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np

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
    timings_ms: dict[str, float] = field(default_factory=dict)
    audit: dict[str, Any] = field(default_factory=dict)
    heatmap: np.ndarray | None = field(default=None, repr=False)  # not in JSON; see report

    def to_dict(self) -> dict[str, Any]:
        # Shallow on purpose: asdict() deep-copies the heatmap array for nothing (ms per image).
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "heatmap"}
        data["heatmap_shape"] = None if self.heatmap is None else list(self.heatmap.shape)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)
