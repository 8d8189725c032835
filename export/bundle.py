"""`export_bundle`: a trained checkpoint -> a verified bundle directory (README, Export).

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

from edgescreen.runtime.artifacts import ARTIFACTS, KINDS, PRECISIONS
from edgescreen.runtime.card import ModelCard, artifact_entry, save_card
from edgescreen.runtime.errors import EdgescreenError
from edgescreen.runtime.evaluation import task_metrics

from . import calibration as C
from . import verify as V
from .data import DataSet, labels_of, prepare_samples, resolve
from .onnx_export import OPSET
from .verify import run_shipped

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
            lines.append(" | ".join(row_cells(r)))
        lines += self.search_notes()
        return "\n".join(lines)

    def search_notes(self) -> list[str]:
        """What the INT8 search kept float per form, and a CPU form it left no faster than FP32."""
        forms = (self.card.calibration or {}).get("mixed_precision", {}).get("forms", {})
        notes = []
        for form, r in forms.items():
            lat = r.get("cpu_latency_ms") or {}
            line = f"INT8 search, {form} form: {len(r.get('float_nodes', []))} layers kept float"
            if "fp32_ms" in lat:
                line += (
                    f"; CPU form {lat['with_float_layers_ms']:.2f} ms at batch 1 against FP32 "
                    f"{lat['fp32_ms']:.2f} ms and full INT8 {lat['full_int8_ms']:.2f} ms"
                )
                if form == "cpu" and not lat.get("faster_than_fp32", True):
                    line += ": no faster than FP32 on this CPU, so screen with --precision fp32"
            notes.append(line)
        return notes

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": str(self.bundle),
            "rows": self.rows,
            "drift_gate": self.gate,
            "calibration_cache_hit": self.calibration_cache_hit,
            "seconds": self.seconds,
        }


def row_cells(r: dict[str, Any]) -> list[str]:
    metric = f"{r['metric_name']} {r['metric']:.4f}" if r.get("metric") is not None else "-"
    if r.get("delta") is None:
        delta = "-"
    else:
        lo, hi = r["delta_ci95"]
        delta = f"{r['delta']:+.4f} ({lo:+.4f}, {hi:+.4f})"
    flips = "-" if r.get("flip_count") is None else f"{r['flip_count']}/{r['images']}"
    if r.get("flip_rate_ci95"):
        lo, hi = r["flip_rate_ci95"]
        flips += f" ({lo:.1%}-{hi:.1%})"
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


def default_split(checkpoint: Path, part: str) -> str | None:
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    return f"split:{folder / 'splits.json'}:{part}" if (folder / "splits.json").is_file() else None


def _trained_on_synthetic(checkpoint: Path) -> bool:
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    try:
        train = json.loads((folder / "splits.json").read_text())["train"]
    except (OSError, ValueError, KeyError):
        return False
    return bool(train) and all(C.is_synthetic_patient(e.get("patient", "")) for e in train)


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
    int8_search: bool = False,
    search_data: Any = None,
    qat_epochs: int = 0,
) -> ExportReport:
    """Export every requested precision, verify, gate and write the bundle. See module doc.

    `int8_search`: accuracy-aware PTQ (ptq_search.py) on `search_data` (default: the run's
    validation split), choosing per INT8 form the calibration method and the fewest float
    layers. `qat_epochs`: fine-tune with fake quantization first (qat.py)."""
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

    evaluation = resolve(
        eval if eval is not None else default_split(checkpoint, "test"), what="evaluation"
    )
    calib_set = None
    if "int8" in precisions:
        calib_set = resolve(
            calib if calib is not None else default_split(checkpoint, "train"), what="calibration"
        )
    search_set = None
    if "int8" in precisions and int8_search:
        search_set = resolve(
            search_data if search_data is not None else default_split(checkpoint, "val"),
            what="search (validation)",
        )
        if search_set is None:
            raise EdgescreenError(
                "--int8-search needs validation images: give --search-data DATA (a split "
                "neither calibration nor evaluation uses, e.g. split:RUN/splits.json:val)"
            )
        if evaluation is not None:  # never judged on the test split
            C.check_disjoint(search_set.samples, evaluation.samples)
    if evaluation is None and len(precisions) > 1 and not allow_drift:
        raise EdgescreenError(
            "no evaluation data: drift of fp16/int8 cannot be measured; give --eval DATA "
            "(or --allow-drift to export unmeasured)"
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        with _Steps(progress) as steps:
            job = _Job(
                tmp=tmp,
                out=out,
                checkpoint=checkpoint,
                precisions=precisions,
                evaluation=evaluation,
                calib_set=calib_set,
                calib_method=calib_method,
                calib_size=calib_size,
                allow_drift=allow_drift,
                allow_synth=allow_synthetic_calibration,
                golden_count=golden_count,
                threads=threads,
                steps=steps,
                timings=timings,
                search_set=search_set,
                qat_epochs=qat_epochs,
                view=view,
            )
            report = _build(job, card, view)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    timings["total"] = round(time.perf_counter() - t0, 2)
    report.seconds = timings
    return report


@dataclass
class _Job:
    """One export's inputs and running state, so the steps below take one argument, not 17."""

    tmp: Path
    out: Path
    checkpoint: Path
    precisions: tuple[str, ...]
    evaluation: DataSet | None
    calib_set: DataSet | None
    calib_method: str
    calib_size: int | None
    allow_drift: bool
    allow_synth: bool
    golden_count: int
    threads: int | None
    steps: _Steps
    timings: dict[str, float]
    search_set: DataSet | None = None
    qat_epochs: int = 0
    view: Any = None
    calib_chosen: list = field(default_factory=list)

    def path(self, key: str) -> Path:
        return self.tmp / KINDS[key].file

    def timed(self, name: str, start: float) -> None:
        self.timings[name] = round(time.perf_counter() - start, 2)


@dataclass
class _EvalSet:
    """The evaluation images, prepared once, and FP32's outputs on them."""

    refs: list[str]
    x: np.ndarray
    y: np.ndarray
    fp32: dict[str, np.ndarray] | None = None


def _build(job: _Job, card: ModelCard, view: Any) -> ExportReport:
    card = _export_float_models(job, card, view)
    ev = _prepare_evaluation(job, card)
    parity = _check_parity(job, card, view, ev)
    results: dict[str, dict[str, Any]] = {}
    if ev is not None:
        t = time.perf_counter()
        ev.fp32 = run_shipped(job.tmp, card, "fp32", ev.x, threads=job.threads)
        results["fp32"] = {**task_metrics(card, ev.fp32, ev.y), "parity_vs_pytorch": parity}
        job.timed("eval_fp32", t)
    calibration, cache_file, cache_hit = None, None, None
    if "int8" in job.precisions:
        calibration, cache_file, cache_hit = _calibrate(job, card)
        plan = None
        if job.search_set is not None:
            plan, calibration["mixed_precision"] = _search(job, card)
        sources: dict[str, Path] = {}
        if job.qat_epochs:  # after the search: each form fine-tunes around its float layers
            sources, calibration["qat"] = _qat(job, card, cache_file, plan)
        card = _quantize(job, card, cache_file, sources=sources, plan=plan)
        for source in set(sources.values()):
            source.unlink()  # QAT sources are not artifacts
    if ev is not None:
        results.update(_drift(job, card, ev))
    gate = _drift_gate(job, card, results)
    card = _final_card(card, results, gate, calibration)
    save_card(card, job.tmp)
    _write_golden(job, card, ev)
    return ExportReport(
        job.out,
        card,
        _rows(job, card, results, parity),
        gate,
        cache_hit,
        str(cache_file) if cache_file else None,
    )


def _with_artifacts(job: _Job, card: ModelCard, *keys: str) -> ModelCard:
    """The card listing `keys` too, each file already written and hashed (from the table)."""
    entries = dict(card.artifacts)
    for key in keys:
        kind = KINDS[key]
        entries[key] = artifact_entry(
            job.tmp, kind.file, format=kind.format, precision=kind.precision, target=kind.target
        )
    return card.replace(artifacts=entries)


def _export_float_models(job: _Job, card: ModelCard, view: Any) -> ModelCard:
    """model.onnx and model.ts, and model.fp16.onnx when FP16 is asked for."""
    from .onnx_export import convert_fp16, export_onnx
    from .torchscript import export_torchscript

    t = time.perf_counter()
    export_onnx(view, card, job.path("onnx-fp32"), opset=OPSET)
    export_torchscript(view, card, job.path("torchscript"))
    keys = ["onnx-fp32", "torchscript"]
    if "fp16" in job.precisions:
        convert_fp16(job.path("onnx-fp32"), job.path("onnx-fp16"))
        keys.append("onnx-fp16")
    job.timed("export", t)
    return _with_artifacts(job, card, *keys)


def _prepare_evaluation(job: _Job, card: ModelCard) -> _EvalSet | None:
    samples = job.evaluation.samples if job.evaluation else []
    if not samples:
        return None
    return _EvalSet([s.ref for s in samples], prepare_samples(samples, card), labels_of(samples))


def _check_parity(
    job: _Job, card: ModelCard, view: Any, ev: _EvalSet | None
) -> dict[str, dict[str, float]]:
    """TorchScript and FP32 ONNX against PyTorch; beyond PARITY_BOUNDS it is an export bug."""
    from .torchscript import load_torchscript

    names = [o.name for o in card.outputs]
    probe = (
        ev.x[:32]
        if ev is not None
        else np.random.default_rng(0).normal(size=(4, *card.input.shape)).astype(np.float32)
    )
    ref = V.run_torch(view, probe, names)
    ts_module, _ = load_torchscript(job.path("torchscript"))
    parity = {
        "torchscript": V.output_errors(card, ref, V.run_torch(ts_module, probe, names)),
        "fp32": V.output_errors(
            card, ref, run_shipped(job.tmp, card, "fp32", probe, threads=job.threads)
        ),
    }
    for key, err in parity.items():
        if err["max_rel_err"] > V.PARITY_BOUNDS[key]:
            raise EdgescreenError(
                f"{key} export disagrees with PyTorch: max relative error "
                f"{err['max_rel_err']:.2e} > {V.PARITY_BOUNDS[key]:.0e} (an export bug)"
            )
    return parity


def _quantize(
    job: _Job,
    card: ModelCard,
    cache_file: Path,
    *,
    sources: dict[str, Path] | None = None,
    plan: dict[str, tuple[str, Path, list[str]]] | None = None,
) -> ModelCard:
    """Both INT8 forms from the same cached ranges (quantize.py says how they differ), or
    per form from the search's `plan` (target -> method, ranges, nodes kept float), each
    from its QAT source where `sources` has one (target -> fine-tuned FP32 ONNX)."""
    from .quantize import quantize

    t = time.perf_counter()
    keys = [k.key for k in ARTIFACTS if k.format == "onnx" and k.precision == "int8"]
    for key in keys:
        target = KINDS[key].target
        method, ranges, keep = (plan or {}).get(target, (job.calib_method, cache_file, []))
        quantize(
            (sources or {}).get(target, job.path("onnx-fp32")),
            job.path(key),
            target=target,
            method=method,
            cache_file=ranges,
            keep_float=keep,
        )
    job.timed("quantize", t)
    return _with_artifacts(job, card, *keys)


def _drift(job: _Job, card: ModelCard, ev: _EvalSet) -> dict[str, dict[str, Any]]:
    """Every reduced-precision file against FP32, run as the runtime runs it (TensorRT form unfused)."""
    out = {}
    for key, artifact in card.artifacts.items():
        if artifact.format != "onnx" or artifact.precision == "fp32":
            continue
        got = run_shipped(
            job.tmp, card, artifact.precision, ev.x, target=artifact.target, threads=job.threads
        )
        out[KINDS[key].form] = V.compare(card, ev.fp32, got, ev.y, ev.refs)
    return out


def _drift_gate(job: _Job, card: ModelCard, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    reduced = {k: v for k, v in results.items() if k != "fp32"}
    violations = V.gate(card, reduced)
    gate = {
        "passed": not violations,
        "allowed_by_flag": bool(violations) and job.allow_drift,
        "violations": violations,
        "limits": card.drift_limits.__dict__,
        "measured": bool(reduced) or len(job.precisions) == 1,
        "eval_source": job.evaluation.source if job.evaluation else None,
    }
    if violations and not job.allow_drift:
        raise DriftGateError(
            "drift gate failed, bundle not written:\n  "
            + "\n  ".join(violations)
            + "\n(check the calibration set, or re-run with --allow-drift to ship it anyway, "
            "recorded in the card)"
        )
    return gate


def _final_card(
    card: ModelCard, results: dict[str, dict[str, Any]], gate: dict[str, Any], calibration
) -> ModelCard:
    import onnx
    import onnxruntime
    import torch

    metrics = {**card.metrics, **results, "drift_gate": gate}
    versions = {
        **card.versions,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "opset": str(OPSET),
    }
    return card.replace(metrics=metrics, calibration=calibration, versions=versions)


def _rows(
    job: _Job, card: ModelCard, results: dict[str, dict[str, Any]], parity
) -> list[dict[str, Any]]:
    """One report row per shipped ONNX file, in the table's order."""
    rows = []
    for kind in ARTIFACTS:
        if kind.key not in card.artifacts or kind.format != "onnx":
            continue
        r = results.get(kind.form, {})
        rows.append(
            {
                "precision": kind.form,
                "file": kind.file,
                "size_mb": job.path(kind.key).stat().st_size / 1e6,
                "metric_name": r.get("metric_name"),
                "metric": r.get("metric"),
                "delta": r.get("delta"),
                "delta_ci95": r.get("delta_ci95"),
                "flip_count": r.get("flip_count"),
                "flip_rate_ci95": r.get("flip_rate_ci95"),
                "images": r.get("images"),
                "max_rel_err": r.get(
                    "max_rel_err", parity["fp32"]["max_rel_err"] if kind.form == "fp32" else None
                ),
                "flips": [f["image"] for f in r.get("flips", [])],
            }
        )
    return rows


def _calibrate(job: _Job, card: ModelCard) -> tuple[dict, Path, bool]:
    """The governed calibration set and its cached activation ranges (calibration.py)."""
    tmp, calib_set, evaluation = job.tmp, job.calib_set, job.evaluation
    method, size, allow_synth = job.calib_method, job.calib_size, job.allow_synth
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
    if synthetic and not allow_synth and not _trained_on_synthetic(job.checkpoint):
        raise C.CalibrationError(
            f"calibration set {calib_set.source} is synthetic but the model was not trained "
            "on synthetic images; pass --allow-synthetic-calibration to accept it (recorded)"
        )
    if evaluation is not None:
        C.check_disjoint(calib_set.samples, evaluation.samples)
    chosen = C.select(calib_set.samples, size)
    if not chosen:
        raise C.CalibrationError(f"calibration set {calib_set.source} is empty")
    if job.search_set is not None:  # never judged on the calibration images
        C.check_disjoint(job.search_set.samples, chosen)
    job.calib_chosen = chosen
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
    key = C.cache_key(job.path("onnx-fp32"), manifest, method)
    cache_file = C.cache_dir() / f"{key}.json"
    manifest["cache_key"] = key
    hit = cache_file.is_file()
    t = time.perf_counter()
    if not hit:
        advance = job.steps.task(f"calibrating ({method}, {len(chosen)} images)", len(chosen))
        C.compute_ranges(
            job.path("onnx-fp32"),
            card,
            method,
            cache_file,
            lambda idx: prepare_samples([chosen[i] for i in idx], card),
            len(chosen),
            advance,
        )
    job.timed("calibrate", t)
    if synthetic_made:
        shutil.rmtree(tmp / ".synthetic-calibration", ignore_errors=True)
        for img in manifest["images"]:
            img["path"] = f"<generated>/{Path(img['path']).name}"
    return manifest, cache_file, hit


def _ranges(job: _Job, card: ModelCard, source: Path, method: str) -> Path:
    """Cached activation ranges of `source` for `method` on the governed calibration images."""
    chosen = job.calib_chosen
    digest = C.manifest(
        chosen, card.labels, source="", method=method, requested=None, synthetic=False,
        allowed_by_flag=False, eval_source=None,
    )  # fmt: skip
    cache_file = C.cache_dir() / f"{C.cache_key(source, digest, method)}.json"
    if not cache_file.is_file():
        t = time.perf_counter()
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        advance = job.steps.task(f"calibrating ({method}, {len(chosen)} images)", len(chosen))
        C.compute_ranges(
            source, card, method, cache_file,
            lambda idx: prepare_samples([chosen[i] for i in idx], card), len(chosen), advance,
        )  # fmt: skip
        job.timings[f"calibrate_{method}"] = round(time.perf_counter() - t, 2)
    return cache_file


def _qat(
    job: _Job, card: ModelCard, cache_file: Path, plan: dict | None
) -> tuple[dict[str, Path], dict]:
    """Fine-tune with fake quantization (qat.py), once per INT8 form: on the ranges that
    form is quantized with, its float layers (the search's, and the TensorRT form's input
    convs) kept float, so each student trains on exactly the grid its Q/DQ file will use.
    Returns the fine-tuned FP32 ONNX per form and the card record."""
    import onnx

    from .onnx_export import export_onnx
    from .qat import conv_ranges, qat_finetune
    from .quantize import default_exclusions

    t = time.perf_counter()
    x = prepare_samples(job.calib_chosen, card)
    fp32 = job.path("onnx-fp32")
    graph = onnx.load(str(fp32))
    skip = [k for k, o in enumerate(card.outputs) if o.role == "heatmap"]
    theirs = _tensor_names(fp32)  # the cached ranges name these tensors
    sources: dict[str, Path] = {}
    forms: dict[str, dict] = {}
    record: dict[str, Any] = {}
    for key in (k.key for k in ARTIFACTS if k.format == "onnx" and k.precision == "int8"):
        form = KINDS[key].target
        method, ranges, keep = (plan or {}).get(form, (job.calib_method, cache_file, []))
        tuned, record = qat_finetune(
            job.view, x, epochs=job.qat_epochs, skip_outputs=skip,
            ranges=conv_ranges(fp32, ranges),
            float_convs=[*default_exclusions(graph, form), *keep],
        )  # fmt: skip
        source = job.tmp / f".qat-source-{form}.onnx"
        export_onnx(tuned, card, source, opset=OPSET)
        ours = _tensor_names(source)
        if ours != theirs:
            raise EdgescreenError(
                "QAT: the fine-tuned export's tensors differ from the FP32 export's "
                f"(only in QAT: {sorted(ours - theirs)[:3]}, only in FP32: {sorted(theirs - ours)[:3]})"
            )
        sources[form] = source
        forms[form] = {
            "calibration_method": method,
            **{k: record[k] for k in ("convs_float", "loss_per_epoch", "seconds")},
        }
    job.timed("qat", t)
    shared = {
        k: v for k, v in record.items() if k not in ("convs_float", "loss_per_epoch", "seconds")
    }
    return sources, {**shared, "forms": forms}


def _tensor_names(path: Path) -> set[str]:
    import onnx

    # Activations only: the exporter names the constants it makes (and Identity copies of
    # shared weights) by a counter.
    graph = onnx.load(str(path)).graph
    return {o for n in graph.node if n.op_type not in ("Constant", "Identity") for o in n.output}


def _search(job: _Job, card: ModelCard):
    """Accuracy-aware PTQ on the validation split (ptq_search.py): per form, its plan."""
    from . import ptq_search as P

    t = time.perf_counter()
    samples = job.search_set.samples
    x = prepare_samples(samples, card)
    scratch = Path(tempfile.mkdtemp(prefix=".search-", dir=job.tmp))
    try:
        shutil.copy(job.path("onnx-fp32"), scratch / KINDS["onnx-fp32"].file)
        ref = run_shipped(scratch, card, "fp32", x, threads=job.threads)
        ev = P.Evaluator(
            card, x, labels_of(samples), [s.ref for s in samples], ref, threads=job.threads
        )
        source = job.path("onnx-fp32")
        caches = {m: _ranges(job, card, source, m) for m in C.METHODS}
        results = P.search(source, card, caches, ev, threads=job.threads, workdir=scratch)
        plan = {
            form: (r.method, caches[r.method], [n["name"] for n in r.float_nodes])
            for form, (r, _) in results.items()
        }
        for _, path in results.values():
            shutil.rmtree(path.parent, ignore_errors=True)
        record = P.card_record({f: r for f, (r, _) in results.items()}, job.search_set.source)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    job.timed("int8_search", t)
    return plan, record


def _write_golden(job: _Job, card: ModelCard, ev: _EvalSet | None) -> None:
    """A few evaluation images and their FP32 outputs, for the on-device self-test."""
    from edgescreen.train.data.splits import sample_hash

    from .golden import write_golden

    if ev is None:
        return
    samples = job.evaluation.samples[: min(job.golden_count, len(ev.x))]
    inputs = ev.x[: len(samples)]
    write_golden(
        job.tmp,
        inputs,
        run_shipped(job.tmp, card, "fp32", inputs, threads=job.threads),
        [str(s.path) if s.path is not None else s.ref for s in samples],
        sha256s=[sample_hash(s) for s in samples],
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
