"""Screen images with a bundle: decode + prepare (runtime/prepare.py) -> infer -> decide.

Decode, quality gate and preprocessing run in a small thread pool (OpenCV releases the
GIL) so they overlap inference; a bounded window keeps memory flat on a Jetson however
long the list of images is.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from . import __version__
from .backends import Backend, open_backend
from .card import bundle_sha256, load_card
from .golden import ensure_selftest
from .imageio import Decoded
from .postprocess import Interpretation, interpret_batch
from .prepare import Prepared, prepare_source
from .results import ScreeningResult

ImageInput = str | Path | bytes | np.ndarray | Decoded


class Screener:
    """A loaded bundle, ready to screen. Use as a context manager or call close()."""

    def __init__(
        self,
        bundle: str | Path,
        *,
        precision: str = "fp32",
        backend: str | Backend = "auto",
        threads: int | None = None,
        workers: int = 2,
        verify: bool = True,
        dla_core: int | None = None,
    ) -> None:
        """`dla_core` runs the TensorRT engine built for that DLA core (Jetson Orin AGX/NX).

        `backend` is a registry name ("auto", "onnxruntime", "tensorrt") or an open Backend
        (Triton's Python model passes one that calls a network model on the same server).
        """
        self.bundle = Path(bundle)
        self.card = load_card(self.bundle)
        self.precision = precision
        # Prepare workers run between inference calls: the backend's threads must not spin.
        options = {"threads": threads, "verify": verify, "spin": False}
        if dla_core is not None:
            options["dla_core"] = dla_core
        self.backend: Backend = (
            open_backend(self.bundle, self.card, precision, backend, **options)
            if isinstance(backend, str)
            else backend
        )
        if self.backend.name == "tensorrt":
            # Engines are built per device, not listed in the card: each new one is checked
            # against the golden set once, with this very engine, before it screens anyone.
            try:
                ensure_selftest(self.backend, self.bundle, self.card, precision)
            except BaseException:
                self.backend.close()
                raise
        self.workers = max(1, workers)
        self.audit = {
            "bundle_sha256": bundle_sha256(self.card),
            "model": self.card.name,
            "artifact": self.backend.artifact,
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
        """Results in input order; a bad image yields a failed result and the rest go on.

        `images` is consumed lazily, at most a window ahead of the results, so a generator
        that reads files as it goes keeps memory bounded however many there are.
        """
        labelled = (
            zip(images, names, strict=True)
            if names is not None
            else ((x, _name_of(x)) for x in images)
        )
        window = max(batch_size * 2, self.workers * 2)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="prepare") as pool:
            pending: deque[Future[Prepared]] = deque()
            batch: list[Prepared] = []
            for item, label in labelled:
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
        self, prepared: Prepared, batch: list[Prepared], batch_size: int
    ) -> Iterator[ScreeningResult]:
        # Results leave in input order: an early (failed/ungradable) one waits for the batch ahead.
        batch.append(prepared)
        if sum(p.tensor is not None for p in batch) >= batch_size:
            yield from self._flush(batch)

    def _flush(self, batch: list[Prepared]) -> Iterator[ScreeningResult]:
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
            result = self._early(p) if p.tensor is None else self._result(p, interpreted[id(p)])
            result.notes = p.note
            yield result
        batch.clear()

    def _prepare(self, image: ImageInput, name: str) -> Prepared:
        prepared = prepare_source(image, self.card, name=name)
        prepared.picture = None  # only training augments it; the window holds the tensor alone
        return prepared

    def _early(self, p: Prepared) -> ScreeningResult:
        if p.status == "failed":
            return ScreeningResult.failed(
                p.name, p.error or "", task=self.card.task, audit=self.audit, timings_ms=p.timings
            )
        return ScreeningResult.ungradable(
            p.name,
            task=self.card.task,
            retake=self.card.decision.actions.get("ungradable", "image ungradable: retake"),
            reasons=p.reasons,
            quality=p.quality.to_dict() if p.quality else {},
            timings_ms=p.timings,
            audit=self.audit,
        )

    def _result(self, p: Prepared, found: Interpretation) -> ScreeningResult:
        return ScreeningResult.ok(
            p.name,
            found,
            task=self.card.task,
            quality=p.quality.to_dict() if p.quality else {},
            timings_ms=p.timings,
            audit=self.audit,
        )


def _name_of(item: ImageInput) -> str:
    if isinstance(item, Decoded):
        return item.name
    return "<array>" if isinstance(item, np.ndarray | bytes) else str(item)
