"""`export_bundle`: a trained checkpoint -> a verified bundle directory (DESIGN.md layout).

Everything is built in a temp folder beside the target and renamed into place only once the
card, every artifact and golden/ are written and the drift gate has passed (or was
overridden), so a reader never sees half a bundle and a failed export leaves the old one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgescreen.runtime.card import ModelCard, artifact_entry, save_card
from edgescreen.runtime.errors import EdgescreenError

from . import calibration as C
from . import verify as V
from .data import DataSet, labels_of, prepare_batch, resolve

PRECISIONS = ("fp32", "fp16", "int8")
FILES = {
    "onnx-fp32": "model.onnx",
    "onnx-fp16": "model.fp16.onnx",
    "onnx-int8": "model.int8.onnx",
    "onnx-int8-cpu": "model.int8-cpu.onnx",
    "torchscript": "model.ts",
}
GOLDEN_COUNT = 4


class DriftGateError(EdgescreenError):
    """A reduced-precision model drifts beyond card.drift_limits."""


@dataclass
class ExportReport:
    bundle: Path
    card: ModelCard
    rows: list[dict[str, Any]]
    gate: dict[str, Any]
    calibration_cache_hit: bool | None = None
    calibration_cache: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def table(self) -> str:
        head = ["precision", "file", "size MB", "metric", "Δ vs fp32 (95% CI)", "flips", "max err"]
        lines = [" | ".join(head)]
        for r in self.rows:
            lines.append(" | ".join(_cells(r)))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": str(self.bundle),
            "rows": self.rows,
            "drift_gate": self.gate,
            "calibration_cache_hit": self.calibration_cache_hit,
            "seconds": self.seconds,
        }


def _cells(r: dict[str, Any]) -> list[str]:
    metric = f"{r['metric_name']} {r['metric']:.4f}" if r.get("metric") is not None else "-"
    if r.get("delta") is None:
        delta = "-"
    else:
        lo, hi = r["delta_ci95"]
        delta = f"{r['delta']:+.4f} ({lo:+.4f}, {hi:+.4f})"
    flips = "-" if r.get("flip_count") is None else f"{r['flip_count']}/{r['images']}"
    err = "-" if r.get("max_rel_err") is None else f"{r['max_rel_err']:.2e}"
    return [r["precision"], r["file"], f"{r['size_mb']:.2f}", metric, delta, flips, err]


class _Steps:
    """A rich progress bar for the long steps; silent when progress=False."""

    def __init__(self, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                transient=True,
            )

    def __enter__(self):
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()

    def task(self, label: str, total: int):
        if not self.bar:
            return lambda n=1: None
        tid = self.bar.add_task(label, total=total)
        return lambda n=1: self.bar.advance(tid, n)


def _default_split(checkpoint: Path, part: str) -> str | None:
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    return f"split:{folder / 'splits.json'}:{part}" if (folder / "splits.json").is_file() else None


def _trained_on_synthetic(checkpoint: Path) -> bool:
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    try:
        train = json.loads((folder / "splits.json").read_text())["train"]
    except (OSError, ValueError, KeyError):
        return False
    return bool(train) and all(C._SYNTH_PATIENT.match(e.get("patient", "")) for e in train)


def export_bundle(
    checkpoint: str | Path,
    out: str | Path,
    *,
    precisions: Sequence[str] = PRECISIONS,
    calib: Any = None,
    eval: Any = None,
    calib_method: str = "entropy",  # noqa: A002
    calib_size: int | None = 512,
    allow_drift: bool = False,
    allow_synthetic_calibration: bool = False,
    progress: bool = True,
    golden_count: int = GOLDEN_COUNT,
    threads: int | None = None,
) -> ExportReport:
    """Export every requested precision, verify, gate and write the bundle. See module doc."""
    from edgescreen.train.checkpoint import load_trained

    from .graph_crop import export_view

    checkpoint, out = Path(checkpoint), Path(out)
    precisions = tuple(dict.fromkeys(("fp32", *precisions)))
    unknown = set(precisions) - set(PRECISIONS)
    if unknown:
        raise EdgescreenError(
            f"unknown precision(s) {sorted(unknown)}; use {', '.join(PRECISIONS)}"
        )
    if calib_method not in C.METHODS:
        raise EdgescreenError(
            f"unknown calibration method {calib_method!r}; use {', '.join(C.METHODS)}"
        )
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    trained = load_trained(checkpoint)
    card: ModelCard = trained.card.replace(artifacts={}, calibration=None)
    view = export_view(trained.model, tuple(card.input.shape)).eval()
    names = [o.name for o in card.outputs]

    evaluation = resolve(
        eval if eval is not None else _default_split(checkpoint, "test"), what="evaluation"
    )
    calib_set = None
    if "int8" in precisions:
        calib_set = resolve(
            calib if calib is not None else _default_split(checkpoint, "train"), what="calibration"
        )
    if evaluation is None and len(precisions) > 1 and not allow_drift:
        raise EdgescreenError(
            "no evaluation data: drift of fp16/int8 cannot be measured; give --eval DATA "
            "(or --allow-drift to export unmeasured)"
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        with _Steps(progress) as steps:
            report = _build(
                tmp,
                out,
                card,
                view,
                names,
                precisions,
                evaluation=evaluation,
                calib_set=calib_set,
                calib_method=calib_method,
                calib_size=calib_size,
                allow_drift=allow_drift,
                allow_synth=allow_synthetic_calibration,
                steps=steps,
                timings=timings,
                checkpoint=checkpoint,
                golden_count=golden_count,
                threads=threads,
            )
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    timings["total"] = round(time.perf_counter() - t0, 2)
    report.seconds = timings
    return report


def _build(
    tmp,
    out,
    card,
    view,
    names,
    precisions,
    *,
    evaluation,
    calib_set,
    calib_method,
    calib_size,
    allow_drift,
    allow_synth,
    steps,
    timings,
    checkpoint,
    golden_count,
    threads,
) -> ExportReport:
    import onnx
    import onnxruntime
    import torch

    from .onnx_export import OPSET as opset
    from .onnx_export import convert_fp16, export_onnx
    from .quantize import quantize
    from .torchscript import export_torchscript, load_torchscript

    t = time.perf_counter()
    export_onnx(view, card, tmp / FILES["onnx-fp32"], opset=opset)
    export_torchscript(view, card, tmp / FILES["torchscript"])
    timings["export"] = round(time.perf_counter() - t, 2)

    # -- evaluation inputs and FP32 references ---------------------------------------------------
    eval_samples = evaluation.samples if evaluation else []
    refs = [s.ref for s in eval_samples]
    x_eval = prepare_batch(eval_samples, card) if eval_samples else None
    y_eval = labels_of(eval_samples) if eval_samples else None
    probe = (
        x_eval[:32]
        if x_eval is not None
        else np.random.default_rng(0).normal(size=(4, *card.input.shape)).astype(np.float32)
    )
    ref_torch = V.run_torch(view, probe, names)
    ts_module, _ = load_torchscript(tmp / FILES["torchscript"])
    parity = {
        "torchscript": V.output_errors(card, ref_torch, V.run_torch(ts_module, probe, names)),
        "fp32": V.output_errors(
            card,
            ref_torch,
            V.run_onnx(tmp / FILES["onnx-fp32"], probe, card.input.name, threads=threads),
        ),
    }
    for key, err in parity.items():
        if err["max_rel_err"] > V.PARITY_BOUNDS[key]:
            raise EdgescreenError(
                f"{key} export disagrees with PyTorch: max relative error "
                f"{err['max_rel_err']:.2e} > {V.PARITY_BOUNDS[key]:.0e} (an export bug)"
            )

    results: dict[str, dict[str, Any]] = {}
    fp32_out = None
    if x_eval is not None:
        t = time.perf_counter()
        fp32_out = V.run_onnx(tmp / FILES["onnx-fp32"], x_eval, card.input.name, threads=threads)
        results["fp32"] = {**V.clinical(card, fp32_out, y_eval), "parity_vs_pytorch": parity}
        timings["eval_fp32"] = round(time.perf_counter() - t, 2)
    keys = ["onnx-fp32", "torchscript"]

    if "fp16" in precisions:
        convert_fp16(tmp / FILES["onnx-fp32"], tmp / FILES["onnx-fp16"])
        keys.append("onnx-fp16")
        if x_eval is not None:
            results["fp16"] = V.compare(
                card,
                fp32_out,
                V.run_onnx(tmp / FILES["onnx-fp16"], x_eval, card.input.name, threads=threads),
                y_eval,
                refs,
            )

    cache_hit = cache_file = None
    calibration = None
    if "int8" in precisions:
        calibration, cache_file, cache_hit = _calibrate(
            tmp,
            card,
            calib_set,
            evaluation,
            calib_method,
            calib_size,
            allow_synth,
            checkpoint,
            steps,
            timings,
        )
        t = time.perf_counter()
        for key, target in (("onnx-int8", "tensorrt"), ("onnx-int8-cpu", "cpu")):
            quantize(
                tmp / FILES["onnx-fp32"],
                tmp / FILES[key],
                target=target,
                method=calib_method,
                cache_file=cache_file,
            )
            keys.append(key)
        timings["quantize"] = round(time.perf_counter() - t, 2)
        if x_eval is not None:
            for key, pkey in (("onnx-int8", "int8"), ("onnx-int8-cpu", "int8-cpu")):
                results[pkey] = V.compare(
                    card,
                    fp32_out,
                    V.run_onnx(
                        tmp / FILES[key],
                        x_eval,
                        card.input.name,
                        threads=threads,
                        emulate_qdq=key == "onnx-int8",
                    ),
                    y_eval,
                    refs,
                )

    # -- gate ---------------------------------------------------------------------------------
    reduced = {k: v for k, v in results.items() if k != "fp32"}
    violations = V.gate(card, reduced)
    gate = {
        "passed": not violations,
        "allowed_by_flag": bool(violations) and allow_drift,
        "violations": violations,
        "limits": card.drift_limits.__dict__,
        "measured": bool(reduced) or len(precisions) == 1,
        "eval_source": evaluation.source if evaluation else None,
    }
    if violations and not allow_drift:
        raise DriftGateError(
            "drift gate failed, bundle not written:\n  "
            + "\n  ".join(violations)
            + "\n(check the calibration set, or re-run with --allow-drift to ship it anyway, "
            "recorded in the card)"
        )

    # -- card, golden -------------------------------------------------------------------------
    bundle_metrics = dict(card.metrics)
    bundle_metrics.update(results)
    bundle_metrics["drift_gate"] = gate
    artifacts = {}
    for key in keys:
        precision = {"onnx-fp32": "fp32", "torchscript": "fp32", "onnx-fp16": "fp16"}.get(
            key, "int8"
        )
        target = {"onnx-int8": "tensorrt", "onnx-int8-cpu": "cpu"}.get(key, "any")
        fmt = "torchscript" if key == "torchscript" else "onnx"
        artifacts[key] = artifact_entry(
            tmp, FILES[key], format=fmt, precision=precision, target=target
        )
    versions = {
        **card.versions,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "opset": str(opset),
    }
    card = card.replace(
        artifacts=artifacts, metrics=bundle_metrics, calibration=calibration, versions=versions
    )
    save_card(card, tmp)
    _write_golden(tmp, card, eval_samples, x_eval, fp32_out, golden_count, threads)

    rows = []
    for key in keys:
        if key == "torchscript":
            continue
        pkey = {
            "onnx-fp32": "fp32",
            "onnx-fp16": "fp16",
            "onnx-int8": "int8",
            "onnx-int8-cpu": "int8-cpu",
        }[key]
        r = results.get(pkey, {})
        rows.append(
            {
                "precision": pkey,
                "file": FILES[key],
                "size_mb": (tmp / FILES[key]).stat().st_size / 1e6,
                "metric_name": r.get("metric_name"),
                "metric": r.get("metric"),
                "delta": r.get("delta"),
                "delta_ci95": r.get("delta_ci95"),
                "flip_count": r.get("flip_count"),
                "images": r.get("images"),
                "max_rel_err": r.get(
                    "max_rel_err", parity["fp32"]["max_rel_err"] if pkey == "fp32" else None
                ),
                "flips": [f["image"] for f in r.get("flips", [])],
            }
        )
    return ExportReport(out, card, rows, gate, cache_hit, str(cache_file) if cache_file else None)


def _calibrate(
    tmp,
    card,
    calib_set: DataSet | None,
    evaluation: DataSet | None,
    method,
    size,
    allow_synth,
    checkpoint,
    steps,
    timings,
):
    synthetic_made = False
    if calib_set is None:
        if not allow_synth:
            raise C.CalibrationError(
                "INT8 needs calibration images: give --calib DATA (training patients, "
                "e.g. split:RUN/splits.json:train), or --allow-synthetic-calibration"
            )
        from edgescreen.train.data.loaders import load_dataset
        from edgescreen.train.data.synth import synthesize

        folder = tmp / ".synthetic-calibration"
        n = min(size or 64, 64)
        synthesize(card.modality, n, folder, seed=12345, size=max(card.input.shape[1:]))
        task = {"dr_grading": "dr", "oct_classification": "oct", "cxr_findings": "cxr"}[card.task]
        calib_set = DataSet(
            load_dataset(f"csv-{task}:{folder}").samples, "synthetic (generated, seed 12345)"
        )
        synthetic_made = True
    synthetic = synthetic_made or C.is_synthetic(calib_set.samples)
    if synthetic and not allow_synth and not _trained_on_synthetic(checkpoint):
        raise C.CalibrationError(
            f"calibration set {calib_set.source} is synthetic but the model was not trained "
            "on synthetic images; pass --allow-synthetic-calibration to accept it (recorded)"
        )
    if evaluation is not None:
        C.check_disjoint(calib_set.samples, evaluation.samples)
    chosen = C.select(calib_set.samples, size)
    if not chosen:
        raise C.CalibrationError(f"calibration set {calib_set.source} is empty")
    manifest = C.manifest(
        chosen,
        card.labels,
        source=calib_set.source,
        method=method,
        requested=size,
        synthetic=synthetic,
        allowed_by_flag=synthetic and allow_synth,
        eval_source=evaluation.source if evaluation else None,
    )
    key = C.cache_key(tmp / FILES["onnx-fp32"], manifest, method)
    cache_file = C.cache_dir() / f"{key}.json"
    manifest["cache_key"] = key
    hit = cache_file.is_file()
    t = time.perf_counter()
    if not hit:
        advance = steps.task(f"calibrating ({method}, {len(chosen)} images)", len(chosen))
        C.compute_ranges(
            tmp / FILES["onnx-fp32"],
            card,
            method,
            cache_file,
            lambda idx: prepare_batch([chosen[i] for i in idx], card),
            len(chosen),
            advance,
        )
    timings["calibrate"] = round(time.perf_counter() - t, 2)
    if synthetic_made:
        shutil.rmtree(tmp / ".synthetic-calibration", ignore_errors=True)
        for img in manifest["images"]:
            img["path"] = f"<generated>/{Path(img['path']).name}"
    return manifest, cache_file, hit


def _write_golden(
    tmp: Path, card: ModelCard, samples, x_eval, fp32_out, count: int, threads
) -> None:
    from edgescreen.runtime.golden import write_golden

    if x_eval is None or not len(x_eval):
        return
    n = min(count, len(x_eval))
    inputs = x_eval[:n]
    outputs = V.run_onnx(tmp / FILES["onnx-fp32"], inputs, card.input.name, threads=threads)
    names = [str(s.path) if s.path is not None else s.ref for s in samples[:n]]
    from edgescreen.train.data.splits import sample_hash

    write_golden(
        tmp,
        inputs,
        outputs,
        names,
        sha256s=[sample_hash(s) for s in samples[:n]],
        created_by="edgescreen export",
    )


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished temp folder onto `out`; an existing bundle is moved aside first
    and removed only after the new one is in place."""
    os.chmod(tmp, 0o755)
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}-{int(time.time())}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    with contextlib.suppress(OSError):
        shutil.rmtree(old)
