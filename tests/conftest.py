"""Shared fixtures: where the real read-only data lives, and skips when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()


def shared_set(name: str) -> Path:
    path = SHARED_DATA / name
    if not (path / "labels.csv").is_file():
        pytest.skip(f"real data set {name} not found at {path}")
    return path


@pytest.fixture(scope="session")
def fundus_dir() -> Path:
    return shared_set("fundus-dr-srahim")


@pytest.fixture(scope="session")
def cxr_dir() -> Path:
    return shared_set("cxr14-nih-mini")


@pytest.fixture(scope="session")
def retinamnist_dir() -> Path:
    return shared_set("retinamnist-28")


@pytest.fixture(scope="session")
def pneumoniamnist_dir() -> Path:
    return shared_set("pneumoniamnist-28")


def fundus_like(seed: int, side: int = 288):
    """A synthetic BGR fundus-like photo the quality gate accepts: a noisy red disc with vessels."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    img = np.zeros((side, side, 3), np.uint8)
    c, r = side // 2, int(side * 0.45)
    cv2.circle(img, (c, c), r, (np.array([30, 70, 170]) + rng.integers(-20, 20, 3)).tolist(), -1)
    img = np.clip(img + rng.normal(0, 18, img.shape) * (img > 0), 0, 255).astype(np.uint8)
    for _ in range(6):
        p = rng.integers(c - r // 2, c + r // 2, 4).tolist()
        cv2.line(img, (p[0], p[1]), (p[2], p[3]), (20, 30, 110), 2)
    return img


def build_tiny_onnx(
    path: Path, *, channels: int, size: int, num_labels: int, seed: int = 0
) -> None:
    """A small real ONNX model: conv -> relu -> global pool -> linear scores, plus a heatmap.

    Built with onnx.helper so runtime tests need no torch. Its weights are random but
    fixed, so outputs depend on the image and change when the image does.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    feats = 8
    conv_w = rng.normal(0, 0.5, (feats, channels, 3, 3)).astype(np.float32)
    fc_w = rng.normal(0, 1.0, (feats, num_labels)).astype(np.float32)
    fc_b = rng.normal(0, 0.1, (num_labels,)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "conv_w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["scores"]),
        helper.make_node("ReduceMean", ["r"], ["heatmap"], axes=[1], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", channels, size, size])],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", num_labels]),
            helper.make_tensor_value_info(
                "heatmap", TensorProto.FLOAT, ["N", 1, size // 2, size // 2]
            ),
        ],
        [
            numpy_helper.from_array(conv_w, "conv_w"),
            numpy_helper.from_array(fc_w, "fc_w"),
            numpy_helper.from_array(fc_b, "fc_b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def make_bundle(root: Path, task: str = "dr_grading", *, size: int = 128, seed: int = 0) -> Path:
    """A complete bundle directory (model.onnx + model.json) for runtime tests."""
    from edgescreen.runtime.card import OutputSpec, artifact_entry, new_card, save_card
    from edgescreen.runtime.preprocess import PreprocessConfig

    modality = {"dr_grading": "fundus", "oct_classification": "oct", "cxr_findings": "cxr"}[task]
    pre = PreprocessConfig.default(modality, size)
    activation = "sigmoid" if task == "cxr_findings" else "softmax"
    card = new_card(
        name=f"tiny-{task}",
        task=task,
        family="test",
        preprocessing=pre,
        outputs=(OutputSpec("scores", "scores", activation), OutputSpec("heatmap", "heatmap")),
    )
    root.mkdir(parents=True, exist_ok=True)
    build_tiny_onnx(
        root / "model.onnx",
        channels=pre.channels,
        size=size,
        num_labels=len(card.labels),
        seed=seed,
    )
    card = card.replace(
        artifacts={"onnx-fp32": artifact_entry(root, "model.onnx", format="onnx", precision="fp32")}
    )
    save_card(card, root)
    return root


@pytest.fixture(scope="session")
def dr_bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "dr")
