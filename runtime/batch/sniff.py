"""Tell what an upload is from its first bytes, and how big it claims to be, without decoding.

Uploads are judged by content, not by extension: a TIFF named `.jpg` is a TIFF. Only the
formats below reach a decoder; anything else (random bytes, text, exotic formats whose
size cannot be checked cheaply) is refused, so a decompression bomb in an odd format
never gets the chance to allocate.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..imageio import header_size, is_dicom

FORMATS = ("jpeg", "png", "tiff", "bmp", "gif", "dicom")
_MAX_PAGES = 4096  # stop walking an IFD/frame chain past this (loops, hostile files)


@dataclass(frozen=True)
class Sniffed:
    format: str | None  # one of FORMATS, or None when not an image we accept
    size: tuple[int, int] | None = None  # (width, height) the header claims
    pages: int = 1  # TIFF pages / GIF frames
    problem: str | None = None  # why it is refused, when format is None


def sniff(data: bytes, *, dicom_by_name: bool = False) -> Sniffed:
    if not data:
        return Sniffed(None, problem="empty file (0 bytes)")
    if data[:3] == b"\xff\xd8\xff":
        return Sniffed("jpeg", header_size(data))
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return Sniffed("png", header_size(data))
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff(data)
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return Sniffed("bmp", (abs(width), abs(height)))
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _gif(data)
    if is_dicom(data) or dicom_by_name:
        return Sniffed("dicom")
    head = data[:512]
    if head and all(32 <= c < 127 or c in (9, 10, 13) for c in head):
        return Sniffed(None, problem="a text file, not an image")
    return Sniffed(
        None, problem="not a supported image format (expected JPEG, PNG, TIFF, BMP, GIF or DICOM)"
    )


def _tiff(data: bytes) -> Sniffed:
    end = "<" if data[:2] == b"II" else ">"
    try:
        offset = struct.unpack(end + "I", data[4:8])[0]
        size, pages, seen = None, 0, set()
        while offset and offset not in seen and pages < _MAX_PAGES:
            seen.add(offset)
            count = struct.unpack(end + "H", data[offset : offset + 2])[0]
            if pages == 0:
                tags = {}
                for i in range(count):
                    entry = data[offset + 2 + 12 * i : offset + 14 + 12 * i]
                    tag, kind = struct.unpack(end + "HH", entry[:4])
                    if tag in (256, 257):
                        tags[tag] = struct.unpack(
                            end + ("H" if kind == 3 else "I"), entry[8 : 10 if kind == 3 else 12]
                        )[0]
                if 256 in tags and 257 in tags:
                    size = (tags[256], tags[257])
            pages += 1
            offset = struct.unpack(
                end + "I", data[offset + 2 + 12 * count : offset + 6 + 12 * count]
            )[0]
    except struct.error:  # truncated header: let the decoder say what is wrong
        return Sniffed("tiff", None, max(pages, 1))
    return Sniffed("tiff", size, max(pages, 1))


def _gif(data: bytes) -> Sniffed:
    width, height = struct.unpack("<HH", data[6:10])
    frames = 0
    i = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    try:
        while i < len(data) and frames < _MAX_PAGES:
            block = data[i]
            if block == 0x3B:  # trailer
                break
            if block == 0x21:  # extension: label, then sub-blocks
                i += 2
            elif block == 0x2C:  # image descriptor, optional local colour table, LZW size byte
                frames += 1
                fw, fh = struct.unpack("<HH", data[i + 5 : i + 9])
                width, height = max(width, fw), max(height, fh)
                flags = data[i + 9]
                i += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0) + 1
            else:
                break
            while i < len(data) and data[i]:  # sub-blocks until a zero length
                i += data[i] + 1
            i += 1
    except (IndexError, struct.error):
        pass
    return Sniffed("gif", (width, height), max(frames, 1))


def pixel_limit_problem(sniffed: Sniffed, max_pixels: int | None) -> str | None:
    """The refusal for an image whose header claims more pixels than the card allows."""
    if max_pixels is None or sniffed.size is None:
        return None
    width, height = sniffed.size
    if width * height > max_pixels:
        return (
            f"image is {width}x{height} pixels, over the limit of {max_pixels:,} "
            "(refused before decoding)"
        )
    return None
