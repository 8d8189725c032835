"""The one decoder: an image file (or its bytes) into the array convention every stage uses.

Convention: RGB uint8 HxWx3, or grayscale HxW uint8/uint16 (16-bit X-rays keep their
depth for percentile windowing; 16-bit colour keeps its top byte). JPEG, PNG, TIFF, BMP
and GIF go through OpenCV, DICOM through pydicom (runtime/dicom.py). Every failure is an
ImageError naming the file exactly as the caller named it (`name`, else the path as
passed), with a plain problem. Screening, batch ingest, calibration, evaluation, training
and report thumbnails all decode here.

`min_side` decodes at the scale the work needs: a JPEG is decoded in the DCT domain at
1/2, 1/4 or 1/8 scale (the largest that keeps its shorter side >= min_side, chosen from
the header before decoding); other formats are decoded, then resized once (INTER_AREA)
so their shorter side is min_side. `Decoded.original_size` and `Decoded.scale` say what
was done. Without min_side the image is exactly what a full decode gives.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .errors import ImageError

if TYPE_CHECKING:
    from .preprocess import Disc

# Keep bit depth and colour-ness; unlike IMREAD_UNCHANGED this still applies EXIF rotation.
_DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
# JPEG DCT-domain reduction k -> (colour, grey) flags; both apply EXIF rotation too.
_REDUCED = {
    8: (cv2.IMREAD_REDUCED_COLOR_8, cv2.IMREAD_REDUCED_GRAYSCALE_8),
    4: (cv2.IMREAD_REDUCED_COLOR_4, cv2.IMREAD_REDUCED_GRAYSCALE_4),
    2: (cv2.IMREAD_REDUCED_COLOR_2, cv2.IMREAD_REDUCED_GRAYSCALE_2),
}
_MAX_PAGES = 4096  # stop walking a TIFF IFD / GIF block chain past this (loops, hostile files)
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_UNREADABLE = "not a readable image (corrupt, truncated or an unsupported format)"
_SAVE_AS = "save it as 8- or 16-bit (JPEG, PNG or TIFF)"


@dataclass(frozen=True)
class Decoded:
    """A decoded image and what the decoder noticed about the file."""

    name: str
    image: np.ndarray
    note: str | None = None  # e.g. "multi-frame DICOM (3 frames): the first frame was screened"
    # (width, height) of the full-resolution image, as oriented (EXIF applied); None if unknown.
    original_size: tuple[int, int] | None = None
    scale: float = 1.0  # decoded shorter side / original shorter side: < 1 when min_side reduced it
    # The fundus field of view, when choosing the decode scale already needed it
    # (prepare.decode_scaled); prepare() then does not search for it again.
    disc: Disc | None = None

    @property
    def reduced(self) -> bool:
        return self.scale < 1.0


def decode(
    source: str | Path | bytes | np.ndarray,
    *,
    name: str | Path | None = None,
    max_pixels: int | None = None,
    min_side: int | None = None,
) -> Decoded:
    """A file path, the file's bytes or an already decoded array -> Decoded.

    `min_side`: decode (or resize) down to a shorter side of about min_side when the image
    is larger (see the module doc); None keeps the full resolution.
    """
    _check_min_side(min_side)
    if isinstance(source, np.ndarray):
        image, scale = _fit(source, min_side)
        return Decoded(str(name or "<array>"), image, None, _size(source), scale)
    if isinstance(source, bytes | bytearray | memoryview):
        label = str(name or "<bytes>")
        data = bytes(source)
    else:
        label = str(name or source)
        data = read_file(source, name=label)
    if is_dicom(data, label):
        from .dicom import decode_dicom  # pydicom only when a DICOM file turns up

        image, note = decode_dicom(data, label, max_pixels=max_pixels)
        resized, scale = _fit(image, min_side)
        return Decoded(label, resized, note, _size(image), scale)
    return _decode_raster(data, label, max_pixels=max_pixels, min_side=min_side)


_RASTER_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"II*\x00", b"MM\x00*", b"BM", b"GIF8")


def is_dicom(data: bytes, name: str | Path = "") -> bool:
    """DICOM by its marker; some .dcm files have no preamble, so a .dcm name counts too
    unless the bytes are plainly another format (content wins over the extension)."""
    if data[128:132] == b"DICM":
        return True
    return str(name).lower().endswith(".dcm") and not data.startswith(_RASTER_MAGIC)


def load_image(path: str | Path, *, max_pixels: int | None = None) -> np.ndarray:
    return decode(path, max_pixels=max_pixels).image


def read_file(path: str | Path, *, name: str | Path | None = None) -> bytes:
    """A file's bytes, or an ImageError that says why they cannot be read.

    The error names the file as `name`, else exactly as `path` was passed.
    """
    label = name if name is not None else path
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageError(label, "file not found") from None
    except IsADirectoryError:
        raise ImageError(label, "is a directory, not an image") from None
    except PermissionError:
        raise ImageError(label, "permission denied") from None
    except OSError as exc:
        raise ImageError(label, f"cannot read ({exc.strerror or exc})") from None


def decode_image(
    data: bytes,
    name: str | Path = "<bytes>",
    *,
    max_pixels: int | None = None,
    min_side: int | None = None,
) -> np.ndarray:
    """A raster file's bytes (JPEG, PNG, TIFF, BMP, GIF) -> the image array."""
    _check_min_side(min_side)
    return _decode_raster(data, str(name), max_pixels=max_pixels, min_side=min_side).image


def _decode_raster(
    data: bytes, name: str, *, max_pixels: int | None, min_side: int | None
) -> Decoded:
    if not data:
        raise ImageError(name, "empty file (0 bytes)")
    if max_pixels is not None:
        size = header_size(data)
        if size is not None and size[0] * size[1] > max_pixels:
            raise ImageError(
                name,
                f"image is {size[0]}x{size[1]} pixels, over the limit of {max_pixels:,} "
                "(refused before decoding)",
            )
    # A JPEG is scaled by its decoder only (1/k, from the header, no resize after: its shorter
    # side ends in [min_side, 2 min_side) unless it was smaller); anything else is resized once.
    flags, k, stored, resize = _DECODE_FLAGS, 1, (0, 0), min_side
    if min_side is not None and data[:3] == b"\xff\xd8\xff":
        sof = _jpeg_sof(data)
        if sof is not None:
            stored, k, resize = sof[:2], _reduction(min(sof[:2]), min_side), None
            if k > 1:
                flags = _REDUCED[k][sof[2] == 1]  # a one-component JPEG stays grey
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as exc:  # OpenCV's own size limit, or a codec that raises on bad data
        size = header_size(data)
        if "MAX_IMAGE_PIXELS" in str(exc) and size is not None:
            raise ImageError(
                name, f"image is {size[0]}x{size[1]} pixels, too large to decode"
            ) from None
        raise ImageError(name, f"{_UNREADABLE} (the decoder gave up)") from None
    except MemoryError:
        raise ImageError(name, "too large to decode (out of memory)") from None
    if image is None:
        raise ImageError(name, _UNREADABLE)
    if min(image.shape[:2]) < 1:
        raise ImageError(name, "image has no pixels")
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageError(name, _depth_problem(image))
    if image.ndim == 3 and image.shape[2] in (1, 2):  # grey (+ alpha): the grey is the picture
        image = np.ascontiguousarray(image[:, :, 0])
    if k > 1:  # the header's size is the stored one; EXIF rotation by 90/270 swaps it
        w, h = stored
        original = (h, w) if w != h and image.shape[1] != -(-w // k) else (w, h)
        scale = min(image.shape[:2]) / min(original)
    else:
        original = _size(image)
        scale = 1.0
    if image.ndim == 3:
        if image.shape[2] == 4:  # cv2 may keep alpha for some formats; the photo is what's under it
            image = image[:, :, :3]
        image, scale = _fit(image, resize, scale)
        if image.dtype != np.uint8:  # 16-bit colour: keep the top byte
            image = (image >> 8).astype(np.uint8)
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    else:
        image, scale = _fit(image, resize, scale)  # grey keeps its depth (uint16 X-rays)
    return Decoded(name, image, _frames_note(data), original, scale)


def _depth_problem(image: np.ndarray) -> str:
    bits = image.dtype.itemsize * 8
    if image.dtype.kind == "f":
        bad = "" if np.isfinite(image).all() else ", some of them NaN or infinite"
        return (
            f"{bits}-bit floating-point pixels ({image.dtype}{bad}) are not supported: "
            f"their brightness scale is unknown; {_SAVE_AS}"
        )
    signed = "signed " if image.dtype.kind == "i" else ""
    return f"{signed}{bits}-bit integer pixels ({image.dtype}) are not supported; {_SAVE_AS}"


def _check_min_side(min_side: int | None) -> None:
    if min_side is None:
        return
    if isinstance(min_side, bool) or not isinstance(min_side, int | np.integer) or min_side < 1:
        raise ValueError(f"min_side must be a positive integer or None, got {min_side!r}")


def jpeg_reduction(data: bytes, min_side: int) -> int:
    """The DCT-domain reduction k (1, 2, 4 or 8) decode(data, min_side=min_side) would use;
    1 for anything that is not a JPEG with a readable header."""
    if min_side is None:  # decode() takes None as "full size"; a reduction needs a side
        raise ValueError("min_side must be a positive integer, got None")
    _check_min_side(min_side)
    sof = _jpeg_sof(data) if data[:3] == b"\xff\xd8\xff" else None
    return 1 if sof is None else _reduction(min(sof[:2]), min_side)


def _reduction(side: int, min_side: int) -> int:
    """The largest JPEG reduction k in (8, 4, 2) with side / k >= min_side; 1 when none fits."""
    return next((k for k in (8, 4, 2) if side >= min_side * k), 1)


def _fit(image: np.ndarray, min_side: int | None, scale: float = 1.0) -> tuple[np.ndarray, float]:
    """Resize once (INTER_AREA) so the shorter side is min_side, when it is longer."""
    if min_side is None or image.ndim < 2:
        return image, scale
    h, w = image.shape[:2]
    short = min(h, w)
    if short <= min_side:
        return image, scale
    f = min_side / short
    size = (max(1, round(w * f)), max(1, round(h * f)))
    out = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return out, min(out.shape[:2]) / short


def _size(image: np.ndarray) -> tuple[int, int] | None:
    return (int(image.shape[1]), int(image.shape[0])) if image.ndim >= 2 else None


def _frames_note(data: bytes) -> str | None:
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        kind, frames = "multi-page TIFF", tiff_info(data)[1]
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        kind, frames = "animated GIF", gif_info(data)[1]
    else:
        return None
    return f"{kind} ({frames} frames): the first frame was screened" if frames > 1 else None


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) a JPEG, PNG, TIFF (first page), BMP or GIF header claims, without
    decoding; None if not found. A JPEG's is the stored size, before EXIF rotation."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"\xff\xd8":
        sof = _jpeg_sof(data)
        return None if sof is None else (sof[0], sof[1])
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return tiff_info(data)[0]
    if data[:2] == b"BM" and len(data) >= 26:
        if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
            return struct.unpack("<HH", data[18:22])
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return gif_info(data)[0]
    return None


def _jpeg_sof(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) from a JPEG's start-of-frame marker; None if not found."""
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in _SOF:
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height, data[i + 9]
        i += 2 + length
    return None


def tiff_info(data: bytes) -> tuple[tuple[int, int] | None, int]:
    """((width, height) of the first page or None, number of pages) from a TIFF's IFD chain."""
    end = "<" if data[:2] == b"II" else ">"
    size, pages, seen = None, 0, set()
    try:
        offset = struct.unpack(end + "I", data[4:8])[0]
        while offset and offset not in seen and pages < _MAX_PAGES:
            seen.add(offset)
            count = struct.unpack(end + "H", data[offset : offset + 2])[0]
            if pages == 0:
                tags = {}
                for i in range(count):
                    entry = data[offset + 2 + 12 * i : offset + 14 + 12 * i]
                    tag, kind = struct.unpack(end + "HH", entry[:4])
                    if tag in (256, 257):
                        short = kind == 3
                        tags[tag] = struct.unpack(
                            end + ("H" if short else "I"), entry[8 : 10 if short else 12]
                        )[0]
                if 256 in tags and 257 in tags:
                    size = (tags[256], tags[257])
            pages += 1
            at = offset + 2 + 12 * count
            offset = struct.unpack(end + "I", data[at : at + 4])[0]
    except struct.error:  # truncated header: the decoder will say what is wrong
        pass
    return size, max(pages, 1)


def gif_info(data: bytes) -> tuple[tuple[int, int] | None, int]:
    """((width, height) covering every frame, number of frames) from a GIF's blocks."""
    width, height = struct.unpack("<HH", data[6:10])
    frames = 0
    try:
        i = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
        while i < len(data) and frames < _MAX_PAGES:
            block = data[i]
            if block == 0x3B:  # trailer
                break
            if block == 0x21:  # extension: label, then sub-blocks
                i += 2
            elif block == 0x2C:  # image descriptor, optional local colour table, LZW size byte
                frames += 1
                left, top, fw, fh = struct.unpack("<HHHH", data[i + 1 : i + 9])
                width, height = max(width, left + fw), max(height, top + fh)
                flags = data[i + 9]
                i += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0) + 1
            else:
                break
            while i < len(data) and data[i]:  # sub-blocks until a zero length
                i += data[i] + 1
            i += 1
    except (IndexError, struct.error):
        pass
    return (width, height), max(frames, 1)
