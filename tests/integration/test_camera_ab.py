"""benchmarks/camera_ab: an earlier checkout's runtime under this tree's benchmark; the table."""

from __future__ import annotations

import os
import subprocess
import sys

from edgescreen.benchmarks.camera_ab import _namespace, markdown, summary


def test_earlier_checkout_runtime_is_the_one_imported(tmp_path):
    checkout = tmp_path / "checkout"
    for name in ("runtime", "train", "export"):
        (checkout / name).mkdir(parents=True)
        (checkout / name / "__init__.py").write_text(f"WHO = 'earlier {name}'\n")
    here = tmp_path / "ours"
    here.mkdir()
    (here / "__init__.py").write_text("WHO = 'our benchmarks'\n")
    shim = tmp_path / "shim"
    shim.mkdir()
    env = dict(os.environ, PYTHONPATH=str(_namespace(checkout, here, shim)))
    code = (
        "import edgescreen.runtime as r, edgescreen.benchmarks as b, edgescreen.export as e; "
        "print(r.WHO, '|', b.WHO, '|', e.WHO)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    # The installed (editable) edgescreen must not win over the checkout on PYTHONPATH.
    assert out.stdout.strip() == "earlier runtime | our benchmarks | earlier export"


def _run(rate: float, agree: int) -> dict:
    def side(r: float) -> dict:
        return {
            "images_per_s": r,
            "decode_alone_per_s": 2 * r,
            "prepare_only_per_s": 1.5 * r,
            "ms_per_image": {"decode": 10.0, "quality": 5.0, "preprocess": 2.0, "infer": 4.0},
        }

    return {
        "photos": 40,
        "originals": side(rate),
        "copies_768": side(3 * rate),
        "agreement": {"same_grade_and_decision": agree},
    }


def test_ratios_are_taken_round_by_round_and_tabled():
    runs = {
        "full decode": [_run(10, 34), _run(20, 34)],
        "before": [_run(30, 35), _run(40, 35)],
        "now": [_run(50, 36), _run(120, 34)],
    }
    table = summary(runs)
    # Round 1: 50 / 10; round 2: 120 / 20 (a slow round is compared with its own baseline).
    assert table["now"]["vs_full_decode"] == [5.0, 6.0]
    assert table["full decode"]["vs_full_decode"] == [1.0, 1.0]
    assert table["now"]["agreement"] == [36, 34]
    assert table["before"]["originals"]["images_per_s"] == [30, 40]
    md = markdown(table, machine="test cpu", source="synthetic", photos=40)
    assert "| now | originals | 85.0 [50.0-120.0] | 5.50 [5.00-6.00]× |" in md
    assert "35 [34-36] of 40" in md
    assert md.count("\n| ") == 1 + 6  # the header, then two inputs for each of three modes
