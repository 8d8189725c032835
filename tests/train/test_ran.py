"""Residual Attention Network: Attention-56 and Attention-92, module counts and shapes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from edgescreen.train.config import load_config  # noqa: E402
from edgescreen.train.models import build_model  # noqa: E402
from edgescreen.train.models.ran import AttentionModule, SoftMaskBranch  # noqa: E402

pytestmark = pytest.mark.torch


def _modules(model) -> list[int]:
    return [sum(isinstance(m, AttentionModule) for m in stage) for stage in model.stages]


def _mask_depth(module: AttentionModule) -> int:
    return sum(isinstance(m, SoftMaskBranch) for m in module.mask_branch.modules())


@pytest.mark.parametrize(("depth", "modules"), [(56, [1, 1, 1]), (92, [1, 2, 3])])
def test_attention_depths_have_the_papers_module_counts(depth, modules):
    with torch.device("meta"):
        full = build_model("ran", depth=depth, num_classes=1000, in_chans=3)
    assert _modules(full) == modules
    # Mask branches down-sample 3, 2, 1 times in stages 1, 2, 3, in every module.
    for stage, want in zip(full.stages, (3, 2, 1), strict=True):
        assert all(_mask_depth(m) == want for m in stage[1:])

    # 12 weighted layers per module (pre, 2 trunk, post units of 3 convs) + 20 outside
    # (stem conv, the three stage-entry units, the three tail units, the FC): 56 and 92.
    # As in ResNet, projection shortcuts are not counted, and neither is the mask branch.
    def weighted(module, skip=("shortcut",)):
        return [
            n
            for n, m in module.named_modules()
            if isinstance(m, torch.nn.Conv2d | torch.nn.Linear) and not any(k in n for k in skip)
        ]

    attention = [m for stage in full.stages for m in stage[1:]]
    assert all(len(weighted(m, ("shortcut", "mask"))) == 12 for m in attention)
    outside = [n for n in weighted(full) if not n.startswith("stages.") or n.split(".")[2] == "0"]
    assert 12 * len(attention) + len(outside) == depth
    params = sum(p.numel() for p in full.parameters())
    # The paper: Attention-56 31.9M, Attention-92 51.3M (ImageNet, 1000 classes).
    assert abs(params - {56: 31.9e6, 92: 51.3e6}[depth]) < 0.03 * params


@pytest.mark.parametrize("depth", [56, 92])
def test_tiny_forward_shapes(depth):
    torch.manual_seed(0)
    model = build_model("ran", tiny=True, depth=depth).eval()
    assert _modules(model) == {56: [1, 1, 1], 92: [1, 2, 3]}[depth]
    with torch.no_grad():
        out = model(torch.randn(2, 1, 96, 96))
    assert out["scores"].shape == (2, 4)
    # The deepest soft mask: stage 3 runs at 1/16 of the input.
    assert out["heatmap"].shape == (2, 1, 6, 6)
    assert (out["heatmap"] >= 0).all() and (out["heatmap"] <= 1).all()
    assert sum(p.numel() for p in model.parameters()) < {56: 0.3e6, 92: 0.5e6}[depth]


def test_modules_per_stage_and_bad_depths():
    model = build_model("ran", tiny=True, modules_per_stage=[2, 1, 1])
    assert _modules(model) == [2, 1, 1]
    with pytest.raises(ValueError, match="depth must be one of 56, 92"):
        build_model("ran", tiny=True, depth=128)
    with pytest.raises(ValueError, match="three counts"):
        build_model("ran", tiny=True, modules_per_stage=(1, 0, 1))


def test_configs_pick_the_depth():
    assert load_config("ran-92").model["depth"] == 92
    assert "depth" not in load_config("ran-full").model  # Attention-56 by default
    assert load_config("ran-tiny").model["tiny"] is True
