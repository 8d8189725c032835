"""Zoom-in-Net as the paper describes it: a three-conv A-Net gate, greedy patch picking on
the resized gated map (s x s window, early stop), two-eye M-Net features with a single-eye
fallback that is the exported graph, and a last stage that trains M-Net and A-Net too."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from edgescreen.train.config import load_config  # noqa: E402
from edgescreen.train.data.dataset import ScreeningDataset, fellow_eyes  # noqa: E402
from edgescreen.train.data.records import Sample  # noqa: E402
from edgescreen.train.models import ExportView, build_model  # noqa: E402
from edgescreen.train.models.zoomin import greedy_peaks  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model("zoomin", tiny=True)
    with torch.no_grad():  # non-trivial BatchNorm statistics, as a trained model has
        for seed in range(2):
            m.train()(_images(4, seed))
    return m.eval()


def _images(n: int, seed: int = 0, size: int = 128) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------- A-Net


def test_anet_gate_has_three_convs(model):
    convs = [m for m in model.gate if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3
    assert convs[0].in_channels == model.mnet.num_features
    assert convs[-1].out_channels == 5  # one gate map per grade
    with torch.no_grad():
        out = model.mnet_anet_forward(_images(2))
    torch.testing.assert_close(out["attention"].sum(dim=(2, 3)), torch.ones(2, 5))


# ------------------------------------------------------------------------- peak picking


def test_greedy_peaks_respect_the_suppression_window():
    maps = torch.zeros(1, 20, 20)
    maps[0, 5, 5] = 10.0
    maps[0, 5, 7] = 9.0  # 2 cells from the top peak: inside the s = 6 window (|d| < 3)
    maps[0, 5, 8] = 8.0  # 3 cells away: just outside it
    maps[0, 15, 15] = 7.0
    got, valid = greedy_peaks(maps, 3, window=6)
    assert got[0].tolist() == [[5, 5], [5, 8], [15, 15]] and valid.all()
    for seed in range(5):
        rand = torch.rand(2, 30, 30, generator=torch.Generator().manual_seed(seed))
        picks = greedy_peaks(rand, 4, window=8)[0]
        d = (picks[:, :, None] - picks[:, None]).abs().amax(dim=3)
        off = ~torch.eye(4, dtype=torch.bool)
        assert (d[:, off] >= 4).all()  # no pick inside an earlier pick's 8 x 8 window


def test_greedy_peaks_stop_early_when_what_is_left_is_weak():
    maps = torch.zeros(2, 16, 16)
    maps[:, 3, 3] = 10.0
    maps[0, 12, 12] = 6.0  # >= half of the first peak: a second lesion
    maps[0, 3, 12] = 2.0  # weak: picking stops here, and stays stopped
    maps[1, 12, 12] = 1.0  # one lesion only
    picks, valid = greedy_peaks(maps, 4, window=4, stop=0.5)
    assert valid[0].tolist() == [True, True, False, False]
    assert picks[0, :2].tolist() == [[3, 3], [12, 12]]
    assert valid[1].tolist() == [True, False, False, False]
    # Without a stop all N are kept; a map fully masked yields invalid picks.
    assert greedy_peaks(maps, 4, window=4, stop=0.0)[1].all()
    assert greedy_peaks(torch.rand(1, 4, 4), 3, window=8)[1].tolist() == [[True, False, False]]


def test_patches_come_from_the_resized_gated_map_at_full_resolution(model):
    h = w = 4  # the tiny M-Net's 64 px input gives a 4 x 4 map (stride 16)
    gated = torch.zeros(1, 5, h, w)
    gated[0, 3, 1, 2] = 1.0  # a grade-3 lesion in cell (1, 2)
    gated[0, 0, 3, 3] = 5.0  # grade 0 (no DR) never draws a patch
    centres, valid = model.select_patches(gated, (128, 128))
    assert valid[0].tolist() == [True, False]  # nothing else reaches half of the peak
    # Cell (1, 2) of 4 covers input pixels y 32..64, x 64..96; the resized map peaks there.
    cy, cx = centres[0, 0].tolist()
    assert 32 <= cy <= 64 and 64 <= cx <= 96
    # The window is s = 26 px at M-Net's 64 px, i.e. 52 px of the 128 px input.
    assert model.selection_window((128, 128)) == 26


def test_cnet_max_pool_ignores_early_stopped_patches(model):
    x = _images(1, seed=3)
    centres = torch.tensor([[[40.0, 40.0], [90.0, 90.0]]])
    with torch.no_grad():
        only_first = model.cnet_forward(x, centres[:, :1])
        masked = model.cnet_forward(x, centres, torch.tensor([[True, False]]))
        both = model.cnet_forward(x, centres, torch.tensor([[True, True]]))
    torch.testing.assert_close(masked, only_first)
    assert not torch.allclose(both, only_first)


# ----------------------------------------------------------------------------- two eyes


def test_two_eye_features_are_concatenated_with_a_single_eye_fallback(model):
    c = model.mnet.num_features
    assert model.mnet_head.in_features == 2 * c
    assert model.fusion_head.in_features == 2 * c + model.cnet.num_features
    x, other = _images(3, seed=1), _images(3, seed=2)
    with torch.no_grad():
        single = model(x)
        fallback = model(torch.stack([x, x], dim=1))
        pair = model(torch.stack([x, other], dim=1))
    for key in ("scores", "mnet_scores", "anet_scores", "heatmap", "centres"):
        assert single[key].shape == pair[key].shape
        torch.testing.assert_close(fallback[key], single[key], atol=1e-5, rtol=1e-5)
    # The fellow eye changes the grades, not where this eye's attention looks.
    assert not torch.allclose(pair["scores"], single["scores"])
    assert not torch.allclose(pair["mnet_scores"], single["mnet_scores"])
    torch.testing.assert_close(pair["heatmap"], single["heatmap"], atol=1e-5, rtol=1e-5)


def test_pair_trains_both_eyes_end_to_end():
    m = build_model("zoomin", tiny=True).train()
    out = m(torch.stack([_images(2, seed=1), _images(2, seed=2)], dim=1))
    torch.nn.functional.cross_entropy(out["scores"], torch.tensor([0, 3])).backward()
    assert m.mnet_head.weight.grad is None  # the fused head reads d_M, not y_M
    stem = next(p for n, p in m.named_parameters() if n.startswith("mnet."))
    assert stem.grad is not None and stem.grad.abs().sum() > 0


def test_fallback_is_the_exported_graph(model, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "zoomin.onnx"
    view = ExportView(model)
    names = list(model.export_outputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            view,
            (_images(2),),
            str(path),
            input_names=["input"],
            output_names=names,
            opset_version=17,
            dynamic_axes={"input": {0: "N"}, **{k: {0: "N"} for k in names}},
            dynamo=False,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _images(3, seed=9)  # another batch size than traced: the batch stays symbolic
    got = dict(zip(names, session.run(None, {"input": x.numpy()}), strict=True))
    with torch.no_grad():
        fallback = model(torch.stack([x, x], dim=1))
    for key in names:
        np.testing.assert_allclose(got[key], fallback[key].numpy(), atol=1e-4, rtol=1e-4)


def test_export_view_equals_the_model(model):
    from edgescreen.export.graph_crop import export_view

    x = _images(2, seed=4)
    with torch.no_grad():
        want = model(x)
        got = export_view(model)(x)
    for key, value in zip(model.export_outputs, got, strict=True):
        torch.testing.assert_close(value, want[key], atol=1e-5, rtol=1e-5)


def test_fellow_eyes_pairs_patients():
    def s(patient, eye=None):
        return Sample(None, 0, patient, meta={"eye": eye} if eye else {})

    samples = [
        s("a"),
        s("b", "left"),
        s("a"),
        s("b", "right"),
        s("c"),  # one image
        s("d", "L"),
        s("d", "L"),  # follow-up of the same eye
        s("e"),
        s("e"),
        s("e"),  # three unlabelled images: ambiguous
    ]
    assert fellow_eyes(samples) == [2, 3, 0, 1, None, None, None, None, None, None]


def test_paired_dataset_yields_the_pair_or_the_fallback():
    from edgescreen.runtime.preprocess import PreprocessConfig

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (40, 40), dtype=np.uint8) for _ in range(3)]
    patients = ["p", "p", "q"]
    samples = [
        Sample(None, i, pid, array=a)
        for i, (pid, a) in enumerate(zip(patients, arrays, strict=True))
    ]
    cfg = PreprocessConfig.default("oct", 32)
    plain = ScreeningDataset(samples, cfg)
    paired = ScreeningDataset(samples, cfg, pair_eyes=True)
    x0, x2 = paired[0][0], paired[2][0]
    assert x0.shape == (2, *plain[0][0].shape)
    assert torch.equal(x0[0], plain[0][0]) and torch.equal(x0[1], plain[1][0])
    assert torch.equal(x2[0], x2[1])  # no fellow eye: the image stands in for it
    always = ScreeningDataset(samples, cfg, pair_eyes=True, train=True, fellow_dropout=1.0)
    x = always[0][0]
    assert torch.equal(x[0], x[1])  # training also sees the exported single-eye path


# ---------------------------------------------------------------------------- the stages


@pytest.mark.parametrize("name", ["zoomin-tiny", "zoomin-full"])
def test_last_stage_trains_mnet_and_anet_with_cnet(name):
    cfg = load_config(name)
    m = build_model("zoomin", tiny=True)
    m_net, a_net, last = cfg.stages

    def trained(stage):
        return {n for n, _ in m.named_parameters() if not stage.train or n.startswith(stage.train)}

    params = {n for n, _ in m.named_parameters()}
    assert trained(last) == params  # M-Net, A-Net, C-Net and both heads
    assert any(n.startswith("mnet.") for n in trained(last))
    assert {n for n in params if n.startswith(("score_conv.", "gate."))} <= trained(last)
    assert not any(n.startswith("mnet.") for n in trained(a_net))  # A-Net with M-Net fixed
    assert not any(n.startswith(("cnet.", "fusion_head.")) for n in trained(m_net))
    assert (m_net.selects, a_net.selects) == ("mnet_scores", "anet_scores")
    if name == "zoomin-full":
        assert last.accumulate == 12 and all(s.optimizer == "sgd" for s in cfg.stages)
        assert cfg.input_size == 1230 and cfg.model["mnet_size"] == 492
        assert (cfg.model["patch_size"], cfg.model["window"], cfg.model["num_patches"]) == (
            384,
            200,
            4,
        )


def test_near_ties_pick_the_same_cell_whatever_the_float_noise():
    """An exported graph computes the map to ~1e-6: picks must not hang on that noise."""
    from edgescreen.train.models.zoomin import greedy_peaks

    maps = torch.zeros(1, 8, 8)
    maps[0, 2, 5] = 1.0
    maps[0, 6, 1] = 1.0
    noisy = maps.clone()
    noisy[0, 6, 1] += 1e-6  # the second peak, a hair higher: same grid step, first one wins
    want, _ = greedy_peaks(maps, 1, 2)
    got, _ = greedy_peaks(noisy, 1, 2)
    assert want.tolist() == got.tolist() == [[[2, 5]]]
