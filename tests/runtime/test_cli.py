"""The `edgescreen` command as a user runs it (a real subprocess, real files)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

EXE = [sys.executable, "-m", "edgescreen.runtime.cli"]


def run(*args: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}  # rich folds long names at 80 columns in a pipe
    return subprocess.run(
        [*EXE, *map(str, args)], capture_output=True, text=True, timeout=300, env=env
    )


def test_screen_json(dr_bundle, fundus_dir, tmp_path):
    photos = sorted((fundus_dir / "images").glob("*.jpg"))[:3]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    out = run("screen", *photos, bad, "--bundle", dr_bundle, "--json")
    assert out.returncode == 1, out.stderr  # one image failed: the others are still reported
    rows = json.loads(out.stdout)
    assert len(rows) == 4
    assert all(isinstance(r["grade"], int) and r["decision"] for r in rows[:3])
    assert rows[3]["status"] == "failed" and "bad.png" in rows[3]["error"]


def test_screen_table_and_ok_exit(dr_bundle, fundus_dir):
    photo = sorted((fundus_dir / "images").glob("*.jpg"))[0]
    out = run("screen", photo, "--bundle", dr_bundle)
    assert out.returncode == 0, out.stderr
    assert photo.name in out.stdout and "grade" in out.stdout


def test_quality_json(fundus_dir, tmp_path):
    photo = sorted((fundus_dir / "images").glob("*.jpg"))[0]
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.full((400, 600, 3), 128, np.uint8))
    out = run("quality", photo, grey, "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert rows[0]["gradable"] is True and rows[0]["reasons"] == []
    assert rows[1]["gradable"] is False and rows[1]["reasons"]


def test_info_verify_refuses_a_tampered_bundle(dr_bundle, tmp_path):
    ok = run("info", dr_bundle, "--verify")
    assert ok.returncode == 0 and "verified" in ok.stdout
    bundle = tmp_path / "b"
    shutil.copytree(dr_bundle, bundle)
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[100] ^= 0xFF
    (bundle / "model.onnx").write_bytes(bytes(data))
    bad = run("info", bundle, "--verify")
    assert bad.returncode == 2 and "model.onnx" in bad.stderr and "sha256 mismatch" in bad.stderr
    screen = run("screen", sorted(Path(dr_bundle).glob("*.onnx"))[0], "--bundle", bundle)
    assert screen.returncode == 2 and "model.onnx" in screen.stderr


def test_info_json(dr_bundle):
    out = run("info", dr_bundle, "--json")
    assert json.loads(out.stdout)["card"]["task"] == "dr_grading"


def test_screen_heatmap_overlays_are_smooth(dr_bundle, fundus_dir, tmp_path):
    photos = sorted((fundus_dir / "images").glob("*.jpg"))[:2]
    out = run("screen", *photos, "--bundle", dr_bundle, "--heatmap", tmp_path / "heat", "--json")
    assert out.returncode == 0, out.stderr
    for photo in photos:
        picture = cv2.imread(str(tmp_path / "heat" / f"{photo.name}.heatmap.jpg"))
        assert picture is not None and picture.shape == (384, 384, 3)
        # Smooth, not blocks: neighbouring pixels differ little almost everywhere.
        step = np.abs(np.diff(picture.astype(np.int16), axis=1)).max(axis=2)
        assert np.percentile(step, 99) < 40


def test_stored_heatmap_is_upsampled_smoothly():
    from edgescreen.runtime.overlay import STORED_SIDE, heatmap_png

    cells = np.zeros((5, 5), np.float32)
    cells[2, 2] = 1.0  # one hot cell: blocky upsampling gives a 13 px plateau with hard edges
    stored = cv2.imdecode(np.frombuffer(heatmap_png(cells), np.uint8), cv2.IMREAD_GRAYSCALE)
    assert stored.shape == (STORED_SIDE, STORED_SIDE)
    row = stored[STORED_SIDE // 2].astype(int)
    assert np.abs(np.diff(row)).max() < 60  # no cliff
    assert (row == row.max()).sum() <= 4  # a peak, not a plateau


def test_heatmaps_of_same_named_photos_in_two_folders_are_both_kept(
    dr_bundle, fundus_dir, tmp_path
):
    photo = next((fundus_dir / "images").glob("*.jpg"))
    for folder in ("p1", "p2"):
        (tmp_path / folder).mkdir()
        shutil.copy(photo, tmp_path / folder / "left.jpg")
    out = run(
        "screen",
        tmp_path / "p1" / "left.jpg",
        tmp_path / "p2" / "left.jpg",
        "--bundle",
        dr_bundle,
        "--heatmap",
        tmp_path / "heat",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)) == 2
    assert sorted(p.name for p in (tmp_path / "heat").iterdir()) == [
        "left.jpg.1.heatmap.jpg",
        "left.jpg.heatmap.jpg",
    ]
