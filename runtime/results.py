"""What one screened image yields: JSON-serialisable, with an audit trail."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
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
        data = asdict(self)
        heat = data.pop("heatmap")
        data["heatmap_shape"] = None if heat is None else list(heat.shape)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)
