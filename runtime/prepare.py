"""The one prepare step: a decoded image and a card -> Prepared (a tensor, or an early stop).

    decoded ─► disc (fundus) ─► quality gate ─► canonical picture ─► tensor

Every consumer prepares through here: the Screener, INT8 calibration, export's
evaluation, the TensorRT calibrator, the drift and pipeline benchmarks and the training
dataset. A step added here reaches all of them; none of them prepares an image its own way.

`gate=False` skips the quality gate where every labelled image must be measured
(calibration, evaluation, drift, training): the gate's verdict does not depend on the
network or its precision, so it would only shrink those sets.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from .card import ModelCard
from .errors import EdgescreenError, ImageError
from .imageio import Decoded, decode, jpeg_reduction, read_file
from .preprocess import Disc, PreprocessConfig, canonical, find_fundus_disc, to_tensor
from .quality import (
    MIN_DISC_RADIUS,
    QualityLimits,
    QualityReport,
    assess_quality,
    coarse_measuring_side,
    measuring_side,
)

Status = Literal["ok", "ungradable", "failed"]


@dataclass
class Prepared:
    name: str
    tensor: np.ndarray | None  # float32 (C, H, W); None when the image stopped early
    picture: np.ndarray | None = None  # the canonical uint8 picture the tensor was made from
    quality: QualityReport | None = None  # None when the gate did not run
    disc: Disc | None = None  # fundus field of view, found once, used by gate and crop
    note: str | None = None  # what the decoder noticed (multi-frame files)
    error: str | None = None  # why the image could not be prepared
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def status(self) -> Status:
        if self.error is not None:
            return "failed"
        return "ok" if self.tensor is not None else "ungradable"

    @property
    def reasons(self) -> list[str]:
        if self.error is not None:
            return [self.error]
        return self.quality.reasons if self.quality is not None else []


def decode_side(
    cfg: PreprocessConfig, limits: QualityLimits | None = None, size: int | None = None
) -> int:
    """The shorter side an upload is decoded down to (imageio.decode's `min_side`).

    Big enough for the quality gate's reference scale (quality.measuring_side), for the
    picture the model crops (its input size, or training's working size) and for the gate's
    minimum size, so no step sees fewer pixels than it uses; a 10-megapixel JPEG then
    decodes at 1/4 in the DCT domain, and a 768 px photo is decoded as it is.
    """
    return max(measuring_side(cfg.modality), _picture_side(cfg, limits, size))


def _picture_side(cfg: PreprocessConfig, limits: QualityLimits | None, size: int | None) -> int:
    """What every decode scale must keep beside the gate's: the picture cropped, the gate's
    minimum size."""
    return max(size or cfg.size, limits.min_side if limits else 0)


def decode_for(
    source: str | Path | bytes | np.ndarray | Decoded, card: ModelCard, *, name: str | None = None
) -> Decoded:
    """Decode `source` as this card's screening does: its pixel limit, at decode_scaled's scale."""
    return decode_scaled(
        source, card.preprocessing, card.quality, max_pixels=card.input.max_pixels, name=name
    )


def decode_scaled(
    source: str | Path | bytes | np.ndarray | Decoded,
    cfg: PreprocessConfig,
    limits: QualityLimits | None = None,
    *,
    size: int | None = None,
    max_pixels: int | None = None,
    name: str | None = None,
) -> Decoded:
    """Decode at the coarsest scale that still serves the gate and the crop.

    decode_side's scale is safe for any fundus camera. Many cameras clip the circle with the
    frame's top and bottom, so the disc is bigger than that rule assumes: a fundus JPEG is
    first decoded at quality.coarse_measuring_side (a 10-megapixel photo at 1/8 instead of
    1/4: 12 against 15 ms of decoding on one core here, Huffman decoding dominating, and a
    smaller picture for the disc search and the crop) and kept if its disc is found with a
    radius of at least quality.MIN_DISC_RADIUS (and half the picture size); otherwise it is
    decoded again at decode_side's scale, keeping the disc found (scaled). That second
    decode is the price for a camera whose circle lies inside the frame: to decode and
    prepare a synthetic 10-megapixel photo (tests/runtime/test_prepare_scale.py's) took 22
    ms against 17 at the safe scale alone; a clipped one took 12 against 18 (one core,
    medians of 15 alternated runs). The choice depends on the file and the sizes passed
    (the card's, or training's working size), so screening, training, the heatmap overlay
    and a rerun all decode a photo the same way.
    """
    if isinstance(source, Decoded):
        return source
    side = decode_side(cfg, limits, size)
    coarse = _coarse_side(cfg, limits, size)
    if coarse is None or isinstance(source, np.ndarray):
        return decode(source, name=name, max_pixels=max_pixels, min_side=side)
    label = name or _label(source)
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        data = read_file(source, name=label)
    if jpeg_reduction(data, coarse) > jpeg_reduction(data, side):
        first = decode(data, name=label, max_pixels=max_pixels, min_side=coarse)
        disc = find_fundus_disc(first.image)
        if disc.found and disc.radius >= max(MIN_DISC_RADIUS, (size or cfg.size) / 2):
            return replace(first, disc=disc)
        again = decode(data, name=label, max_pixels=max_pixels, min_side=side)
        if not disc.found:
            return again  # prepare searches the finer picture itself
        # The disc search works on a 256 px copy at either scale: the one found is as good
        # scaled up, and searching again would cost a third of the second decode.
        (h0, w0), (h1, w1) = first.image.shape[:2], again.image.shape[:2]
        return replace(again, disc=disc.scaled(w1 / w0, h1 / h0))
    return decode(data, name=label, max_pixels=max_pixels, min_side=side)


def decode_recipe(
    cfg: PreprocessConfig, limits: QualityLimits | None = None, size: int | None = None
) -> dict[str, int | None]:
    """What decode_scaled's choice of scale depends on (a cache of decoded work keys on it)."""
    return {
        "side": decode_side(cfg, limits, size),
        "coarse_side": _coarse_side(cfg, limits, size),
        "min_disc_radius": MIN_DISC_RADIUS,
    }


def _coarse_side(
    cfg: PreprocessConfig, limits: QualityLimits | None, size: int | None
) -> int | None:
    coarse = coarse_measuring_side(cfg.modality)
    return None if coarse is None else max(coarse, _picture_side(cfg, limits, size))


def prepare(
    decoded: Decoded | np.ndarray,
    card: ModelCard | PreprocessConfig,
    *,
    gate: bool = True,
    size: int | None = None,
) -> Prepared:
    """Gate and preprocess one decoded image exactly as screening does.

    `card` may be a bare PreprocessConfig (the training dataset, per stage size), which
    has no quality limits, so then `gate` must be False. `size` prepares the canonical
    picture at a working resolution (training augments it before to_tensor resizes).
    Raises EdgescreenError for an image it cannot use; see `prepare_source` for the
    never-raising form.
    """
    if isinstance(decoded, np.ndarray):
        decoded = Decoded("<array>", decoded)
    cfg = card if isinstance(card, PreprocessConfig) else card.preprocessing
    if gate and isinstance(card, PreprocessConfig):
        raise ValueError("the quality gate needs a card's limits, not a bare PreprocessConfig")
    out = Prepared(decoded.name, None, note=decoded.note)
    image = decoded.image
    start = time.perf_counter()
    if cfg.modality == "fundus":
        out.disc = decoded.disc if decoded.disc is not None else find_fundus_disc(image)
    if gate:
        out.quality = assess_quality(image, cfg.modality, card.quality, disc=out.disc)  # type: ignore[union-attr]
        out.quality.measurements["decode_scale"] = decoded.scale  # measured on the decoded pixels
        out.timings["quality"] = _ms(start)
        if not out.quality.gradable:
            return out
    start = time.perf_counter()
    out.picture = canonical(image, cfg, size=size, disc=out.disc)
    out.tensor = to_tensor(out.picture, cfg)
    out.timings["preprocess"] = _ms(start)
    return out


def prepare_source(
    source: str | Path | bytes | np.ndarray | Decoded,
    card: ModelCard,
    *,
    name: str | None = None,
    gate: bool = True,
) -> Prepared:
    """Decode (when needed) and prepare; any problem becomes a failed Prepared naming the file.

    One bad image must never stop a batch, so nothing is raised here.
    """
    label = name or _label(source)
    start = time.perf_counter()
    try:
        decoded = decode_for(source, card, name=label)
        decode_ms = _ms(start)
        prepared = prepare(decoded, card, gate=gate)
        prepared.name = label  # the caller's name wins over what the decoder was told
        prepared.timings = {"decode": decode_ms, **prepared.timings}
        return prepared
    except Exception as exc:  # noqa: BLE001 - one bad image must never stop a batch
        return Prepared(label, None, error=failure(label, exc), timings={"decode": _ms(start)})


def failure(name: str, exc: Exception) -> str:
    """What a failed image's result says: our own refusal as is, anything else as unexpected."""
    if isinstance(exc, EdgescreenError):
        return str(exc)
    return str(ImageError(name, f"unexpected error: {type(exc).__name__}: {exc}"))


def prepare_batch(
    sources: Sequence[str | Path | np.ndarray | Decoded], card: ModelCard
) -> np.ndarray:
    """(N, C, H, W) float32 of labelled images, ungated; raises on an unreadable one.

    For calibration and evaluation sets, where a missing image is an error in the set,
    not a photo to retake.
    """
    out = np.empty((len(sources), *card.input.shape), np.float32)
    for i, source in enumerate(sources):
        out[i] = prepare(decode_for(source, card), card, gate=False).tensor
    return out


def _label(source: object) -> str:
    """How a result names its image: the path as given, or what kind of object it was."""
    if isinstance(source, Decoded):
        return source.name
    if isinstance(source, np.ndarray):
        return "<array>"
    if isinstance(source, bytes | bytearray | memoryview):
        return "<bytes>"
    return str(source)


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
