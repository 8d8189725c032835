"""Tiny checkpoints (random init, saved as train/loop.py saves them) and synthetic data sets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")  # noqa: E402
pytest.importorskip("onnxruntime.quantization")

# family -> (task, input size, builder kwargs)
FAMILIES = {
    "multitask": ("dr_grading", 64, {"tiny": True}),
    "m2cnn": ("dr_grading", 64, {"tiny": True}),
    "ran": ("oct_classification", 64, {"tiny": True, "in_chans": 1}),
    "zoomin": ("dr_grading", 128, {"tiny": True}),
    "agcnn": ("cxr_findings", 64, {"tiny": True}),
}
MODALITY = {"dr_grading": "fundus", "oct_classification": "oct", "cxr_findings": "cxr"}
LOADER = {"dr_grading": "csv-dr", "oct_classification": "csv-oct", "cxr_findings": "csv-cxr"}


def make_checkpoint(folder: Path, family: str, *, seed: int = 0) -> Path:
    """model.pt as train/loop.py writes it: {"config", "stage", "model", "card"}."""
    from edgescreen.runtime.card import default_labels
    from edgescreen.runtime.preprocess import PreprocessConfig
    from edgescreen.train.config import StageConfig, TrainConfig
    from edgescreen.train.loop import card_for
    from edgescreen.train.models import build_model

    task, size, kwargs = FAMILIES[family]
    channels = PreprocessConfig.default(MODALITY[task], size).channels
    if family == "agcnn":
        kwargs = {**kwargs, "in_chans": channels}
    cfg = TrainConfig(
        name=f"tiny-{family}",
        family=family,
        task=task,
        model=kwargs,
        input_size=size,
        stages=(StageConfig(name="s", epochs=1, loss="ce"),),
        seed=seed,
    )
    torch.manual_seed(seed)
    model = build_model(family, **kwargs).eval()
    card = card_for(cfg, model, default_labels(task))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.pt"
    torch.save(
        {"config": cfg.to_dict(), "stage": 0, "model": model.state_dict(), "card": card.to_dict()},
        path,
    )
    return path


def synth_set(folder: Path, task: str, n: int, *, seed: int, size: int = 128) -> str:
    from edgescreen.train.data.synth import synthesize

    if not (folder / "labels.csv").is_file():
        synthesize(MODALITY[task], n, folder, seed=seed, size=size)
    return f"{LOADER[task]}:{folder}"


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory):
    """Calibration cache private to the test session."""
    import os

    path = tmp_path_factory.mktemp("calib-cache")
    old = os.environ.get("EDGESCREEN_CACHE")
    os.environ["EDGESCREEN_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("EDGESCREEN_CACHE", None)
    else:
        os.environ["EDGESCREEN_CACHE"] = old


def spread_cutpoints(ckpt: Path, data_spec: str) -> None:
    """Give a random-init DR model cut points at the quantiles of its own grade values on
    `data_spec`, so its decisions vary between images (a flat model never flips)."""
    import numpy as np

    from edgescreen.export.data import resolve, sources_of
    from edgescreen.runtime.card import ModelCard
    from edgescreen.runtime.prepare import prepare_batch
    from edgescreen.train.checkpoint import load_trained

    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    trained = load_trained(ckpt)
    x = prepare_batch(sources_of(resolve(data_spec, what="eval").samples), trained.card)
    with torch.no_grad():
        values = trained.model(torch.from_numpy(x))["grade_value"].numpy()
    cuts = tuple(float(c) for c in np.quantile(values, [0.2, 0.4, 0.6, 0.8]))
    card = ModelCard.from_dict(state["card"])
    card = card.replace(
        decision=dataclasses.replace(card.decision, cutpoints=cuts, referable_threshold=None)
    )
    state["card"] = card.to_dict()
    torch.save(state, ckpt)


def export_tiny_bundle(root: Path, family: str = "multitask") -> tuple[Path, Path]:
    """(checkpoint, bundle): a random-init tiny model exported with every precision, golden set
    included. For the GPU tests, which need a real Q/DQ model.int8.onnx to build from."""
    from edgescreen.export.bundle import export_bundle

    task = FAMILIES[family][0]
    ckpt = make_checkpoint(root / "run", family)
    export_bundle(
        ckpt,
        root / "bundle",
        calib=synth_set(root / "calib", task, 16, seed=11),
        eval=synth_set(root / "eval", task, 12, seed=12),
        calib_size=8,
        calib_method="minmax",
        allow_drift=True,
        allow_synthetic_calibration=True,
        progress=False,
    )
    return ckpt, root / "bundle"


def qdq_summary(path: str | Path) -> dict:
    """Counts of Q/DQ nodes and the activation scales (name -> scale), for tests and reports."""
    import numpy as np
    import onnx
    import onnx.numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    scales = {n.input[0]: float(np.ravel(inits[n.input[1]])[0]) for n in q if n.input[1] in inits}
    zero_types = sorted(
        {str(inits[n.input[2]].dtype) for n in q if len(n.input) > 2 and n.input[2] in inits}
    )
    return {
        "quantize": len(q),
        "dequantize": len(dq),
        "activation_scales": scales,
        "zero_point_types": zero_types,
    }
