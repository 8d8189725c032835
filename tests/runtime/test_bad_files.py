"""Bad (and merely unusual) files: each gets a plain per-image result, never an internal error.

One table, kind -> what the decoder must do: refuse with an ImageError naming the file as it
was passed and saying the problem in plain words, or decode to the array convention (RGB
uint8 HxWx3, grey HxW uint8/uint16). Every file is built here, in tmp_path (Pillow and cv2;
no binary fixtures). Each row runs through prepare_source, the never-raising entry point
screening and batch use, and no result may say "unexpected error".
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import fundus_like

from edgescreen.runtime.errors import EdgescreenError, ImageError
from edgescreen.runtime.imageio import decode
from edgescreen.runtime.prepare import prepare_source

Image = pytest.importorskip("PIL.Image")
ImageOps = pytest.importorskip("PIL.ImageOps")

SIDE = 288
BGR = fundus_like(0, SIDE)  # a gradable synthetic fundus photo, OpenCV's BGR order
RGB = np.ascontiguousarray(BGR[..., ::-1])
GREY16 = cv2.cvtColor(BGR, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 256 + 77  # low byte used too
BGR16 = BGR.astype(np.uint16) * 256 + 128  # its top byte is BGR


def _pil(image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _cv(ext: str, image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def _float_grey(nan: bool) -> bytes:
    values = (GREY16 / 65535).astype(np.float32)
    if nan:
        values[::7, ::5] = np.nan
    return _pil(Image.fromarray(values, "F"), "TIFF")


def _rgba() -> bytes:
    alpha = np.zeros((SIDE, SIDE), np.uint8)
    cv2.circle(alpha, (SIDE // 2, SIDE // 2), int(SIDE * 0.45), 255, -1)  # transparent outside
    return _pil(Image.fromarray(np.dstack([RGB, alpha]), "RGBA"), "PNG")


def _wide_rgb() -> np.ndarray:
    """The photo on a wider black frame, as cameras store it (not square: rotation shows)."""
    return np.pad(RGB, ((0, 0), (48, 48), (0, 0)))


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return _pil(Image.fromarray(_wide_rgb()), "JPEG", exif=exif, quality=95)


def _frames(fmt: str) -> bytes:
    frames = [Image.fromarray(RGB), Image.fromarray(RGB[::-1]), Image.fromarray(RGB[:, ::-1])]
    return _pil(frames[0], fmt, save_all=True, append_images=frames[1:])


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose start-of-frame claims width x height (a decompression bomb)."""
    data = bytearray(_cv(".jpg", BGR))
    at = data.find(b"\xff\xc0")
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _tiff_claiming(width: int, height: int) -> bytes:
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1)]
    entries += [(273, 4, 8), (277, 3, 1), (278, 4, height), (279, 4, width * height)]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, 1) + packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\0" * 256


@dataclass(frozen=True)
class Refused:
    problem: str  # a fragment of the plain problem after "<path>: "


@dataclass(frozen=True)
class Decodes:
    shape: tuple[int, ...]
    dtype: type
    note: str | None = None  # a fragment of Decoded.note, None when there must be none
    like: np.ndarray | str | None = None  # the picture it must show (RGB or grey); "pillow":
    # what Pillow decodes from the same bytes, EXIF rotation applied (lossy formats)
    tolerance: float = 0.0  # mean absolute difference allowed (decoders differ slightly)


RGB_SHAPE, GREY_SHAPE = (SIDE, SIDE, 3), (SIDE, SIDE)
FLOAT_PROBLEM = "32-bit floating-point pixels (float32"
_ROTATED_SHAPE = (_wide_rgb().shape[1], SIDE, 3)

# kind -> (file name, the file's bytes or None for no file, modality of the card, expectation)
CASES: dict[str, tuple[str, object, str, Refused | Decodes]] = {
    "float32 grey TIFF": ("f32.tiff", lambda: _float_grey(False), "cxr", Refused(FLOAT_PROBLEM)),
    "float32 colour TIFF": (
        "f32rgb.tif",
        lambda: _cv(".tiff", BGR.astype(np.float32) / 255),
        "dr",
        Refused(FLOAT_PROBLEM),
    ),
    "NaN TIFF": ("nan.tiff", lambda: _float_grey(True), "cxr", Refused("NaN or infinite")),
    "signed 16-bit TIFF": (
        "s16.tiff",
        lambda: _cv(".tiff", (GREY16 // 2).astype(np.int16)),
        "cxr",
        Refused("signed 16-bit integer pixels (int16) are not supported"),
    ),
    "16-bit grey PNG": (
        "g16.png",
        lambda: _cv(".png", GREY16),
        "cxr",
        Decodes(GREY_SHAPE, np.uint16, like=GREY16),
    ),
    "16-bit grey TIFF": (
        "g16.tiff",
        lambda: _cv(".tiff", GREY16),
        "cxr",
        Decodes(GREY_SHAPE, np.uint16, like=GREY16),
    ),
    "16-bit colour PNG": (
        "c16.png",
        lambda: _cv(".png", BGR16),
        "dr",
        Decodes(RGB_SHAPE, np.uint8, like=(BGR16 >> 8).astype(np.uint8)[..., ::-1]),
    ),
    "16-bit colour TIFF": (
        "c16.tiff",
        lambda: _cv(".tiff", BGR16),
        "dr",
        Decodes(RGB_SHAPE, np.uint8, like=(BGR16 >> 8).astype(np.uint8)[..., ::-1]),
    ),
    "CMYK JPEG": (
        "cmyk.jpg",
        lambda: _pil(Image.fromarray(RGB).convert("CMYK"), "JPEG", quality=95),
        "dr",
        Decodes(RGB_SHAPE, np.uint8, like="pillow", tolerance=2),
    ),
    "progressive JPEG": (
        "progressive.jpg",
        lambda: _pil(Image.fromarray(RGB), "JPEG", quality=95, progressive=True),
        "dr",
        Decodes(RGB_SHAPE, np.uint8, like="pillow", tolerance=2),
    ),
    "EXIF-rotated JPEG": (
        "rotated.jpg",
        _exif_rotated,
        "dr",
        Decodes(_ROTATED_SHAPE, np.uint8, like="pillow", tolerance=2),
    ),
    "grey PNG fundus": (
        "grey.png",
        lambda: _pil(Image.fromarray(RGB).convert("L"), "PNG"),
        "dr",
        Decodes(GREY_SHAPE, np.uint8, like=np.asarray(Image.fromarray(RGB).convert("L"))),
    ),
    "palette PNG fundus": (
        "palette.png",
        lambda: _pil(Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "dr",
        Decodes(RGB_SHAPE, np.uint8, like=RGB, tolerance=8),
    ),
    "RGBA PNG fundus": ("rgba.png", _rgba, "dr", Decodes(RGB_SHAPE, np.uint8, like=RGB)),
    "grey+alpha PNG": (
        "la.png",
        lambda: _pil(Image.fromarray(RGB).convert("LA"), "PNG"),
        "dr",
        Decodes(RGB_SHAPE, np.uint8),
    ),
    "multi-page TIFF": (
        "pages.tiff",
        lambda: _frames("TIFF"),
        "dr",
        Decodes(RGB_SHAPE, np.uint8, "multi-page TIFF (3 frames): the first frame", like=RGB),
    ),
    "animated GIF": (
        "anim.gif",
        lambda: _frames("GIF"),
        "dr",
        Decodes(RGB_SHAPE, np.uint8, "animated GIF (3 frames): the first frame", RGB, 12),
    ),
    "JPEG claiming 20000x20000": (
        "bomb.jpg",
        lambda: _jpeg_claiming(20000, 20000),
        "dr",
        Refused("image is 20000x20000 pixels, over the limit of 80,000,000 (refused before"),
    ),
    "TIFF claiming 20000x20000": (
        "bomb.tiff",
        lambda: _tiff_claiming(20000, 20000),
        "dr",
        Refused("image is 20000x20000 pixels, over the limit of 80,000,000 (refused before"),
    ),
    "empty file": ("empty.jpg", lambda: b"", "dr", Refused("empty file (0 bytes)")),
    "truncated JPEG": (
        "cut.jpg",
        lambda: _cv(".jpg", BGR)[: len(_cv(".jpg", BGR)) * 3 // 5],
        "dr",
        Refused("not a readable image (corrupt, truncated or an unsupported format)"),
    ),
    "random bytes": (
        "noise.png",
        lambda: np.random.default_rng(7).bytes(4096),
        "dr",
        Refused("not a readable image"),
    ),
    "text file": (
        "notes.jpg",
        lambda: b"patient notes, not a photo\n" * 20,
        "dr",
        Refused("not a readable image"),
    ),
    "missing file": ("gone.jpg", None, "dr", Refused("file not found")),
}


@pytest.fixture(scope="module")
def cards(tmp_path_factory):
    from conftest import make_bundle

    from edgescreen.runtime.card import load_card

    root = tmp_path_factory.mktemp("bad-files")
    return {
        "dr": load_card(make_bundle(root / "dr", "dr_grading", size=32)),
        "cxr": load_card(make_bundle(root / "cxr", "cxr_findings", size=32)),
    }


def _file(tmp_path: Path, kind: str) -> tuple[str, str, Refused | Decodes]:
    name, build, modality, expected = CASES[kind]
    path = tmp_path / name
    if build is not None:
        path.write_bytes(build())  # type: ignore[operator]
    return str(path), modality, expected


@pytest.mark.parametrize("kind", list(CASES))
def test_each_kind_gets_a_plain_per_image_result(tmp_path, cards, kind):
    path, modality, expected = _file(tmp_path, kind)
    result = prepare_source(path, cards[modality])
    assert "unexpected error" not in (result.error or ""), result.error
    if isinstance(expected, Refused):
        assert result.status == "failed"
        assert result.error.startswith(f"{path}: "), result.error  # the path exactly as passed
        assert expected.problem in result.error, result.error
        assert result.name == path
    else:  # a legitimate image: screened, or judged by the quality gate, never failed
        assert result.status in ("ok", "ungradable"), result.error
        if expected.note is None:
            assert result.note is None
        else:
            assert expected.note in (result.note or ""), result.note


@pytest.mark.parametrize("kind", [k for k, case in CASES.items() if isinstance(case[3], Decodes)])
def test_legitimate_files_decode_to_the_convention(tmp_path, kind):
    path, _, expected = _file(tmp_path, kind)
    decoded = decode(path)
    image = decoded.image
    assert image.shape == expected.shape and image.dtype == expected.dtype
    assert image.flags.c_contiguous or image.base is not None  # a plain numpy array
    assert decoded.original_size == (image.shape[1], image.shape[0]) and decoded.scale == 1.0
    like = expected.like
    if isinstance(like, str):
        with Image.open(path) as reference:
            like = np.asarray(ImageOps.exif_transpose(reference).convert("RGB"))
    if like is not None:
        diff = np.abs(image.astype(np.float64) - like.astype(np.float64)).mean()
        assert diff <= expected.tolerance, f"{kind}: mean abs difference {diff:.2f}"
    if expected.note is not None:
        assert expected.note in (decoded.note or "")


@pytest.mark.parametrize("min_side", [None, 100])
@pytest.mark.parametrize("kind", list(CASES))
def test_the_decoder_raises_only_image_errors_at_any_scale(tmp_path, kind, min_side):
    path, _, expected = _file(tmp_path, kind)
    try:
        decoded = decode(path, max_pixels=80_000_000, min_side=min_side)
    except ImageError as exc:
        assert isinstance(expected, Refused) and str(exc) == f"{path}: {exc.problem}"
        assert expected.problem in exc.problem
        return
    assert isinstance(expected, Decodes), f"{kind} decoded instead of being refused"
    image = decoded.image
    assert image.dtype == expected.dtype and image.ndim == len(expected.shape)
    if min_side is not None:  # never below min_side; JPEGs within 2x of it, others exactly
        assert min_side <= min(image.shape[:2]) < 2 * min_side
        assert decoded.scale == pytest.approx(min(image.shape[:2]) / min(decoded.original_size))


def _epoch_checkpoint(torch, path: Path) -> None:
    """What the training loop's _save writes to best.pt / last.pt (no card)."""
    state = {"config": {}, "stage": 0, "epoch": 3, "model": {}, "optimizer": {}}
    torch.save({**state, "scheduler": {}, "history": [], "best": 0.5, "rng": None}, path)


def test_exporting_a_per_epoch_checkpoint_says_which_file_to_pass(tmp_path):
    torch = pytest.importorskip("torch")
    from edgescreen.train.checkpoint import load_trained

    run = tmp_path / "run"
    run.mkdir()
    for name in ("best.pt", "last.pt"):
        _epoch_checkpoint(torch, run / name)
    with pytest.raises(EdgescreenError) as err:  # the run never finished: no model.pt yet
        load_trained(run / "best.pt")
    message = str(err.value)
    assert "per-epoch training checkpoint" in message and "--resume" in message
    assert str(run / "model.pt") in message
    (run / "model.pt").write_bytes(b"")  # finished: its presence is what the hint checks
    with pytest.raises(EdgescreenError, match="per-epoch") as err:
        load_trained(run / "last.pt")
    assert f"pass {run / 'model.pt'} (or the run folder {run}) instead" in str(err.value)
    with pytest.raises(EdgescreenError, match="not a training checkpoint"):
        load_trained(run / "model.pt")  # not a torch file at all
    with pytest.raises(EdgescreenError, match="no such checkpoint"):
        load_trained(tmp_path / "elsewhere")


def test_edgescreen_export_of_best_pt_prints_the_hint_not_a_traceback(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from edgescreen.runtime.cli import main

    run = tmp_path / "run"
    run.mkdir()
    _epoch_checkpoint(torch, run / "best.pt")
    assert main(["export", str(run / "best.pt"), "--out", str(tmp_path / "bundle")]) != 0
    err = capsys.readouterr().err
    assert "per-epoch training checkpoint" in err and "model.pt" in err
    assert "Traceback" not in err and "KeyError" not in err
