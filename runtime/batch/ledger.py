"""The batch ledger: one SQLite file that never loses or double-counts a result.

An *item* is one content (sha256 of the file's bytes); *paths* map every file name seen
to its item, so a renamed or re-uploaded copy is an alias, never a second screening.
Files that cannot be read at all (a symlink out of IN_DIR, no permission) are items
keyed by their path. States: pending -> done | failed | ungradable.

WAL with synchronous=NORMAL: a commit survives the process being killed at any point
(kill -9 loses nothing committed); a power cut may roll back the last few commits, which
only means those images are screened again. Every state change is its own transaction,
so a crash leaves each item either pending (screened again on resume) or finished.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..card import REFERRAL_DECISIONS
from ..errors import EdgescreenError

SCHEMA_VERSION = 1
STATES = ("pending", "done", "failed", "ungradable")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,          -- content sha256, or 'path:' + path when unreadable
    sha256 TEXT,
    path TEXT NOT NULL,                -- the first name it was found under
    format TEXT,
    size INTEGER,
    state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'failed', 'ungradable')),
    decision TEXT,
    error TEXT,
    notes TEXT,
    result_json TEXT,                  -- the full ScreeningResult
    heatmap_png BLOB,                  -- small uint8 heatmap for the report
    thumb_jpeg BLOB,                   -- the report's photo, made when it was screened
    bundle_sha256 TEXT,
    precision TEXT,
    timings_json TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS items_state ON items (state);
CREATE TABLE IF NOT EXISTS paths (
    path TEXT PRIMARY KEY,
    item_id INTEGER NOT NULL REFERENCES items (id),
    size INTEGER, mtime_ns INTEGER, ino INTEGER,   -- NULL: must be read again
    seen_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS paths_item ON paths (item_id);
"""


class LedgerError(EdgescreenError):
    """The ledger cannot be used (corrupt, another schema, another bundle)."""


@dataclass
class Item:
    id: int
    key: str
    sha256: str | None
    path: str
    format: str | None
    state: str
    decision: str | None
    error: str | None
    notes: str | None
    result: dict[str, Any] | None
    heatmap_png: bytes | None
    paths: list[str]
    thumb_jpeg: bytes | None = None


def create_private(path: Path) -> None:
    """Create an empty file readable by its owner only (before SQLite or a writer opens it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)


class Ledger:
    def __init__(self, path: str | Path, *, hook: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        self._hook = hook or (lambda point: None)
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            create_private(self.path)
        try:
            self.db = sqlite3.connect(
                self.path, isolation_level=None, timeout=30, check_same_thread=False
            )
            self.db.execute("PRAGMA busy_timeout = 30000")
            check = self.db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {check}")
            mode = self.db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise sqlite3.DatabaseError(f"cannot switch to WAL (journal mode {mode})")
            self.db.execute("PRAGMA synchronous = NORMAL")
            self.db.execute("PRAGMA foreign_keys = ON")
            tables = {
                r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if tables and "meta" not in tables:
                raise LedgerError(
                    f"{self.path}: an SQLite database, but not an edgescreen batch ledger; "
                    "give another --db"
                )
            if not tables:
                # One transaction: a crash here leaves an empty file, set up again next time.
                self.db.executescript(
                    f"BEGIN IMMEDIATE; {_SCHEMA} INSERT INTO meta (key, value) VALUES "
                    f"('schema_version', '{SCHEMA_VERSION}'), ('created_at', '{time.time()}'); COMMIT;"
                )
            version = self.meta("schema_version")
            if version != str(SCHEMA_VERSION):
                raise LedgerError(
                    f"{self.path}: not an edgescreen batch ledger "
                    f"(schema_version {version!r}, expected {SCHEMA_VERSION})"
                )
            self._add_column("thumb_jpeg", "BLOB")
        except sqlite3.DatabaseError as exc:
            raise LedgerError(
                f"{self.path}: the ledger database is corrupt or not a ledger ({exc}); "
                "move it aside and rerun (nothing was screened)"
            ) from None

    def _add_column(self, name: str, kind: str) -> None:
        """A nullable column newer than the ledger: added in place, so old ledgers stay usable."""
        if name in self._columns():
            return
        with self.tx():  # re-checked under the write lock: another process may have just added it
            if name not in self._columns():
                self.db.execute(f"ALTER TABLE items ADD COLUMN {name} {kind}")

    def _columns(self) -> set[str]:
        return {row[1] for row in self.db.execute("PRAGMA table_info(items)")}

    # -- plumbing --------------------------------------------------------------------------
    def tx(self):
        return _Tx(self.db)

    def close(self) -> None:
        self.db.close()

    def meta(self, key: str) -> str | None:
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.OperationalError:  # no meta table: not ours
            return None
        return row[0] if row else None

    def _set(self, key: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = ?",
            (key, value, value),
        )

    def bind(self, bundle_sha256: str, precision: str, model: str) -> None:
        """A ledger holds one model's results: refuse to mix two bundles or precisions."""
        have = (self.meta("bundle_sha256"), self.meta("precision"))
        if have == (None, None):
            with self.tx():
                self._set("bundle_sha256", bundle_sha256)
                self._set("precision", precision)
                self._set("model", model)
            return
        if have != (bundle_sha256, precision):
            raise LedgerError(
                f"{self.path} holds results of bundle {have[0][:12] if have[0] else '?'}… at {have[1]}, "
                f"not of this bundle {bundle_sha256[:12]}… at {precision}; use another --db for another model"
            )

    # -- discovery side --------------------------------------------------------------------
    def path_signature(self) -> dict[str, tuple[int, int, int] | None]:
        rows = self.db.execute("SELECT path, size, mtime_ns, ino FROM paths")
        return {p: (s, m, i) if s is not None else None for p, s, m, i in rows}

    def path_key(self, path: str) -> str | None:
        row = self.db.execute(
            "SELECT items.key FROM paths JOIN items ON items.id = paths.item_id "
            "WHERE paths.path = ?",
            (path,),
        ).fetchone()
        return row[0] if row else None

    def record_path(
        self,
        path: str,
        key: str,
        *,
        sha256: str | None,
        fmt: str | None,
        size: int | None,
        signature: tuple[int, int, int] | None,
        state: str = "pending",
        error: str | None = None,
        notes: str | None = None,
        result_json: str | None = None,
    ) -> bool:
        """Map a path to the item of its content, creating the item if new. True if created."""
        now = time.time()
        with self.tx():
            row = self.db.execute("SELECT id FROM items WHERE key = ?", (key,)).fetchone()
            created = row is None
            if created:
                cur = self.db.execute(
                    "INSERT INTO items (key, sha256, path, format, size, state, decision, error, notes, "
                    "result_json, created_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        key,
                        sha256,
                        path,
                        fmt,
                        size,
                        state,
                        None if state == "pending" else state,
                        error,
                        notes,
                        result_json,
                        now,
                        None if state == "pending" else now,
                    ),
                )
                item_id = cur.lastrowid
            else:
                item_id = row[0]
            old = self.db.execute("SELECT item_id FROM paths WHERE path = ?", (path,)).fetchone()
            s, m, i = signature if signature is not None else (None, None, None)
            self.db.execute(
                "INSERT INTO paths (path, item_id, size, mtime_ns, ino, seen_at) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (path) DO UPDATE SET item_id = excluded.item_id, size = excluded.size, "
                "mtime_ns = excluded.mtime_ns, ino = excluded.ino, seen_at = excluded.seen_at",
                (path, item_id, s, m, i, now),
            )
            if old is not None and old[0] != item_id:
                # A path-keyed failure that now reads fine was never screened: drop it.
                self.db.execute(
                    "DELETE FROM items WHERE id = ? AND key LIKE 'path:%' AND NOT EXISTS "
                    "(SELECT 1 FROM paths WHERE item_id = ?)",
                    (old[0], old[0]),
                )
            self._hook("ingest-commit")
        return created

    def forget_signature(self, path: str) -> None:
        """The file changed under us: read and hash it again on the next pass."""
        with self.tx():
            self.db.execute(
                "UPDATE paths SET size = NULL, mtime_ns = NULL, ino = NULL WHERE path = ?", (path,)
            )

    # -- screening side --------------------------------------------------------------------
    def pending(self) -> list[tuple[int, str, str | None, list[tuple[str, tuple | None]]]]:
        """(id, first path, sha256, [(path, signature)]) of every pending item, oldest first."""
        items = self.db.execute(
            "SELECT id, path, sha256 FROM items WHERE state = 'pending' ORDER BY id"
        ).fetchall()
        out = []
        for item_id, path, sha256 in items:
            rows = self.db.execute(
                "SELECT path, size, mtime_ns, ino FROM paths WHERE item_id = ? ORDER BY path",
                (item_id,),
            ).fetchall()
            out.append(
                (
                    item_id,
                    path,
                    sha256,
                    [(p, (s, m, i) if s is not None else None) for p, s, m, i in rows],
                )
            )
        return out

    def finish(
        self,
        item_id: int,
        state: str,
        *,
        result_json: str | None,
        decision: str | None,
        error: str | None,
        heatmap_png: bytes | None,
        bundle_sha256: str | None,
        precision: str | None,
        timings: dict | None,
        notes: str | None = None,
        thumb_jpeg: bytes | None = None,
    ) -> None:
        assert state in STATES[1:]
        with self.tx():
            self.db.execute(
                "UPDATE items SET state = ?, result_json = ?, decision = ?, error = ?, heatmap_png = ?, "
                "thumb_jpeg = ?, bundle_sha256 = ?, precision = ?, timings_json = ?, "
                "notes = COALESCE(?, notes), attempts = attempts + 1, finished_at = ? "
                "WHERE id = ? AND state = 'pending'",
                (
                    state,
                    result_json,
                    decision,
                    error,
                    heatmap_png,
                    thumb_jpeg,
                    bundle_sha256,
                    precision,
                    json.dumps(timings, sort_keys=True) if timings is not None else None,
                    notes,
                    time.time(),
                    item_id,
                ),
            )
            self._hook("mid-commit")
        self._hook("after-commit")

    # -- reading ---------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        counts.update(
            self.db.execute("SELECT state, COUNT(*) FROM items GROUP BY state").fetchall()
        )
        return counts

    def referrals(self) -> int:
        return self.db.execute(
            "SELECT COUNT(*) FROM items WHERE state = 'done' AND decision IN "
            f"({', '.join('?' * len(REFERRAL_DECISIONS))})",
            REFERRAL_DECISIONS,
        ).fetchone()[0]

    def items(self) -> Iterator[Item]:
        paths: dict[int, list[str]] = {}
        for p, item_id in self.db.execute("SELECT path, item_id FROM paths ORDER BY path"):
            paths.setdefault(item_id, []).append(p)
        for row in self.db.execute(
            "SELECT id, key, sha256, path, format, state, decision, error, notes, result_json, "
            "heatmap_png, thumb_jpeg FROM items ORDER BY path, id"
        ):
            item_id, key, sha, path, fmt, state, decision, error, notes, rj, heat, thumb = row
            yield Item(
                item_id,
                key,
                sha,
                path,
                fmt,
                state,
                decision,
                error,
                notes,
                json.loads(rj) if rj else None,
                heat,
                paths.get(item_id, [path]),
                thumb,
            )


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")
