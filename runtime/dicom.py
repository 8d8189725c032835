"""DICOM uploads (chest X-rays mostly) into the runtime's array convention, via pydicom.

pydicom is optional and imported here only when a DICOM file turns up. Grey images come
out uint16 after the modality LUT (rescale) and the VOI window the file asks for, with
MONOCHROME1 inverted so bone is always bright; the card's own percentile windowing then
runs on that, as it does for PNG X-rays. Multi-frame files: the first frame is screened.
"""

from __future__ import annotations

import io

import numpy as np

from .errors import ImageError


def decode_dicom(
    data: bytes, name: str, *, max_pixels: int | None = None
) -> tuple[np.ndarray, str | None]:
    """(image, note): RGB uint8 or grey uint16; note says when only the first frame was used."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:  # pragma: no cover - depends on the install
        raise ImageError(name, "DICOM needs pydicom: pip install pydicom") from None
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError) as exc:
        raise ImageError(name, f"corrupt DICOM ({type(exc).__name__}: {exc})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageError(
            name, "DICOM file has no pixel data (not an image: report, structured data?)"
        )
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if max_pixels is not None and rows * cols > max_pixels:
        raise ImageError(
            name,
            f"image is {cols}x{rows} pixels, over the limit of {max_pixels:,} "
            "(refused before decoding)",
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut, convert_color_space

        arr = ds.pixel_array
        if frames > 1:
            arr = arr[0]
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        if arr.ndim == 3:  # colour
            if photometric.startswith("YBR"):
                arr = convert_color_space(arr, photometric, "RGB")
            image = _scale(arr.astype(np.float64), arr.min(), arr.max(), 255).astype(np.uint8)
        else:
            image = _grey(ds, arr, photometric, apply_modality_lut, apply_voi_lut)
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt or unsupported pixel data of any kind
        raise ImageError(
            name, f"cannot decode DICOM pixel data ({type(exc).__name__}: {exc})"
        ) from None
    note = (
        f"multi-frame DICOM ({frames} frames): the first frame was screened" if frames > 1 else None
    )
    return np.ascontiguousarray(image), note


def _grey(ds, arr: np.ndarray, photometric: str, modality_lut, voi_lut) -> np.ndarray:
    values = modality_lut(arr, ds).astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        values = voi_lut(values, ds).astype(np.float64)
        centre, width = _window(ds)
        if centre is not None and width:  # linear window: its range, not the data's
            lo, hi = centre - 0.5 - (width - 1) / 2, centre - 0.5 + (width - 1) / 2
        else:
            lo, hi = float(values.min()), float(values.max())
    out = _scale(values, lo, hi, 65535)
    if photometric == "MONOCHROME1":  # 0 means white in MONOCHROME1
        out = 65535 - out
    return out.astype(np.uint16)


def _window(ds) -> tuple[float | None, float | None]:
    def first(v):
        try:
            return float(v[0]) if hasattr(v, "__len__") and not isinstance(v, str) else float(v)
        except (TypeError, ValueError, IndexError):
            return None

    return first(ds.get("WindowCenter")), first(ds.get("WindowWidth"))


def _scale(values: np.ndarray, lo: float, hi: float, top: int) -> np.ndarray:
    if hi <= lo:
        return np.zeros(values.shape, np.float64)
    return np.rint(np.clip((values - lo) / (hi - lo), 0.0, 1.0) * top)
