"""Staged training: each stage selects by its own branch, hands its best epoch on, and the
stage options `accumulate` and `dropout` do what they say."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from edgescreen.runtime.errors import CardError  # noqa: E402
from edgescreen.train.config import StageConfig, TrainConfig, load_config  # noqa: E402
from edgescreen.train.data.loaders import load_generic_csv  # noqa: E402
from edgescreen.train.data.synth import synthesize  # noqa: E402
from edgescreen.train.loop import (  # noqa: E402
    StopTraining,
    Trainer,
    card_for,
    select_card,
    stage_best_file,
    task_metrics,
)

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def synth_cxr(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth-cxr")
    return load_generic_csv(synthesize("cxr", 72, out, seed=4, size=96), "cxr")


def _agcnn_cfg(**over) -> TrainConfig:
    def stage(name, output, train, **kw):
        args = {"output": output} if output else {}
        return StageConfig(
            name=name,
            epochs=2,
            loss="bce",
            loss_args=args,
            train=train,
            lr=0.003,
            batch_size=16,
            **kw,
        )

    base = dict(
        name="agcnn-staged",
        family="agcnn",
        task="cxr_findings",
        model={"tiny": True},
        input_size=96,
        seed=3,
        threads=1,
        stages=(
            stage("global", "global_scores", ("global_backbone.", "global_head.")),
            stage("local", "local_scores", ("local_backbone.", "local_head.")),
            stage("fusion", None, ("fusion_head.",)),
        ),
    )
    return TrainConfig(**{**base, **over})


def _weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=False)["model"]


def _part(state: dict[str, torch.Tensor], *prefixes: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(prefixes)}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


_REAL_VALIDATE = Trainer._validate


def _prefer_first_epochs(monkeypatch, real: list[tuple[str, float]]) -> None:
    """Make every stage's last epoch lose the selection, so best != last and the hand-over
    is visible; the real selection metric is kept in `real`."""

    def validate(self, model, size, select):
        val, chosen = _REAL_VALIDATE(self, model, size, select)
        real.append((select, chosen))
        epochs_so_far = sum(1 for s, _ in real if s == select)
        return val, chosen - 10.0 * (epochs_so_far == 2)

    monkeypatch.setattr(Trainer, "_validate", validate)


def test_each_stage_selects_by_its_branch_and_hands_its_best_on(synth_cxr, tmp_path, monkeypatch):
    real: list[tuple[str, float]] = []
    _prefer_first_epochs(monkeypatch, real)
    last_of_stage: dict[str, dict[str, torch.Tensor]] = {}
    out = tmp_path / "run"

    def keep_last(row):
        if row["epoch"] == 2:  # last.pt was just written: the stage's last-epoch weights
            last_of_stage[row["stage"]] = _weights(out / "last.pt")

    trainer = Trainer(
        _agcnn_cfg(),
        synth_cxr,
        out,
        cache_dir=tmp_path / "c",
        progress=False,
        on_epoch_end=keep_last,
    )
    result = trainer.run()

    # Which output selected each stage, recorded per epoch.
    assert [(r["stage"], r["select"]) for r in result.history] == [
        ("global", "global_scores"),
        ("global", "global_scores"),
        ("local", "local_scores"),
        ("local", "local_scores"),
        ("fusion", "exported"),
        ("fusion", "exported"),
    ]
    assert [s for s, _ in real] == ["global_scores"] * 2 + ["local_scores"] * 2 + [None] * 2

    # The recorded selection metric is the branch's own AUROC of the saved best weights.
    best = [torch.load(out / stage_best_file(i), weights_only=False) for i in range(3)]
    assert [b["epoch"] for b in best] == [1, 1, 1]
    model = trainer._build(0)
    card = card_for(trainer.cfg, model, trainer.labels)
    y = np.array([s.label for s in trainer.splits["val"]])
    for i, key in enumerate(("global_scores", "local_scores", None)):
        model.load_state_dict(best[i]["model"])
        outputs = trainer.predict(model, "val", extra=() if key is None else (key,))
        own = task_metrics(card if key is None else select_card(card, key), outputs, y)
        assert own["metric"] == pytest.approx(real[2 * i][1])
        assert best[i]["selected"]["metric"] == pytest.approx(real[2 * i][1])
    # Stage I: the fused head is untrained, so its AUROC is not what selected.
    assert result.history[0]["select_metric"] != result.history[0]["metric"]

    # Stage k+1 started from stage k's best epoch, not its last: the parts it froze
    # are exactly the best epoch's, and differ from the last epoch's.
    g = ("global_backbone.", "global_head.")
    lo = ("local_backbone.", "local_head.")
    assert _same(_part(best[1]["model"], *g), _part(best[0]["model"], *g))
    assert not _same(_part(best[0]["model"], *g), _part(last_of_stage["global"], *g))
    assert _same(_part(best[2]["model"], *g, *lo), _part(best[1]["model"], *g, *lo))
    assert not _same(_part(best[1]["model"], *lo), _part(last_of_stage["local"], *lo))

    # The model is the last stage's best epoch; the card says how it was chosen.
    assert _same(_weights(result.checkpoint), best[2]["model"])
    card_json = json.loads((out / "card.json").read_text())
    training = card_json["data_manifest"]["training"]
    assert [s["select"] for s in training["stages"]] == [
        "global_scores",
        "local_scores",
        "exported",
    ]
    assert [s["best_epoch"] for s in training["stages"]] == [1, 1, 1]
    assert training["initial_weights"]["source"] == "none"
    assert "from scratch" in training["initial_weights"]["statement"]


def test_resume_at_a_stage_boundary_hands_over_the_same_best(synth_cxr, tmp_path, monkeypatch):
    _prefer_first_epochs(monkeypatch, [])
    cfg = _agcnn_cfg(stages=_agcnn_cfg().stages[:2])
    cache = tmp_path / "c"
    whole = Trainer(cfg, synth_cxr, tmp_path / "whole", cache_dir=cache, progress=False).run()

    _prefer_first_epochs(monkeypatch, [])  # fresh epoch counts for the interrupted run
    seen = []

    def crash(row):
        seen.append(row)
        if len(seen) == 2:  # stage I done (its best is epoch 1), stage II not started
            raise StopTraining

    cut = tmp_path / "cut"
    with pytest.raises(StopTraining):
        Trainer(cfg, synth_cxr, cut, cache_dir=cache, progress=False, on_epoch_end=crash).run()
    _prefer_first_epochs(monkeypatch, [("global_scores", 0.0)] * 2)
    resumed = Trainer(cfg, synth_cxr, cut, cache_dir=cache, progress=False).run(resume=True)
    assert _same(_weights(resumed.checkpoint), _weights(whole.checkpoint))
    assert [r["select_metric"] for r in resumed.history] == [
        r["select_metric"] for r in whole.history
    ]


def test_an_unknown_select_is_refused_before_training(synth_cxr, tmp_path):
    cfg = _agcnn_cfg()
    bad = dataclasses.replace(cfg.stages[0], select="nope")
    with pytest.raises(ValueError, match=r"select 'nope' is not an output.*global_scores"):
        Trainer(
            dataclasses.replace(cfg, stages=(bad,)),
            synth_cxr,
            tmp_path,
            cache_dir=tmp_path / "c",
            progress=False,
        ).run()


# --------------------------------------------------------------------- stage mechanics


class _Toy(nn.Module):
    """Linear classifier with a dropout that records whether it was training."""

    export_outputs = {"scores": ("scores", "softmax")}

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(6, 3)
        self.drop = nn.Dropout(0.5)
        self.modes: list[tuple[bool, bool]] = []

    def forward(self, x):
        self.modes.append((self.training, self.drop.training))
        return {"scores": self.fc(self.drop(x) if self.drop.training else x)}


def _toy_trainer(synth_cxr, tmp_path, batches):
    trainer = Trainer(_agcnn_cfg(), synth_cxr, tmp_path, cache_dir=tmp_path / "c", progress=False)
    trainer.labels = ("a", "b", "c")
    trainer._loader = lambda *a, **k: batches
    return trainer


def _batches(n: int, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(size, 6, generator=g), torch.randint(0, 3, (size,), generator=g))
        for _ in range(n)
    ]


def _one_epoch(trainer, model, stage):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    trainer._train_epoch(model, stage, opt, sched, 6, 0, "toy")
    return sched.last_epoch


def test_accumulate_steps_once_per_group_on_the_mean_gradient(synth_cxr, tmp_path):
    small = _batches(7, 4)
    stage = StageConfig(name="s", epochs=1, loss="ce", dropout=False)
    # 7 batches, a step every 3: steps after batches 3, 6 and the short last group (7).
    model = _Toy()
    steps = _one_epoch(
        _toy_trainer(synth_cxr, tmp_path, small), model, dataclasses.replace(stage, accumulate=3)
    )
    assert steps == 3

    # Two batches of 4 accumulated == one batch of 8: the same single update.
    a, b = _Toy(), _Toy()
    _one_epoch(
        _toy_trainer(synth_cxr, tmp_path, small[:2]), a, dataclasses.replace(stage, accumulate=2)
    )
    joined = [(torch.cat([small[0][0], small[1][0]]), torch.cat([small[0][1], small[1][1]]))]
    _one_epoch(_toy_trainer(synth_cxr, tmp_path, joined), b, stage)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)
    assert not torch.equal(a.fc.weight, _Toy().fc.weight)  # it did train


def test_dropout_false_keeps_dropout_in_eval_mode(synth_cxr, tmp_path):
    batches = _batches(2, 4)
    for dropout in (True, False):
        model = _Toy()
        stage = StageConfig(name="s", epochs=1, loss="ce", dropout=dropout)
        _one_epoch(_toy_trainer(synth_cxr, tmp_path, batches), model, stage)
        assert model.modes == [(True, dropout)] * 2  # the model trains; dropout only if asked


def test_the_scheduler_counts_optimizer_steps_over_a_run(synth_cxr, tmp_path):
    stage = dataclasses.replace(_agcnn_cfg().stages[0], epochs=2, batch_size=8, accumulate=3)
    cfg = _agcnn_cfg(stages=(stage,))
    trainer = Trainer(cfg, synth_cxr, tmp_path / "run", cache_dir=tmp_path / "c", progress=False)
    trainer.run()
    batches = -(-len(trainer.splits["train"]) // 8)
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert state["scheduler"]["last_epoch"] == 2 * -(-batches // 3)
    # The cosine schedule spans exactly the optimizer steps: it ends at its floor.
    assert state["scheduler"]["_last_lr"][0] == pytest.approx(stage.lr * 0.05, rel=1e-6)


# --------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ("accumulate: 0", r"stages\[0\]\.accumulate.*>= 1"),
        ("accumulate: 1.5", r"stages\[0\]\.accumulate.*integer"),
        ("select: ''", r"stages\[0\]\.select.*output key"),
        ("dropout: maybe", r"stages\[0\]\.dropout.*true or false"),
    ],
)
def test_bad_stage_fields_name_the_field(tmp_path, stage, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nfamily: agcnn\ntask: cxr_findings\nmodel: {tiny: true}\ninput_size: 96\n"
        f"stages: [{{name: s, epochs: 1, loss: bce, {stage}}}]\n"
    )
    with pytest.raises(CardError, match=message):
        load_config(bad)


def test_stage_fields_default_and_load(tmp_path):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text(
        "name: x\nfamily: agcnn\ntask: cxr_findings\nmodel: {tiny: true}\ninput_size: 96\n"
        "stages:\n"
        "  - {name: a, epochs: 1, loss: bce, loss_args: {output: global_scores}}\n"
        "  - {name: b, epochs: 1, loss: bce, select: local_scores, accumulate: 12, dropout: false}\n"
        "  - {name: c, epochs: 1, loss: bce}\n"
    )
    a, b, c = load_config(cfg).stages
    assert (a.select, a.selects, a.accumulate, a.dropout) == (None, "global_scores", 1, True)
    assert (b.selects, b.accumulate, b.dropout) == ("local_scores", 12, False)
    assert c.selects is None  # the exported (fused) output


def test_the_card_says_where_the_weights_started(tmp_path):
    from edgescreen.runtime.card import sha256_file
    from edgescreen.train.loop import initial_weights

    assert initial_weights(_agcnn_cfg())["source"] == "none"
    weights = tmp_path / "resnet50-imagenet.pth"
    weights.write_bytes(b"weights")
    got = initial_weights(_agcnn_cfg(model={"pretrained": str(weights)}))
    assert got["source"] == "file" and got["file"] == weights.name
    assert got["sha256"] == sha256_file(weights)
    assert initial_weights(_agcnn_cfg(model={"pretrained": "imagenet-lite"}))["source"] == (
        "imagenet-lite"
    )
