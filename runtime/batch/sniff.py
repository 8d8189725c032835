"""Tell what an upload is from its first bytes, and how big it claims to be, without decoding.

Uploads are judged by content, not by extension: a TIFF named `.jpg` is a TIFF. Only the
formats below reach a decoder; anything else (random bytes, text, exotic formats whose
size cannot be checked cheaply) is refused, so a decompression bomb in an odd format
never gets the chance to allocate.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..imageio import gif_info, header_size, is_dicom, tiff_info

FORMATS = ("jpeg", "png", "tiff", "bmp", "gif", "dicom")


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
        return Sniffed("tiff", *tiff_info(data))
    if data[:2] == b"BM" and len(data) >= 26:
        return Sniffed("bmp", header_size(data))
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return Sniffed("gif", *gif_info(data))
    if is_dicom(data) or dicom_by_name:
        return Sniffed("dicom")
    head = data[:512]
    if head and all(32 <= c < 127 or c in (9, 10, 13) for c in head):
        return Sniffed(None, problem="a text file, not an image")
    return Sniffed(
        None, problem="not a supported image format (expected JPEG, PNG, TIFF, BMP, GIF or DICOM)"
    )


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
