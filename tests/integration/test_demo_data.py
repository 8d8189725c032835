"""The demo's data: who trains, who calibrates, who judges the INT8 search, who is held out."""

from __future__ import annotations

from edgescreen.benchmarks.demo import prepare_data


def test_calibration_search_and_held_out_patients_are_disjoint(tmp_path, fundus_dir):
    train, calib, search, held_out = prepare_data(tmp_path, real_dir=fundus_dir, n_synth=12, seed=1)
    patients = {
        name: {s.patient for s in part}
        for name, part in (("calib", calib), ("search", search), ("held_out", held_out))
    }
    assert not patients["calib"] & patients["search"]
    assert not patients["calib"] & patients["held_out"]
    assert not patients["search"] & patients["held_out"]
    # The search judges on real photos only, and enough of them that its 1% flip gate
    # allows one flip (on fewer than 100 a single near-threshold image fails it).
    assert len(search) >= 100
    assert all(s.path is not None and "fundus-dr-srahim" in str(s.path) for s in search)
    # The held-out photos never train; the search's photos validate (select epochs, fit
    # thresholds) but never update weights.
    trained = {s.path for s in train.samples if s.split == "train"}
    assert not trained & {s.path for s in held_out}
    assert not trained & {s.path for s in search}
