"""edgescreen batch: ledger, aliases, resume, exports, pseudonymisation, refusals, no network."""

from __future__ import annotations

import base64
import builtins
import csv
import html.parser
import io
import json
import os
import shutil
import socket
import sqlite3
import stat
import threading
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import fundus_like as fundus

from edgescreen.runtime.batch import BatchOptions, Ledger, LedgerError, run_batch
from edgescreen.runtime.batch import report as batch_report
from edgescreen.runtime.batch.cli import main as batch_main
from edgescreen.runtime.batch.patients import eye_from_name, group
from edgescreen.runtime.batch.report import write_html
from edgescreen.runtime.card import load_card
from edgescreen.runtime.errors import CardError


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from conftest import make_bundle

    return make_bundle(tmp_path_factory.mktemp("batch") / "dr", size=32)


@pytest.fixture
def uploads(tmp_path, fundus_dir) -> Path:
    root = tmp_path / "in"
    (root / "clinic a").mkdir(parents=True)
    for i, name in enumerate(
        ["Patient001_L.jpg", "Patient001_R.jpg", "12_left.jpeg", "12_right.png"]
    ):
        cv2.imwrite(str(root / "clinic a" / name), fundus(i))
    real = sorted((fundus_dir / "images").glob("*.jpg"))[:3]
    for p in real:
        shutil.copy(p, root / p.name)
    blurred = cv2.GaussianBlur(cv2.imread(str(real[0])), (0, 0), 12)
    cv2.imwrite(str(root / "fuzzy_photo.jpg"), blurred)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def run(root: Path, bundle: Path, db: Path, **kw):
    return run_batch(BatchOptions(in_dir=root, bundle=bundle, db=db, batch_size=4, **kw))


def rows(db: Path) -> dict[str, dict]:
    """{first path: row}, with the result JSON minus timings (which vary run to run)."""
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    out = {}
    for r in con.execute("SELECT * FROM items"):
        d = dict(r)
        result = json.loads(d["result_json"]) if d["result_json"] else None
        if result:
            result.pop("timings_ms")
        d["result"] = result
        out[d["path"]] = d
    con.close()
    return out


def test_batch_screens_everything_once_with_reasons(uploads, bundle, tmp_path):
    db = tmp_path / "out" / "results.sqlite"
    stats = run(uploads, bundle, db)
    assert stats.screened == 9 and stats.new_items == 9
    r = rows(db)
    assert {p: v["state"] for p, v in r.items()} == {
        "clinic a/Patient001_L.jpg": "done",
        "clinic a/Patient001_R.jpg": "done",
        "clinic a/12_left.jpeg": "done",
        "clinic a/12_right.png": "done",
        **{p.name: "done" for p in sorted(uploads.glob("c*.jpg"))},
        "fuzzy_photo.jpg": "ungradable",
        "broken.jpg": "failed",
    }
    assert (
        "broken.jpg" in r["broken.jpg"]["error"]
        and "not a readable image" in r["broken.jpg"]["error"]
    )
    assert "blurred" in r["fuzzy_photo.jpg"]["result"]["action"]
    done = r["clinic a/Patient001_L.jpg"]
    assert (
        done["bundle_sha256"] == done["result"]["audit"]["bundle_sha256"]
        and done["precision"] == "fp32"
    )
    assert done["heatmap_png"] is not None and json.loads(done["timings_json"])["infer"] > 0
    heat = cv2.imdecode(np.frombuffer(done["heatmap_png"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert heat.shape == (64, 64) and heat.dtype == np.uint8
    # owner-only ledger (and its WAL)
    for f in db.parent.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    # a rerun does nothing
    again = run(uploads, bundle, db)
    assert again.screened == 0 and again.new_items == 0 and rows(db).keys() == r.keys()


def test_copies_are_aliases_and_changed_files_are_screened_again(uploads, bundle, tmp_path):
    db = tmp_path / "r.sqlite"
    run(uploads, bundle, db)
    shutil.copy(uploads / "clinic a" / "Patient001_L.jpg", uploads / "re-upload of L.jpg")
    (uploads / "clinic a" / "12_left.jpeg").rename(uploads / "renamed.jpeg")
    stats = run(uploads, bundle, db)
    assert stats.screened == 0 and stats.aliases == 2
    cv2.imwrite(str(uploads / "clinic a" / "Patient001_R.jpg"), fundus(99))  # changed content
    stats = run(uploads, bundle, db)
    assert stats.screened == 1 and stats.new_items == 1
    led = Ledger(db)
    items = list(led.items())
    led.close()
    alias = next(i for i in items if i.path == "clinic a/Patient001_L.jpg")
    assert alias.paths == ["clinic a/Patient001_L.jpg", "re-upload of L.jpg"]
    assert len({i.sha256 for i in items}) == len(items)


def test_pending_rows_are_screened_on_resume_and_done_rows_are_not_redone(
    uploads, bundle, tmp_path
):
    db = tmp_path / "r.sqlite"
    ref_db = tmp_path / "ref.sqlite"
    run(uploads, bundle, ref_db)
    run(uploads, bundle, db)
    con = sqlite3.connect(db)  # pretend a crash left two rows pending
    con.execute(
        "UPDATE items SET state='pending', result_json=NULL, decision=NULL "
        "WHERE path IN ('fuzzy_photo.jpg', 'clinic a/12_left.jpeg')"
    )
    before = dict(
        con.execute("SELECT path, finished_at FROM items WHERE state != 'pending'").fetchall()
    )
    con.commit()
    con.close()
    stats = run(uploads, bundle, db)
    assert stats.screened == 2
    after = rows(db)
    assert all(after[p]["finished_at"] == t for p, t in before.items())  # untouched
    ref = rows(ref_db)
    for p in ref:
        assert after[p]["state"] == ref[p]["state"] and after[p]["result"] == ref[p]["result"], p


def test_corrupt_ledger_and_bad_bundle_stop_before_screening(uploads, bundle, tmp_path, capsys):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"SQLite format 3\x00" + os.urandom(4000))
    with pytest.raises(LedgerError, match="corrupt"):
        run(uploads, bundle, bad)
    assert batch_main(["batch", str(uploads), "--bundle", str(bundle), "--db", str(bad)]) == 2
    assert "corrupt" in capsys.readouterr().err
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE x (y)").connection.commit()
    with pytest.raises(LedgerError, match="not an edgescreen batch ledger"):
        run(uploads, bundle, other)
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    with open(tampered / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    db = tmp_path / "t.sqlite"
    with pytest.raises(CardError, match="sha256 mismatch"):
        run(uploads, tampered, db)
    assert Ledger(db).counts() == {"pending": 0, "done": 0, "failed": 0, "ungradable": 0}


def test_ledger_refuses_another_bundle(uploads, bundle, tmp_path):
    from conftest import make_bundle

    db = tmp_path / "r.sqlite"
    run(uploads, bundle, db)
    other = make_bundle(tmp_path / "other", size=32, seed=3)
    with pytest.raises(LedgerError, match="another --db"):
        run(uploads, other, db)


def test_no_network_during_a_batch(uploads, bundle, tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("edgescreen batch opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    out = tmp_path / "x"
    out.mkdir()
    code = batch_main(
        [
            "batch",
            str(uploads),
            "--bundle",
            str(bundle),
            "--db",
            str(out / "r.sqlite"),
            "--report",
            str(out / "r.html"),
            "--csv",
            str(out / "r.csv"),
            "--json",
        ]
    )
    assert code == 1  # broken.jpg failed


class _Rows(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self.text, self.scripts, self.imgs, self.alts = [], [], 0, [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-state" in a:
            self.rows.append(a)
        if tag == "script":
            self.scripts += 1 if "src" not in a else 100
        if tag == "img":
            self.imgs.append(a["src"])
            self.alts.append(a["alt"])

    def handle_data(self, data):
        self.text.append(data)


def test_report_csv_and_pseudonymisation(uploads, bundle, tmp_path, capsys):
    (uploads / "clinic a" / "patients.csv").write_text(
        "file,patient,eye\nPatient001_L.jpg,P-0001,L\n"
    )
    shutil.copy(
        uploads / "fuzzy_photo.jpg", uploads / "clinic a" / "P0001_right.jpg"
    )  # ungradable eye
    out = tmp_path / "exports"
    out.mkdir()
    db, report, table = out / "r.sqlite", out / "r.html", out / "r.csv"
    argv = [
        "batch",
        str(uploads),
        "--bundle",
        str(bundle),
        "--db",
        str(db),
        "--report",
        str(report),
        "--csv",
        str(table),
        "--json",
    ]
    assert batch_main(argv) == 1
    summary = json.loads(capsys.readouterr().out)
    assert (summary["done"], summary["ungradable"], summary["failed"]) == (7, 1, 1)
    parser = _Rows()
    parser.feed(report.read_text())
    assert len(parser.rows) == 9 and parser.scripts == 1  # inline only
    assert {r["data-decision"] for r in parser.rows} >= {"ungradable", "failed"}
    assert (
        all(src.startswith("data:image/jpeg;base64,") for src in parser.imgs)
        and len(parser.imgs) >= 15
    )
    text = " ".join(parser.text)
    assert "Patient001_R.jpg" in text and "could not screen" in text
    with open(table, newline="") as fh:
        records = list(csv.DictReader(fh))
    assert len(records) == 9
    by_path = {r["path"]: r for r in records}
    assert by_path["clinic a/Patient001_L.jpg"]["patient"] == "clinic a/P-0001"
    assert by_path["clinic a/12_left.jpeg"]["patient"] == "clinic a/12"
    assert by_path["clinic a/P0001_right.jpg"]["aliases"] == "fuzzy_photo.jpg"
    for f in (report, table):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600

    # pseudonymised: no real name anywhere, stable pseudonyms, key 0600 beside the ledger
    assert batch_main([*argv, "--pseudonymise"]) == 1
    capsys.readouterr()
    key = Path(f"{db}.key")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    names = [p.relative_to(uploads).as_posix() for p in uploads.rglob("*") if p.is_file()]
    for f in (report, table):
        data = f.read_text()
        for name in names:
            if name.endswith(".csv"):
                continue
            stem = Path(name).stem
            assert Path(name).name not in data and stem not in data, (f, name)
        for pid in ("P-0001", "Patient001", "12_left"):
            assert pid not in data
    first = table.read_text()
    assert batch_main([*argv, "--pseudonymise"]) == 1
    assert table.read_text() == first
    capsys.readouterr()


@pytest.fixture
def opened(monkeypatch, uploads):
    """Counter of opens of each upload (by its relative path), through every Python route."""
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    root = os.path.abspath(uploads) + os.sep

    def counting(real):
        def wrapper(file, *args, **kwargs):
            if isinstance(file, str | os.PathLike) and os.path.abspath(file).startswith(root):
                with lock:
                    counts[os.path.abspath(file)[len(root) :]] += 1
            return real(file, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(builtins, "open", counting(builtins.open))
    monkeypatch.setattr(io, "open", counting(io.open))  # pathlib's read_bytes opens through here
    monkeypatch.setattr(os, "open", counting(os.open))
    return counts


def test_a_file_is_read_once_per_screening_and_never_by_the_report(
    uploads, bundle, tmp_path, opened
):
    files = sorted(p.relative_to(uploads).as_posix() for p in uploads.rglob("*") if p.is_file())
    db = tmp_path / "r.sqlite"
    assert run(uploads, bundle, db).screened == len(files)
    assert opened == dict.fromkeys(files, 2)  # one read to hash it at ingest, one to screen it
    opened.clear()
    assert run(uploads, bundle, db).screened == 0
    ledger = Ledger(db)
    write_html(ledger, uploads, tmp_path / "r.html", card=load_card(bundle))
    ledger.close()
    assert opened == {}  # nothing new to screen; thumbnails come from the ledger
    con = sqlite3.connect(db)  # a crash left two rows pending: resuming reads each once
    con.execute(
        "UPDATE items SET state='pending', result_json=NULL, decision=NULL "
        "WHERE path IN ('fuzzy_photo.jpg', 'clinic a/12_left.jpeg')"
    )
    con.commit()
    con.close()
    assert run(uploads, bundle, db).screened == 2
    assert opened == {"fuzzy_photo.jpg": 1, "clinic a/12_left.jpeg": 1}


def _pictures(report: Path) -> dict[str, list[np.ndarray]]:
    """{alt: decoded images} of the report's inline pictures."""
    parser = _Rows()
    parser.feed(report.read_text())
    out: dict[str, list[np.ndarray]] = {}
    for src, alt in zip(parser.imgs, parser.alts, strict=True):
        data = base64.b64decode(src.removeprefix("data:image/jpeg;base64,"))
        out.setdefault(alt, []).append(
            cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        )
    return out


def test_report_thumbnails_come_from_the_ledger_after_the_uploads_are_gone(
    uploads, bundle, tmp_path
):
    db = tmp_path / "r.sqlite"
    run(uploads, bundle, db)
    shutil.rmtree(uploads)
    ledger = Ledger(db)
    items = list(ledger.items())
    assert all(
        (i.thumb_jpeg is not None) == (i.state in ("done", "ungradable")) for i in items
    )  # failed files get no picture
    report = tmp_path / "r.html"
    write_html(ledger, uploads, report, card=load_card(bundle))
    ledger.close()
    pictures = _pictures(report)
    assert len(pictures["photo"]) == sum(i.state in ("done", "ungradable") for i in items) == 8
    assert len(pictures["heatmap"]) == sum(i.heatmap_png is not None for i in items) == 7
    for image in pictures["photo"]:
        assert image is not None and max(image.shape[:2]) <= batch_report.THUMB_SIDE
        assert image.std() > 5  # a photo, not a blank square


def test_an_older_ledger_gains_the_thumbnail_column_and_its_report_decodes_the_uploads(
    uploads, bundle, tmp_path, monkeypatch
):
    db = tmp_path / "r.sqlite"
    run(uploads, bundle, db)
    con = sqlite3.connect(db)  # a ledger written before thumbnails were stored
    con.execute("ALTER TABLE items DROP COLUMN thumb_jpeg")
    con.commit()
    con.close()
    cv2.imwrite(str(uploads / "clinic a" / "Patient001_R.jpg"), fundus(77))  # replaced since
    decoded = []
    real_decode = batch_report.decode

    def recording(source, *, name=None, **kw):
        decoded.append(name)
        return real_decode(source, name=name, **kw)

    monkeypatch.setattr(batch_report, "decode", recording)
    ledger = Ledger(db)
    assert all(i.thumb_jpeg is None for i in ledger.items())
    report = tmp_path / "r.html"
    write_html(ledger, uploads, report, card=load_card(bundle))
    ledger.close()
    uploads_decoded = {n for n in decoded if n != "thumbnail"}
    assert "broken.jpg" not in uploads_decoded  # failed files are never decoded for the report
    assert "clinic a/Patient001_R.jpg" not in uploads_decoded  # not the content screened
    assert len(_pictures(report)["photo"]) == 7 == len(uploads_decoded)
    assert "thumb_jpeg" in {r[1] for r in sqlite3.connect(db).execute("PRAGMA table_info(items)")}


def test_patients_worse_eye_decides():
    class Row:
        def __init__(self, path, state, decision):
            self.paths, self.path, self.state, self.decision = [path], path, state, decision

    assert eye_from_name("x/Patient001_L.jpg") == ("Patient001", "left")
    assert eye_from_name("12_left.jpeg") == ("12", "left")
    assert eye_from_name("anna OD.png") == ("anna", "right")
    assert eye_from_name("scan.png") is None
    patients = group(
        [
            Row("a_L.jpg", "done", "rescreen"),
            Row("a_R.jpg", "done", "urgent"),
            Row("b_L.jpg", "done", "none"),
            Row("b_R.jpg", "ungradable", "ungradable"),
            Row("c_left.jpg", "failed", "failed"),
            Row("d/a_L.jpg", "done", "routine"),
        ],
        Path("/nonexistent"),
    )
    by_id = {p.id: p for p in patients}
    assert by_id["a"].decision == "urgent"
    assert by_id["b"].decision == "none" and by_id["b"].note == "right eye ungradable: retake"
    assert by_id["c"].decision == "ungradable"
    assert by_id["d/a"].decision == "routine"  # folder-scoped patient ids
