"""Group eye photos by patient; the patient's decision is the worse eye's.

Patient and eye come from a sidecar `patients.csv` (columns file,patient,eye; `file`
relative to the CSV's folder) when there is one, else from the file name: a stem ending
in an eye marker, `Patient001_L.jpg`, `12_left.jpeg`, `anna od.png`. Patients are scoped
by folder, so clinic_a/12_left.jpg and clinic_b/12_left.jpg are two people.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..card import DECISIONS  # urgent > refer > routine > rescreen > none

SIDECAR = "patients.csv"
_EYE_WORDS = {
    "l": "left",
    "left": "left",
    "os": "left",
    "r": "right",
    "right": "right",
    "od": "right",
}
_NAME = re.compile(r"^(?P<patient>.+?)[ _.-]+(?P<eye>l|r|left|right|os|od)$", re.IGNORECASE)


@dataclass
class Eye:
    path: str
    eye: str
    state: str  # done | ungradable | failed | pending
    decision: str | None


@dataclass
class Patient:
    id: str  # folder/patient
    patient: str
    eyes: list[Eye] = field(default_factory=list)

    @property
    def decision(self) -> str:
        graded = [e.decision for e in self.eyes if e.state == "done" and e.decision in DECISIONS]
        if graded:
            return min(graded, key=DECISIONS.index)
        return (
            "ungradable"
            if any(e.state in ("ungradable", "failed") for e in self.eyes)
            else "pending"
        )

    @property
    def note(self) -> str:
        bad = [f"{e.eye} eye {e.state}" for e in self.eyes if e.state in ("ungradable", "failed")]
        return "; ".join(bad) + (": retake" if bad else "")


def eye_from_name(path: str) -> tuple[str, str] | None:
    match = _NAME.match(PurePosixPath(path).stem)
    if not match:
        return None
    return match["patient"], _EYE_WORDS[match["eye"].lower()]


def read_sidecars(root: Path) -> dict[str, tuple[str, str]]:
    """{relative path: (patient, eye)} from every patients.csv under root."""
    out: dict[str, tuple[str, str]] = {}
    for csv_path in sorted(root.rglob(SIDECAR)):
        folder = csv_path.parent.relative_to(root)
        try:
            with open(csv_path, newline="", encoding="utf-8-sig") as fh:
                for row in csv.DictReader(fh):
                    name, patient = (
                        (row.get("file") or "").strip(),
                        (row.get("patient") or "").strip(),
                    )
                    if name and patient:
                        eye = (row.get("eye") or "").strip().lower()
                        out[(folder / name).as_posix()] = (patient, _EYE_WORDS.get(eye, eye or "?"))
        except (OSError, UnicodeDecodeError, csv.Error):
            continue  # a broken sidecar only loses the grouping, never the results
    return out


def group(items, root: Path) -> list[Patient]:
    """Patients from ledger items (each with .paths, .state, .decision)."""
    sidecar = read_sidecars(root) if root.is_dir() else {}
    patients: dict[str, Patient] = {}
    for item in items:
        for path in item.paths:
            who = sidecar.get(path) or eye_from_name(path)
            if who is None:
                continue
            folder = PurePosixPath(path).parent.as_posix()
            key = f"{folder}/{who[0]}" if folder != "." else who[0]
            patient = patients.setdefault(key, Patient(key, who[0]))
            if not any(e.path == path for e in patient.eyes):
                patient.eyes.append(Eye(path, who[1], item.state, item.decision))
    return sorted(patients.values(), key=lambda p: p.id)
