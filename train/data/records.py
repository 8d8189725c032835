"""What every loader returns: samples with patient ids, and the rows it could not use.

A loader never drops a bad row silently: it becomes a RowProblem (file and 1-based line),
so a user sees exactly which lines of their CSV to fix.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgescreen.runtime.labels import NO_FINDING

TASKS: tuple[str, ...] = ("dr", "oct", "cxr", "pneumonia")

# Label of a kept-but-ungradable image (Messidor-2 with keep_ungradable=True): it has no
# class, so class counts and stratification skip it.
UNGRADABLE = -1


@dataclass(frozen=True)
class RowProblem:
    """One row a loader could not turn into a sample: file and 1-based line. For formats
    without a label file (Kermany folders) file is the image or folder and line is 0."""

    file: str
    line: int
    problem: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.problem}"


@dataclass(frozen=True)
class Sample:
    """One image with its label and the patient it belongs to.

    label is a class index for single-label tasks (dr, oct, pneumonia) and a K-long 0/1
    tuple in CXR_FINDINGS order for cxr. split is the dataset's official split, when the
    format has one. MedMNIST images come as arrays (path None, array set).
    """

    path: Path | None
    label: int | tuple[int, ...]
    patient: str
    split: str | None = None
    array: np.ndarray | None = field(default=None, compare=False, repr=False)
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def ref(self) -> str:
        """A name for messages: the file path, or the MedMNIST `flag-split-index` id."""
        if self.path is not None:
            return str(self.path)
        return str(self.meta.get("id", self.patient))

    @property
    def multilabel(self) -> bool:
        return isinstance(self.label, tuple)


@dataclass
class LabelledSet:
    """A loaded data set: samples in the project's label space, plus what went wrong."""

    name: str
    task: str
    labels: tuple[str, ...]
    samples: list[Sample]
    problems: list[RowProblem] = field(default_factory=list)
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> rows left out on purpose
    notes: list[str] = field(default_factory=list)  # caveats, e.g. "no patient ids"

    def __len__(self) -> int:
        return len(self.samples)

    def splits(self) -> list[str | None]:
        """Official splits present, in first-seen order (None when the format has none)."""
        return list(dict.fromkeys(s.split for s in self.samples))

    def patients(self) -> set[str]:
        return {s.patient for s in self.samples}

    def class_counts(self, split: str | None = None) -> dict[str, int]:
        """Images per class (single-label) or positives per finding (multi-label, plus
        NO_FINDING for all-zero rows), every label listed, in label order. split=None
        counts all samples; otherwise only that official split."""
        chosen = [s for s in self.samples if split is None or s.split == split]
        if self.task == "cxr":
            counts = dict.fromkeys(self.labels, 0)
            counts[NO_FINDING] = 0
            for s in chosen:
                assert isinstance(s.label, tuple)
                for name, v in zip(self.labels, s.label, strict=True):
                    counts[name] += int(v)
                if not any(s.label):
                    counts[NO_FINDING] += 1
            return counts
        c = Counter(s.label for s in chosen)
        counts = {name: c.get(i, 0) for i, name in enumerate(self.labels)}
        if c.get(UNGRADABLE):
            counts["ungradable"] = c[UNGRADABLE]
        return counts

    def summary(self) -> str:
        """A small table: counts per class, per official split, then problems and caveats."""
        splits = [s for s in self.splits() if s is not None]
        head = (
            f"{self.name} ({self.task}): {len(self.samples)} images, "
            f"{len(self.patients())} patients, {len(self.problems)} problems"
        )
        lines = [head]
        cols = ["all", *splits]
        per = {"all": self.class_counts()}
        for sp in splits:
            per[sp] = self.class_counts(sp)
        names = list(per["all"])
        w = max([len(n) for n in names] + [5])
        lines.append("  " + "class".ljust(w) + "".join(f"{c:>8}" for c in cols))
        for n in names:
            lines.append("  " + n.ljust(w) + "".join(f"{per[c][n]:>8}" for c in cols))
        if splits:
            counts = Counter(s.split for s in self.samples)
            lines.append("  images per split: " + ", ".join(f"{sp} {counts[sp]}" for sp in splits))
            if counts.get(None):
                lines.append(f"  images without split: {counts[None]}")
        for reason, n in self.excluded.items():
            lines.append(f"  excluded ({reason}): {n}")
        for p in self.problems[:5]:
            lines.append(f"  problem: {p}")
        if len(self.problems) > 5:
            lines.append(f"  ... and {len(self.problems) - 5} more problems")
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)
