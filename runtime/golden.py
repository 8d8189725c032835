"""Golden set and the on-device self-test: does this device give the answers export saw?

Export (export/golden.py) runs a few preprocessed images through the FP32 model and
stores, in bundle/golden/:

    inputs.npy      (N, C, H, W) float32, already preprocessed (no decoder or OpenCV drift)
    outputs.npz     the FP32 outputs, one array per output name
    manifest.json   source image names and sha256, the model's sha256, created_by,
                    and the tolerances per precision

`run_selftest` runs the inputs through an open backend (the one a screening will use) and
compares with
the FP32 outputs: the largest error of each score output, relative to its scale; the
largest change of a probability; and whether the decision (refer / rescreen / ...) is
the same, through the very postprocessing a screening uses. A device is `ready` only
when all of them are within the card's limits.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import choose_artifact
from .backends import Backend, backend_names, infer_in_batches, open_backend
from .card import ModelCard, atomic_write, bundle_sha256, load_card, sha256_file
from .errors import BackendUnavailable, CardError, EdgescreenError
from .postprocess import activate, interpret_batch

log = logging.getLogger(__name__)

GOLDEN_DIR = "golden"
MANIFEST = "manifest.json"
INPUTS = "inputs.npy"
OUTPUTS = "outputs.npz"
GOLDEN_SCHEMA = 1

# max_rel: largest |got - fp32| over the largest |fp32| of a score output;
# max_abs_prob: largest change of a probability after the card's activation.
# FP32 engines may use TF32 on Ampere/Orin, hence not 1e-6.
DEFAULT_TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"max_rel": 1e-2, "max_abs_prob": 5e-3, "max_flip_rate": 0.0},
    "fp16": {"max_rel": 3e-2, "max_abs_prob": 2e-2, "max_flip_rate": 0.0},
    "int8": {
        "max_rel": 0.25,
        "max_abs_prob": 0.15,
        "max_flip_rate": None,
    },  # None: the card's drift limit
}


@dataclass
class Golden:
    inputs: np.ndarray
    outputs: dict[str, np.ndarray]
    manifest: dict[str, Any]

    @property
    def names(self) -> list[str]:
        return [img["name"] for img in self.manifest.get("images", [])]


def golden_dir(bundle: str | Path) -> Path:
    return Path(bundle) / GOLDEN_DIR


def fp32_onnx_sha(card: ModelCard) -> str | None:
    """The FP32 model the golden outputs were computed with (None when the bundle has none)."""
    try:
        return choose_artifact(card, "fp32", backend="onnxruntime")[1].sha256
    except CardError:
        return None


def load_golden(bundle: str | Path) -> Golden:
    folder = golden_dir(bundle)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        inputs = np.load(folder / INPUTS, allow_pickle=False)
        with np.load(folder / OUTPUTS, allow_pickle=False) as npz:
            outputs = {k: npz[k] for k in npz.files}
    except FileNotFoundError as exc:
        raise CardError(
            "golden set is missing or incomplete (re-export the bundle)", path=exc.filename
        ) from None
    except (json.JSONDecodeError, ValueError, OSError) as exc:
        raise CardError(f"golden set is unreadable ({exc})", path=folder) from None
    if manifest.get("schema") != GOLDEN_SCHEMA:
        raise CardError(
            f"golden schema {manifest.get('schema')!r} is not supported", path=folder / MANIFEST
        )
    if any(len(v) != len(inputs) for v in outputs.values()) or manifest.get("count") != len(inputs):
        raise CardError(
            "golden inputs, outputs and manifest disagree on the number of images", path=folder
        )
    return Golden(inputs=inputs.astype(np.float32, copy=False), outputs=outputs, manifest=manifest)


# -- comparison ------------------------------------------------------------------------------
@dataclass
class SelfTestReport:
    bundle: str
    precision: str
    backend: str
    device: str
    ready: bool
    reasons: list[str]
    count: int = 0
    errors: dict[str, dict[str, float]] = field(default_factory=dict)
    decision_agreement: float | None = None
    flips: list[dict[str, Any]] = field(default_factory=list)
    tolerances: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        head = "READY" if self.ready else "NOT READY"
        lines = [
            f"{head}: {self.precision} on {self.backend} ({self.device}), {self.count} golden images"
        ]
        for name, e in self.errors.items():
            prob = f", max prob change {e['max_abs_prob']:.2e}" if "max_abs_prob" in e else ""
            lines.append(f"  {name}: max abs {e['max_abs']:.3e}, max rel {e['max_rel']:.3e}{prob}")
        if self.decision_agreement is not None:
            lines.append(f"  decisions agree on {self.decision_agreement:.1%}")
        lines += [f"  - {r}" for r in self.reasons]
        return "\n".join(lines)


def tolerances_for(golden: Golden, card: ModelCard, precision: str) -> dict[str, float]:
    tol = dict(DEFAULT_TOLERANCES.get(precision, DEFAULT_TOLERANCES["fp32"]))
    tol.update({k: v for k, v in golden.manifest.get("tolerances", {}).get(precision, {}).items()})
    if tol.get("max_flip_rate") is None:
        tol["max_flip_rate"] = card.drift_limits.max_flip_rate
    return tol


def compare(
    card: ModelCard, golden: Golden, got: dict[str, np.ndarray], precision: str
) -> tuple[
    list[str], dict[str, dict[str, float]], float | None, list[dict[str, Any]], dict[str, float]
]:
    """(reasons, errors per output, decision agreement, flips, tolerances)."""
    tol = tolerances_for(golden, card, precision)
    reasons: list[str] = []
    errors: dict[str, dict[str, float]] = {}
    for spec in card.outputs:
        if spec.role == "heatmap":
            continue  # shown to people, not decided on: not gated
        if spec.name not in got:
            reasons.append(f"the backend returned no output {spec.name!r}")
            continue
        ref = np.asarray(golden.outputs[spec.name], dtype=np.float64)
        out = (
            np.asarray(got[spec.name], dtype=np.float64).reshape(ref.shape)
            if np.size(got[spec.name]) == ref.size
            else None
        )
        if out is None:
            reasons.append(
                f"output {spec.name!r} has shape {np.shape(got[spec.name])}, golden has {ref.shape}"
            )
            continue
        if not np.all(np.isfinite(out)):
            reasons.append(f"output {spec.name!r} has NaN or infinite values")
            continue
        diff = np.abs(out - ref)
        e = {
            "max_abs": float(diff.max()),
            "max_rel": float(diff.max() / (np.abs(ref).max() + 1e-6)),
        }
        if spec.role == "scores":
            e["max_abs_prob"] = float(
                np.abs(activate(out, spec.activation) - activate(ref, spec.activation)).max()
            )
        errors[spec.name] = e
        if e["max_rel"] > tol["max_rel"]:
            reasons.append(
                f"{spec.name}: max relative error {e['max_rel']:.3g} exceeds the {precision} "
                f"tolerance {tol['max_rel']:.3g}"
            )
        if e.get("max_abs_prob", 0.0) > tol["max_abs_prob"]:
            reasons.append(
                f"{spec.name}: a probability moved by {e['max_abs_prob']:.3g}, over the {precision} "
                f"tolerance {tol['max_abs_prob']:.3g}"
            )
    agreement, flips = None, []
    try:
        want = interpret_batch(card, {k: np.asarray(v) for k, v in golden.outputs.items()})
        have = interpret_batch(card, {k: np.asarray(v) for k, v in got.items()})
    except (KeyError, ValueError, IndexError) as exc:
        reasons.append(f"outputs could not be interpreted ({type(exc).__name__}: {exc})")
    else:
        names = golden.names or [str(i) for i in range(len(want))]
        for i, (w, h) in enumerate(zip(want, have, strict=True)):
            if (w.decision, w.label, w.positive_findings) != (
                h.decision,
                h.label,
                h.positive_findings,
            ):
                flips.append(
                    {
                        "index": i,
                        "image": names[i] if i < len(names) else str(i),
                        "golden": {"decision": w.decision, "label": w.label},
                        "got": {"decision": h.decision, "label": h.label},
                    }
                )
        n = len(want)
        agreement = 1.0 - len(flips) / n if n else None
        allowed = math.floor(float(tol["max_flip_rate"]) * n + 1e-9)
        if len(flips) > allowed:
            reasons.append(
                f"{len(flips)} of {n} golden images get another decision or label than FP32 "
                f"(allowed {allowed} at a flip rate of {tol['max_flip_rate']:.3g}): "
                + ", ".join(
                    f"{f['image']}: {f['golden']['decision']}->{f['got']['decision']}"
                    for f in flips[:5]
                )
            )
    return reasons, errors, agreement, flips, tol


def run_selftest(
    backend: Backend, card: ModelCard, golden: Golden, precision: str
) -> SelfTestReport:
    """Run the golden inputs through an open backend and judge them against the FP32 outputs.

    The caller owns the backend: a screening self-tests the very engine it will screen with.
    """
    start = time.perf_counter()
    report = SelfTestReport(
        bundle="",
        precision=precision,
        backend=backend.name,
        device=backend.device,
        ready=False,
        reasons=[],
        count=len(golden.inputs),
    )
    source = golden.manifest.get("source_model_sha256")
    if source and source != fp32_onnx_sha(card):
        report.reasons.append(
            f"the golden set was made from model {source[:12]}…, but this bundle's FP32 model "
            f"is {(fp32_onnx_sha(card) or 'missing')[:12]}… (golden set and model disagree)"
        )
    got = infer_in_batches(backend, golden.inputs, card.input.batch[2])
    reasons, errors, agreement, flips, tol = compare(card, golden, got, precision)
    report.reasons += reasons
    report.errors, report.decision_agreement, report.flips, report.tolerances = (
        errors,
        agreement,
        flips,
        tol,
    )
    report.ready = not report.reasons
    report.seconds = round(time.perf_counter() - start, 3)
    return report


def selftest(
    bundle: str | Path,
    precision: str = "fp32",
    backend: str = "auto",
    *,
    card: ModelCard | None = None,
    **backend_options: Any,
) -> SelfTestReport:
    """Open `backend` on the bundle, self-test it, close it: what `edgescreen selftest` runs."""
    bundle = Path(bundle)
    card = card or load_card(bundle)
    report = SelfTestReport(
        bundle=str(bundle),
        precision=precision,
        backend=backend,
        device="?",
        ready=False,
        reasons=[],
    )
    try:
        golden = load_golden(bundle)
    except CardError as exc:
        report.reasons.append(str(exc))
        return report
    try:
        runner = open_backend(bundle, card, precision, backend, **backend_options)
    except EdgescreenError as exc:
        report.reasons.append(f"{backend} could not load the {precision} model: {exc}")
        report.count = len(golden.inputs)
        return report
    try:
        report = run_selftest(runner, card, golden, precision)
        if report.ready and runner.name == "tensorrt":  # screening need not test it again
            engine = bundle / runner.artifact
            digest = sha256_file(engine)
            _record_pass(_marker(digest, card), engine, digest, report)
    finally:
        runner.close()
    report.bundle = str(bundle)
    return report


def state_dir() -> Path:
    """Where run-time state goes, never into the bundle (a service may only read it):
    $EDGESCREEN_STATE_DIR, else systemd's $STATE_DIRECTORY, else ~/.cache/edgescreen."""
    for var in ("EDGESCREEN_STATE_DIR", "STATE_DIRECTORY"):
        if os.environ.get(var):
            return Path(os.environ[var].split(":")[0])
    return Path.home() / ".cache" / "edgescreen"


def _marker(engine_sha256: str, card: ModelCard) -> Path:
    # Keyed by the plan's bytes and the bundle (its golden set): a rebuilt plan is tested again.
    return state_dir() / "selftest" / f"{engine_sha256[:24]}-{bundle_sha256(card)[:12]}.json"


def _record_pass(marker: Path, engine: Path, digest: str, report: SelfTestReport) -> None:
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        data = {"engine": str(engine), "engine_sha256": digest, **report.to_dict()}
        atomic_write(marker, json.dumps(data, indent=2).encode())
    except OSError as exc:  # the engine passed; not remembering it only costs a re-test
        log.warning(
            "could not record the self-test in %s (%s); it runs again next time", marker, exc
        )


def ensure_selftest(backend: Backend, bundle: Path, card: ModelCard, precision: str) -> None:
    """Self-test a TensorRT engine once per new plan; refuse an engine that fails it.

    A pass is remembered in the state directory (state_dir), keyed by the plan's sha256, so
    an unchanged engine costs one hash at start and a rebuilt one is tested again.
    """
    engine = bundle / backend.artifact
    digest = sha256_file(engine)
    marker = _marker(digest, card)
    try:
        recorded = json.loads(marker.read_text())
        if isinstance(recorded, dict) and recorded.get("engine_sha256") == digest:
            return
    except (OSError, ValueError):
        pass  # missing or unreadable: test again
    try:
        report = run_selftest(backend, card, load_golden(bundle), precision)
    except CardError as exc:
        raise BackendUnavailable(f"{engine}: cannot self-test this engine ({exc})") from None
    if not report.ready:
        raise BackendUnavailable(
            f"{engine}: this {precision} engine failed its self-test on this device "
            f"({'; '.join(report.reasons)}); rebuild it or screen with --backend onnxruntime"
        )
    report.bundle = str(bundle)
    _record_pass(marker, engine, digest, report)


# -- CLI ---------------------------------------------------------------------------------------
def cmd_selftest(args: argparse.Namespace) -> int:
    options = {} if args.dla is None else {"dla_core": args.dla}
    report = selftest(args.bundle, args.precision, args.backend, **options)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.summary())
    return 0 if report.ready else 1


def add_selftest_command(sub: Any) -> argparse.ArgumentParser:
    """`edgescreen selftest BUNDLE [--precision] [--backend] [--json]`; exit 1 when not ready."""
    p = sub.add_parser(
        "selftest",
        help="check this device against the bundle's golden outputs",
        description="check this device against the bundle's golden outputs; "
        "exits 1 when it is not ready to screen",
    )
    p.add_argument("bundle", type=Path)
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32")
    p.add_argument("--backend", choices=("auto", *backend_names()), default="auto")
    p.add_argument(
        "--dla", type=int, default=None, metavar="N", help="the DLA core's engine (tensorrt)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_selftest)
    return p
