"""--watch: uploads copied in slowly are screened once, complete; SIGTERM stops cleanly."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgescreen.runtime.batch import BatchOptions, run_batch


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from conftest import make_bundle

    return make_bundle(tmp_path_factory.mktemp("watch") / "dr", size=32)


def slow_copy(src: Path, dst: Path, chunks: int = 5, pause: float = 0.08) -> None:
    data = src.read_bytes()
    step = len(data) // chunks + 1
    with open(dst, "wb") as fh:
        for i in range(0, len(data), step):
            fh.write(data[i : i + step])
            fh.flush()
            time.sleep(pause)


def states(db: Path) -> list[tuple]:
    if not db.exists():
        return []
    con = sqlite3.connect(db, timeout=10)
    try:
        return con.execute(
            "SELECT path, state, sha256, result_json FROM items ORDER BY path"
        ).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def wait_for(predicate, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_watch_screens_slow_uploads_once_and_complete(tmp_path, bundle, fundus_dir):
    photos = sorted((fundus_dir / "images").glob("*.jpg"))[:4]
    root = tmp_path / "in"
    root.mkdir()
    db = tmp_path / "r.sqlite"
    stop = threading.Event()
    stats = {}
    worker = threading.Thread(
        target=lambda: stats.update(
            s=run_batch(
                BatchOptions(in_dir=root, bundle=bundle, db=db, watch=True, poll_s=0.25), stop=stop
            )
        )
    )
    worker.start()
    try:
        for p in photos[:3]:  # partial writes, with pauses shorter than a poll
            slow_copy(p, root / p.name)
        part = root / (photos[3].name + ".part")  # the browser-download way: write, then rename
        slow_copy(photos[3], part)
        part.rename(root / photos[3].name)
        assert wait_for(lambda: len([r for r in states(db) if r[1] != "pending"]) == 4), states(db)
        time.sleep(0.8)  # a few more polls: nothing is screened twice
    finally:
        stop.set()
        worker.join(30)
    assert not worker.is_alive()
    rows = states(db)
    assert [r[0] for r in rows] == [p.name for p in photos]
    for (name, state, sha, _), p in zip(rows, photos, strict=True):
        assert state == "done", name
        assert sha == hashlib.sha256(p.read_bytes()).hexdigest()  # the complete file
    assert stats["s"].screened == 4 and stats["s"].interrupted


def test_sigterm_stops_watch_cleanly(tmp_path, bundle, fundus_dir):
    root = tmp_path / "in"
    root.mkdir()
    for p in sorted((fundus_dir / "images").glob("*.jpg"))[:40]:
        (root / p.name).write_bytes(p.read_bytes())
    db = tmp_path / "r.sqlite"
    old = time.time() - 10
    for f in root.iterdir():
        os.utime(f, (old, old))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgescreen.runtime.batch.cli",
            "batch",
            str(root),
            "--bundle",
            str(bundle),
            "--db",
            str(db),
            "--watch",
            "--poll",
            "0.2",
            "--json",
            "--batch-size",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for(lambda: any(r[1] == "done" for r in states(db)), 60)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["this_run"]["interrupted"]
    rows = states(db)
    for _, state, _, result in rows:  # finished or pending, never half-written
        assert (state == "pending") == (result is None)
    # rerunning finishes the rest
    subprocess.run(
        [
            sys.executable,
            "-m",
            "edgescreen.runtime.batch.cli",
            "batch",
            str(root),
            "--bundle",
            str(bundle),
            "--db",
            str(db),
            "--json",
        ],
        check=True,
        capture_output=True,
    )
    assert [r[1] for r in states(db)] == ["done"] * 40
