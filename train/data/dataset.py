"""Torch dataset: the runtime's prepare step, then augmentation, then the runtime's to_tensor.

The canonical picture comes from `edgescreen.runtime.prepare.prepare` (ungated: every
labelled image trains), the very step screening runs. It (disc crop, Ben Graham, windowing) costs tens of milliseconds on a full-size
photo; its uint8 result at the working resolution is cached on disk under a key of the
image's content hash and the preprocessing recipe, so epochs after the first decode
nothing. Augmentation is seeded by (seed, epoch, index): the same picture whatever the
number of workers, which is what makes a resumed run identical to an unstopped one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from edgescreen.runtime.prepare import decode_recipe, decode_scaled, prepare
from edgescreen.runtime.preprocess import PreprocessConfig, to_tensor

from ..augment import augment, build_augmentation
from .records import Sample
from .splits import sample_hash


class PreparedCache:
    """uint8 prepared images on disk as .npy, written atomically so a killed run leaves no half file."""

    def __init__(self, root: str | Path, cfg: PreprocessConfig, working_size: int) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        recipe = json.dumps(
            {
                "cfg": cfg.to_dict(),
                "working_size": working_size,
                "decode": decode_recipe(cfg, size=working_size),  # a new decode scale: re-prepare
            },
            sort_keys=True,
        )
        self.recipe_key = hashlib.sha256(recipe.encode()).hexdigest()[:16]

    def path(self, content: str) -> Path:
        return self.root / self.recipe_key / content[:2] / f"{content}.npy"

    def get(self, content: str) -> np.ndarray | None:
        path = self.path(content)
        try:
            return np.load(path, allow_pickle=False)
        except (FileNotFoundError, ValueError, OSError):
            return None  # missing or damaged: recompute

    def put(self, content: str, image: np.ndarray) -> None:
        path = self.path(content)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, image, allow_pickle=False)
        os.replace(tmp, path)


def fellow_eyes(samples: Sequence[Sample]) -> list[int | None]:
    """Per sample, the index of the same patient's other eye, or None.

    With eyes recorded (``meta["eye"]``: left/right, L/R) the fellow is the patient's first
    image of the other eye; without them a patient with exactly two images pairs those two.
    Anything else (one image, follow-ups of one eye, three unlabelled images) has none.
    """
    by_patient: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_patient.setdefault(s.patient, []).append(i)
    out: list[int | None] = [None] * len(samples)
    for group in by_patient.values():
        eyes = [str(samples[i].meta.get("eye") or "")[:1].upper() for i in group]
        if all(eyes):
            for i, eye in zip(group, eyes, strict=True):
                out[i] = next((j for j, e in zip(group, eyes, strict=True) if e != eye), None)
        elif len(group) == 2 and not any(eyes):
            out[group[0]], out[group[1]] = group[1], group[0]
    return out


class ScreeningDataset(Dataset):
    """(tensor, target) pairs: target is a class index, or a float 0/1 vector for multi-label.

    ``pair_eyes`` (Zoom-in-Net's two-eye M-Net): the tensor is (2, C, H, W), the image and
    its fellow eye (`fellow_eyes`); where there is none, or with probability
    ``fellow_dropout``, the image itself stands in, which is the single-eye fallback the
    exported one-image graph computes, so that path is trained too.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        cfg: PreprocessConfig,
        *,
        train: bool = False,
        working_size: int | None = None,
        cache_dir: str | Path | None = None,
        augmentation=None,
        seed: int = 0,
        pair_eyes: bool = False,
        fellow_dropout: float = 0.5,
    ) -> None:
        self.samples = list(samples)
        self.fellows = fellow_eyes(self.samples) if pair_eyes else None
        self.fellow_dropout = fellow_dropout
        self.cfg = cfg
        self.working_size = int(working_size or cfg.size)
        self.train = train
        self.augmentation = (
            augmentation
            if augmentation is not None
            else (build_augmentation(cfg.modality) if train else None)
        )
        self.seed = seed
        self.epoch = 0
        self.cache = PreparedCache(cache_dir, cfg, self.working_size) if cache_dir else None
        self._hashes: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def prepared(self, index: int) -> np.ndarray:
        """The runtime's prepared uint8 image at the working resolution (cached)."""
        sample = self.samples[index]
        key = None
        if self.cache is not None:
            key = self._hashes.get(index) or self._hashes.setdefault(index, sample_hash(sample))
            cached = self.cache.get(key)
            if cached is not None:
                return cached
        source = sample.array if sample.array is not None else sample.path
        decoded = decode_scaled(source, self.cfg, size=self.working_size, name=sample.ref)
        out = prepare(decoded, self.cfg, gate=False, size=self.working_size).picture
        if self.cache is not None:
            self.cache.put(key, out)
        return out

    def image(self, index: int, stream: int = 0) -> torch.Tensor:
        image = self.prepared(index)
        if self.augmentation is not None:
            # Distinct, reproducible stream per (seed, epoch, index[, fellow]).
            key = (self.seed, self.epoch, index) + ((stream,) if stream else ())
            image = augment(self.augmentation, image, seed=hash(key) & 0x7FFFFFFF)
        return torch.from_numpy(to_tensor(image, self.cfg))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.image(index)
        if self.fellows is not None:
            fellow = self.fellows[index]
            draw = np.random.default_rng([self.seed, self.epoch, index, 1]).random()
            if fellow is None or (self.train and draw < self.fellow_dropout):
                x = torch.stack([x, x])
            else:
                x = torch.stack([x, self.image(fellow, stream=1)])
        label = self.samples[index].label
        y = (
            torch.tensor(label, dtype=torch.float32)
            if isinstance(label, tuple)
            else torch.tensor(label)
        )
        return x, y

    def targets(self) -> np.ndarray:
        return np.array([s.label for s in self.samples])
