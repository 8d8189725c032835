"""Decoding: the array convention, EXIF rotation, 16-bit, and errors that name the file."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgescreen.runtime.errors import ImageError
from edgescreen.runtime.imageio import decode_image, header_size, load_image


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
