"""The one decoder: an image file (or its bytes) into the array convention every stage uses.

Convention: RGB uint8 HxWx3, or grayscale HxW uint8/uint16 (16-bit X-rays keep their
depth for percentile windowing). JPEG, PNG, TIFF, BMP and GIF go through OpenCV, DICOM
through pydicom (runtime/dicom.py). Every failure is an ImageError naming the file.
Screening, batch ingest, calibration, evaluation, training and report thumbnails all
decode here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import ImageError

# Keep bit depth and colour-ness; unlike IMREAD_UNCHANGED this still applies EXIF rotation.
_DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR


@dataclass(frozen=True)
class Decoded:
    """A decoded image and what the decoder noticed about the file."""

    name: str
    image: np.ndarray
    note: str | None = None  # e.g. "multi-frame DICOM (3 frames): the first frame was screened"


def decode(
    source: str | Path | bytes | np.ndarray,
    *,
    name: str | Path | None = None,
    max_pixels: int | None = None,
) -> Decoded:
    """A file path, the file's bytes or an already decoded array -> Decoded."""
    if isinstance(source, np.ndarray):
        return Decoded(str(name or "<array>"), source)
    if isinstance(source, bytes | bytearray | memoryview):
        label = str(name or "<bytes>")
        data = bytes(source)
    else:
        label = str(name or source)
        data = read_file(source)
    if is_dicom(data, label):
        from .dicom import decode_dicom  # pydicom only when a DICOM file turns up

        image, note = decode_dicom(data, label, max_pixels=max_pixels)
        return Decoded(label, image, note)
    return Decoded(label, decode_image(data, label, max_pixels=max_pixels))


_RASTER_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"II*\x00", b"MM\x00*", b"BM", b"GIF8")


def is_dicom(data: bytes, name: str | Path = "") -> bool:
    """DICOM by its marker; some .dcm files have no preamble, so a .dcm name counts too
    unless the bytes are plainly another format (content wins over the extension)."""
    if data[128:132] == b"DICM":
        return True
    return str(name).lower().endswith(".dcm") and not data.startswith(_RASTER_MAGIC)


def load_image(path: str | Path, *, max_pixels: int | None = None) -> np.ndarray:
    return decode(path, max_pixels=max_pixels).image


def read_file(path: str | Path) -> bytes:
    """A file's bytes, or an ImageError that says why they cannot be read."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageError(path, "is a directory, not an image") from None
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except OSError as exc:
        raise ImageError(path, f"cannot read ({exc.strerror or exc})") from None


def decode_image(
    data: bytes, name: str | Path = "<bytes>", *, max_pixels: int | None = None
) -> np.ndarray:
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
    image = cv2.imdecode(np.frombuffer(data, np.uint8), _DECODE_FLAGS)
    if image is None:
        raise ImageError(name, "not a readable image (corrupt, truncated or an unsupported format)")
    if image.ndim == 3:
        if image.shape[2] == 4:  # cv2 may keep alpha for some formats; the photo is what's under it
            image = image[:, :, :3]
        if image.dtype != np.uint8:  # 16-bit colour: keep the top byte
            image = (image >> 8).astype(np.uint8)
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.dtype not in (np.uint8, np.uint16):
        raise ImageError(name, f"unsupported pixel type {image.dtype}")
    if min(image.shape[:2]) < 1:
        raise ImageError(name, "image has no pixels")
    return image


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding; None if not found."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"\xff\xd8":
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
            if marker in (
                0xC0,
                0xC1,
                0xC2,
                0xC3,
                0xC5,
                0xC6,
                0xC7,
                0xC9,
                0xCA,
                0xCB,
                0xCD,
                0xCE,
                0xCF,
            ):
                height, width = struct.unpack(">HH", data[i + 5 : i + 9])
                return width, height
            i += 2 + length
    return None
