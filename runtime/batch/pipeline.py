"""Screen a folder of uploads into the ledger: discover -> ingest (hash) -> screen -> commit.

A pass discovers files, hashes the new or changed ones into the ledger (new content is
`pending`, a known content gets one more path), then screens every pending item through
Screener.screen_many (its thread pool decodes and preprocesses while ONNX Runtime runs
the previous batch) and commits each result in its own transaction. A one-shot run
repeats passes until nothing changes; --watch keeps polling until SIGINT/SIGTERM.

Resuming is just running again: done rows are never redone, pending rows (from a crash)
are screened again, and screening is deterministic for a content and bundle.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..errors import ImageError
from ..results import ScreeningResult
from ..screen import Screener
from .discover import Found, Stability, discover
from .ledger import Ledger
from .sniff import Sniffed, pixel_limit_problem, sniff

CRASH_ENV = "EDGESCREEN_BATCH_CRASH_AT"  # tests: SIGKILL ourselves at the k-th crash point
HEATMAP_SIDE = 64
_MAX_ONESHOT_PASSES = 4


@dataclass
class BatchOptions:
    in_dir: Path
    bundle: Path
    db: Path
    precision: str = "fp32"
    backend: str = "auto"
    workers: int = 2
    threads: int | None = None
    batch_size: int = 8
    watch: bool = False
    poll_s: float = 1.0
    verify: bool = True


@dataclass
class RunStats:
    discovered: int = 0
    new_items: int = 0
    aliases: int = 0
    screened: int = 0
    finished: dict[str, int] = field(
        default_factory=lambda: {"done": 0, "ungradable": 0, "failed": 0}
    )
    screening_s: float = 0.0
    elapsed_s: float = 0.0
    interrupted: bool = False


class Progress:
    """What a front end hears about; the CLI draws a rich progress bar from it."""

    def pending(self, n: int) -> None: ...

    def advance(self, state: str) -> None: ...


class CrashPoints:
    """Deterministic crash injection for the kill -9 tests; a no-op unless CRASH_ENV is set."""

    def __init__(self) -> None:
        value = os.environ.get(CRASH_ENV, "")
        self.at = int(value) if value.strip().isdigit() else 0
        self.count = 0

    def __call__(self, point: str) -> None:
        if self.at:
            self.count += 1
            if self.count >= self.at:
                os.kill(os.getpid(), signal.SIGKILL)


def run_batch(
    opts: BatchOptions, *, progress: Progress | None = None, stop: threading.Event | None = None
) -> RunStats:
    """Screen opts.in_dir into opts.db; stops early (cleanly) when `stop` is set."""
    start = time.perf_counter()
    progress = progress or Progress()
    stop = stop or threading.Event()
    crash = CrashPoints()
    in_dir = Path(os.path.abspath(opts.in_dir))
    if not in_dir.is_dir():
        raise ImageError(in_dir, "IN_DIR is not a directory")
    # Both refusals happen before anything is read or screened.
    ledger = Ledger(opts.db, hook=crash)
    stats = RunStats()
    try:
        with Screener(
            opts.bundle,
            precision=opts.precision,
            backend=opts.backend,
            threads=opts.threads,
            workers=opts.workers,
            verify=opts.verify,
        ) as screener:
            ledger.bind(screener.audit["bundle_sha256"], opts.precision, screener.card.name)
            stability = Stability(quiet_s=opts.poll_s) if opts.watch else None
            passes = 0
            while not stop.is_set():
                found = discover(in_dir, on_file=lambda _: crash("discover"))
                stats.discovered = len(found)
                if stability is not None:
                    found = stability.ready(found)
                changed = _ingest(ledger, screener, found, stats, stop, workers=opts.workers)
                screened = _screen_pending(
                    ledger, screener, in_dir, opts, stats, progress, stop, crash
                )
                passes += 1
                if not opts.watch and (changed + screened == 0 or passes >= _MAX_ONESHOT_PASSES):
                    break
                if opts.watch and changed + screened == 0:
                    stop.wait(opts.poll_s)
    finally:
        ledger.close()
    stats.interrupted = stop.is_set()
    stats.elapsed_s = time.perf_counter() - start
    return stats


# -- ingest ------------------------------------------------------------------------------------
@dataclass
class _Read:
    sha256: str | None
    sniffed: Sniffed | None
    problem: str | None


def _read(found: Found) -> _Read:
    try:
        with open(found.path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return _Read(None, None, "file was deleted before it could be read")
    except PermissionError:
        return _Read(None, None, "permission denied (cannot read the file)")
    except OSError as exc:
        return _Read(None, None, f"cannot read ({exc.strerror or exc})")
    return _Read(
        hashlib.sha256(data).hexdigest(),
        sniff(data, dicom_by_name=found.rel.lower().endswith(".dcm")),
        None,
    )


def _ingest(
    ledger: Ledger,
    screener: Screener,
    found: list[Found],
    stats: RunStats,
    stop: threading.Event,
    *,
    workers: int,
) -> int:
    known = ledger.path_signature()
    todo = [f for f in found if f.rel not in known or known[f.rel] != f.signature]
    todo = [f for f in todo if not (f.problem and ledger.path_key(f.rel) == f"path:{f.rel}")]
    if not todo:
        return 0
    max_pixels = screener.card.input.max_pixels
    changed = 0
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="hash") as pool:
        reads = pool.map(lambda f: _Read(None, None, f.problem) if f.problem else _read(f), todo)
        for f, read in zip(todo, reads, strict=True):
            if stop.is_set():
                break
            changed += 1
            if read.problem is not None:  # nothing to hash: the item is the path itself
                error = str(ImageError(f.rel, read.problem))
                ledger.record_path(
                    f.rel,
                    f"path:{f.rel}",
                    sha256=None,
                    fmt=None,
                    size=None,
                    signature=f.signature,
                    state="failed",
                    error=error,
                    result_json=_failed(screener, f.rel, error).to_json(),
                )
                stats.new_items += 1
                continue
            sn = read.sniffed
            problem = sn.problem or pixel_limit_problem(sn, max_pixels)
            notes = None
            if sn.pages > 1:
                kind = "multi-page TIFF" if sn.format == "tiff" else "animated GIF"
                notes = f"{kind} ({sn.pages} frames): the first frame was screened"
            extra = {}
            if problem is not None:
                error = str(ImageError(f.rel, problem))
                extra = {
                    "state": "failed",
                    "error": error,
                    "result_json": _failed(screener, f.rel, error).to_json(),
                }
            created = ledger.record_path(
                f.rel,
                read.sha256,
                sha256=read.sha256,
                fmt=sn.format,
                size=f.size,
                signature=f.signature,
                notes=notes,
                **extra,
            )
            if created:
                stats.new_items += 1
            else:
                stats.aliases += 1
    return changed


def _failed(screener: Screener, name: str, error: str) -> ScreeningResult:
    return ScreeningResult(
        image=name,
        status="failed",
        task=screener.card.task,
        decision="failed",
        action=f"could not screen this image, check the file and retake: {error}",
        error=error,
        audit=dict(screener.audit),
    )


# -- screening ---------------------------------------------------------------------------------
def _screen_pending(
    ledger: Ledger,
    screener: Screener,
    in_dir: Path,
    opts: BatchOptions,
    stats: RunStats,
    progress: Progress,
    stop: threading.Event,
    crash: Callable[[str], None],
) -> int:
    pending = ledger.pending()
    if not pending or stop.is_set():
        return 0
    progress.pending(len(pending))
    files, dicoms = [], []
    for item_id, first, fmt, paths in pending:
        verified = [(p, sig) for p, sig in paths if sig is not None]
        if not verified:  # every path changed since it was hashed: that content is gone
            error = str(ImageError(first, "the file changed or was deleted before it was screened"))
            _commit(ledger, screener, item_id, _failed(screener, first, error), stats, progress)
            continue
        chosen = next(((p, s) for p, s in verified if p == first), verified[0])
        (dicoms if fmt == "dicom" else files).append((item_id, *chosen))
    start = time.perf_counter()
    done = 0
    try:
        crash("before-screen")
        done += _run(
            ledger,
            screener,
            in_dir,
            files,
            [str(in_dir / p) for _, p, _ in files],
            opts,
            stats,
            progress,
            stop,
        )
        for i in range(0, len(dicoms), opts.batch_size):  # decoded here: bounded chunks
            if stop.is_set():
                break
            chunk = dicoms[i : i + opts.batch_size]
            images = [
                _load_dicom(in_dir / p, p, screener.card.input.max_pixels) for _, p, _ in chunk
            ]
            done += _run(ledger, screener, in_dir, chunk, images, opts, stats, progress, stop)
    finally:
        stats.screening_s += time.perf_counter() - start
    return done


def _run(
    ledger: Ledger,
    screener: Screener,
    in_dir: Path,
    entries,
    images,
    opts: BatchOptions,
    stats: RunStats,
    progress: Progress,
    stop: threading.Event,
) -> int:
    if not entries:
        return 0
    done = 0
    names = [p for _, p, _ in entries]
    # A DICOM that failed to decode is an ImageError: the screener gets a placeholder whose
    # result is replaced, so results still come back in input order.
    feed, notes, errors = [], {}, {}
    for i, x in enumerate(images):
        if isinstance(x, ImageError):
            errors[i] = x
            feed.append(np.zeros((1, 1), np.uint8))
        elif isinstance(x, tuple):
            feed.append(x[0])
            notes[i] = x[1]
        else:
            feed.append(x)
    results = screener.screen_many(feed, names=names, batch_size=opts.batch_size)
    try:
        for i, ((item_id, rel, signature), result) in enumerate(zip(entries, results, strict=True)):
            if i in errors:
                result = _failed(screener, rel, str(errors[i]))
            if _signature(in_dir / rel) != signature:  # changed while we read it: hash it again
                ledger.forget_signature(rel)
            else:
                _commit(ledger, screener, item_id, result, stats, progress, notes.get(i))
                done += 1
            if stop.is_set():
                break
    finally:
        results.close()  # on stop: waits for the few images already being prepared, then drops them
    return done


def _load_dicom(path: Path, rel: str, max_pixels: int | None):
    from .dicom import decode_dicom

    try:
        data = path.read_bytes()
    except OSError as exc:
        return ImageError(rel, f"cannot read ({exc.strerror or exc})")
    try:
        return decode_dicom(data, rel, max_pixels=max_pixels)
    except ImageError as exc:
        return exc


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _commit(
    ledger: Ledger,
    screener: Screener,
    item_id: int,
    result: ScreeningResult,
    stats: RunStats,
    progress: Progress,
    notes: str | None = None,
) -> None:
    state = {"ok": "done", "ungradable": "ungradable"}.get(result.status, "failed")
    ledger.finish(
        item_id,
        state,
        result_json=result.to_json(),
        decision=result.decision,
        error=result.error,
        heatmap_png=heatmap_png(result.heatmap),
        bundle_sha256=screener.audit["bundle_sha256"],
        precision=screener.precision,
        timings=result.timings_ms,
        notes=notes,
    )
    stats.screened += 1
    stats.finished[state] += 1
    progress.advance(state)


def heatmap_png(heatmap: np.ndarray | None) -> bytes | None:
    if heatmap is None:
        return None
    small = cv2.resize(
        np.asarray(heatmap, np.float32), (HEATMAP_SIDE, HEATMAP_SIDE), interpolation=cv2.INTER_AREA
    )
    ok, buf = cv2.imencode(".png", np.clip(np.rint(small * 255), 0, 255).astype(np.uint8))
    return buf.tobytes() if ok else None


def install_stop_handlers(stop: threading.Event) -> Callable[[], None]:
    """SIGINT/SIGTERM set `stop` (finish the image in flight, leave the rest pending)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):  # second signal: stop waiting, the ledger is consistent anyway
        if stop.is_set():
            signal.signal(signum, previous[signum] or signal.SIG_DFL)
        stop.set()

    for sig in previous:
        signal.signal(sig, handler)
    return lambda: [signal.signal(sig, h) for sig, h in previous.items()]
