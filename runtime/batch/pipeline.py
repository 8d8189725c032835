"""Screen a folder of uploads into the ledger: discover -> ingest (hash) -> screen -> commit.

A pass discovers files, hashes the new or changed ones into the ledger (new content is
`pending`, a known content gets one more path), then screens every pending item and
commits each result in its own transaction. Screening reads each file once: a small pool
reads, checks the bytes still hash to the item, decodes them (prepare.decode_for: the one decoder) and makes
the report's thumbnail, a few files ahead; Screener.screen_many prepares the decoded
image while ONNX Runtime runs the previous batch. A one-shot run repeats passes until
nothing changes; --watch keeps polling until SIGINT/SIGTERM.

Resuming is just running again: done rows are never redone, pending rows (from a crash)
are screened again, and screening is deterministic for a content and bundle.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..card import ModelCard
from ..errors import ImageError
from ..imageio import Decoded, read_file
from ..overlay import heatmap_png
from ..prepare import decode_for, failure
from ..results import ScreeningResult
from ..screen import Screener
from .discover import Found, Stability, discover
from .ledger import Ledger
from .report import thumbnail_jpeg
from .sniff import Sniffed, pixel_limit_problem, sniff

CRASH_ENV = "EDGESCREEN_BATCH_CRASH_AT"  # tests: SIGKILL ourselves at the k-th crash point
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
    dla_core: int | None = None
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
            dla_core=opts.dla_core,
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
    return ScreeningResult.failed(name, error, task=screener.card.task, audit=screener.audit)


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
    entries = []
    for item_id, first, sha256, paths in pending:
        verified = [(p, sig) for p, sig in paths if sig is not None]
        if not verified:  # every path changed since it was hashed: that content is gone
            error = str(ImageError(first, "the file changed or was deleted before it was screened"))
            _commit(ledger, screener, item_id, _failed(screener, first, error), stats, progress)
            continue
        rel, signature = next(((p, s) for p, s in verified if p == first), verified[0])
        entries.append((item_id, rel, signature, sha256))
    start = time.perf_counter()
    try:
        crash("before-screen")
        return _run(ledger, screener, in_dir, entries, opts, stats, progress, stop)
    finally:
        stats.screening_s += time.perf_counter() - start


@dataclass
class _Loaded:
    """A pending file, read and decoded once: the decoded image goes to the Screener and,
    shrunk, into the ledger as the report's photo."""

    item_id: int
    rel: str
    decoded: Decoded | None = None  # handed to the Screener, then dropped here
    thumb: bytes | None = None
    decode_ms: float = 0.0
    error: str | None = None  # unreadable or undecodable: committed as failed, not screened
    changed: bool = False  # not the content that was hashed: hashed again, nothing committed

    @property
    def screened(self) -> bool:
        return self.error is None and not self.changed


def _load(
    in_dir: Path,
    item_id: int,
    rel: str,
    signature: tuple[int, int, int],
    sha256: str,
    card: ModelCard,
) -> _Loaded:
    path = in_dir / rel
    try:
        data = read_file(path)
    except ImageError as exc:
        if _signature(path) != signature:  # deleted or replaced since it was hashed
            return _Loaded(item_id, rel, changed=True)
        return _Loaded(item_id, rel, error=str(ImageError(rel, exc.problem)))
    # The bytes screened must be the content the ledger item is (its key is their sha256).
    if hashlib.sha256(data).hexdigest() != sha256:
        return _Loaded(item_id, rel, changed=True)
    start = time.perf_counter()
    try:
        decoded = decode_for(data, card, name=rel)
    except Exception as exc:  # noqa: BLE001 - one bad image must never stop a batch
        return _Loaded(item_id, rel, error=failure(rel, exc))
    decode_ms = round((time.perf_counter() - start) * 1000, 3)
    try:
        thumb = thumbnail_jpeg(decoded.image)
    except Exception:  # noqa: BLE001 - the report's photo is optional
        thumb = None
    return _Loaded(item_id, rel, decoded, thumb, decode_ms)


def _ahead(pool: ThreadPoolExecutor, fn: Callable, items, window: int) -> Iterator:
    """pool.map, but at most `window` items ahead of the consumer (decoded images are big)."""
    futures: deque[Future] = deque()
    for item in items:
        futures.append(pool.submit(fn, *item))
        if len(futures) >= window:
            yield futures.popleft().result()
    while futures:
        yield futures.popleft().result()


def _run(
    ledger: Ledger,
    screener: Screener,
    in_dir: Path,
    entries,
    opts: BatchOptions,
    stats: RunStats,
    progress: Progress,
    stop: threading.Event,
) -> int:
    if not entries:
        return 0
    loaded: deque[_Loaded] = deque()  # read, in input order, not settled yet

    def feed(loads: Iterator[_Loaded]) -> Iterator[Decoded]:
        for item in loads:
            loaded.append(item)
            if item.screened:
                decoded, item.decoded = item.decoded, None  # the Screener holds it from here
                yield decoded

    def settle(item: _Loaded, result: ScreeningResult | None) -> int:
        if item.changed:  # hash it again on the next pass and screen what it holds then
            ledger.forget_signature(item.rel)
            return 0
        if result is None:
            result = _failed(screener, item.rel, item.error or "")
        else:
            result.timings_ms["decode"] = item.decode_ms  # decoded here, not in the Screener
        thumb = item.thumb if result.status != "failed" else None
        _commit(ledger, screener, item.item_id, result, stats, progress, result.notes, thumb)
        return 1

    done = 0
    with ThreadPoolExecutor(max_workers=max(1, opts.workers), thread_name_prefix="read") as pool:
        # Decoded as the Screener would: the card's pixel limit, at the scale the work needs.
        work = [(in_dir, *e, screener.card) for e in entries]
        loads = _ahead(pool, _load, work, 2 * opts.workers)
        results = screener.screen_many(feed(loads), batch_size=opts.batch_size)
        try:
            for result in results:  # in input order: settle the unscreened files before it first
                while not loaded[0].screened:
                    done += settle(loaded.popleft(), None)
                done += settle(loaded.popleft(), result)
                if stop.is_set():
                    break
            else:
                while loaded:  # unscreened files after the last screened one
                    done += settle(loaded.popleft(), None)
        finally:
            results.close()  # on stop: waits for the few images already being prepared, then drops them
    return done


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
    thumb_jpeg: bytes | None = None,
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
        thumb_jpeg=thumb_jpeg,
    )
    stats.screened += 1
    stats.finished[state] += 1
    progress.advance(state)


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
