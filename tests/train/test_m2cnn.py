"""M²CNN's cells are Inception-ResNet-v2's, and the added cells keep the last map ~5x5.

The full-size network is built on the meta device: shapes and parameter counts without
allocating 54M weights or computing a 720 px forward pass.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from edgescreen.train.models import build_model  # noqa: E402
from edgescreen.train.models.m2cnn import (  # noqa: E402
    ConcatCell,
    ResidualCell,
    normal_cell_c,
    reduction_cell_b,
)

pytestmark = pytest.mark.torch


def _convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def test_normal_cell_c_is_inception_resnet_c():
    cell = normal_cell_c(2080, 1.0)
    # Branches 1x1 | 1x1 -> 1x3 -> 3x1 (192 | 192-224-256), each conv-BN-ReLU.
    shapes = [[(c.out_channels, c.kernel_size) for c in _convs(b)] for b in cell.branches]
    assert shapes == [[(192, (1, 1))], [(192, (1, 1)), (224, (1, 3)), (256, (3, 1))]]
    assert all(
        isinstance(b[i][1], nn.BatchNorm2d) and isinstance(b[i][2], nn.ReLU)
        for b in cell.branches
        for i in range(len(b))
    )
    # A linear 1x1 projection back to the input width, residual scale 0.2, then ReLU.
    p = cell.project
    assert (p.in_channels, p.out_channels, p.kernel_size) == (448, 2080, (1, 1))
    assert p.bias is not None and cell.scale == pytest.approx(0.2)
    small = normal_cell_c(16, 1 / 8).eval()
    x = torch.randn(2, 16, 5, 5)
    with torch.no_grad():
        up = small.project(torch.cat([b(x) for b in small.branches], 1))
        torch.testing.assert_close(small(x), torch.relu(x + 0.2 * up))
        small.zero_init()
        x = x.relu()
        torch.testing.assert_close(small(x), x)  # identity on post-ReLU input


def test_reduction_cell_b_is_inception_resnet_reduction_b():
    cell = reduction_cell_b(1088, 1.0, same=False)
    shapes = [[(c.out_channels, c.kernel_size, c.stride) for c in _convs(b)] for b in cell.branches]
    assert shapes == [
        [(256, (1, 1), (1, 1)), (384, (3, 3), (2, 2))],
        [(256, (1, 1), (1, 1)), (288, (3, 3), (2, 2))],
        [(256, (1, 1), (1, 1)), (288, (3, 3), (1, 1)), (320, (3, 3), (2, 2))],
    ]
    assert isinstance(cell.pool, nn.MaxPool2d)
    assert cell.out_channels == 2080  # 1088 + 384 + 288 + 320, as in the paper
    with torch.device("meta"):
        out = reduction_cell_b(1088, 1.0, same=False)(torch.empty(1, 1088, 12, 12))
    assert tuple(out.shape) == (1, 2080, 5, 5)


def test_full_network_is_inception_resnet_v2(full_cells):
    model = full_cells[0]
    kinds = [type(m).__name__ for m in model.body]
    assert kinds.count("ResidualCell") == 40  # 10 A, 20 B, 10 C
    assert kinds.count("ConcatCell") == 2  # Reduction-A and -B
    scales = [m.scale for m in model.body if isinstance(m, ResidualCell)]
    assert scales == [0.17] * 10 + [0.10] * 20 + [0.20] * 10
    assert model.num_features == 1536
    params = sum(p.numel() for p in model.parameters())
    assert 54.0e6 < params < 54.5e6  # timm's inception_resnet_v2 without its classifier


@pytest.fixture(scope="module")
def full_cells():
    """The three full-size cells, grown from cell 0 as training grows them."""
    with torch.device("meta"):
        cells = [build_model("m2cnn")]
        cells += [cells[0].grow()]
        cells += [cells[1].grow()]
    return cells


@pytest.mark.parametrize(
    ("cell", "size", "base", "final"),
    [(0, 224, 5, 5), (1, 448, 12, 5), (2, 720, 21, 4)],
)
def test_final_feature_map_stays_small_at_every_input(full_cells, cell, size, base, final):
    """Inception-ResNet-v2 alone leaves 5, 12, 21 px maps at 224, 448, 720 (the slides'
    numbers); the added Reduction Cell-Bs bring them back to 5x5, 5x5, 4x4."""
    model = full_cells[cell]
    with torch.device("meta"):
        x = torch.empty(1, 3, size, size)
        assert model.input_size == size
        assert model.body(model.stem(x)).shape[-2:] == (base, base)
        fmap = model.features(x)
        assert fmap.shape[-2:] == (final, final)
        assert model(x)["heatmap"].shape == (1, 5, final, final)
    added = [m for m in model.cells.modules() if isinstance(m, ConcatCell)]
    assert len(added) == cell  # one more Reduction Cell-B per stage
    assert sum(isinstance(m, ResidualCell) for m in model.cells.modules()) == cell


def test_tiny_mirrors_the_full_geometry():
    model = build_model("m2cnn", tiny=True)
    sizes = []
    for size in (80, 160, 256):
        with torch.no_grad():
            sizes.append(model.eval().features(torch.zeros(1, 3, size, size)).shape[-1])
        if size != 256:
            model = model.grow()
    assert sizes == [5, 5, 4]
    assert sum(p.numel() for p in model.parameters()) < 1e6


def test_grown_cells_learn():
    """After grow, the new cells' weights get gradient (the zero-initialised head columns
    and residual projections are not stuck at zero)."""
    torch.manual_seed(0)
    model = build_model("m2cnn", tiny=True).grow().train()
    out = model(torch.randn(4, 3, 64, 64))
    (out["scores"].logsumexp(1).mean() + out["grade_value"].pow(2).mean()).backward()
    new = model.cells[0]
    assert new[1].project.weight.grad.abs().sum() > 0
    assert model.cls_head.weight.grad[:, : new[0].conv_channels].abs().sum() > 0
