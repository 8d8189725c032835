"""Loaders against tiny fixtures in each format's exact layout, and against the real sets."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from edgescreen.runtime.errors import EdgescreenError
from edgescreen.runtime.labels import CXR_FINDINGS, DR_GRADES, NO_FINDING, OCT_CLASSES
from edgescreen.train.data.loaders import (
    load_aptos,
    load_cxr14_mini,
    load_dataset,
    load_eyepacs,
    load_generic_csv,
    load_idrid,
    load_kermany_oct,
    load_medmnist,
    load_messidor2,
    load_nih_cxr,
    load_pneumoniamnist_png,
    load_retinamnist_png,
    load_srahim_fundus,
    sniff_format,
)
from edgescreen.train.data.records import UNGRADABLE, LabelledSet, RowProblem, Sample

try:
    import cv2
except ImportError:  # the loaders never decode; any distinct bytes will do
    cv2 = None


def write_image(path: Path, seed: int = 0) -> Path:
    """A tiny valid image, different for every seed (so no two fixtures are byte-identical)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    if cv2 is not None and cv2.imwrite(str(path), pixels):
        return path
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + hashlib.sha256(str(seed).encode()).digest())
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def problem_lines(ls: LabelledSet) -> dict[int, str]:
    return {p.line: p.problem for p in ls.problems}


# ---------------------------------------------------------------- records


def test_row_problem_str_and_summary():
    assert str(RowProblem("a.csv", 3, "bad grade")) == "a.csv:3: bad grade"
    s = [
        Sample(None, 0, "p1", "train"),
        Sample(None, 2, "p1", "test"),
        Sample(None, 2, "p2", "test"),
    ]
    ls = LabelledSet("x", "dr", DR_GRADES, s, [RowProblem("a.csv", 3, "bad grade")])
    assert ls.class_counts() == {
        "no_dr": 1,
        "mild": 0,
        "moderate": 2,
        "severe": 0,
        "proliferative": 0,
    }
    assert ls.class_counts("test")["moderate"] == 2
    text = ls.summary()
    assert "3 images, 2 patients, 1 problems" in text and "a.csv:3: bad grade" in text
    assert "train 1, test 2" in text


def test_sample_equality_ignores_meta_and_array():
    a = Sample(Path("a.png"), 1, "p", None, meta={"eye": "L"})
    b = Sample(Path("a.png"), 1, "p", None, meta={"eye": "R"})
    assert a == b and hash(a) == hash(b)


# ---------------------------------------------------------------- fundus formats


def test_aptos(tmp_path):
    for i, code in enumerate(["000c1434d8d7", "001639a390f0", "0024cdab0c1e"]):
        write_image(tmp_path / "train_images" / f"{code}.png", i)
    write_text(
        tmp_path / "train.csv",
        "id_code,diagnosis\n"
        "000c1434d8d7,2\n"
        "001639a390f0,4\n"
        "deadbeef0000,1\n"  # line 4: no image
        "0024cdab0c1e,7\n"  # line 5: grade out of range
        "0024cdab0c1e,0,extra\n",  # line 6: malformed
    )
    ls = load_aptos(tmp_path)
    assert [(s.label, s.patient) for s in ls.samples] == [(2, "000c1434d8d7"), (4, "001639a390f0")]
    lines = problem_lines(ls)
    assert sorted(lines) == [4, 5, 6]
    assert "not found" in lines[4] and "grade" in lines[5] and "malformed" in lines[6]
    assert all(p.file.endswith("train.csv") for p in ls.problems)
    assert any("no patient ids" in n for n in ls.notes)
    with pytest.raises(EdgescreenError, match=r"train.csv:4: image not found"):
        load_aptos(tmp_path, strict=True)


def test_eyepacs_left_right(tmp_path):
    write_image(tmp_path / "train" / "10_left.jpeg", 1)
    write_image(tmp_path / "train" / "10_right.jpg", 2)
    write_image(tmp_path / "train" / "13_left.png", 3)
    write_text(
        tmp_path / "trainLabels.csv",
        "image,level\n10_left,0\n10_right,1\n13_left,4\n15_left,2\nbadname,0\n",
    )
    ls = load_eyepacs(tmp_path)
    got = [(s.patient, s.meta["eye"], s.label, s.path.name) for s in ls.samples]
    assert got == [
        ("10", "left", 0, "10_left.jpeg"),
        ("10", "right", 1, "10_right.jpg"),
        ("13", "left", 4, "13_left.png"),
    ]
    lines = problem_lines(ls)
    assert "not found" in lines[5] and "left|right" in lines[6]


IDRID_HEADER = "Image name,Retinopathy grade,Risk of macular edema ,,,,,,,,\n"


def test_idrid_header_quirks_and_split_folders(tmp_path):
    base = tmp_path / "B. Disease Grading"
    train_img = write_image(base / "1. Original Images" / "a. Training Set" / "IDRiD_001.jpg", 1)
    write_image(base / "1. Original Images" / "a. Training Set" / "IDRiD_002.jpg", 2)
    test_img = write_image(base / "1. Original Images" / "b. Testing Set" / "IDRiD_001.jpg", 3)
    gt = base / "2. Groundtruths"
    write_text(
        gt / "a. IDRiD_Disease Grading_Training Labels.csv",
        IDRID_HEADER
        + "IDRiD_001,3,2,,,,,,,,\n"
        + "IDRiD_002,0,0,,,,,,,,\n"
        + "IDRiD_003,2,1,,,,,,,,\n"  # line 4: no image
        + "IDRiD_002,9,0,,,,,,,,\n"  # line 5: bad grade
        + ",,,,,,,,,,\n,,,,,,,,,,\n",  # trailing blank rows, as in the real files
    )
    write_text(
        gt / "b. IDRiD_Disease Grading_Testing Labels.csv",
        IDRID_HEADER + "IDRiD_001,4,1,,,,,,,,\n",
    )
    ls = load_idrid(tmp_path)
    by = {(s.split, s.path): s for s in ls.samples}
    assert by[("train", train_img)].label == 3 and by[("train", train_img)].meta["dme"] == 2
    assert by[("test", test_img)].label == 4 and by[("test", test_img)].meta["dme"] == 1
    assert len(ls.samples) == 3
    assert len({s.patient for s in ls.samples}) == 3  # train and test IDRiD_001 differ
    assert sorted(problem_lines(ls)) == [4, 5]
    assert all("Training Labels" in p.file for p in ls.problems)


def test_messidor2_ungradable_and_pairs(tmp_path):
    img = tmp_path / "IMAGES"
    write_image(img / "20051020_43808_0100_PP.png", 1)
    write_image(img / "20051020_43832_0100_PP.png", 2)
    write_image(img / "IM000001.JPG", 3)  # CSV says .jpg: case differs between copies
    write_image(img / "IM000002.JPG", 4)
    write_text(
        tmp_path / "messidor-2.csv",
        "20051020_43808_0100_PP.png;20051020_43832_0100_PP.png\nIM000001.JPG;IM000002.JPG\n",
    )
    write_text(
        tmp_path / "messidor_data.csv",
        "image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable\n"
        "20051020_43808_0100_PP.png,0,0,1\n"
        "20051020_43832_0100_PP.png,2,1,1\n"
        "IM000001.jpg,,,0\n"  # line 4: ungradable
        "IM000002.jpg,5,0,1\n"  # line 5: bad grade
        "IM000003.jpg,1,0,1\n",  # line 6: no image
    )
    ls = load_messidor2(tmp_path)
    assert [s.label for s in ls.samples] == [0, 2]
    assert {s.patient for s in ls.samples} == {"20051020_43808_0100_PP"}
    assert ls.excluded == {"ungradable": 1} and "excluded (ungradable): 1" in ls.summary()
    assert sorted(problem_lines(ls)) == [5, 6]

    kept = load_messidor2(tmp_path, keep_ungradable=True)
    ung = [s for s in kept.samples if not s.meta["gradable"]]
    assert len(ung) == 1 and ung[0].label == UNGRADABLE and ung[0].patient == "IM000001"
    assert ung[0].path.name == "IM000001.JPG"
    assert kept.class_counts()["ungradable"] == 1


# ---------------------------------------------------------------- OCT and CXR


def test_kermany_oct(tmp_path):
    write_image(tmp_path / "train" / "CNV" / "CNV-1016042-1.jpeg", 1)
    write_image(tmp_path / "train" / "CNV" / "CNV-1016042-2.jpeg", 2)
    write_image(tmp_path / "train" / "CNV" / "DRUSEN-77-1.jpeg", 3)  # misfiled
    write_text(tmp_path / "train" / "CNV" / ".DS_Store", "junk")
    write_image(tmp_path / "val" / "NORMAL" / "NORMAL-9-1.jpeg", 4)
    write_image(tmp_path / "test" / "DME" / "DME-5-1.jpeg", 5)
    write_image(tmp_path / "test" / "DRUSEN" / "drusen.jpeg", 6)  # no patient in the name
    ls = load_kermany_oct(tmp_path)
    got = sorted((s.split, OCT_CLASSES[s.label], s.patient) for s in ls.samples)
    assert got == [
        ("test", "DME", "5"),
        ("train", "CNV", "1016042"),
        ("train", "CNV", "1016042"),
        ("val", "NORMAL", "9"),
    ]
    assert len(ls.problems) == 2
    assert any("DRUSEN-77-1" in p.file and "folder is CNV" in p.problem for p in ls.problems)


def test_nih_pipes_no_finding_and_official_lists(tmp_path):
    write_image(tmp_path / "images_001" / "images" / "00000001_000.png", 1)
    write_image(tmp_path / "images_001" / "images" / "00000001_001.png", 2)
    write_image(tmp_path / "images_002" / "images" / "00000002_000.png", 3)
    write_image(tmp_path / "images_002" / "images" / "00000003_000.png", 4)
    header = (
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
        "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n"
    )
    write_text(
        tmp_path / "Data_Entry_2017.csv",
        header
        + "00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143,\n"
        + "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143,\n"
        + "00000002_000.png,No Finding,0,2,81,M,PA,2500,2048,0.171,0.171,\n"
        + "00000003_000.png,Hernia|No Finding,0,3,81,F,PA,2582,2991,0.143,0.143,\n"  # 5
        + "00000003_001.png,Hernia,1,3,74,F,PA,2500,2048,0.168,0.168,\n"  # 6: no image
        + "00000003_000.png,Covid,0,3,81,F,PA,2582,2991,0.143,0.143,\n",  # 7: unknown
    )
    write_text(tmp_path / "train_val_list.txt", "00000001_000.png\n00000001_001.png\n")
    write_text(tmp_path / "test_list.txt", "00000002_000.png\n00000003_000.png\n")
    ls = load_nih_cxr(tmp_path)
    assert [s.patient for s in ls.samples] == ["1", "1", "2"]
    assert [s.split for s in ls.samples] == ["trainval", "trainval", "test"]
    lab = ls.samples[1].label
    assert (
        lab[CXR_FINDINGS.index("Cardiomegaly")] == 1 and lab[CXR_FINDINGS.index("Emphysema")] == 1
    )
    assert sum(lab) == 2 and sum(ls.samples[2].label) == 0
    lines = problem_lines(ls)
    assert sorted(lines) == [5, 6, 7]
    assert NO_FINDING in lines[5] and "not found" in lines[6] and "Covid" in lines[7]
    assert ls.class_counts()[NO_FINDING] == 1


def write_nih_tree(root: Path, patients: int = 12, per_patient: int = 3) -> dict[str, list[str]]:
    """A fake NIH ChestX-ray14 tree: Data_Entry_2017.csv, images_00N/images/*.png and the
    official lists (patients 1..2/3 in train_val, the rest in test), plus one image in
    neither list. Returns the image names of each list."""
    header = "Image Index,Finding Labels,Follow-up #,Patient ID,View Position\n"
    rows, lists = [], {"train_val": [], "test": []}
    for p in range(1, patients + 2):
        for k in range(per_patient):
            name = f"{p:08d}_{k:03d}.png"
            write_image(root / f"images_{1 + p % 2:03d}" / "images" / name, p * 100 + k)
            finding = ("No Finding", "Effusion", "Mass|Nodule")[(p + k) % 3]
            rows.append(f"{name},{finding},{k},{p},PA\n")
            if p <= patients:  # the last patient's images are in neither list
                lists["train_val" if p <= 2 * patients // 3 else "test"].append(name)
    write_text(root / "Data_Entry_2017.csv", header + "".join(rows))
    write_text(root / "train_val_list.txt", "\n".join(lists["train_val"]) + "\n")
    write_text(root / "test_list.txt", "\n".join(lists["test"]) + "\n")
    return lists


def test_nih_official_lists_keep_test_and_leave_out_unlisted(tmp_path):
    lists = write_nih_tree(tmp_path)
    ls = load_nih_cxr(tmp_path, strict=True)
    by_split = {s.path.name: s.split for s in ls.samples}
    assert {n for n, sp in by_split.items() if sp == "test"} == set(lists["test"])
    assert {n for n, sp in by_split.items() if sp == "trainval"} == set(lists["train_val"])
    assert ls.excluded == {"in neither train_val_list.txt nor test_list.txt": 3}
    # One list alone: the other split is its complement.
    (tmp_path / "train_val_list.txt").unlink()
    ls = load_nih_cxr(tmp_path, strict=True)
    assert sum(s.split == "trainval" for s in ls.samples) == len(ls) - len(lists["test"])
    assert any("no train_val_list.txt" in n for n in ls.notes)


# ---------------------------------------------------------------- MedMNIST


def _npz(path: Path, labels: dict[str, np.ndarray], shape=(28, 28)) -> Path:
    arrays = {}
    for split, y in labels.items():
        n = len(y)
        arrays[f"{split}_images"] = np.arange(n * int(np.prod(shape)), dtype=np.uint8).reshape(
            n, *shape
        )
        arrays[f"{split}_labels"] = y.astype(np.uint8)
    np.savez(path, **arrays)
    return path


def test_medmnist_flags(tmp_path):
    oct_npz = _npz(
        tmp_path / "octmnist.npz",
        {"train": np.array([[0], [1], [2], [3]]), "val": np.array([[3]]), "test": np.array([[7]])},
    )
    ls = load_medmnist(oct_npz, "octmnist")
    assert [OCT_CLASSES[s.label] for s in ls.samples] == [
        "CNV",
        "DME",
        "DRUSEN",
        "NORMAL",
        "NORMAL",
    ]
    assert [s.split for s in ls.samples] == ["train"] * 4 + ["val"]
    assert ls.samples[0].path is None and ls.samples[0].array.shape == (28, 28)
    assert ls.samples[4].patient == "octmnist-val-0"
    assert (
        len(ls.problems) == 1 and ls.problems[0].line == 1 and "test_labels" in ls.problems[0].file
    )

    chest = np.zeros((3, 14), dtype=np.uint8)
    chest[1, CXR_FINDINGS.index("Hernia")] = 1
    chest[2, [0, 2]] = 1
    ls = load_medmnist(_npz(tmp_path / "chestmnist.npz", {"train": chest}), "chest")
    assert ls.task == "cxr" and [sum(s.label) for s in ls.samples] == [0, 1, 2]
    assert ls.class_counts()["Hernia"] == 1 and ls.class_counts()[NO_FINDING] == 1
    assert any("no val/test split" in n for n in ls.notes)

    pn = load_medmnist(_npz(tmp_path / "pn.npz", {"val": np.array([[0], [1]])}), "pneumoniamnist")
    assert pn.labels == ("normal", "pneumonia") and [s.label for s in pn.samples] == [0, 1]

    with pytest.raises(EdgescreenError, match="unknown MedMNIST flag"):
        load_medmnist(oct_npz, "dermamnist")


# ---------------------------------------------------------------- generic CSV and by name


def test_generic_csv(tmp_path):
    write_image(tmp_path / "imgs" / "a.png", 1)
    write_image(tmp_path / "imgs" / "b.png", 2)
    write_text(
        tmp_path / "dr.csv",
        "path,label,patient\nimgs/a.png,3,P1\nimgs/b.png,2,\nimgs/c.png,1,P2\nimgs/a.png,x,P1\n",
    )
    ls = load_generic_csv(tmp_path / "dr.csv", "dr")
    assert [(s.label, s.patient) for s in ls.samples] == [(3, "P1"), (2, "b")]
    assert sorted(problem_lines(ls)) == [4, 5]

    write_text(tmp_path / "oct.csv", "path,label\nimgs/a.png,drusen\nimgs/b.png,GA\n")
    ls = load_generic_csv(tmp_path / "oct.csv", "oct")
    assert [s.label for s in ls.samples] == [OCT_CLASSES.index("DRUSEN")] and len(ls.problems) == 1

    write_text(tmp_path / "cxr.csv", "path,label\nimgs/a.png,Mass|Nodule\nimgs/b.png,No Finding\n")
    ls = load_generic_csv(tmp_path / "cxr.csv", "cxr")
    assert [sum(s.label) for s in ls.samples] == [2, 0] and not ls.problems


def test_load_dataset_specs(tmp_path):
    write_image(tmp_path / "a.png", 1)
    write_text(tmp_path / "labels.csv", "path,label\na.png,1\n")
    assert len(load_dataset(f"csv-dr:{tmp_path}")) == 1
    assert len(load_dataset(f"csv-dr:{tmp_path / 'labels.csv'}")) == 1
    with pytest.raises(EdgescreenError, match="say its task"):
        load_dataset(str(tmp_path))
    with pytest.raises(EdgescreenError, match="cannot tell"):
        load_dataset(str(tmp_path / "nothing-here"))
    with pytest.raises(EdgescreenError, match="not found"):
        load_dataset(f"aptos:{tmp_path / 'missing'}")
    write_text(tmp_path / "bad" / "labels.csv", "path,label\nnope.png,1\n")
    assert len(load_dataset(f"csv-dr:{tmp_path / 'bad'}").problems) == 1
    with pytest.raises(EdgescreenError, match=r"labels.csv:2: image not found"):
        load_dataset(f"csv-dr:{tmp_path / 'bad'}", strict=True)


# ---------------------------------------------------------------- the real shared sets


def test_real_srahim(fundus_dir):
    ls = load_srahim_fundus(fundus_dir)
    assert not ls.problems and len(ls) == 400
    assert list(ls.class_counts().values()) == [193, 60, 104, 26, 17]
    assert len(ls.patients()) < 400  # both eyes of most patients
    assert {s.meta["eye"] for s in ls.samples} == {"L", "R"}
    assert sniff_format(fundus_dir) == "srahim"


def test_real_cxr14_mini(cxr_dir):
    ls = load_cxr14_mini(cxr_dir)
    assert not ls.problems and len(ls) == 1021
    assert all(len(s.label) == len(CXR_FINDINGS) for s in ls.samples)
    assert ls.class_counts()[NO_FINDING] == 504
    assert sniff_format(cxr_dir) == "cxr14-mini"


def test_real_retinamnist(retinamnist_dir):
    ls = load_dataset(str(retinamnist_dir))
    assert ls.name == "retinamnist" and not ls.problems and len(ls) == 1600
    assert [sum(1 for s in ls.samples if s.split == sp) for sp in ("train", "val", "test")] == [
        1080,
        120,
        400,
    ]
    png = load_retinamnist_png(retinamnist_dir)
    npz = load_medmnist(retinamnist_dir / "retinamnist.npz", "retinamnist")
    for sp in ("train", "val", "test"):
        assert png.class_counts(sp) == npz.class_counts(sp)


def test_real_pneumoniamnist(pneumoniamnist_dir):
    ls = load_pneumoniamnist_png(pneumoniamnist_dir)
    assert not ls.problems and len(ls) == 1148
    assert ls.class_counts() == {"normal": 369, "pneumonia": 779}
    assert sniff_format(pneumoniamnist_dir) == "pneumoniamnist"
    npz = load_dataset(f"medmnist-pneumonia:{next(pneumoniamnist_dir.glob('*.npz'))}")
    for sp in ("val", "test"):  # the PNGs are the npz's official val and test
        assert ls.class_counts(sp) == npz.class_counts(sp)
