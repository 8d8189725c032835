"""Every consumer of the prepare step gives byte-identical tensors for the same image and card.

If one of them prepared images its own way, INT8 calibration, export's drift gate and the
benchmarks would stop measuring what screening ships.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgescreen.runtime.card import load_card
from edgescreen.runtime.imageio import decode
from edgescreen.runtime.prepare import prepare

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """Fundus-like photos on disk as JPEG and PNG (real decoder paths, no shared data needed)."""
    from conftest import fundus_like

    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i, ext in enumerate((".jpg", ".png", ".jpg")):
        path = folder / f"photo{i}{ext}"
        cv2.imwrite(str(path), fundus_like(i, side=300))  # BGR, as OpenCV writes
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from conftest import make_bundle

    return make_bundle(tmp_path_factory.mktemp("one") / "dr", size=64)


def _samples(paths):
    from edgescreen.train.data.records import Sample

    return [Sample(path=p, patient=f"p{i}", label=0) for i, p in enumerate(paths)]


def screener(bundle, card, paths):
    from edgescreen.runtime.screen import Screener

    fed = []
    with Screener(bundle) as s:
        infer = s.backend.infer
        s.backend.infer = lambda batch: (fed.append(batch.copy()), infer(batch))[1]
        results = list(s.screen_many(paths, batch_size=len(paths)))
    assert [r.status for r in results] == ["ok"] * len(paths)
    return np.concatenate(fed)


def export_evaluation_and_calibration(bundle, card, paths):
    from edgescreen.export.data import prepare_samples

    return prepare_samples(_samples(paths), card)


def tensorrt_calibrator_feed(bundle, card, paths):
    from edgescreen.export.trt import calibration_batches

    return np.concatenate(list(calibration_batches(paths, card, 1)))


def drift_benchmark(bundle, card, paths):
    from edgescreen.benchmarks.drift import prepared_inputs

    return prepared_inputs(_samples(paths), card)


def pipeline_benchmark(bundle, card, paths):
    from edgescreen.benchmarks.pipeline import decode_only

    return np.stack(decode_only(bundle, paths, workers=2)["tensors"])


def training_dataset(bundle, card, paths):
    from edgescreen.train.data.dataset import ScreeningDataset

    ds = ScreeningDataset(_samples(paths), card.preprocessing, train=False)
    return np.stack([ds[i][0].numpy() for i in range(len(ds))])


@pytest.mark.parametrize(
    "consumer",
    [
        screener,
        export_evaluation_and_calibration,
        tensorrt_calibrator_feed,
        drift_benchmark,
        pipeline_benchmark,
        training_dataset,
    ],
    ids=lambda f: f.__name__,
)
def test_every_consumer_prepares_like_screening(consumer, bundle, photos):
    card = load_card(bundle)
    want = np.stack([prepare(decode(p), card).tensor for p in photos])
    got = consumer(bundle, card, photos)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert got.tobytes() == want.tobytes()
