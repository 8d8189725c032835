"""The model card (`model.json`): the one contract between train, export and the runtime.

Everything a stage needs to agree on lives here as plain data: labels, the input tensor,
the preprocessing recipe, how to read the outputs, decision thresholds and their action
sentences, quality-gate limits, the artifacts with their sha256, calibration manifest,
metrics per precision and the versions used. `load_card` refuses anything it does not
fully understand, naming the field or file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import CardError
from .labels import CXR_FINDINGS, DR_GRADES, OCT_CLASSES
from .preprocess import PreprocessConfig
from .quality import QualityLimits, default_limits
from .schema import from_data, to_data

SCHEMA_VERSION = 1
CARD_FILE = "model.json"

Task = Literal["dr_grading", "oct_classification", "cxr_findings"]
Precision = Literal["fp32", "fp16", "int8"]
# urgent > refer > routine > rescreen > none: the order a patient's worst eye is chosen by.
DECISIONS: tuple[str, ...] = ("urgent", "refer", "routine", "rescreen", "none")
# The decisions that send a patient to a specialist: the referral rule, in one place.
REFERRAL_DECISIONS: tuple[str, ...] = ("urgent", "refer")
TASK_MODALITY = {"dr_grading": "fundus", "oct_classification": "oct", "cxr_findings": "cxr"}


def is_referral(decision: str | None) -> bool:
    return decision in REFERRAL_DECISIONS


@dataclass(frozen=True)
class InputSpec:
    """The network's input tensor. Values come from the preprocessing recipe."""

    name: str
    shape: tuple[int, int, int]  # C, H, W (batch is dynamic)
    layout: Literal["NCHW"] = "NCHW"
    colour: Literal["RGB", "GRAY"] = "RGB"
    dtype: Literal["float32"] = "float32"
    batch: tuple[int, int, int] = (1, 8, 32)  # min/opt/max: the TensorRT shape profile
    max_pixels: int = 80_000_000  # decoded images above this are refused (decompression bombs)

    def validate(self, where: str) -> None:
        if any(d <= 0 for d in self.shape):
            raise CardError(
                f"dimensions must be positive, got {list(self.shape)}", field=f"{where}.shape"
            )
        lo, opt, hi = self.batch
        if not 1 <= lo <= opt <= hi:
            raise CardError(
                f"need 1 <= min <= opt <= max, got {list(self.batch)}", field=f"{where}.batch"
            )
        if self.colour == "GRAY" and self.shape[0] != 1 and self.shape[0] != 3:
            raise CardError("GRAY input must have 1 or 3 channels", field=f"{where}.shape")


@dataclass(frozen=True)
class OutputSpec:
    """How to read one network output.

    role: `scores` (N, K) per label, turned into probabilities by `activation`;
    `grade_value` (N,) or (N, 1) continuous DR grade, cut into grades by the cut points;
    `heatmap` (N, h, w) or (N, k, h, w), overlaid on the photo.
    """

    name: str
    role: Literal["scores", "grade_value", "heatmap"]
    activation: Literal["none", "softmax", "sigmoid"] = "none"


@dataclass(frozen=True)
class DecisionSpec:
    """From task output to a decision and the sentence a technician reads."""

    # DR: grade from argmax of the probabilities, or from cut points on a grade value.
    refer_min_grade: int = 2
    urgent_min_grade: int = 3
    cutpoints: tuple[float, ...] | None = None
    # DR: refer when P(grade >= refer_min_grade) reaches this (fitted for a target sensitivity).
    referable_threshold: float | None = None
    # OCT: decision per class. CXR: probability threshold per finding.
    class_decisions: dict[str, str] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    actions: dict[str, str] = field(default_factory=dict)

    def validate(self, where: str) -> None:
        for label, decision in self.class_decisions.items():
            if decision not in DECISIONS:
                raise CardError(
                    f"unknown decision {decision!r}; use one of {', '.join(DECISIONS)}",
                    field=f"{where}.class_decisions.{label}",
                )
        for name, value in self.thresholds.items():
            if not 0.0 <= value <= 1.0:
                raise CardError(
                    f"threshold must be in [0, 1], got {value}", field=f"{where}.thresholds.{name}"
                )
        for decision in self.actions:
            if decision not in (*DECISIONS, "ungradable"):
                raise CardError("unknown decision", field=f"{where}.actions.{decision}")
        if self.cutpoints is not None and list(self.cutpoints) != sorted(self.cutpoints):
            raise CardError("cut points must be increasing", field=f"{where}.cutpoints")


@dataclass(frozen=True)
class Artifact:
    """One file of the bundle. `target` tells apart the two INT8 forms of the same model."""

    file: str
    sha256: str
    format: Literal["onnx", "torchscript", "tensorrt"]
    precision: Precision
    target: Literal["any", "tensorrt", "cpu"] = "any"

    def validate(self, where: str) -> None:
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise CardError("must be 64 lowercase hex digits", field=f"{where}.sha256")
        if Path(self.file).is_absolute() or ".." in Path(self.file).parts:
            raise CardError("must be a path inside the bundle", field=f"{where}.file")


@dataclass(frozen=True)
class DriftLimits:
    """Largest accepted change of a reduced-precision model against FP32."""

    max_abs_delta_qwk: float = 0.01
    max_flip_rate: float = 0.01
    max_delta_auroc: float = 0.005
    max_delta_accuracy: float = 0.005


@dataclass(frozen=True)
class ModelCard:
    schema_version: int
    name: str
    task: Task
    family: str
    labels: tuple[str, ...]
    input: InputSpec
    preprocessing: PreprocessConfig
    outputs: tuple[OutputSpec, ...]
    decision: DecisionSpec
    quality: QualityLimits
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    drift_limits: DriftLimits = field(default_factory=DriftLimits)
    calibration: dict[str, Any] | None = None
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    data_manifest: dict[str, Any] = field(default_factory=dict)  # training data: splits, counts
    intended_use: str = "research and engineering evaluation only; not for clinical use"

    @property
    def modality(self) -> str:
        return TASK_MODALITY[self.task]

    def output(self, role: str) -> OutputSpec | None:
        return next((o for o in self.outputs if o.role == role), None)

    def validate(self, where: str = "") -> None:
        def at(name: str) -> str:
            return f"{where}.{name}" if where else name

        if self.schema_version != SCHEMA_VERSION:
            raise CardError(
                f"schema_version {self.schema_version} is not supported "
                f"(this edgescreen reads {SCHEMA_VERSION})",
                field=at("schema_version"),
            )
        if self.preprocessing.modality != self.modality:
            raise CardError(
                f"modality {self.preprocessing.modality!r} does not match task {self.task!r}",
                field=at("preprocessing.modality"),
            )
        c, h, w = self.input.shape
        pre = self.preprocessing
        if (c, h, w) != (pre.channels, pre.size, pre.size):
            raise CardError(
                f"{list(self.input.shape)} disagrees with preprocessing "
                f"(channels {pre.channels}, size {pre.size})",
                field=at("input.shape"),
            )
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise CardError("must be a non-empty list of distinct names", field=at("labels"))
        if not any(o.role in ("scores", "grade_value") for o in self.outputs):
            raise CardError(
                "needs an output with role 'scores' or 'grade_value'", field=at("outputs")
            )
        if len({o.name for o in self.outputs}) != len(self.outputs):
            raise CardError("output names must be distinct", field=at("outputs"))
        for label in (*self.decision.class_decisions, *self.decision.thresholds):
            if label not in self.labels:
                raise CardError(
                    f"{label!r} is not one of the card's labels", field=at(f"decision.{label}")
                )
        if self.output("grade_value") and self.decision.cutpoints is None:
            raise CardError(
                "a grade_value output needs decision.cutpoints", field=at("decision.cutpoints")
            )

    # -- I/O ---------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, *, path: str | Path | None = None) -> ModelCard:
        try:
            version = data.get("schema_version") if isinstance(data, dict) else None
            if isinstance(version, int) and version != SCHEMA_VERSION:
                # Say "unknown version" rather than complain about fields a newer schema added.
                raise CardError(
                    f"schema_version {version} is not supported "
                    f"(this edgescreen reads {SCHEMA_VERSION})",
                    field="schema_version",
                )
            return from_data(cls, data, "")
        except CardError as exc:
            if path is None:
                raise
            raise CardError(str(exc), path=path) from None

    def to_dict(self) -> dict[str, Any]:
        return to_data(self)

    def replace(self, **changes: Any) -> ModelCard:
        return dataclasses.replace(self, **changes)


def card_bytes(card: ModelCard) -> bytes:
    """Canonical serialisation: its sha256 identifies the whole bundle (it lists every hash)."""
    return (json.dumps(card.to_dict(), indent=2, sort_keys=True) + "\n").encode()


def load_card(bundle: str | Path) -> ModelCard:
    path = Path(bundle)
    if path.is_dir():
        path = path / CARD_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CardError("model card not found", path=path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CardError(f"not valid JSON ({exc})", path=path) from None
    return ModelCard.from_dict(data, path=path)


def save_card(card: ModelCard, bundle: str | Path) -> Path:
    """Write model.json atomically (temp file + rename), so a reader never sees half a card."""
    card.validate()
    bundle = Path(bundle)
    bundle.mkdir(parents=True, exist_ok=True)
    target = bundle / CARD_FILE
    atomic_write(target, card_bytes(card))
    return target


def atomic_write(target: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Temp file + fsync + rename: readers see the old file or the new one, never half of one.

    `mode` is set before any byte is written, so a private file (0o600) is never readable
    by others, not even for a moment.
    """
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def bundle_sha256(card: ModelCard) -> str:
    return hashlib.sha256(card_bytes(card)).hexdigest()


def verify_artifacts(bundle: str | Path, card: ModelCard, *, only: list[str] | None = None) -> None:
    """Refuse a bundle whose files are missing or differ from the hashes in its card."""
    bundle = Path(bundle)
    for key, artifact in card.artifacts.items():
        if only is not None and key not in only:
            continue
        path = bundle / artifact.file
        if not path.is_file():
            raise CardError(f"artifact {key!r} is missing", path=path)
        actual = sha256_file(path)
        if actual != artifact.sha256:
            raise CardError(
                f"sha256 mismatch for artifact {key!r}: the card says {artifact.sha256[:12]}…, "
                f"the file is {actual[:12]}… (modified or corrupted; re-export the bundle)",
                path=path,
            )


def artifact_entry(
    bundle: str | Path, file: str, *, format: str, precision: str, target: str = "any"
) -> Artifact:
    """An Artifact for a file already written into the bundle, with its hash computed."""
    return from_data(
        Artifact,
        {
            "file": file,
            "sha256": sha256_file(Path(bundle) / file),
            "format": format,
            "precision": precision,
            "target": target,
        },
        "artifact",
    )


def default_decision(task: str, labels: tuple[str, ...]) -> DecisionSpec:
    """The actions of the brief; a trained model's card overrides thresholds, not wording."""
    if task == "dr_grading":
        return DecisionSpec(
            actions={
                "urgent": "sight-threatening retinopathy: refer urgently to an eye specialist",
                "refer": "referable retinopathy: refer to an eye specialist",
                "rescreen": "no referable retinopathy: rescreen in 12 months",
                "ungradable": "image ungradable: retake",
            }
        )
    if task == "oct_classification":
        wanted = {"CNV": "urgent", "DME": "refer", "DRUSEN": "routine", "NORMAL": "none"}
        return DecisionSpec(
            class_decisions={k: v for k, v in wanted.items() if k in labels},
            actions={
                "urgent": "choroidal neovascularisation suspected: refer urgently to an eye specialist",
                "refer": "diabetic macular oedema suspected: refer to an eye specialist",
                "routine": "drusen seen: routine review by an eye specialist",
                "none": "no disease seen: no action needed",
                "ungradable": "scan ungradable: retake",
            },
        )
    return DecisionSpec(
        thresholds=dict.fromkeys(labels, 0.5),
        actions={
            "refer": "abnormal: refer for a radiologist's read",
            "none": "no finding above threshold: no action needed",
            "ungradable": "image ungradable: retake",
        },
    )


def default_labels(task: str) -> tuple[str, ...]:
    return {
        "dr_grading": DR_GRADES,
        "oct_classification": OCT_CLASSES,
        "cxr_findings": CXR_FINDINGS,
    }[task]


def new_card(
    *,
    name: str,
    task: str,
    family: str,
    preprocessing: PreprocessConfig,
    outputs: tuple[OutputSpec, ...],
    labels: tuple[str, ...] | None = None,
    input_name: str = "input",
    **extra: Any,
) -> ModelCard:
    """A card with the defaults of its task; train and export fill in the rest."""
    labels = labels or default_labels(task)
    card = ModelCard(
        schema_version=SCHEMA_VERSION,
        name=name,
        task=task,
        family=family,
        labels=labels,  # type: ignore[arg-type]
        input=InputSpec(
            name=input_name,
            shape=(preprocessing.channels, preprocessing.size, preprocessing.size),
            colour="RGB" if preprocessing.modality == "fundus" else "GRAY",
        ),
        preprocessing=preprocessing,
        outputs=outputs,
        decision=extra.pop("decision", None) or default_decision(task, labels),
        quality=extra.pop("quality", None) or default_limits(preprocessing.modality),
        **extra,
    )
    card.validate()
    return card
