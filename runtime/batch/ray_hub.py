"""Hub batches on Ray Data: an upload tree -> an actor pool of Screeners -> Parquet keyed by content.

`edgescreen batch IN --ray [ADDRESS] --out OUT`. IN and OUT are local paths or URIs that
pyarrow.fs.FileSystem.from_uri opens (file://, s3://, gs://, hdfs://...). A run is passes of

    list IN ─► hash (Ray tasks: read, sha256, sniff) ─► group by content ─► drop what OUT has
         ─► map_batches(ScreenWorker, actor pool) ─► one Parquet part per batch, temp + rename

OUT is a Parquet dataset, one row per content (key = sha256, or "path:" + path for a file
that cannot be read at all), carrying what the SQLite ledger records for an item: state
and status, decision, label/grade, probabilities, quality, error, notes, every path, bundle
sha256 and precision, the whole ScreeningResult as JSON and the small heatmap PNG.

Exactly once, without a database:
- a batch's part is named after the sha256 of the keys it holds, so whoever screens that
  batch again (a retried task on a restarted actor) writes the same file name; the part is
  written to a dot-temp file, fsynced and renamed, so it is there whole or not at all;
- a worker that finds its part already there returns what it holds instead of screening;
- a run lists the committed parts first and screens only contents none of them holds, so
  a rerun after any crash (driver, actor, node) picks up exactly what is missing; contents
  are screened once however many paths hold them, and new paths of a committed content
  are added to its row by rewriting that one part (same name, atomically);
- actors restart (max_restarts=-1) and their tasks retry (max_task_retries=-1), so a
  killed actor costs the batch it was on, screened again by its successor.

Decode, quality gate, preprocessing and decision are the Screener's (runtime/screen.py);
the ingest checks are sniff's; failures read as ScreeningResult.failed, as in the ledger.
One writer per OUT at a time (a local OUT is locked). ray and pyarrow are imported here only.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import signal
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..card import REFERRAL_DECISIONS
from ..errors import EdgescreenError, ImageError
from ..overlay import heatmap_png
from ..results import ScreeningResult
from ..screen import Screener
from .discover import discover, is_candidate
from .ledger import LedgerError
from .pipeline import Progress
from .sniff import pixel_limit_problem, sniff

FAULT_ENV = "EDGESCREEN_RAY_KILL"  # tests/benchmark: "WHERE:K:MARKER", see Fault
SCHEMA_VERSION = 1
META_FILE = "_edgescreen.json"  # the bundle and precision OUT holds; "_" so readers skip it
LOCK_FILE = "_edgescreen.lock"
_MAX_PASSES = 4
_STATE = {"ok": "done", "ungradable": "ungradable"}  # anything else: failed (ledger states)


class RayUnavailable(EdgescreenError):
    """ray[data] / pyarrow are not installed (the `hub` extra)."""


@dataclass
class RayBatchOptions:
    in_uri: str
    out_uri: str
    bundle: Path
    precision: str = "fp32"
    backend: str = "auto"
    address: str | None = None  # None: an embedded local Ray; else ray.init(address=...)
    actors: int = 2
    batch_size: int = 16  # images per map_batches call: the unit of commit (and of loss)
    threads: int | None = 1  # inference threads per actor
    workers: int = 1  # decode/prepare threads per actor
    actor_cpus: float = 0.5  # fractional, so the hash tasks and the pool never wait on cores
    num_cpus: int | None = None  # CPUs of the embedded local Ray (default: this machine's)
    verify: bool = True
    fault: str | None = field(default_factory=lambda: os.environ.get(FAULT_ENV) or None)


@dataclass
class RayRunStats:
    discovered: int = 0  # paths found under IN
    contents: int = 0  # distinct keys among them
    new_items: int = 0  # keys OUT did not hold when the run began
    aliases: int = 0  # paths beyond the first of a content (duplicates, copies)
    screened: int = 0  # rows committed by this run
    rows: int = 0  # rows OUT holds after the run (one per content ever screened into it)
    duplicates: int = 0  # rows dropped because another part held their key (see _Committed)
    recovered: int = 0  # rows a retried batch found already committed (no second screening)
    changed: int = 0  # files whose bytes changed between hashing and screening (hashed again)
    parts_rewritten: int = 0  # committed parts given new paths
    finished: dict[str, int] = field(
        default_factory=lambda: {"done": 0, "ungradable": 0, "failed": 0}
    )
    worker_pids: list[int] = field(default_factory=list)  # actor processes that committed
    passes: int = 0
    hash_s: float = 0.0
    screening_s: float = 0.0
    elapsed_s: float = 0.0


# -- filesystems ------------------------------------------------------------------------------
def open_tree(uri: str):
    """(pyarrow filesystem, root path in it, local Path or None) for a path or a URI."""
    from pyarrow import fs as pafs

    if "://" in uri:
        filesystem, root = pafs.FileSystem.from_uri(uri)
        local = Path(root) if isinstance(filesystem, pafs.LocalFileSystem) else None
        return filesystem, root.rstrip("/") or "/", local
    local = Path(os.path.abspath(uri))
    return pafs.LocalFileSystem(), local.as_posix(), local


def _join(root: str, rel: str) -> str:
    return posixpath.join(root, rel)


def _listing(filesystem, root: str, local: Path | None) -> list[dict[str, Any]]:
    """[{rel, problem}] of every upload under root, sorted; discover()'s rules on a local tree."""
    from pyarrow import fs as pafs

    if local is not None:
        if not local.is_dir():
            raise ImageError(local, "IN_DIR is not a directory")
        return [{"rel": f.rel, "problem": f.problem} for f in discover(local)]
    info = filesystem.get_file_info(root)
    if info.type != pafs.FileType.Directory:
        raise ImageError(root, "IN_DIR is not a directory")
    out = []
    for f in filesystem.get_file_info(pafs.FileSelector(root, recursive=True)):
        if f.type == pafs.FileType.File and is_candidate(f.base_name):
            out.append({"rel": posixpath.relpath(f.path, root), "problem": None})
    return sorted(out, key=lambda r: r["rel"])


def _read_bytes(filesystem, path: str) -> tuple[bytes | None, str | None]:
    try:
        with filesystem.open_input_stream(path) as fh:
            return fh.readall(), None
    except FileNotFoundError:
        return None, "file was deleted before it could be read"
    except PermissionError:
        return None, "permission denied (cannot read the file)"
    except OSError as exc:
        return None, f"cannot read ({exc.strerror or exc})"


# -- hash stage (Ray tasks) -------------------------------------------------------------------
def hash_batch(batch, *, filesystem, root: str, max_pixels: int | None):
    """Read, hash and sniff each file: what the ledger's ingest records, as a pyarrow table."""
    import pyarrow as pa

    rows = []
    for item in batch.to_pylist():
        rel, problem = item["rel"], item["problem"]
        row = {"rel": rel, "sha256": None, "format": None, "size": None, "notes": None}
        if problem is None:
            data, problem = _read_bytes(filesystem, _join(root, rel))
        if problem is None:
            sn = sniff(data, dicom_by_name=rel.lower().endswith(".dcm"))
            problem = sn.problem or pixel_limit_problem(sn, max_pixels)
            row.update(sha256=hashlib.sha256(data).hexdigest(), format=sn.format, size=len(data))
            if sn.pages > 1:
                kind = "multi-page TIFF" if sn.format == "tiff" else "animated GIF"
                row["notes"] = f"{kind} ({sn.pages} frames): the first frame was screened"
        row["error"] = None if problem is None else str(ImageError(rel, problem))
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=_hashed_schema())


def _hashed_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("rel", pa.string()),
            ("sha256", pa.string()),
            ("format", pa.string()),
            ("size", pa.int64()),
            ("notes", pa.string()),
            ("error", pa.string()),
        ]
    )


def _group(hashed: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Paths by content: {key: {key, sha256, path (first), paths, format, size, notes, error}}."""
    items: dict[str, dict[str, Any]] = {}
    for h in sorted(hashed, key=lambda r: r["rel"]):
        key = h["sha256"] or f"path:{h['rel']}"
        if key in items:
            items[key]["paths"].append(h["rel"])
            continue
        items[key] = {
            "key": key,
            "sha256": h["sha256"],
            "path": h["rel"],
            "paths": [h["rel"]],
            "format": h["format"],
            "size": h["size"],
            "notes": h["notes"],
            "error": h["error"],
        }
    return items


# -- the output dataset -----------------------------------------------------------------------
def result_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("key", pa.string()),
            ("sha256", pa.string()),
            ("path", pa.string()),
            ("paths", pa.list_(pa.string())),
            ("format", pa.string()),
            ("size", pa.int64()),
            ("state", pa.string()),
            ("status", pa.string()),
            ("decision", pa.string()),
            ("action", pa.string()),
            ("label", pa.string()),
            ("grade", pa.int32()),
            ("referable_probability", pa.float64()),
            ("probabilities", pa.map_(pa.string(), pa.float64())),
            ("positive_findings", pa.list_(pa.string())),
            ("quality_reasons", pa.list_(pa.string())),
            ("quality_json", pa.string()),
            ("error", pa.string()),
            ("notes", pa.string()),
            ("bundle_sha256", pa.string()),
            ("precision", pa.string()),
            ("backend", pa.string()),
            ("model", pa.string()),
            ("edgescreen_version", pa.string()),
            ("timings_json", pa.string()),
            ("result_json", pa.string()),
            ("heatmap_png", pa.binary()),
            ("finished_at", pa.float64()),
        ]
    )


def part_name(keys) -> str:
    """A batch's part: named by its keys, so a retry of the same batch writes the same file."""
    digest = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()
    return f"part-{digest[:32]}.parquet"


def _is_part(name: str) -> bool:
    return name.startswith("part-") and name.endswith(".parquet")


def _row(item: dict[str, Any], result: ScreeningResult, audit: dict[str, Any]) -> dict[str, Any]:
    issues = result.quality.get("issues", []) if result.quality else []
    return {
        "key": item["key"],
        "sha256": item["sha256"],
        "path": item["path"],
        "paths": sorted(item["paths"]),
        "format": item["format"],
        "size": item["size"],
        "state": _STATE.get(result.status, "failed"),
        "status": result.status,
        "decision": result.decision,
        "action": result.action,
        "label": result.label,
        "grade": result.grade,
        "referable_probability": result.referable_probability,
        "probabilities": sorted(result.probabilities.items()),
        "positive_findings": list(result.positive_findings),
        "quality_reasons": [i.get("message", "") for i in issues],
        "quality_json": json.dumps(result.quality, sort_keys=True) if result.quality else None,
        "error": result.error,
        "notes": result.notes or item["notes"],  # the decoder's note, else the ingest's
        "bundle_sha256": audit["bundle_sha256"],
        "precision": audit["precision"],
        "backend": audit["backend"],
        "model": audit["model"],
        "edgescreen_version": audit["edgescreen_version"],
        "timings_json": json.dumps(result.timings_ms, sort_keys=True),
        "result_json": result.to_json(),
        "heatmap_png": heatmap_png(result.heatmap),
        "finished_at": time.time(),
    }


def _table(rows: list[dict[str, Any]], meta: dict[str, Any]):
    import pyarrow as pa

    schema = result_schema().with_metadata({"edgescreen": json.dumps(meta, sort_keys=True)})
    return pa.Table.from_pylist(rows, schema=schema)


def _parquet_bytes(table) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def commit_file(filesystem, root: str, name: str, data: bytes, *, before_rename=None) -> None:
    """Write root/name whole or not at all: a dot-temp file (never read as a part), then rename.

    Locally: 0600 (results are medical data, as the ledger), fsync the file, rename, fsync
    the folder, so a power cut leaves the old part or the new one. Elsewhere: the
    filesystem's move (an object store's put is whole anyway)."""
    from pyarrow import fs as pafs

    tmp = _join(root, f".tmp-{name}-{uuid.uuid4().hex[:12]}")
    final = _join(root, name)
    if isinstance(filesystem, pafs.LocalFileSystem):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, final)
        dfd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return
    with filesystem.open_output_stream(tmp) as fh:
        fh.write(data)
    if before_rename is not None:
        before_rename()
    filesystem.move(tmp, final)


def _read_part(filesystem, root: str, name: str, columns=None):
    import pyarrow.parquet as pq

    with filesystem.open_input_file(_join(root, name)) as fh:
        return pq.read_table(fh, columns=columns)


def _part_names(filesystem, root: str) -> list[str]:
    from pyarrow import fs as pafs

    infos = filesystem.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)


def read_results(out_uri: str):
    """OUT as one pyarrow table, one row per key (sorted by path), committed parts only."""
    import pyarrow as pa

    filesystem, root, _ = open_tree(out_uri)
    tables = [_read_part(filesystem, root, n) for n in _part_names(filesystem, root) if _is_part(n)]
    if not tables:
        return result_schema().empty_table()
    table = pa.concat_tables([t.replace_schema_metadata(None) for t in tables])
    rows = sorted(table.to_pylist(), key=lambda r: (r["path"], r["key"]))
    seen: set[str] = set()
    unique = [r for r in rows if not (r["key"] in seen or seen.add(r["key"]))]
    return pa.Table.from_pylist(unique, schema=result_schema())


class _Committed:
    """What OUT holds: key -> part, and each part's paths, read column-wise (small)."""

    def __init__(self, filesystem, root: str) -> None:
        self.part_of: dict[str, str] = {}
        self.paths: dict[str, list[str]] = {}
        self.extra: dict[str, set[str]] = {}  # part -> its keys an earlier part holds already
        for name in _part_names(filesystem, root):
            if name.startswith(".tmp-"):  # a writer died before its rename: never a result
                filesystem.delete_file(_join(root, name))
                continue
            if not _is_part(name):
                continue
            try:
                t = _read_part(filesystem, root, name, columns=["key", "paths"])
            except Exception:  # noqa: BLE001 - unreadable: set aside, its contents screened again
                filesystem.move(_join(root, name), _join(root, f".corrupt-{name}"))
                continue
            for key, paths in zip(t["key"].to_pylist(), t["paths"].to_pylist(), strict=True):
                if key in self.part_of:
                    self.extra.setdefault(name, set()).add(key)
                    continue
                self.part_of[key] = name
                self.paths[key] = list(paths or [])

    def drop_duplicates(self, filesystem, root: str, meta: dict[str, Any]) -> int:
        """A key in two parts: only when an actor of a killed driver commits late, after a
        rerun batched the same content differently. Keep the first part's row (the results
        are the same) and rewrite the other part without it; returns the rows dropped."""
        dropped = 0
        for name, keys in sorted(self.extra.items()):
            rows = [
                r for r in _read_part(filesystem, root, name).to_pylist() if r["key"] not in keys
            ]
            if rows:
                commit_file(filesystem, root, name, _parquet_bytes(_table(rows, meta)))
            else:
                filesystem.delete_file(_join(root, name))
            dropped += len(keys)
        self.extra = {}
        return dropped


def _bind(filesystem, root: str, meta: dict[str, Any]) -> None:
    """OUT holds one bundle's results at one precision (as a ledger does): refuse to mix."""
    path = _join(root, META_FILE)
    try:
        with filesystem.open_input_stream(path) as fh:
            have = json.loads(fh.readall())
    except FileNotFoundError:
        commit_file(filesystem, root, META_FILE, json.dumps(meta, indent=2).encode())
        return
    want = (meta["bundle_sha256"], meta["precision"])
    if (have.get("bundle_sha256"), have.get("precision")) != want:
        raise LedgerError(
            f"{root} holds results of bundle {str(have.get('bundle_sha256'))[:12]}… at "
            f"{have.get('precision')}, not of this bundle {want[0][:12]}… at {want[1]}; "
            "use another --out for another model"
        )


def _lock(local: Path | None):
    """An exclusive lock on a local OUT (released when the process dies, kill -9 included)."""
    if local is None:
        return None
    import fcntl

    fd = os.open(local / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LedgerError(f"{local} is being written by another run; wait for it") from None
    return fd


# -- fault injection --------------------------------------------------------------------------
class Fault:
    """`WHERE:K:MARKER` (FAULT_ENV): SIGKILL a process once, at its K-th batch.

    WHERE is before-commit (a worker, its part written to the temp file, not renamed),
    after-commit (a worker, renamed, before it returns) or driver (after the driver has
    heard K batches). MARKER is a file created with O_EXCL, so exactly one process dies
    once, however many actors (and restarts of them) reach the point."""

    POINTS = ("before-commit", "after-commit", "driver")

    def __init__(self, spec: str | None) -> None:
        self.where, self.k, self.marker = None, 0, None
        if spec:
            where, k, marker = spec.split(":", 2)
            if where not in self.POINTS or not k.isdigit():
                raise ValueError(f"{FAULT_ENV}={spec!r}: expected WHERE:K:MARKER")
            self.where, self.k, self.marker = where, int(k), marker
        self.count = 0

    def tick(self) -> None:
        self.count += 1

    def __call__(self, point: str) -> None:
        if point != self.where or self.count < self.k:
            return
        try:
            os.close(os.open(self.marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)


# -- the screening actor ----------------------------------------------------------------------
class ScreenWorker:
    """One Ray actor: loads the bundle once, screens batches, commits one part per batch."""

    def __init__(
        self,
        *,
        bundle: str,
        precision: str,
        backend: str,
        threads: int | None,
        workers: int,
        verify: bool,
        in_fs,
        in_root: str,
        out_fs,
        out_root: str,
        meta: dict[str, Any],
        fault: str | None,
        infer_batch: int = 8,
    ) -> None:
        self.screener = Screener(
            bundle,
            precision=precision,
            backend=backend,
            threads=threads,
            workers=workers,
            verify=verify,
        )
        self.in_fs, self.in_root = in_fs, in_root
        self.out_fs, self.out_root = out_fs, out_root
        self.meta = meta
        self.infer_batch = infer_batch
        self.fault = Fault(fault)

    def __call__(self, batch):
        import pyarrow as pa

        items = batch.to_pylist()
        self.fault.tick()
        name = part_name(i["key"] for i in items)
        try:  # a retry of a batch that was committed before its worker died
            done = _read_part(self.out_fs, self.out_root, name, columns=["key", "state"])
            return _summary(done["key"].to_pylist(), done["state"].to_pylist(), name, False)
        except FileNotFoundError:
            pass
        rows, changed = self._screen(items)
        if rows:
            data = _parquet_bytes(_table(rows, self.meta))
            name = part_name(r["key"] for r in rows)  # without the changed ones
            commit_file(
                self.out_fs,
                self.out_root,
                name,
                data,
                before_rename=lambda: self.fault("before-commit"),
            )
            self.fault("after-commit")
        out = _summary([r["key"] for r in rows], [r["state"] for r in rows], name, True)
        if changed:
            more = _summary(changed, ["changed"] * len(changed), "", False)
            out = pa.concat_tables([out, more])
        return out

    def _screen(self, items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
        s = self.screener
        results: dict[str, ScreeningResult] = {}
        todo, changed = [], []
        for item in items:
            if item["error"] is not None:  # refused at ingest: never decoded
                results[item["key"]] = ScreeningResult.failed(
                    item["path"], item["error"], task=s.card.task, audit=s.audit
                )
                continue
            data = self._content(item)
            if data is None:  # every path now holds other bytes: hash them again next pass
                changed.append(item["key"])
            else:
                todo.append((item, data))
        screened = s.screen_many(
            (d for _, d in todo), names=[i["path"] for i, _ in todo], batch_size=self.infer_batch
        )
        for (item, _), result in zip(todo, screened, strict=True):
            results[item["key"]] = result
        rows = [_row(i, results[i["key"]], s.audit) for i in items if i["key"] in results]
        return rows, changed

    def _content(self, item: dict[str, Any]) -> bytes | None:
        """The item's bytes, from its first path that still holds them (as the ledger checks)."""
        for rel in [item["path"], *[p for p in item["paths"] if p != item["path"]]]:
            data, _ = _read_bytes(self.in_fs, _join(self.in_root, rel))
            if data is not None and hashlib.sha256(data).hexdigest() == item["sha256"]:
                return data
        return None


def _summary(keys: list[str], states: list[str], part: str, screened: bool):
    import pyarrow as pa

    n = len(keys)
    return pa.table(
        {
            "key": pa.array(keys, pa.string()),
            "state": pa.array(states, pa.string()),
            "part": pa.array([part] * n, pa.string()),
            "screened": pa.array([screened] * n, pa.bool_()),
            "pid": pa.array([os.getpid()] * n, pa.int64()),
        }
    )


# -- the driver -------------------------------------------------------------------------------
def _ray():
    try:
        import pyarrow  # noqa: F401
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise RayUnavailable(
            f"--ray needs Ray Data and pyarrow ({exc.name} is missing): "
            "pip install 'edgescreen[hub]'"
        ) from None
    return ray


def connect(address: str | None, num_cpus: int | None = None) -> bool:
    """Start (None) or join (an address) Ray, unless this process already has; True if we did."""
    ray = _ray()
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(
            num_cpus=num_cpus or os.cpu_count() or 2,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            object_store_memory=256 * 2**20,  # only paths and summaries travel through it
            log_to_driver=False,
        )
    return True


def _quiet_data_context():
    import logging

    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return ctx


def run_ray_batch(opts: RayBatchOptions, *, progress: Progress | None = None) -> RayRunStats:
    """Screen opts.in_uri into the Parquet dataset opts.out_uri, exactly once per content."""
    start = time.perf_counter()
    ray = _ray()
    progress = progress or Progress()
    driver_fault = Fault(opts.fault)
    in_fs, in_root, in_local = open_tree(opts.in_uri)
    out_fs, out_root, out_local = open_tree(opts.out_uri)
    out_fs.create_dir(out_root, recursive=True)
    # Refusals first (bundle, precision, backend, another model's OUT): before Ray starts.
    with Screener(opts.bundle, precision=opts.precision, backend=opts.backend) as s:
        audit, max_pixels = dict(s.audit), s.card.input.max_pixels
    meta = {
        "schema_version": SCHEMA_VERSION,
        "bundle_sha256": audit["bundle_sha256"],
        "precision": opts.precision,
        "model": audit["model"],
    }
    lock = _lock(out_local)
    stats = RayRunStats()
    owns = False
    try:
        _bind(out_fs, out_root, meta)
        owns = connect(opts.address, opts.num_cpus)
        _quiet_data_context()
        pids: set[int] = set()
        first = True
        while stats.passes < _MAX_PASSES:
            stats.passes += 1
            listed = _listing(in_fs, in_root, in_local)
            t = time.perf_counter()
            hashed = _hash(ray, listed, in_fs, in_root, max_pixels)
            stats.hash_s += time.perf_counter() - t
            items = _group(hashed)
            committed = _Committed(out_fs, out_root)
            stats.duplicates += committed.drop_duplicates(out_fs, out_root, meta)
            stats.discovered = len(listed)
            stats.contents = len(items)
            stats.aliases = len(listed) - len(items)
            if first:
                stats.new_items = sum(k not in committed.part_of for k in items)
                first = False
            stats.parts_rewritten += _merge_paths(out_fs, out_root, committed, items, meta)
            pending = [i for k, i in items.items() if k not in committed.part_of]
            if not pending:
                break
            progress.pending(len(pending))
            t = time.perf_counter()
            changed = 0
            for summary in _screen(ray, pending, opts, in_fs, in_root, out_fs, out_root, meta):
                for r in summary:
                    if r["state"] == "changed":
                        changed += 1
                        continue
                    pids.add(r["pid"])
                    if r["screened"]:
                        stats.screened += 1
                        stats.finished[r["state"]] += 1
                    else:
                        stats.recovered += 1
                    progress.advance(r["state"])
                driver_fault.tick()
                driver_fault("driver")
            stats.screening_s += time.perf_counter() - t
            stats.changed += changed
            if not changed:
                break
        stats.worker_pids = sorted(pids)
        final = _Committed(out_fs, out_root)  # also clears temp files of killed writers
        stats.duplicates += final.drop_duplicates(out_fs, out_root, meta)
        stats.rows = len(final.part_of)
    finally:
        if owns:
            ray.shutdown()
        if lock is not None:
            os.close(lock)
    stats.elapsed_s = time.perf_counter() - start
    return stats


def _hash(ray, listed, in_fs, in_root: str, max_pixels: int | None) -> list[dict[str, Any]]:
    if not listed:
        return []
    ds = ray.data.from_items(listed, override_num_blocks=max(1, min(16, len(listed) // 64)))
    out = ds.map_batches(
        hash_batch,
        batch_format="pyarrow",
        batch_size=64,
        num_cpus=0.25,
        fn_kwargs={"filesystem": in_fs, "root": in_root, "max_pixels": max_pixels},
    )
    return out.take_all()


def _screen(ray, pending, opts, in_fs, in_root, out_fs, out_root, meta) -> Iterator[list[dict]]:
    """Summaries of committed batches, as they arrive (one list per batch)."""
    bs = max(1, opts.batch_size)
    blocks = max(1, -(-len(pending) // bs))  # one block per batch: the unit of commit
    ds = ray.data.from_items(pending, override_num_blocks=blocks)
    # A killed actor comes back (and loads the bundle again) and its batch is retried there;
    # the commit makes that once. Ray Data defaults to both; said here so it never silently
    # changes. (Ray 2.60 deprecates passing them this way without naming a replacement.)
    remote = {"max_restarts": -1, "max_task_retries": -1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        out = _map_screen(
            ray,
            ds,
            bs,
            min(opts.actors, blocks),
            opts,
            remote,
            in_fs,
            in_root,
            out_fs,
            out_root,
            meta,
        )
    for batch in out.iter_batches(batch_format="pyarrow", batch_size=None):
        yield batch.to_pylist()


def _map_screen(ray, ds, bs, actors, opts, remote, in_fs, in_root, out_fs, out_root, meta):
    return ds.map_batches(
        ScreenWorker,
        batch_format="pyarrow",
        batch_size=bs,
        compute=ray.data.ActorPoolStrategy(size=max(1, actors)),
        num_cpus=opts.actor_cpus,
        **remote,
        fn_constructor_kwargs={
            "bundle": str(opts.bundle),
            "precision": opts.precision,
            "backend": opts.backend,
            "threads": opts.threads,
            "workers": opts.workers,
            "verify": opts.verify,
            "in_fs": in_fs,
            "in_root": in_root,
            "out_fs": out_fs,
            "out_root": out_root,
            "meta": meta,
            "fault": opts.fault if Fault(opts.fault).where != "driver" else None,
        },
    )


def _merge_paths(out_fs, out_root: str, committed: _Committed, items, meta) -> int:
    """Give committed rows the paths found since (and drop paths now holding other content),
    by rewriting each affected part under its own name; a path-keyed failure whose file now
    reads is dropped (the ledger does the same). Returns the parts rewritten."""
    now = {p: k for k, i in items.items() for p in i["paths"]}
    touched: dict[str, bool] = {}
    for key, part in committed.part_of.items():
        old = committed.paths.get(key, [])
        kept = [p for p in old if now.get(p, key) == key]
        new = sorted(set(kept) | set(items[key]["paths"] if key in items else []))
        stale = key.startswith("path:") and now.get(key[5:], key) != key
        if new != sorted(old) or stale:
            touched[part] = True
    for part in touched:
        table = _read_part(out_fs, out_root, part)
        rows = []
        for r in table.to_pylist():
            key = r["key"]
            if key.startswith("path:") and now.get(key[5:], key) != key:
                continue
            old = r["paths"] or []
            kept = [p for p in old if now.get(p, key) == key]
            r["paths"] = sorted(set(kept) | set(items[key]["paths"] if key in items else []))
            rows.append(r)
        commit_file(out_fs, out_root, part, _parquet_bytes(_table(rows, meta)))
    return len(touched)


def summarise(out_uri: str) -> dict[str, Any]:
    """The counts a hub reads after a run, from OUT itself."""
    table = read_results(out_uri)
    states = Counter(table["state"].to_pylist())
    rows = table.select(["state", "decision"]).to_pylist()
    return {
        "done": states.get("done", 0),
        "ungradable": states.get("ungradable", 0),
        "failed": states.get("failed", 0),
        "rows": table.num_rows,
        "referrals": sum(
            r["state"] == "done" and r["decision"] in REFERRAL_DECISIONS for r in rows
        ),
    }
