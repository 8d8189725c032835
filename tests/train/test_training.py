"""Training loop: exact resume across stages, checkpoints, fitted thresholds, the train CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from edgescreen.train.config import StageConfig, TrainConfig, load_config
from edgescreen.train.data.loaders import load_generic_csv
from edgescreen.train.data.synth import synthesize
from edgescreen.train.loop import StopTraining, Trainer


@pytest.fixture(scope="module")
def synth_fundus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth-fundus")
    return load_generic_csv(synthesize("fundus", 48, out, seed=3, size=96), "dr")


def _cfg(**over) -> TrainConfig:
    base = dict(
        name="m2cnn-resume",
        family="m2cnn",
        task="dr_grading",
        model={"tiny": True},
        input_size=48,
        working_size=64,
        seed=7,
        threads=1,
        stages=(
            StageConfig(
                name="cell-1", epochs=2, loss="m2cnn", input_size=32, lr=0.003, batch_size=8
            ),
            StageConfig(
                name="cell-2",
                epochs=2,
                loss="m2cnn",
                input_size=48,
                before="grow",
                lr=0.002,
                batch_size=8,
            ),
        ),
    )
    return TrainConfig(**{**base, **over})


def test_resume_equals_an_uninterrupted_run(synth_fundus, tmp_path):
    cfg = _cfg()
    cache = tmp_path / "cache"
    whole = Trainer(cfg, synth_fundus, tmp_path / "whole", cache_dir=cache, progress=False).run()

    for stop_after in (
        1,
        2,
        3,
    ):  # inside stage 1, at the stage boundary, inside stage 2 (after grow)
        out = tmp_path / f"cut{stop_after}"
        seen = []

        def crash(row, seen=seen, stop_after=stop_after):
            seen.append(row)
            if len(seen) == stop_after:
                raise StopTraining

        with pytest.raises(StopTraining):
            Trainer(
                cfg, synth_fundus, out, cache_dir=cache, progress=False, on_epoch_end=crash
            ).run()
        resumed = Trainer(cfg, synth_fundus, out, cache_dir=cache, progress=False).run(resume=True)

        a = torch.load(whole.checkpoint, weights_only=False)["model"]
        b = torch.load(resumed.checkpoint, weights_only=False)["model"]
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"stopped after epoch {stop_after}: {key} differs"
        assert [r["metric"] for r in resumed.history] == [r["metric"] for r in whole.history]
        assert resumed.val_metric == whole.val_metric


def test_checkpoint_card_and_thresholds(synth_fundus, tmp_path):
    result = Trainer(
        _cfg(stages=_cfg().stages[:1]),
        synth_fundus,
        tmp_path / "run",
        cache_dir=tmp_path / "c",
        progress=False,
    ).run()
    card = json.loads((tmp_path / "run" / "card.json").read_text())
    assert card["task"] == "dr_grading" and card["family"] == "m2cnn"
    assert (
        len(card["decision"]["cutpoints"]) == 4
    )  # fitted on validation for the grade_value output
    assert card["decision"]["referable_threshold"] is not None
    assert set(card["data_manifest"]["splits"]) == {"train", "val", "test"}
    assert "qwk" in card["metrics"]["validation"]
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    train_patients = {r["patient"] for r in splits["train"]}
    assert train_patients.isdisjoint({r["patient"] for r in splits["val"]})
    assert result.metric_name == "qwk"


def test_a_checkpoint_from_another_config_is_refused(synth_fundus, tmp_path):
    Trainer(
        _cfg(stages=_cfg().stages[:1]),
        synth_fundus,
        tmp_path,
        cache_dir=tmp_path / "c",
        progress=False,
    ).run()
    with pytest.raises(ValueError, match="different config"):
        Trainer(
            _cfg(seed=8, stages=_cfg().stages[:1]),
            synth_fundus,
            tmp_path,
            cache_dir=tmp_path / "c",
            progress=False,
        ).run(resume=True)


def test_shipped_configs_load():
    from edgescreen.train.config import CONFIG_DIR

    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert {"multitask-tiny", "multitask-full", "ran-tiny", "ran-full"} <= set(names)
    for name in names:
        assert load_config(name).stages


def test_bad_config_names_the_field(tmp_path):
    from edgescreen.runtime.errors import CardError

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nfamily: ran\ntask: oct_classification\nmodel: {}\ninput_size: 64\n"
        "stages: [{name: s, epochs: two, loss: ce}]\n"
    )
    with pytest.raises(CardError, match=r"bad\.yaml.*stages\[0\]\.epochs"):
        load_config(bad)


def test_train_cli_runs(tmp_path):
    data = synthesize("oct", 24, tmp_path / "oct", seed=1, size=64)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "name: oct-cli\nfamily: ran\ntask: oct_classification\nmodel: {tiny: true, in_chans: 1}\n"
        "channels: 1\ninput_size: 32\nthreads: 1\nstages: [{name: main, epochs: 1, loss: ce, batch_size: 8}]\n"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgescreen.runtime.cli",
            "train",
            "--config",
            str(cfg),
            "--data",
            f"csv-oct:{data}",
            "--out",
            str(tmp_path / "run"),
            "--cache",
            str(tmp_path / "c"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout[out.stdout.index("{") :])
    assert summary["metric"] == "accuracy" and (tmp_path / "run" / "model.pt").exists()
