"""Stratified patient k-fold: folds train on disjoint validation patients, the test split
stays out, and the fold ensemble is one model (the mean of the folds) that exports."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgescreen.train.checkpoint import load_trained  # noqa: E402
from edgescreen.train.config import load_config  # noqa: E402
from edgescreen.train.data.loaders import load_generic_csv  # noqa: E402
from edgescreen.train.data.synth import synthesize  # noqa: E402
from edgescreen.train.kfold import FoldEnsemble, fold_splits  # noqa: E402
from edgescreen.train.models import ExportView, build_model  # noqa: E402

pytestmark = pytest.mark.torch


def _tiny_config():
    base = load_config("multitask-tiny")
    stage = dataclasses.replace(base.stages[1], epochs=1, batch_size=16, freeze=())  # focal stage
    return dataclasses.replace(
        base,
        model={"tiny": True},
        input_size=64,
        working_size=72,
        threads=1,
        stages=(stage,),
    )


def test_fold_splits_hold_the_test_split_out(tmp_path):
    data = load_generic_csv(synthesize("fundus", 40, tmp_path / "f", seed=4, size=64), "dr")
    cfg = _tiny_config()
    parts, test = fold_splits(data, cfg, 3)
    test_patients = {s.patient for s in test}
    vals = [{s.patient for s in val} for _, val in parts]
    assert test and len(parts) == 3
    for i, (train, _) in enumerate(parts):
        assert not {s.patient for s in train} & vals[i]
        assert not ({s.patient for s in train} | vals[i]) & test_patients
    assert sum(len(v) for v in vals) == len(set().union(*vals))  # each patient in one val
    pool = {s.patient for s in data.samples} - test_patients
    assert set().union(*vals) == pool


def test_ensemble_is_the_mean_of_its_members():
    torch.manual_seed(0)
    members = [build_model("multitask", tiny=True).eval() for _ in range(3)]
    ens = FoldEnsemble(members).eval()
    assert ens.export_outputs == members[0].export_outputs and ens.family == "multitask"
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, outs = ens(x), [m(x) for m in members]
    for key in ("scores", "grade_value", "heatmap", "reg", "ord"):
        torch.testing.assert_close(got[key], sum(o[key] for o in outs) / 3)
    # The builder's folds=K is the same module, so a saved ensemble's weights load back.
    again = build_model("multitask", tiny=True, folds=3)
    again.load_state_dict(ens.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x)["grade_value"], got["grade_value"])


def test_two_folds_train_and_the_ensemble_exports(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from edgescreen.export import export_bundle
    from edgescreen.runtime.card import load_card

    csv = synthesize("fundus", 40, tmp_path / "f", seed=5, size=64)
    cfg_path = tmp_path / "cfg.yaml"
    import yaml

    cfg_path.write_text(yaml.safe_dump(_tiny_config().to_dict()))
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgescreen.runtime.cli",
            "train",
            "--config",
            str(cfg_path),
            "--data",
            f"csv-dr:{csv.parent}",
            "--out",
            str(out),
            "--cache",
            str(tmp_path / "c"),
            "--folds",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert [f["fold"] for f in summary["folds"]] == [0, 1]

    # Both folds trained; no patient is in two folds' validation, nor in the test split.
    for f in (0, 1):
        assert (out / f"fold-{f}" / "model.pt").is_file()
    splits = [json.loads((out / f"fold-{f}" / "splits.json").read_text()) for f in (0, 1)]
    val = [{e["patient"] for e in s["val"]} for s in splits]
    test = {e["patient"] for e in splits[0]["test"]}
    assert val[0] and val[1] and not val[0] & val[1]
    assert test == {e["patient"] for e in splits[1]["test"]} and not (val[0] | val[1]) & test
    assert {e["patient"] for e in splits[0]["train"]} == val[1]
    ens_splits = json.loads((out / "splits.json").read_text())
    assert {e["patient"] for e in ens_splits["train"]} == val[0] | val[1]
    assert {e["patient"] for e in ens_splits["test"]} == test

    # The ensemble loads like any run and is the mean of the fold models.
    ens = load_trained(out)
    folds = [load_trained(out / f"fold-{f}").model for f in (0, 1)]
    assert (
        ens.card.family == "multitask"
        and ens.card.outputs == load_trained(out / "fold-0").card.outputs
    )
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got, outs = ens.model(x), [m(x) for m in folds]
    for key in ens.model.export_outputs:
        torch.testing.assert_close(got[key], (outs[0][key] + outs[1][key]) / 2)

    # It exports to ONNX through the project's export, and the ONNX is the ensemble.
    bundle = tmp_path / "bundle"
    export_bundle(out / "model.pt", bundle, precisions=("fp32",), allow_drift=True, progress=False)
    card = load_card(bundle)
    session = ort.InferenceSession(
        str(bundle / card.artifacts["onnx-fp32"].file), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    assert names == list(ens.model.export_outputs)
    onnx_out = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ref = ExportView(ens.model)(x)
    for name, a, b in zip(names, onnx_out, ref, strict=True):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-4, rtol=1e-4, err_msg=name)
