"""The bad-input corpus: every odd upload becomes a row with a clear reason, and the batch goes on."""

from __future__ import annotations

import io
import os
import sqlite3
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import fundus_like as fundus

from edgescreen.runtime.batch import BatchOptions, run_batch
from edgescreen.runtime.batch import pipeline as batch_pipeline
from edgescreen.runtime.batch.sniff import sniff
from edgescreen.runtime.dicom import decode_dicom
from edgescreen.runtime.errors import ImageError

MAX_PIXELS = 1_500_000


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A tiny DR bundle whose card refuses images over 1.5 Mpx, so 'huge' is cheap to make."""
    import dataclasses

    from conftest import make_bundle

    from edgescreen.runtime.card import load_card, save_card

    root = make_bundle(tmp_path_factory.mktemp("inputs") / "dr", size=32)
    card = load_card(root)
    save_card(card.replace(input=dataclasses.replace(card.input, max_pixels=MAX_PIXELS)), root)
    return root


def png_header_bomb(width: int, height: int) -> bytes:
    """A valid small PNG whose header claims width x height (a decompression-bomb shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + chunk(b"IEND", b"")
    )


def tiff_header(width: int, height: int) -> bytes:
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 8),
        (277, 3, 1, 1),
        (278, 4, 1, height),
        (279, 4, 1, width * height),
    ]
    ifd = (
        struct.pack("<H", len(entries))
        + b"".join(
            struct.pack("<HHI", t, k, n)
            + (struct.pack("<HH", v, 0) if k == 3 else struct.pack("<I", v))
            for t, k, n, v in entries
        )
        + struct.pack("<I", 0)
    )
    return b"II*\x00" + struct.pack("<I", 8) + ifd


def bmp_header(width: int, height: int) -> bytes:
    return (
        b"BM"
        + struct.pack("<IHHI", (54 + 3 * width * height) & 0xFFFFFFFF, 0, 0, 54)
        + struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
        + b"\0" * 64
    )


def dicom_bytes(
    pixels: np.ndarray | None, *, photometric: str = "MONOCHROME2", window=None, frames: int = 1
) -> bytes:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Modality = "DX"
    ds.PatientName = "Test^Patient"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape[-2:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        if frames > 1:
            ds.NumberOfFrames = frames
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = window
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def write(root: Path, name: str, data: bytes | np.ndarray, ext: str = ".png", params=()) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, np.ndarray):
        ok, buf = cv2.imencode(ext, data, list(params))
        assert ok
        data = buf.tobytes()
    path.write_bytes(data)
    return path


@pytest.fixture
def corpus(tmp_path, fundus_dir) -> tuple[Path, dict[str, tuple[str, str]]]:
    """{file: (expected state, expected words in the reason)} and the folder holding them."""
    root = tmp_path / "in"
    root.mkdir()
    photo = fundus(1)
    real = (fundus_dir / "images").glob("*.jpg").__next__().read_bytes()
    expect: dict[str, tuple[str, str]] = {}

    def case(name, data, state, words, ext=".png", params=()):
        write(root, name, data, ext, params)
        expect[name] = (state, words)

    case("good.jpg", photo, "done", "", ".jpg")
    case("empty.jpg", b"", "failed", "empty file (0 bytes)")
    case("truncated.jpg", real[: len(real) // 2], "failed", "not a readable image")
    png = cv2.imencode(".png", photo)[1].tobytes()
    case("truncated.png", png[: len(png) // 2], "failed", "not a readable image")
    case(
        "random.png", np.random.default_rng(0).bytes(5000), "failed", "not a supported image format"
    )
    case("notes.jpg", b"patient list\nsee attached\n", "failed", "a text file")
    case("sixteen_bit.png", photo.astype(np.uint16) * 257, "done", "")
    case("rgba.png", cv2.cvtColor(photo, cv2.COLOR_BGR2BGRA), "done", "")
    case("grey.png", cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY), "ungradable", "no fundus found")
    case("tiny.png", photo[:8, :8], "ungradable", "resolution too low")
    case("huge.jpg", cv2.resize(photo, (1500, 1100)), "failed", "over the limit of 1,500,000")
    case("bomb.png", png_header_bomb(60000, 60000), "failed", "60000x60000 pixels, over the limit")
    case("bomb.tif", tiff_header(50000, 50000), "failed", "50000x50000 pixels, over the limit")
    case("bomb.bmp", bmp_header(40000, 40000), "failed", "40000x40000 pixels, over the limit")
    ok, multi = cv2.imencodemulti(".tiff", [photo, photo[::-1]])
    case(
        "multipage.tiff",
        multi.tobytes(),
        "done",
        "multi-page TIFF (2 frames): the first frame was screened",
    )
    case("photo.bmp", photo, "done", "", ".bmp")
    case("no_pixels.dcm", dicom_bytes(None), "failed", "has no pixel data")
    dcm = dicom_bytes(np.full((300, 300), 900))
    case("corrupt.dcm", dcm[:200] + os.urandom(300), "failed", "DICOM")
    case(
        "chest.dcm",
        dicom_bytes(
            np.tile(np.arange(300) * 13, (300, 1)), photometric="MONOCHROME1", window=(2000, 3000)
        ),
        "ungradable",
        "no fundus found",
    )
    case("dir with space/ünï cödé\nnewline.jpg", fundus(3), "done", "", ".jpg")
    case("folder.jpg/inside.png", fundus(4), "done", "")
    case(".hidden.jpg", photo, "ignored", "")
    case("upload.jpg.part", photo, "ignored", "")
    case("upload.tmp", photo, "ignored", "")
    (root / "outside.jpg").symlink_to(fundus_dir / "labels.csv")
    expect["outside.jpg"] = ("failed", "symbolic link points outside IN_DIR")
    (root / "inside_link.jpg").symlink_to(root / "good.jpg")
    expect["inside_link.jpg"] = ("alias", "good.jpg")
    (root / "dangling.png").symlink_to(root / "gone.png")
    expect["dangling.png"] = ("failed", "symbolic link")
    case("vanishing.jpg", photo[::-1], "failed", "deleted before it could be read", ".jpg")
    if os.geteuid() != 0:  # root reads a chmod 000 file anyway
        case("locked.jpg", photo, "failed", "permission denied", ".jpg")
        os.chmod(root / "locked.jpg", 0)
    return root, expect


def test_bad_inputs_each_get_a_row_with_a_reason(corpus, bundle, tmp_path, monkeypatch):
    root, expect = corpus
    real_read = batch_pipeline._read

    def read_but_vanish(found):  # the file disappears between discovery and reading
        if found.rel == "vanishing.jpg":
            found.path.unlink()
        return real_read(found)

    monkeypatch.setattr(batch_pipeline, "_read", read_but_vanish)
    db = tmp_path / "r.sqlite"
    run_batch(BatchOptions(in_dir=root, bundle=bundle, db=db, batch_size=4))
    con = sqlite3.connect(db)
    items = {
        p: (s, e or "", n or "", rj)
        for p, s, e, n, rj in con.execute(
            "SELECT path, state, error, notes, result_json FROM items"
        )
    }
    paths = dict(
        con.execute(
            "SELECT paths.path, items.path FROM paths JOIN items ON items.id = paths.item_id"
        )
    )
    for name, (state, words) in expect.items():
        if state == "ignored":
            assert name not in paths, name
            continue
        if state == "alias":
            assert paths[name] == words
            continue
        assert name in items, name
        got_state, error, notes, result_json = items[name]
        assert got_state == state, (name, got_state, error, result_json[:300])
        assert words in error + notes + result_json, (name, error, notes)
        if state == "failed":
            assert name.split("/")[-1].split("\n")[0] in error, (
                name,
                error,
            )  # the reason names the file
    assert len(items) == len([s for s, _ in expect.values() if s not in ("ignored", "alias")])
    # The report's photo is made while screening, from the same decode (DICOM included);
    # a file that failed gets none.
    thumbs = dict(con.execute("SELECT path, thumb_jpeg FROM items"))
    for name, (state, _, _, _) in items.items():
        assert (thumbs[name] is not None) == (state != "failed"), name
    chest = cv2.imdecode(np.frombuffer(thumbs["chest.dcm"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert chest.ndim == 2 and max(chest.shape) == 160 and chest.std() > 5


def test_exif_rotation_is_applied(tmp_path, bundle):
    image_mod = pytest.importorskip("PIL.Image")
    photo = cv2.cvtColor(cv2.resize(fundus(2), (320, 288)), cv2.COLOR_BGR2RGB)
    exif = image_mod.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    root = tmp_path / "in"
    root.mkdir()
    image_mod.fromarray(photo).save(root / "rotated.jpg", exif=exif.tobytes())
    cmyk = image_mod.fromarray(photo).convert("CMYK")
    cmyk.save(root / "cmyk.jpg")
    db = tmp_path / "r.sqlite"
    run_batch(BatchOptions(in_dir=root, bundle=bundle, db=db))
    import json

    con = sqlite3.connect(db)
    rows = {
        p: (s, json.loads(rj))
        for p, s, rj in con.execute("SELECT path, state, result_json FROM items")
    }
    state, result = rows["rotated.jpg"]
    m = result["quality"]["measurements"]
    assert (m["width"], m["height"]) == (288, 320), "EXIF orientation was not applied"
    state, result = rows["cmyk.jpg"]
    assert state in ("done", "ungradable") and result["error"] is None  # decoded, not refused


def test_dicom_monochrome1_is_inverted_and_windowed():
    ramp = np.tile(np.arange(256) * 16, (64, 1))  # 0..4080 left to right
    mono2, note = decode_dicom(dicom_bytes(ramp, window=(2048, 2048)), "x.dcm")
    mono1, _ = decode_dicom(
        dicom_bytes(ramp, photometric="MONOCHROME1", window=(2048, 2048)), "x.dcm"
    )
    assert note is None and mono2.dtype == np.uint16 and mono2.shape == (64, 256)
    assert mono2[0, 0] < mono2[0, -1] and mono1[0, 0] > mono1[0, -1]  # inverted
    assert np.array_equal(mono1.astype(np.int64), 65535 - mono2.astype(np.int64))
    # the window [1024, 3072] saturates below and above
    assert mono2[0, 10] == 0 and mono2[0, 250] == 65535 and 0 < mono2[0, 128] < 65535
    multi, note = decode_dicom(dicom_bytes(np.stack([ramp, ramp[:, ::-1]]), frames=2), "m.dcm")
    assert multi.shape == (64, 256) and "first frame" in note
    with pytest.raises(ImageError, match="over the limit"):
        decode_dicom(dicom_bytes(ramp), "big.dcm", max_pixels=1000)


def test_sniff_formats():
    assert sniff(b"").problem == "empty file (0 bytes)"
    assert sniff(tiff_header(640, 480)).size == (640, 480)
    assert sniff(bmp_header(33, 22)).size == (33, 22)
    assert sniff(png_header_bomb(7, 9)).size == (7, 9)
    gif = cv2.imencode(".gif", fundus(0)[:40, :50])[1].tobytes()
    assert sniff(gif).format == "gif" and sniff(gif).size == (50, 40) and sniff(gif).pages == 1
    if hasattr(cv2, "imencodeanimation"):
        anim = cv2.Animation()
        anim.frames, anim.durations = (
            [fundus(0)[:40, :50], fundus(1)[:40, :50], fundus(2)[:40, :50]],
            [100] * 3,
        )
        ok, buf = cv2.imencodeanimation(".gif", anim)
        assert ok and sniff(buf.tobytes()).pages == 3
