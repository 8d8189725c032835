"""Exports from the ledger: a self-contained HTML report and a flat CSV, optionally pseudonymised.

Both are written owner-only (0600) and atomically. The HTML needs nothing but a browser:
thumbnails and heatmap overlays are inline base64 JPEGs, the decision filter is a few
lines of inline JS, and nothing is fetched from anywhere.

Pseudonymisation replaces every file name and patient id with an HMAC-SHA256 of it under
a key kept beside the ledger (`<db>.key`, 0600), so the same file always gets the same
pseudonym and a holder of the key can re-identify, nobody else can. Error texts and
action sentences that quote a file name are scrubbed too.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import html
import io
import json
import os
import re
import secrets
import time
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from ..card import atomic_write
from ..errors import ImageError
from ..imageio import decode, read_file
from ..overlay import overlay
from .ledger import Item, Ledger
from .patients import Patient, group

THUMB_SIDE = 160
_FILTERS = ("urgent", "refer", "routine", "rescreen", "none", "ungradable", "failed", "pending")


# -- files -------------------------------------------------------------------------------------
def write_private(target: Path, data: bytes) -> None:
    """Atomic write of an owner-only file (never visible half-written or world-readable)."""
    atomic_write(Path(target), data, mode=0o600)


def load_key(db: Path) -> bytes:
    """The pseudonymisation key beside the ledger, created on first use (0600)."""
    path = Path(f"{db}.key")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32) + "\n")
    return bytes.fromhex(path.read_text().strip())


class Names:
    """File names and patient ids as they appear in an export: real, or keyed pseudonyms."""

    def __init__(self, key: bytes | None, root: Path) -> None:
        self.key, self.root = key, Path(os.path.abspath(root))
        self._pattern: re.Pattern | None = None
        self._map: dict[str, str] = {}

    def _mac(self, kind: str, value: str) -> str:
        return hmac.new(self.key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()[:16]

    def path(self, rel: str) -> str:
        return rel if self.key is None else f"img-{self._mac('path', rel)}"

    def patient(self, pid: str) -> str:
        return pid if self.key is None else f"pt-{self._mac('patient', pid)}"

    def learn(self, paths: list[str], patients: list[Patient]) -> None:
        if self.key is None:
            return
        for rel in paths:
            alias = self.path(rel)
            pure = PurePosixPath(rel)
            for real in (str(self.root / rel), rel, pure.name, pure.stem):
                if len(real) >= 4:
                    self._map.setdefault(real, alias)
        for p in patients:
            for real in (p.id, p.patient):
                if len(real) >= 4:
                    self._map.setdefault(real, self.patient(p.id))
        if self._map:
            ordered = sorted(self._map, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in ordered))

    def scrub(self, text: str | None) -> str:
        if not text or self._pattern is None:
            return text or ""
        return self._pattern.sub(lambda m: self._map[m.group(0)], text)


# -- rows --------------------------------------------------------------------------------------
def _rows(ledger: Ledger, root: Path, names: Names):
    items = list(ledger.items())
    patients = group(items, root)
    names.learn([p for item in items for p in item.paths], patients)
    eye_of = {e.path: (p, e.eye) for p in patients for e in p.eyes}
    return items, patients, eye_of


def _summary(item: Item) -> str:
    r = item.result or {}
    if r.get("grade") is not None:
        return f"grade {r['grade']} ({r.get('label')})"
    if r.get("positive_findings"):
        return ", ".join(r["positive_findings"])
    return r.get("label") or ""


def _reasons(item: Item) -> list[str]:
    issues = (item.result or {}).get("quality", {}).get("issues", [])
    return [i.get("message", "") for i in issues]


def write_csv(ledger: Ledger, root: Path, target: Path, *, key: bytes | None = None) -> int:
    names = Names(key, root)
    items, _, eye_of = _rows(ledger, root, names)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(
        [
            "path",
            "aliases",
            "sha256",
            "state",
            "decision",
            "action",
            "result",
            "grade",
            "referable_probability",
            "probabilities",
            "quality_reasons",
            "error",
            "notes",
            "patient",
            "eye",
            "patient_decision",
            "bundle_sha256",
            "precision",
        ]
    )
    for item in items:
        r = item.result or {}
        who = eye_of.get(item.path) or next((eye_of[p] for p in item.paths if p in eye_of), None)
        writer.writerow(
            [
                names.path(item.path),
                ";".join(names.path(p) for p in item.paths if p != item.path),
                item.sha256 or "",
                item.state,
                item.decision or "",
                names.scrub(r.get("action")),
                _summary(item),
                "" if r.get("grade") is None else r["grade"],
                ""
                if r.get("referable_probability") is None
                else f"{r['referable_probability']:.6f}",
                json.dumps(r.get("probabilities") or {}, sort_keys=True),
                "; ".join(_reasons(item)),
                names.scrub(item.error),
                names.scrub(item.notes),
                names.patient(who[0].id) if who else "",
                who[1] if who else "",
                who[0].decision if who else "",
                (r.get("audit") or {}).get("bundle_sha256", ""),
                (r.get("audit") or {}).get("precision", ""),
            ]
        )
    write_private(target, buf.getvalue().encode("utf-8"))
    return len(items)


# -- HTML --------------------------------------------------------------------------------------
def thumbnail_jpeg(image: np.ndarray) -> bytes | None:
    """The report's photo of a decoded image (imageio's RGB / grey convention), as a small JPEG.

    Made once, when the image is screened, from the array the screening decoded, and kept in
    the ledger, so the report needs neither the upload nor another decode of it.
    """
    small = _fit(image, THUMB_SIDE)
    if small.dtype != np.uint8:  # 16-bit grey (X-rays): the top byte is plenty for a thumbnail
        small = (small >> 8).astype(np.uint8)
    if small.ndim == 3:
        small = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return buf.tobytes() if ok else None


def _thumbs(
    root: Path, item: Item, crop_to_disc: bool, max_pixels: int | None
) -> tuple[str | None, str | None]:
    """(photo, heatmap overlay) as data: URIs; None where there is no picture to show."""
    if item.state not in ("done", "ungradable"):
        return None, None  # failed files may be corrupt or hostile: never decode them here
    jpeg = item.thumb_jpeg or _thumb_from_upload(root, item, max_pixels)
    if jpeg is None:
        return None, None
    heat = None
    if item.heatmap_png is not None:
        picture = decode(jpeg, name="thumbnail").image  # our own small JPEG
        picture = cv2.cvtColor(
            picture, cv2.COLOR_RGB2BGR if picture.ndim == 3 else cv2.COLOR_GRAY2BGR
        )
        m = (item.result or {}).get("quality", {}).get("measurements", {})
        stored = cv2.imdecode(np.frombuffer(item.heatmap_png, np.uint8), cv2.IMREAD_GRAYSCALE)
        heat = _jpeg(overlay(picture, stored, m, crop_to_disc=crop_to_disc, side=THUMB_SIDE))
    return _data_uri(jpeg), heat


def _thumb_from_upload(root: Path, item: Item, max_pixels: int | None) -> bytes | None:
    """A ledger row from before thumbnails were stored: read the upload once, through the one
    decoder, and only if it still holds the content that was screened."""
    for rel in dict.fromkeys([item.path, *item.paths]):
        try:
            data = read_file(root / rel)
        except ImageError:
            continue
        if hashlib.sha256(data).hexdigest() != item.sha256:
            continue  # replaced since: not the picture this row is about
        try:
            return thumbnail_jpeg(decode(data, name=rel, max_pixels=max_pixels).image)
        except Exception:  # noqa: BLE001 - a thumbnail is optional
            continue
    return None


def _fit(image: np.ndarray, side: int) -> np.ndarray:
    h, w = image.shape[:2]
    f = side / max(h, w)
    if f >= 1:
        return image
    return cv2.resize(
        image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA
    )


def _jpeg(image: np.ndarray) -> str:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 75])
    return _data_uri(buf.tobytes())


def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


_CSS = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;width:100%;margin-bottom:2em}
th,td{border-bottom:1px solid #ddd;padding:6px;text-align:left;vertical-align:top}
th{background:#f4f4f4}
img{border-radius:4px;margin-right:4px}
.badge{display:inline-block;padding:2px 8px;border-radius:10px;color:#fff;font-weight:600}
.urgent{background:#b00020}.refer{background:#e65100}.routine{background:#6d4c41}
.rescreen{background:#2e7d32}.none{background:#2e7d32}.ungradable{background:#757575}
.failed{background:#424242}.pending{background:#9e9e9e}
.filters button{margin:0 4px 8px 0;padding:4px 10px;border:1px solid #999;border-radius:4px;background:#fff;cursor:pointer}
.filters button.on{background:#222;color:#fff}
td:first-child{white-space:nowrap}
.small{color:#666;font-size:12px}.name{word-break:break-all;max-width:22em}
"""

_JS = """
function show(d){
  document.querySelectorAll('.filters button').forEach(function(b){b.classList.toggle('on', b.dataset.f===d)});
  document.querySelectorAll('tr[data-decision]').forEach(function(r){
    r.style.display = (d==='all' || r.dataset.decision===d) ? '' : 'none'});
}
"""


def write_html(
    ledger: Ledger, root: Path, target: Path, *, key: bytes | None = None, card=None
) -> int:
    names = Names(key, root)
    items, patients, _ = _rows(ledger, root, names)
    esc = html.escape
    crop = bool(card is not None and card.modality == "fundus" and card.preprocessing.crop_to_disc)
    max_pixels = card.input.max_pixels if card is not None else None
    counts = ledger.counts()
    title = "edgescreen batch report"
    head = [
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{title}</title>",
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">",
        f"<style>{_CSS}</style><script>{_JS}</script></head><body>",
        f"<h1>{title}</h1>",
        f"<p class=small>model {esc(ledger.meta('model') or '?')} · bundle sha256 "
        f"{esc((ledger.meta('bundle_sha256') or '?')[:16])}… · precision {esc(ledger.meta('precision') or '?')}"
        f" · generated {time.strftime('%Y-%m-%d %H:%M:%S')} · "
        "research and engineering evaluation only; not for clinical use</p>",
        f"<p><b>{counts['done']}</b> screened · <b>{counts['ungradable']}</b> ungradable · "
        f"<b>{counts['failed']}</b> failed · <b>{counts['pending']}</b> pending · "
        f"<b>{ledger.referrals()}</b> referrals</p>",
    ]
    present = [d for d in _FILTERS if any((i.decision or i.state) == d for i in items)]
    head.append(
        "<div class=filters><button data-f=all class=on onclick=\"show('all')\">all</button>"
        + "".join(f"<button data-f={d} onclick=\"show('{d}')\">{d}</button>" for d in present)
        + "</div>"
    )
    body = []
    if patients:
        body.append(
            f"<details{' open' if len(patients) <= 20 else ''}><summary><b>Patients ({len(patients)})</b>"
            "</summary><table><tr><th>patient</th><th>eyes</th><th>decision</th><th>note</th></tr>"
        )
        for p in patients:
            eyes = ", ".join(f"{e.eye}: {e.decision or e.state}" for e in p.eyes)
            body.append(
                f"<tr data-decision='{esc(p.decision)}'><td class=name>{esc(names.patient(p.id))}</td>"
                f"<td>{esc(eyes)}</td><td><span class='badge {esc(p.decision)}'>{esc(p.decision)}</span>"
                f"</td><td>{esc(p.note)}</td></tr>"
            )
        body.append("</table></details>")
    body.append(
        "<h2>Images</h2><table><tr><th>image</th><th>file</th><th>decision</th><th>action</th>"
        "<th>result</th><th>quality / error</th></tr>"
    )
    for item in items:
        r = item.result or {}
        decision = item.decision or item.state
        photo, heat = _thumbs(root, item, crop, max_pixels)
        pics = "".join(
            f"<img src='{u}' alt='{a}' height=100>"
            for u, a in ((photo, "photo"), (heat, "heatmap"))
            if u
        )
        aliases = [names.path(p) for p in item.paths if p != item.path]
        alias_html = f"<div class=small>also: {esc(', '.join(aliases))}</div>" if aliases else ""
        detail = "; ".join(_reasons(item)) or names.scrub(item.error)
        notes = f"<div class=small>{esc(names.scrub(item.notes))}</div>" if item.notes else ""
        prob = r.get("referable_probability")
        prob_html = f"<div class=small>P(referable) {prob:.2f}</div>" if prob is not None else ""
        body.append(
            f"<tr data-decision='{esc(decision)}' data-state='{esc(item.state)}'><td>{pics}</td>"
            f"<td class=name>{esc(names.path(item.path))}{alias_html}</td>"
            f"<td><span class='badge {esc(decision)}'>{esc(decision)}</span></td>"
            f"<td>{esc(names.scrub(r.get('action')) or item.state)}</td>"
            f"<td>{esc(_summary(item))}{prob_html}</td><td>{esc(detail)}{notes}</td></tr>"
        )
    body.append("</table></body></html>")
    write_private(target, "\n".join(head + body).encode("utf-8"))
    return len(items)
