"""Decoding: the array convention, EXIF rotation, 16-bit, and errors that name the file."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest

from edgescreen.runtime.errors import ImageError
from edgescreen.runtime.imageio import decode, decode_image, header_size, load_image


def _write(path, image):
    assert cv2.imwrite(str(path), image)
    return path


def test_colour_is_rgb(tmp_path):
    bgr = np.zeros((10, 12, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR order
    img = load_image(_write(tmp_path / "red.png", bgr))
    assert img.shape == (10, 12, 3) and img.dtype == np.uint8
    assert img[0, 0, 0] == 200 and img[0, 0, 2] == 0


def test_sixteen_bit_grey_keeps_its_depth(tmp_path):
    grey = np.arange(100, dtype=np.uint16).reshape(10, 10) * 600
    img = load_image(_write(tmp_path / "xray16.png", grey))
    assert img.dtype == np.uint16 and np.array_equal(img, grey)


def test_rgba_drops_alpha(tmp_path):
    bgra = np.full((8, 8, 4), 90, np.uint8)
    assert load_image(_write(tmp_path / "a.png", bgra)).shape == (8, 8, 3)


def test_unicode_and_spaces_in_names(tmp_path):
    path = _write(tmp_path / "patient ünïcode 眼.png", np.zeros((5, 5, 3), np.uint8))
    assert load_image(path).shape == (5, 5, 3)


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"", "empty file"),
        (b"this is a text file, not an image", "not a readable image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "not a readable image"),
    ],
)
def test_bad_files_name_the_file_and_problem(tmp_path, content, problem):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert str(path) in str(err.value) and problem in str(err.value)


def test_truncated_jpeg_is_refused(tmp_path):
    ok, buf = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.tobytes()[:200])
    with pytest.raises(ImageError, match="cut.jpg"):
        load_image(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        load_image(tmp_path / "gone.png")
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


def test_pixel_limit_refused_before_decoding(tmp_path):
    big = np.zeros((300, 400, 3), np.uint8)
    for ext in (".png", ".jpg"):
        ok, buf = cv2.imencode(ext, big)
        assert header_size(buf.tobytes()) == (400, 300)
        with pytest.raises(ImageError, match="over the limit"):
            decode_image(buf.tobytes(), "big" + ext, max_pixels=100_000)
        assert decode_image(buf.tobytes(), "big" + ext, max_pixels=120_000).shape == (300, 400, 3)


def test_exif_orientation_is_applied():
    # A 2x1 JPEG carrying EXIF orientation 6 (rotate 90 CW) must come out 1 wide, 2 high.
    img = np.zeros((16, 32, 3), np.uint8)
    img[:, :16] = 255  # left half white
    ok, buf = cv2.imencode(".jpg", img)
    data = buf.tobytes()
    # APP1 Exif segment with a single Orientation=6 tag (big-endian TIFF header).
    tiff = (
        b"MM\x00\x2a\x00\x00\x00\x08"
        + b"\x00\x01"
        + b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00"
        + b"\x00\x00\x00\x00"
    )
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    rotated = decode_image(data[:2] + app1 + data[2:], "exif.jpg")
    assert rotated.shape[:2] == (32, 16)
    assert rotated[:16].mean() > 200 and rotated[16:].mean() < 50  # white half is now on top


# -- min_side: decode at the scale the work needs ----------------------------------------
def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth BGR picture (JPEG-friendly, fast to encode)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (max(1, h // 16), max(1, w // 16), 3), np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _jpeg(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize(
    "min_side, k",
    [(100, 8), (125, 8), (126, 4), (250, 4), (251, 2), (500, 2), (501, 1), (2000, 1)],
)
def test_reduced_jpeg_picks_the_largest_reduction(min_side, k):
    data = _jpeg(_photo(1000, 1500))
    assert header_size(data) == (1500, 1000)
    d = decode(data, name="photo.jpg", min_side=min_side)
    assert d.original_size == (1500, 1000) and d.image.dtype == np.uint8
    if k == 1:  # already small: decoded exactly as without min_side (a JPEG is never resized)
        assert np.array_equal(d.image, decode(data).image) and d.scale == 1.0
        return
    assert d.image.shape == (-(-1000 // k), -(-1500 // k), 3) and d.scale == 1 / k  # rounded up
    assert 1000 / k >= min_side > 1000 / (2 * k)  # the largest k that keeps min_side
    flag = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}.get(
        k, cv2.IMREAD_REDUCED_COLOR_8
    )
    reduced = cv2.imdecode(np.frombuffer(data, np.uint8), flag)  # the DCT-domain decode itself
    assert np.array_equal(d.image, cv2.cvtColor(reduced, cv2.COLOR_BGR2RGB))


def test_reduced_grey_jpeg_stays_grey_and_odd_sizes_round_up():
    grey = cv2.cvtColor(_photo(999, 1501), cv2.COLOR_BGR2GRAY)
    d = decode(_jpeg(grey), min_side=200)  # 999 / 4 >= 200 > 999 / 8
    assert d.image.shape == (250, 376) and d.image.dtype == np.uint8  # ceil(999/4), ceil(1501/4)
    assert d.original_size == (1501, 999) and d.scale == pytest.approx(250 / 999)


def test_min_side_none_and_small_images_are_untouched(tmp_path):
    small = _photo(120, 160)
    for ext in (".jpg", ".png", ".tiff"):
        path = _write(tmp_path / f"small{ext}", small)
        full = decode(path)
        assert full.original_size == (160, 120) and full.scale == 1.0 and not full.reduced
        for min_side in (120, 500):
            d = decode(path, min_side=min_side)
            assert np.array_equal(d.image, full.image) and d.scale == 1.0


def test_png_and_tiff_are_resized_once_from_full_resolution(tmp_path):
    colour = _photo(600, 900)
    grey16 = (cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257) ^ 0x5A
    for name, image in (
        ("c.png", colour),
        ("c.tiff", colour),
        ("c.bmp", colour),
        ("g16.png", grey16),
        ("g16.tif", grey16),
    ):
        d = decode(_write(tmp_path / name, image), min_side=200)
        expected = cv2.resize(image, (300, 200), interpolation=cv2.INTER_AREA)  # one INTER_AREA
        if expected.ndim == 3:
            expected = cv2.cvtColor(expected, cv2.COLOR_BGR2RGB)
        assert d.image.dtype == image.dtype  # 16-bit grey keeps its depth
        assert np.array_equal(d.image, expected), name
        assert d.original_size == (900, 600) and d.scale == pytest.approx(1 / 3)


def test_sixteen_bit_colour_png_is_resized_then_cut_to_eight_bit(tmp_path):
    colour16 = _photo(400, 600).astype(np.uint16) * 257
    d = decode(_write(tmp_path / "c16.png", colour16), min_side=100)
    assert d.image.shape == (100, 150, 3) and d.image.dtype == np.uint8


def test_arrays_are_resized_too_and_min_side_is_checked():
    image = np.zeros((300, 500, 3), np.uint8)
    d = decode(image, min_side=150)
    assert d.image.shape == (150, 250, 3) and d.original_size == (500, 300) and d.scale == 0.5
    assert decode(image).image is image
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="min_side"):
            decode(image, min_side=bad)


def _exif_rotated_jpeg(width: int, height: int) -> bytes:
    """A JPEG stored width x height, left half white, with EXIF Orientation 6 (rotate 90 CW)."""
    pil_image = pytest.importorskip("PIL.Image")
    img = np.zeros((height, width, 3), np.uint8)
    img[:, : width // 2] = 255
    exif = pil_image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    pil_image.fromarray(img).save(buf, "JPEG", exif=exif, quality=95)
    return buf.getvalue()


@pytest.mark.parametrize("min_side, k", [(None, 1), (100, 4), (150, 4), (151, 2), (400, 1)])
def test_exif_orientation_is_honoured_when_reduced(min_side, k):
    data = _exif_rotated_jpeg(1000, 600)
    assert header_size(data) == (1000, 600)  # the stored, unrotated size
    d = decode(data, name="exif.jpg", min_side=min_side)
    h, w = d.image.shape[:2]
    assert (w, h) == (600 // k, 1000 // k)  # rotated: now portrait
    assert d.original_size == (600, 1000) and d.scale == 1 / k
    assert d.image[: h // 2 - 2].mean() > 200 and d.image[h // 2 + 2 :].mean() < 50  # white on top


def test_header_size_of_tiff_bmp_and_gif():
    image = _photo(30, 40)
    for ext in (".tiff", ".bmp", ".gif"):
        ok, buf = cv2.imencode(ext, image)
        assert ok and header_size(buf.tobytes()) == (40, 30), ext


def test_paths_are_named_exactly_as_passed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    for source in ("./gone.png", "./bad.png"):
        with pytest.raises(ImageError) as err:
            decode(source)
        assert str(err.value).startswith(source + ": ") and err.value.path == source
    with pytest.raises(ImageError) as err:
        decode("./gone.png", name="upload 7")
    assert str(err.value) == "upload 7: file not found"


def test_dicom_is_resized_once_and_keeps_sixteen_bits():
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = (np.arange(400 * 600, dtype=np.uint32).reshape(400, 600) % 4096).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    full = decode(buf.getvalue(), name="xray.dcm")
    d = decode(buf.getvalue(), name="xray.dcm", min_side=100)
    assert d.image.dtype == np.uint16 and d.image.shape == (100, 150)
    assert d.original_size == (600, 400) and d.scale == 0.25
    assert np.array_equal(d.image, cv2.resize(full.image, (150, 100), interpolation=cv2.INTER_AREA))
