"""Render the HTML report in headless Chromium and check the screenshot shows it (slow)."""

from __future__ import annotations

import shutil
import subprocess

import cv2
import numpy as np
import pytest

from edgescreen.runtime.batch import BatchOptions, Ledger, run_batch
from edgescreen.runtime.batch.report import write_html

pytestmark = pytest.mark.slow


def test_report_renders_in_chromium(tmp_path, fundus_dir):
    from conftest import make_bundle

    browser = (
        shutil.which("chromium")
        or shutil.which("chromium-browser")
        or shutil.which("google-chrome")
    )
    if browser is None:
        pytest.skip("chromium is not installed")
    bundle = make_bundle(tmp_path / "dr", size=32)
    root = tmp_path / "in"
    root.mkdir()
    for p in sorted((fundus_dir / "images").glob("*.jpg"))[:6]:
        shutil.copy(p, root / p.name)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 no")
    db = tmp_path / "r.sqlite"
    run_batch(BatchOptions(in_dir=root, bundle=bundle, db=db))
    report = tmp_path / "report.html"
    ledger = Ledger(db)
    write_html(ledger, root, report, card=None)
    ledger.close()
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--window-size=1200,900",
            f"--screenshot={shot}",
            report.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (900, 1200)
    # Not a blank page: text, badges and the thumbnails put colour and contrast on it.
    assert image.std() > 20
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    assert np.count_nonzero(hsv[:, :, 1] > 100) > 2000  # coloured pixels: photos, heatmaps, badges
