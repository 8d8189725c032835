"""Screen images with a bundle: decode -> quality gate -> preprocess -> infer -> decide.

Decode, quality gate and preprocessing run in a small thread pool (OpenCV releases the
GIL) so they overlap inference; a bounded window keeps memory flat on a Jetson however
long the list of images is.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .backends import Backend, load_backend, resolve_backend
from .card import (
    Artifact,
    ModelCard,
    atomic_write,
    bundle_sha256,
    load_card,
    sha256_file,
    verify_artifacts,
)
from .errors import BackendUnavailable, CardError, EdgescreenError, ImageError
from .imageio import load_image
from .postprocess import interpret_batch
from .preprocess import find_fundus_disc, preprocess
from .quality import assess_quality
from .results import ScreeningResult

ImageInput = str | Path | np.ndarray


@dataclass
class _Prepared:
    name: str
    tensor: np.ndarray | None
    early: ScreeningResult | None  # set when the image stops before inference
    quality: dict
    timings: dict[str, float]


def select_artifact(
    card: ModelCard, precision: str, backend: str, device: str = "cpu"
) -> tuple[str, Artifact]:
    """The bundle file a backend should run for a precision.

    INT8 ships in two forms: the symmetric Q/DQ file TensorRT consumes and a CPU form
    (unsigned activations) that x86 ONNX Runtime runs faster; pick the one that fits.
    """
    onnx = {
        k: a for k, a in card.artifacts.items() if a.format == "onnx" and a.precision == precision
    }
    if not onnx:
        have = sorted({a.precision for a in card.artifacts.values() if a.format == "onnx"})
        raise CardError(
            f"the bundle has no {precision} ONNX model (it has: {', '.join(have) or 'none'})",
            field="artifacts",
        )
    prefer = (
        ("tensorrt", "any", "cpu")
        if backend == "tensorrt" or device != "cpu"
        else ("cpu", "any", "tensorrt")
    )
    return min(onnx.items(), key=lambda kv: prefer.index(kv[1].target))


def ensure_engine_selftest(bundle: Path, precision: str, engine: Path) -> None:
    """Run the golden self-test once per new engine; refuse an engine that fails it.

    A passing run leaves `<engine>.selftest.json` holding the engine's sha256, so a rebuilt
    plan (same name, new bytes) is tested again and an unchanged one costs one hash.
    """
    from .golden import selftest

    marker = engine.with_name(engine.name + ".selftest.json")
    digest = sha256_file(engine)
    try:
        if json.loads(marker.read_text()).get("engine_sha256") == digest:
            return
    except (OSError, ValueError):
        pass
    report = selftest(bundle, precision, "tensorrt")
    if not report.ready:
        raise BackendUnavailable(
            f"{engine}: this {precision} engine failed its self-test on this device "
            f"({'; '.join(report.reasons)}); rebuild it or screen with --backend onnxruntime"
        )
    atomic_write(
        marker, json.dumps({"engine_sha256": digest, **report.to_dict()}, indent=2).encode()
    )


class Screener:
    """A loaded bundle, ready to screen. Use as a context manager or call close()."""

    def __init__(
        self,
        bundle: str | Path,
        *,
        precision: str = "fp32",
        backend: str = "auto",
        threads: int | None = None,
        workers: int = 2,
        verify: bool = True,
    ) -> None:
        self.bundle = Path(bundle)
        self.card = load_card(self.bundle)
        self.precision = precision
        backend = resolve_backend(backend, self.bundle, precision)
        if backend == "tensorrt":
            # Engines are built per device and keyed by the model's sha256 (engine_cache), not
            # listed in the card; the backend refuses a stale or foreign one.
            self.backend: Backend = load_backend("tensorrt", self.bundle, precision=precision)
            try:
                ensure_engine_selftest(self.bundle, precision, Path(self.backend.engine_path))
            except BaseException:
                self.backend.close()
                raise
            artifact_file = str(Path(self.backend.engine_path).relative_to(self.bundle))
        else:
            key, artifact = select_artifact(self.card, precision, backend)
            if (
                verify
            ):  # only the file about to run: hashing every artifact costs seconds on a Jetson
                verify_artifacts(self.bundle, self.card, only=[key])
            self.backend = load_backend(backend, self.bundle / artifact.file, threads=threads)
            artifact_file = artifact.file
        self.workers = max(1, workers)
        self.audit = {
            "bundle_sha256": bundle_sha256(self.card),
            "model": self.card.name,
            "artifact": artifact_file,
            "backend": self.backend.name,
            "device": self.backend.device,
            "precision": precision,
            "edgescreen_version": __version__,
        }

    # -- public ---------------------------------------------------------------------------
    def screen(self, image: ImageInput, *, name: str | None = None) -> ScreeningResult:
        return next(self.screen_many([image], names=None if name is None else [name], batch_size=1))

    def screen_many(
        self,
        images: Iterable[ImageInput],
        *,
        names: Iterable[str] | None = None,
        batch_size: int = 8,
    ) -> Iterator[ScreeningResult]:
        """Results in input order; a bad image yields a failed result and the rest go on."""
        items = list(images)
        labels = list(names) if names is not None else [_name_of(x) for x in items]
        window = max(batch_size * 2, self.workers * 2)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="prepare") as pool:
            pending: deque[Future[_Prepared]] = deque()
            batch: list[_Prepared] = []
            for item, label in zip(items, labels, strict=True):
                pending.append(pool.submit(self._prepare, item, label))
                while len(pending) >= window:
                    yield from self._collect(pending.popleft().result(), batch, batch_size)
            while pending:
                yield from self._collect(pending.popleft().result(), batch, batch_size)
            yield from self._flush(batch)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Screener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- pipeline -------------------------------------------------------------------------
    def _collect(
        self, prepared: _Prepared, batch: list[_Prepared], batch_size: int
    ) -> Iterator[ScreeningResult]:
        # Results leave in input order: an early (failed/ungradable) one waits for the batch ahead.
        batch.append(prepared)
        if sum(p.tensor is not None for p in batch) >= batch_size:
            yield from self._flush(batch)

    def _flush(self, batch: list[_Prepared]) -> Iterator[ScreeningResult]:
        if not batch:
            return
        ready = [p for p in batch if p.tensor is not None]
        interpreted = {}
        if ready:
            start = time.perf_counter()
            outputs = self.backend.infer(np.stack([p.tensor for p in ready]))
            infer_ms = (time.perf_counter() - start) * 1000 / len(ready)
            start = time.perf_counter()
            found = interpret_batch(self.card, outputs)
            post_ms = (time.perf_counter() - start) * 1000 / len(ready)
            for p, it in zip(ready, found, strict=True):
                p.timings.update(infer=infer_ms, postprocess=post_ms, batch_size=len(ready))
                interpreted[id(p)] = it
        for p in batch:
            yield p.early if p.early is not None else self._result(p, interpreted[id(p)])
        batch.clear()

    def _prepare(self, image: ImageInput, name: str) -> _Prepared:
        timings: dict[str, float] = {}
        card = self.card
        try:
            start = time.perf_counter()
            array = (
                image
                if isinstance(image, np.ndarray)
                else load_image(image, max_pixels=card.input.max_pixels)
            )
            timings["decode"] = _ms(start)
            start = time.perf_counter()
            disc = find_fundus_disc(array) if card.modality == "fundus" else None
            report = assess_quality(array, card.modality, card.quality, disc=disc)
            timings["quality"] = _ms(start)
            if not report.gradable:
                retake = card.decision.actions.get("ungradable", "image ungradable: retake")
                early = self._early(
                    name,
                    "ungradable",
                    f"{retake} ({'; '.join(report.reasons)})",
                    quality=report.to_dict(),
                    timings_ms=timings,
                )
                return _Prepared(name, None, early, report.to_dict(), timings)
            start = time.perf_counter()
            tensor = preprocess(array, card.preprocessing, disc=disc)
            timings["preprocess"] = _ms(start)
            return _Prepared(name, tensor, None, report.to_dict(), timings)
        except EdgescreenError as exc:
            return self._failed(name, str(exc), timings)
        except Exception as exc:  # noqa: BLE001 - one bad image must never stop a batch
            return self._failed(
                name,
                str(ImageError(name, f"unexpected error: {type(exc).__name__}: {exc}")),
                timings,
            )

    def _failed(self, name: str, error: str, timings: dict[str, float]) -> _Prepared:
        early = self._early(
            name,
            "failed",
            f"could not screen this image, check the file and retake: {error}",
            error=error,
            timings_ms=timings,
        )
        return _Prepared(name, None, early, {}, timings)

    def _early(self, name: str, status: str, action: str, **fields: object) -> ScreeningResult:
        return ScreeningResult(
            image=name,
            status=status,
            task=self.card.task,
            decision=status,  # type: ignore[arg-type]
            action=action,
            audit=dict(self.audit),
            **fields,
        )  # type: ignore[arg-type]

    def _result(self, p: _Prepared, it) -> ScreeningResult:
        return ScreeningResult(
            image=p.name,
            status="ok",
            task=self.card.task,
            decision=it.decision,
            action=it.action,
            label=it.label,
            grade=it.grade,
            probabilities=it.probabilities,
            positive_findings=it.positive_findings,
            referable_probability=it.referable_probability,
            quality=p.quality,
            timings_ms=p.timings,
            audit=dict(self.audit),
            heatmap=it.heatmap,
        )


def _name_of(item: ImageInput) -> str:
    return "<array>" if isinstance(item, np.ndarray) else str(item)


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
