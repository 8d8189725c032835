"""Loaders for the data set layouts users actually bring, each returning a LabelledSet.

Every loader maps its labels into the project's label spaces (runtime/labels.py) and
records each row it cannot use (missing image, unknown label, malformed row) as a
RowProblem with the file and 1-based line; `strict=True` raises EdgescreenError instead.

Patient ids drive patient-level splitting (splits.py). Where a format has none, the loader
says so in `LabelledSet.notes` and falls back to one "patient" per image:
- APTOS 2019: none; patient = id_code.
- IDRiD: none; patient = "IDRiD-<split>-<image name>" (training and testing reuse names).
- Messidor-2: the exam pairing file (messidor-2.csv, one row per exam with its two eye
  images) gives patient = first image stem of the row; without it, patient = image stem.
- MedMNIST: none; patient = "<flag>-<split>-<index>".
Byte-identical images are merged into one group by splits.py whatever the patient ids say.

`load_dataset("FORMAT:PATH")` picks a loader by name; a bare directory with a labels.csv
is sniffed (see `load_dataset`).
"""

from __future__ import annotations

import csv
import dataclasses
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from edgescreen.runtime.errors import EdgescreenError
from edgescreen.runtime.labels import CXR_FINDINGS, DR_GRADES, NO_FINDING, OCT_CLASSES
from edgescreen.train.data.records import UNGRADABLE, LabelledSet, RowProblem, Sample

PNEUMONIA_CLASSES: tuple[str, ...] = ("normal", "pneumonia")
IMAGE_EXTS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


# ---------------------------------------------------------------- shared helpers


class _Rows:
    """Reads a CSV as (line, {stripped header: stripped value}) and collects problems.

    Headers are stripped and empty header cells dropped, because IDRiD's grading CSVs have
    "Risk of macular edema " and a tail of empty columns, and NIH's Data_Entry_2017.csv
    ends every line with a comma. Blank rows (all cells empty) are skipped: they are not
    data. A row with values under no header, or fewer cells than required, is malformed.
    """

    def __init__(self, path: Path, problems: list[RowProblem]):
        self.path = Path(path)
        self.problems = problems
        if not self.path.is_file():
            raise EdgescreenError(f"{self.path}: label file not found")

    def problem(self, line: int, text: str) -> None:
        self.problems.append(RowProblem(str(self.path), line, text))

    def read(self, required: tuple[str, ...], delimiter: str = ",") -> Iterator[tuple[int, dict]]:
        with self.path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                raise EdgescreenError(f"{self.path}: empty file, expected a header row")
            names = [h.strip() for h in header]
            missing = [r for r in required if r not in names]
            if missing:
                raise EdgescreenError(
                    f"{self.path}:1: header lacks column(s) {', '.join(missing)}; "
                    f"found {', '.join(n for n in names if n)}"
                )
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                extra = [c for h, c in zip(names, row, strict=False) if not h and c.strip()]
                if len(row) > len(names):
                    extra += [c for c in row[len(names) :] if c.strip()]
                if extra:
                    self.problem(line, f"malformed row: values outside the header {extra!r}")
                    continue
                rec = {h: c.strip() for h, c in zip(names, row, strict=False) if h}
                absent = [r for r in required if not rec.get(r)]
                if absent:
                    self.problem(line, f"malformed row: no value for {', '.join(absent)}")
                    continue
                yield line, rec


def _int_label(text: str, n: int) -> int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    if not value.is_integer() or not 0 <= value < n:
        return None
    return int(value)


def _index_images(root: Path, pattern: str = "**/*") -> dict[str, list[Path]]:
    """Image files under root by lower-case name and by lower-case stem (hidden files skipped)."""
    found: dict[str, list[Path]] = {}
    for p in sorted(root.glob(pattern)):
        if p.name.startswith(".") or p.suffix.lower() not in IMAGE_EXTS or not p.is_file():
            continue
        found.setdefault(p.name.lower(), []).append(p)
        found.setdefault(p.stem.lower(), []).append(p)
    return found


def _finish(ls: LabelledSet, strict: bool) -> LabelledSet:
    if strict and ls.problems:
        shown = "\n".join(f"  {p}" for p in ls.problems[:20])
        more = f"\n  ... and {len(ls.problems) - 20} more" if len(ls.problems) > 20 else ""
        raise EdgescreenError(
            f"{ls.name}: {len(ls.problems)} row(s) could not be used:\n{shown}{more}"
        )
    return ls


def _findings(text: str) -> tuple[tuple[int, ...] | None, str]:
    """NIH-style "A|B" or "No Finding" -> 0/1 tuple in CXR_FINDINGS order, or (None, why)."""
    names = [t.strip() for t in text.split("|") if t.strip()]
    if not names:
        return None, "empty finding labels"
    if NO_FINDING in names:
        if len(names) > 1:
            return None, f"'{NO_FINDING}' together with findings: {text!r}"
        return tuple(0 for _ in CXR_FINDINGS), ""
    unknown = [n for n in names if n not in CXR_FINDINGS]
    if unknown:
        return None, f"unknown finding(s) {unknown!r}; expected names from {CXR_FINDINGS}"
    return tuple(int(f in names) for f in CXR_FINDINGS), ""


# ---------------------------------------------------------------- fundus DR formats


def load_aptos(root: str | Path, *, strict: bool = False) -> LabelledSet:
    """APTOS 2019 (Kaggle): train.csv `id_code,diagnosis`, images train_images/<id>.png."""
    root = Path(root)
    problems: list[RowProblem] = []
    rows = _Rows(root / "train.csv", problems)
    if not (root / "train_images").is_dir():
        raise EdgescreenError(f"{root / 'train_images'}: image folder not found")
    images = _index_images(root / "train_images", "*")
    samples = []
    for line, r in rows.read(("id_code", "diagnosis")):
        grade = _int_label(r["diagnosis"], len(DR_GRADES))
        if grade is None:
            rows.problem(line, f"invalid DR grade {r['diagnosis']!r} (expected 0-4)")
            continue
        hits = images.get(r["id_code"].lower())
        if not hits:
            rows.problem(line, f"image not found: train_images/{r['id_code']}.png")
            continue
        samples.append(Sample(hits[0], grade, r["id_code"], None))
    ls = LabelledSet("aptos", "dr", DR_GRADES, samples, problems)
    ls.notes.append("APTOS has no patient ids: patient = id_code (one image per patient)")
    return _finish(ls, strict)


_EYEPACS_NAME = re.compile(r"^(?P<patient>.+)_(?P<eye>left|right)$", re.IGNORECASE)


def load_eyepacs(root: str | Path, *, strict: bool = False) -> LabelledSet:
    """EyePACS / Kaggle DR 2015: trainLabels.csv `image,level`; images train/<image>.jpeg
    (.jpg/.png accepted); `10_left`/`10_right` -> patient "10", meta eye left/right."""
    root = Path(root)
    problems: list[RowProblem] = []
    rows = _Rows(root / "trainLabels.csv", problems)
    image_dir = root / "train" if (root / "train").is_dir() else root
    images = _index_images(image_dir, "*")
    samples = []
    for line, r in rows.read(("image", "level")):
        name = r["image"]
        grade = _int_label(r["level"], len(DR_GRADES))
        if grade is None:
            rows.problem(line, f"invalid DR grade {r['level']!r} (expected 0-4)")
            continue
        m = _EYEPACS_NAME.match(name)
        if not m:
            rows.problem(line, f"image name {name!r} is not <patient>_left|right")
            continue
        hits = images.get(name.lower())
        if not hits:
            rows.problem(line, f"image not found: {image_dir.name}/{name}.jpeg")
            continue
        meta = {"eye": m["eye"].lower()}
        samples.append(Sample(hits[0], grade, m["patient"], None, meta=meta))
    return _finish(LabelledSet("eyepacs", "dr", DR_GRADES, samples, problems), strict)


def load_idrid(root: str | Path, *, strict: bool = False) -> LabelledSet:
    """IDRiD "B. Disease Grading": the grading CSVs ("a. IDRiD_Disease Grading_Training
    Labels.csv", "b. ... Testing Labels.csv") anywhere under root; images IDRiD_NNN.jpg
    anywhere under root. Training and testing reuse names (IDRiD_001 is in both), so an
    image is matched within the folder whose path says the same split as its CSV."""
    root = Path(root)
    csvs = sorted(p for p in root.rglob("*.csv") if "grading" in p.name.lower())
    if not csvs:
        raise EdgescreenError(f"{root}: no IDRiD grading CSV (*Disease Grading*Labels.csv) found")
    images = _index_images(root)
    problems: list[RowProblem] = []
    samples = []
    for path in csvs:
        split = "test" if "test" in path.name.lower() else "train"
        rows = _Rows(path, problems)
        for line, r in rows.read(("Image name", "Retinopathy grade")):
            name = r["Image name"]
            grade = _int_label(r["Retinopathy grade"], len(DR_GRADES))
            if grade is None:
                rows.problem(line, f"invalid retinopathy grade {r['Retinopathy grade']!r}")
                continue
            dme_text = r.get("Risk of macular edema", "")
            dme = _int_label(dme_text, 3) if dme_text else None
            if dme_text and dme is None:
                rows.problem(line, f"invalid macular edema risk {dme_text!r} (expected 0-2)")
                continue
            hits = images.get(name.lower(), [])
            word = "train" if split == "train" else "test"
            same = [p for p in hits if word in str(p.relative_to(root)).lower()]
            hits = same or (hits if len(hits) == 1 else [])
            if not hits:
                rows.problem(line, f"image not found: {name}.jpg in a {split} images folder")
                continue
            meta = {"dme": dme}
            samples.append(Sample(hits[0], grade, f"IDRiD-{split}-{name}", split, meta=meta))
    ls = LabelledSet("idrid", "dr", DR_GRADES, samples, problems)
    ls.notes.append("IDRiD has no patient ids: patient = IDRiD-<split>-<image name>")
    return _finish(ls, strict)


_MESSIDOR_GRADES = ("messidor_data.csv", "messidor-2_adjudicated.csv", "adjudicated_grades.csv")


def _messidor_pairs(root: Path, grades_csv: Path) -> dict[str, str]:
    """image name (lower) -> exam id, from Messidor-2's pairing file when present: any other
    CSV whose rows name two or more image files (';' or ',' separated)."""
    pairs: dict[str, str] = {}
    for path in sorted(root.rglob("*.csv")):
        if path.resolve() == grades_csv.resolve():
            continue
        text = path.read_text(encoding="utf-8-sig", errors="replace")
        for line in text.splitlines():
            cells = [c.strip() for c in re.split(r"[;,]", line)]
            names = [c for c in cells if Path(c).suffix.lower() in IMAGE_EXTS]
            if len(names) >= 2:
                exam = Path(names[0]).stem
                for n in names:
                    pairs[n.lower()] = exam
    return pairs


def load_messidor2(
    root: str | Path, keep_ungradable: bool = False, *, strict: bool = False
) -> LabelledSet:
    """Messidor-2 with the adjudicated grades (Krause et al. 2018): a CSV
    `image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable` under root, images
    anywhere under root (names matched case-insensitively: .JPG/.jpg differ between copies).
    Ungradable images are left out and counted in `excluded`, or kept with
    meta gradable=False (and label UNGRADABLE when they carry no grade)."""
    root = Path(root)
    cands = [p for p in sorted(root.rglob("*.csv")) if p.name.lower() in _MESSIDOR_GRADES]
    if not cands:  # any CSV with the adjudicated header
        for p in sorted(root.rglob("*.csv")):
            with p.open(encoding="utf-8-sig", errors="replace") as f:
                if "adjudicated_dr_grade" in f.readline():
                    cands.append(p)
    if not cands:
        raise EdgescreenError(f"{root}: no Messidor-2 adjudicated grades CSV found")
    grades_csv = cands[0]
    images = _index_images(root)
    pairs = _messidor_pairs(root, grades_csv)
    problems: list[RowProblem] = []
    rows = _Rows(grades_csv, problems)
    samples = []
    ungradable = 0
    for line, r in rows.read(("image_id", "adjudicated_gradable")):
        name = r["image_id"]
        gradable = _int_label(r["adjudicated_gradable"], 2)
        if gradable is None:
            rows.problem(line, f"invalid gradable flag {r['adjudicated_gradable']!r}")
            continue
        grade_text = r.get("adjudicated_dr_grade", "")
        grade = _int_label(grade_text, len(DR_GRADES)) if grade_text else None
        if gradable and grade is None:
            rows.problem(line, f"invalid DR grade {grade_text!r} on a gradable image")
            continue
        if not gradable and not keep_ungradable:
            ungradable += 1
            continue
        hits = images.get(name.lower()) or images.get(Path(name).stem.lower())
        if not hits:
            rows.problem(line, f"image not found: {name}")
            continue
        dme_text = r.get("adjudicated_dme", "")
        meta = {"gradable": bool(gradable), "dme": _int_label(dme_text, 2) if dme_text else None}
        patient = pairs.get(name.lower(), Path(name).stem)
        label = grade if grade is not None else UNGRADABLE
        samples.append(Sample(hits[0], label, patient, None, meta=meta))
    ls = LabelledSet("messidor2", "dr", DR_GRADES, samples, problems)
    if ungradable:
        ls.excluded["ungradable"] = ungradable
    if not pairs:
        ls.notes.append(
            "no Messidor-2 exam pairing file found: patient = image stem, so the two eyes "
            "of one person are not grouped"
        )
    return _finish(ls, strict)


# ---------------------------------------------------------------- OCT and chest X-ray

_KERMANY_NAME = re.compile(r"^(?P<cls>[A-Z]+)-(?P<patient>\d+)-\d+$")


def load_kermany_oct(root: str | Path, *, strict: bool = False) -> LabelledSet:
    """Kermany 2018 OCT: {train,val,test}/{CNV,DME,DRUSEN,NORMAL}/CLASS-<patient>-<n>.jpeg.
    split = folder; a root holding one folder (e.g. OCT2017/) is descended into.

    Releases with only train/ and test/ (no val/ images) are accepted: their train/ images
    get split "trainval", from which training carves validation by patient (the id in the
    file name; loop.split_samples), leaving test/ as the test split."""
    root = Path(root)
    subdirs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if not any(d.name.lower() in ("train", "val", "test") for d in subdirs) and len(subdirs) == 1:
        root = subdirs[0]
    problems: list[RowProblem] = []
    samples = []
    for split_dir in sorted(d for d in root.iterdir() if d.is_dir()):
        split = split_dir.name.lower()
        if split not in ("train", "val", "test"):
            continue
        for cls_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
            if cls_dir.name.upper() not in OCT_CLASSES:
                problems.append(RowProblem(str(cls_dir), 0, "unknown OCT class folder"))
                continue
            label = OCT_CLASSES.index(cls_dir.name.upper())
            for p in sorted(cls_dir.iterdir()):
                if p.name.startswith(".") or p.suffix.lower() not in IMAGE_EXTS:
                    continue
                m = _KERMANY_NAME.match(p.stem)
                if not m:
                    problems.append(RowProblem(str(p), 0, "name is not CLASS-<patient>-<n>"))
                    continue
                if m["cls"] != OCT_CLASSES[label]:
                    problems.append(
                        RowProblem(str(p), 0, f"name says {m['cls']} but folder is {cls_dir.name}")
                    )
                    continue
                samples.append(Sample(p, label, m["patient"], split))
    if not samples and not problems:
        raise EdgescreenError(f"{root}: no {{train,val,test}}/{{CNV,DME,DRUSEN,NORMAL}} images")
    ls = LabelledSet("kermany-oct", "oct", OCT_CLASSES, samples, problems)
    splits = {s.split for s in samples}
    if "train" in splits and "val" not in splits:
        ls.samples = [
            dataclasses.replace(s, split="trainval") if s.split == "train" else s for s in samples
        ]
        ls.notes.append(
            "no val/ images: train/ is 'trainval', validation is carved from it by patient"
        )
    return _finish(ls, strict)


def load_nih_cxr(root: str | Path, *, strict: bool = False) -> LabelledSet:
    """NIH ChestX-ray14: Data_Entry_2017*.csv ("Image Index,Finding Labels,Follow-up #,
    Patient ID,..."), images in images*/ folders (searched recursively).

    When train_val_list.txt / test_list.txt are present they set split "trainval" /
    "test": training keeps the official test list as the test split and carves
    validation by patient from trainval (loop.split_samples). With both lists, an image
    in neither is left out (counted in `excluded`); with one list, the other split is its
    complement."""
    root = Path(root)
    entries = sorted(root.glob("Data_Entry_2017*.csv"))
    if not entries:
        raise EdgescreenError(f"{root}: Data_Entry_2017.csv not found")
    images: dict[str, Path] = {}
    for folder in sorted(d for d in root.glob("images*") if d.is_dir()):
        for p in sorted(folder.rglob("*.png")):
            images.setdefault(p.name, p)
    official: dict[str, str] = {}
    lists = {"train_val_list.txt": "trainval", "test_list.txt": "test"}
    present = [fname for fname in lists if (root / fname).is_file()]
    for fname in present:
        for name in (root / fname).read_text().split():
            official[name] = lists[fname]
    # One list alone: its complement is the other official split.
    unlisted = (
        None if len(present) != 1 else {"trainval": "test", "test": "trainval"}[lists[present[0]]]
    )
    excluded = 0
    problems: list[RowProblem] = []
    rows = _Rows(entries[0], problems)
    samples = []
    for line, r in rows.read(("Image Index", "Finding Labels", "Patient ID")):
        name = r["Image Index"]
        label, why = _findings(r["Finding Labels"])
        if label is None:
            rows.problem(line, why)
            continue
        if name not in images:
            rows.problem(line, f"image not found: {name} under images*/")
            continue
        split = official.get(name, unlisted)
        if present and split is None:
            excluded += 1
            continue
        pid = r["Patient ID"].lstrip("0") or "0"
        meta = {"view": r.get("View Position"), "follow_up": r.get("Follow-up #")}
        samples.append(Sample(images[name], label, pid, split, meta=meta))
    ls = LabelledSet("nih-cxr14", "cxr", CXR_FINDINGS, samples, problems)
    if excluded:
        ls.excluded["in neither train_val_list.txt nor test_list.txt"] = excluded
    if not present:
        ls.notes.append("no train_val_list.txt/test_list.txt: no official split")
    elif unlisted:
        missing = next(f for f in lists if f not in present)
        ls.notes.append(f"no {missing}: images not in {present[0]} are split {unlisted!r}")
    return _finish(ls, strict)


# ---------------------------------------------------------------- MedMNIST (npz)

_MEDMNIST: dict[str, tuple[str, tuple[str, ...], Callable[[np.ndarray], object]]] = {
    # flag: (task, labels, row of the npz label array -> our label)
    "retinamnist": ("dr", DR_GRADES, lambda y: int(y[0])),
    # MedMNIST's OCT order is CNV, DME, drusen, normal: the same as OCT_CLASSES.
    "octmnist": ("oct", OCT_CLASSES, lambda y: int(y[0])),
    # ChestMNIST's 14 labels are NIH's, in NIH's order (== CXR_FINDINGS).
    "chestmnist": ("cxr", CXR_FINDINGS, lambda y: tuple(int(v) for v in y)),
    "pneumoniamnist": ("pneumonia", PNEUMONIA_CLASSES, lambda y: int(y[0])),
}


def load_medmnist(npz_path: str | Path, flag: str, *, strict: bool = False) -> LabelledSet:
    """A MedMNIST v2 npz (retinamnist, octmnist, chestmnist, pneumoniamnist; the short
    forms retina/oct/chest/pneumonia work too). Official splits come from the
    {train,val,test}_images keys; images are kept as arrays in Sample.array. MedMNIST has no
    patient ids: patient = "<flag>-<split>-<index>". A bad label is reported as
    file "<npz>[<split>_labels]", line index+1."""
    npz_path = Path(npz_path)
    flag = flag.lower()
    flag = flag if flag.endswith("mnist") else f"{flag}mnist"
    if flag not in _MEDMNIST:
        raise EdgescreenError(f"unknown MedMNIST flag {flag!r}; known: {', '.join(_MEDMNIST)}")
    task, labels, convert = _MEDMNIST[flag]
    if not npz_path.is_file():
        raise EdgescreenError(f"{npz_path}: MedMNIST npz not found")
    problems: list[RowProblem] = []
    samples = []
    with np.load(npz_path) as z:
        present = [s for s in ("train", "val", "test") if f"{s}_images" in z.files]
        if not present:
            raise EdgescreenError(f"{npz_path}: no train_images/val_images/test_images arrays")
        for split in present:
            x, y = z[f"{split}_images"], z[f"{split}_labels"]
            where = f"{npz_path}[{split}_labels]"
            if len(x) != len(y):
                raise EdgescreenError(f"{where}: {len(y)} labels for {len(x)} images")
            for i in range(len(x)):
                row = np.atleast_1d(y[i])
                ok = (
                    len(row) == len(labels) and set(row.tolist()) <= {0, 1}
                    if task == "cxr"
                    else len(row) == 1 and 0 <= int(row[0]) < len(labels)
                )
                if not ok:
                    problems.append(RowProblem(where, i + 1, f"invalid label {row.tolist()}"))
                    continue
                pid = f"{flag}-{split}-{i}"
                meta = {"id": pid, "index": i}
                samples.append(Sample(None, convert(row), pid, split, array=x[i], meta=meta))
    ls = LabelledSet(flag, task, labels, samples, problems)
    ls.notes.append(f"MedMNIST has no patient ids: patient = {flag}-<split>-<index>")
    missing = [s for s in ("train", "val", "test") if s not in present]
    if missing:
        ls.notes.append(f"npz has no {'/'.join(missing)} split")
    return _finish(ls, strict)


# ---------------------------------------------------------------- the shared sets

_PATIENT_NNN = re.compile(r"(Patient\d+)")
_EYE_LR = re.compile(r"[_-]([LR])\.[^.]+$")  # one file is "Patient254-R.jpg"


def load_srahim_fundus(root: str | Path, *, strict: bool = False) -> LabelledSet:
    """fundus-dr-srahim: labels.csv (filename,...,dr_grade_0_4,...,dup_of); patient from
    `PatientNNN` in the file name, meta eye L/R, dup_of, maculopathy, original class."""
    root = Path(root)
    problems: list[RowProblem] = []
    rows = _Rows(root / "labels.csv", problems)
    samples = []
    for line, r in rows.read(("filename", "dr_grade_0_4")):
        grade = _int_label(r["dr_grade_0_4"], len(DR_GRADES))
        if grade is None:
            rows.problem(line, f"invalid DR grade {r['dr_grade_0_4']!r} (expected 0-4)")
            continue
        m = _PATIENT_NNN.search(r["filename"])
        if not m:
            rows.problem(line, f"no PatientNNN in file name {r['filename']!r}")
            continue
        path = root / r["filename"]
        if not path.is_file():
            rows.problem(line, f"image not found: {r['filename']}")
            continue
        eye = _EYE_LR.search(r["filename"])
        meta = {
            "eye": eye[1] if eye else None,
            "dup_of": r.get("dup_of") or None,
            "maculopathy": r.get("maculopathy"),
            "class_name": r.get("class_name"),
        }
        samples.append(Sample(path, grade, m[1], None, meta=meta))
    return _finish(LabelledSet("fundus-dr-srahim", "dr", DR_GRADES, samples, problems), strict)


def load_cxr14_mini(root: str | Path, *, strict: bool = False) -> LabelledSet:
    """cxr14-nih-mini: labels.csv with one 0/1 column per finding and patient_id. The
    pipe-separated finding_labels must agree with the columns. Its `split` column is the
    source repository's folder, not an official split, so it goes to meta["source_split"]."""
    root = Path(root)
    problems: list[RowProblem] = []
    rows = _Rows(root / "labels.csv", problems)
    samples = []
    for line, r in rows.read(("filename", "patient_id", *CXR_FINDINGS)):
        cells = [r[f] for f in CXR_FINDINGS]
        if any(c not in ("0", "1") for c in cells):
            rows.problem(line, f"finding columns must be 0/1, got {cells}")
            continue
        label = tuple(int(c) for c in cells)
        if r.get("finding_labels"):
            named, why = _findings(r["finding_labels"])
            if named != label:
                rows.problem(line, why or f"finding_labels {r['finding_labels']!r} != columns")
                continue
        path = root / r["filename"]
        if not path.is_file():
            rows.problem(line, f"image not found: {r['filename']}")
            continue
        meta = {
            "image_index": r.get("image_index"),
            "view": r.get("view"),
            "source_split": r.get("split") or None,
        }
        samples.append(Sample(path, label, r["patient_id"], None, meta=meta))
    return _finish(LabelledSet("cxr14-nih-mini", "cxr", CXR_FINDINGS, samples, problems), strict)


def _load_mnist_png(
    root: Path, name: str, task: str, labels: tuple[str, ...], strict: bool
) -> LabelledSet:
    problems: list[RowProblem] = []
    rows = _Rows(root / "labels.csv", problems)
    samples = []
    for line, r in rows.read(("filename", "split", "index", "label")):
        label = _int_label(r["label"], len(labels))
        if label is None:
            rows.problem(line, f"invalid label {r['label']!r} (expected 0-{len(labels) - 1})")
            continue
        path = root / r["filename"]
        if not path.is_file():
            rows.problem(line, f"image not found: {r['filename']}")
            continue
        pid = f"{name}-{r['split']}-{r['index']}"
        meta = {"index": r["index"], "label_name": r.get("label_name")}
        samples.append(Sample(path, label, pid, r["split"], meta=meta))
    ls = LabelledSet(name, task, labels, samples, problems)
    ls.notes.append(f"MedMNIST has no patient ids: patient = {name}-<split>-<index>")
    return _finish(ls, strict)


def load_retinamnist_png(root: str | Path, *, strict: bool = False) -> LabelledSet:
    """retinamnist-28: labels.csv `filename,split,index,label,label_name`, official splits."""
    return _load_mnist_png(Path(root), "retinamnist", "dr", DR_GRADES, strict)


def load_pneumoniamnist_png(root: str | Path, *, strict: bool = False) -> LabelledSet:
    """pneumoniamnist-28: labels.csv `filename,split,index,label,label_name` (val/test only)."""
    return _load_mnist_png(Path(root), "pneumoniamnist", "pneumonia", PNEUMONIA_CLASSES, strict)


# ---------------------------------------------------------------- generic CSV

_TASK_LABELS = {
    "dr": DR_GRADES,
    "oct": OCT_CLASSES,
    "cxr": CXR_FINDINGS,
    "pneumonia": PNEUMONIA_CLASSES,
}


def load_generic_csv(csv_path: str | Path, task: str, *, strict: bool = False) -> LabelledSet:
    """A user's own CSV: header `path,label[,patient][,split]`, path relative to the CSV's
    folder. label: DR grade 0-4 (dr); class name CNV/DME/DRUSEN/NORMAL (oct, any case);
    normal/pneumonia or 0/1 (pneumonia); pipe-separated finding names or "No Finding" (cxr).
    patient defaults to the image file stem (one image per patient)."""
    csv_path = Path(csv_path)
    if task not in _TASK_LABELS:
        raise EdgescreenError(f"unknown task {task!r}; expected one of {', '.join(_TASK_LABELS)}")
    labels = _TASK_LABELS[task]
    problems: list[RowProblem] = []
    rows = _Rows(csv_path, problems)
    samples = []
    no_patient = 0
    for line, r in rows.read(("path", "label")):
        text = r["label"]
        label: int | tuple[int, ...] | None
        if task == "cxr":
            label, why = _findings(text)
        elif task == "dr":
            label, why = _int_label(text, len(labels)), f"invalid DR grade {text!r} (expected 0-4)"
        elif task == "oct":
            upper = [n.upper() for n in labels]
            label = upper.index(text.upper()) if text.upper() in upper else None
            why = f"unknown OCT class {text!r}; expected one of {', '.join(labels)}"
        else:
            low = text.lower()
            label = labels.index(low) if low in labels else _int_label(text, len(labels))
            why = f"unknown pneumonia label {text!r}; expected normal/pneumonia or 0/1"
        if label is None:
            rows.problem(line, why)
            continue
        path = (csv_path.parent / r["path"]).resolve()
        if not path.is_file():
            rows.problem(line, f"image not found: {r['path']}")
            continue
        if not r.get("patient"):
            no_patient += 1
        patient = r.get("patient") or path.stem
        samples.append(Sample(path, label, patient, r.get("split") or None))
    ls = LabelledSet(csv_path.parent.name or str(csv_path), task, labels, samples, problems)
    if no_patient:
        ls.notes.append(f"{no_patient} row(s) without patient: patient = image file stem")
    return _finish(ls, strict)


# ---------------------------------------------------------------- by name


def _medmnist(flag: str) -> Callable[..., LabelledSet]:
    return lambda path, strict=False: load_medmnist(path, flag, strict=strict)


def _generic(task: str) -> Callable[..., LabelledSet]:
    def load(path: Path, strict: bool = False) -> LabelledSet:
        return load_generic_csv(path / "labels.csv" if path.is_dir() else path, task, strict=strict)

    return load


# FORMAT -> loader(path, strict=...): the names load_dataset("FORMAT:PATH") accepts.
LOADERS: dict[str, Callable[..., LabelledSet]] = {
    "aptos": load_aptos,
    "eyepacs": load_eyepacs,
    "idrid": load_idrid,
    "messidor2": load_messidor2,
    "kermany": load_kermany_oct,
    "nih": load_nih_cxr,
    "medmnist-retina": _medmnist("retinamnist"),
    "medmnist-oct": _medmnist("octmnist"),
    "medmnist-chest": _medmnist("chestmnist"),
    "medmnist-pneumonia": _medmnist("pneumoniamnist"),
    "srahim": load_srahim_fundus,
    "cxr14-mini": load_cxr14_mini,
    "retinamnist": load_retinamnist_png,
    "pneumoniamnist": load_pneumoniamnist_png,
    "csv-dr": _generic("dr"),
    "csv-oct": _generic("oct"),
    "csv-cxr": _generic("cxr"),
    "csv-pneumonia": _generic("pneumonia"),
}


def sniff_format(path: str | Path) -> str:
    """The format name of a bare path, from what it contains:
    - a directory with labels.csv: `dup_of` + `dr_grade_0_4` -> srahim; `finding_labels` +
      `patient_id` -> cxr14-mini; `filename,split,index,label` -> pneumoniamnist when the
      first label_name is normal/pneumonia, else retinamnist; `path,label` -> needs a task;
    - a directory with train.csv + train_images/ -> aptos, trainLabels.csv -> eyepacs,
      Data_Entry_2017*.csv -> nih;
    - a file <flag>mnist*.npz -> medmnist-<flag>."""
    path = Path(path)
    if path.is_file() and path.suffix == ".npz":
        for flag in ("retina", "oct", "chest", "pneumonia"):
            if path.name.lower().startswith(f"{flag}mnist"):
                return f"medmnist-{flag}"
        raise EdgescreenError(f"{path}: cannot tell which MedMNIST set; use medmnist-<flag>:PATH")
    labels = path / "labels.csv" if path.is_dir() else path
    if labels.is_file() and labels.suffix == ".csv":
        with labels.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            first = dict(zip(header, next(reader, []), strict=False))
        if {"dr_grade_0_4", "dup_of"} <= set(header):
            return "srahim"
        if {"finding_labels", "patient_id"} <= set(header):
            return "cxr14-mini"
        if header[:4] == ["filename", "split", "index", "label"]:
            name = first.get("label_name", "").strip().lower()
            return "pneumoniamnist" if name in PNEUMONIA_CLASSES else "retinamnist"
        if header[:2] == ["path", "label"]:
            raise EdgescreenError(
                f"{labels}: a generic path,label CSV; say its task: "
                f"csv-dr:{path}, csv-oct:{path}, csv-cxr:{path} or csv-pneumonia:{path}"
            )
    if path.is_dir():
        if (path / "train.csv").is_file() and (path / "train_images").is_dir():
            return "aptos"
        if (path / "trainLabels.csv").is_file():
            return "eyepacs"
        if any(path.glob("Data_Entry_2017*.csv")):
            return "nih"
    raise EdgescreenError(
        f"{path}: cannot tell the data set format; use FORMAT:PATH with FORMAT one of "
        f"{', '.join(LOADERS)}"
    )


def load_dataset(spec: str | Path, *, strict: bool = False) -> LabelledSet:
    """Load "FORMAT:PATH" (FORMAT a key of LOADERS), or a bare path whose format
    `sniff_format` recognises. strict=True raises on any unusable row."""
    text = str(spec)
    fmt, sep, rest = text.partition(":")
    if sep and fmt in LOADERS:
        path = Path(rest)
    else:
        path = Path(text)
        fmt = sniff_format(path)
    if not path.exists():
        raise EdgescreenError(f"{path}: not found (from {text!r})")
    return LOADERS[fmt](path, strict=strict)
