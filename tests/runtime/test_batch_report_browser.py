"""Render the HTML report in headless Chromium and check the screenshot shows it (slow).

CI (.ci/run) installs Debian's chromium and sets EDGESCREEN_REQUIRE_BROWSER=1, so there a
missing browser fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import cv2
import numpy as np
import pytest

from edgescreen.runtime.batch import BatchOptions, Ledger, run_batch
from edgescreen.runtime.batch.report import write_html

pytestmark = pytest.mark.slow


def _photos(root, n: int = 6) -> None:
    """Real shared photos when they are beside the checkout, else fundus-like ones."""
    from conftest import SHARED_DATA, fundus_like

    real = SHARED_DATA / "fundus-dr-srahim" / "images"
    if real.is_dir():
        for p in sorted(real.glob("*.jpg"))[:n]:
            shutil.copy(p, root / p.name)
        return
    for i in range(n):
        cv2.imwrite(str(root / f"photo{i}.jpg"), fundus_like(i, side=320))


def test_report_renders_in_chromium(tmp_path):
    from conftest import make_bundle

    browser = (
        shutil.which("chromium")
        or shutil.which("chromium-browser")
        or shutil.which("google-chrome")
    )
    if browser is None:
        if os.environ.get("EDGESCREEN_REQUIRE_BROWSER"):
            pytest.fail("chromium is required here (EDGESCREEN_REQUIRE_BROWSER) but not installed")
        pytest.skip("chromium is not installed")
    bundle = make_bundle(tmp_path / "dr", size=32)
    root = tmp_path / "in"
    root.mkdir()
    _photos(root)
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
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
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
