"""kill -9 an `edgescreen batch` at 20+ random points; rerunning must finish it exactly as an
uninterrupted run would: every image once, the same states and results.

Crash points: half of the kills come from the process itself at its k-th crash point
(EDGESCREEN_BATCH_CRASH_AT: during discovery, inside an ingest transaction, before
screening, between the UPDATE and the COMMIT of a result, right after a commit), half
from SIGKILL after a random delay (mid-inference, mid-decode, anywhere).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import fundus_like

pytestmark = pytest.mark.slow

N_SYNTH = 200
KILLS = 22


def fundus(seed: int) -> np.ndarray:
    return fundus_like(seed, 256)


def make_uploads(root: Path, fundus_dir: Path) -> None:
    for i in range(N_SYNTH):
        folder = root / f"site{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        img = fundus(i)
        if i % 17 == 0:
            img = cv2.GaussianBlur(img, (0, 0), 8)  # ungradable
        ext = ".jpg" if i % 2 else ".png"
        cv2.imwrite(str(folder / f"P{i // 2:03d}_{'L' if i % 2 else 'R'}{ext}"), img)
    for i in range(0, N_SYNTH, 40):  # re-uploads under another name
        src = next((root / f"site{i % 4}").glob(f"P{i // 2:03d}_*"))
        shutil.copy(src, root / f"copy of {src.name}")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(300))
    for p in sorted((fundus_dir / "images").glob("*.jpg"))[:6]:
        shutil.copy(p, root / p.name)


def batch(root: Path, bundle: Path, db: Path, env=None) -> subprocess.Popen:
    return subprocess.Popen(
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
            "--batch-size",
            "4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


def snapshot(db: Path) -> dict:
    con = sqlite3.connect(db)
    items = {}
    for key, path, state, decision, error, notes, rj, heat, fmt in con.execute(
        "SELECT key, path, state, decision, error, notes, result_json, heatmap_png, format FROM items"
    ):
        result = json.loads(rj) if rj else None
        if result:
            result.pop("timings_ms")
        heat = (
            None
            if heat is None
            else cv2.imdecode(np.frombuffer(heat, np.uint8), cv2.IMREAD_UNCHANGED)
        )
        items[key] = dict(
            path=path,
            state=state,
            decision=decision,
            error=error,
            notes=notes,
            result=result,
            heat=heat,
            format=fmt,
        )
    paths = dict(
        con.execute(
            "SELECT paths.path, items.key FROM paths JOIN items ON items.id = paths.item_id"
        )
    )
    con.close()
    return {"items": items, "paths": paths}


def progress(db: Path, n_items: int) -> tuple[int, int]:
    """(paths recorded, items not finished yet) in the crashed ledger."""
    if not db.exists():
        return 0, n_items
    con = sqlite3.connect(db)
    try:
        recorded = con.execute("SELECT COUNT(*) FROM paths").fetchone()[0]
        finished = con.execute("SELECT COUNT(*) FROM items WHERE state != 'pending'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0, n_items
    finally:
        con.close()
    return recorded, n_items - finished


def test_kill_9_anywhere_then_resume_matches_an_uninterrupted_run(tmp_path, fundus_dir):
    from conftest import make_bundle

    bundle = make_bundle(tmp_path / "bundle", size=32)
    root = tmp_path / "in"
    make_uploads(root, fundus_dir)
    n_files = sum(1 for p in root.rglob("*") if p.is_file())
    assert n_files >= 200

    ref_db = tmp_path / "ref.sqlite"
    proc = batch(root, bundle, ref_db)
    start = time.monotonic()
    out, err = proc.communicate(timeout=120)
    full_run_s = time.monotonic() - start
    assert proc.returncode == 1, err.decode()  # broken.jpg failed; everything else finished
    ref = snapshot(ref_db)

    start = time.monotonic()  # a rerun with nothing to do: start-up plus discovery
    batch(root, bundle, ref_db).communicate(timeout=120)
    startup_s = time.monotonic() - start
    per_item = max(full_run_s - startup_s, 0.5) / len(ref["items"])

    seed = int(os.environ.get("EDGESCREEN_CRASH_SEED", "20240611"))
    rng = random.Random(seed)
    db = tmp_path / "crash.sqlite"
    kills = attempts = 0
    killed_at: list[tuple[str, int]] = []  # (how, items unfinished before the run)
    while kills < KILLS and attempts < 4 * KILLS:
        attempts += 1
        recorded, unfinished = progress(db, len(ref["items"]))
        after_discovery = (
            (n_files - recorded) + 1 + 2 * unfinished
        )  # ingest, before-screen, 2 per result
        if unfinished and attempts % 3 == 0:  # killed from outside after a random delay
            proc = batch(root, bundle, db)
            try:
                proc.communicate(
                    timeout=rng.uniform(0.3, startup_s + per_item * min(unfinished, 40))
                )
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.communicate()
        else:  # the process kills itself at its k-th crash point: in discovery, or a little after
            if not unfinished or attempts % 5 == 1:
                k = rng.randint(1, n_files)
            else:  # small steps, so the kills spread over the whole batch
                k = n_files + rng.randint(1, min(after_discovery, 80))
            proc = batch(root, bundle, db, env={"EDGESCREEN_BATCH_CRASH_AT": str(k)})
            proc.communicate(timeout=120)
        if proc.returncode == -signal.SIGKILL:
            kills += 1
            killed_at.append(("timer" if unfinished and attempts % 3 == 0 else "hook", unfinished))
    assert kills >= 20, f"only {kills} runs were killed (seed {seed})"
    mid_batch = [how for how, unfinished in killed_at if unfinished]
    assert len(mid_batch) >= 8 and mid_batch.count("timer") >= 3, killed_at

    proc = batch(root, bundle, db)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err.decode()
    summary = json.loads(out)
    assert summary["pending"] == 0
    got = snapshot(db)

    # every file exactly once, mapped to the same content as the uninterrupted run
    assert got["paths"] == ref["paths"]
    assert got["items"].keys() == ref["items"].keys()
    for key, want in ref["items"].items():
        have = got["items"][key]
        for field in ("path", "state", "decision", "error", "notes", "result", "format"):
            assert have[field] == want[field], (seed, key, field, have[field], want[field])
        if want["heat"] is None:
            assert have["heat"] is None
        else:  # float noise between batch compositions may move a quantised level by one
            assert np.abs(have["heat"].astype(int) - want["heat"].astype(int)).max() <= 1
