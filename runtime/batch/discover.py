"""Find uploads under IN_DIR: recursive, sorted, symlinks kept inside IN_DIR.

A symlink whose target lies outside IN_DIR is never followed (a camera share must not
be able to make the hub read /etc); it is reported so the ledger records why. Symlinked
directories are not descended into (loops); a symlinked file inside IN_DIR is read and,
having the same content as its target, becomes an alias of it.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".dcm"})
PARTIAL_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload", "~")


@dataclass(frozen=True)
class Found:
    rel: str  # path relative to IN_DIR, "/"-separated: the name used everywhere
    path: Path  # absolute path to open
    size: int = 0
    mtime_ns: int = 0
    ino: int = 0
    problem: str | None = None  # set when the path must not / cannot be read

    @property
    def signature(self) -> tuple[int, int, int]:
        return (self.size, self.mtime_ns, self.ino)


def is_candidate(name: str) -> bool:
    """An upload we screen: an image extension, not hidden, not a partial transfer."""
    lower = name.lower()
    if name.startswith(".") or lower.endswith(PARTIAL_SUFFIXES):
        return False
    return os.path.splitext(lower)[1] in EXTENSIONS


def discover(root: Path, on_file=None) -> list[Found]:
    root = Path(os.path.abspath(root))
    real_root = root.resolve()
    found: list[Found] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames.sort()
        for name in dirnames:
            full = here / name
            if full.is_symlink() and not _inside(full, real_root):
                found.append(Found(_rel(full, root), full, problem=_outside(full)))
        for name in sorted(filenames):
            if not is_candidate(name):
                continue
            full = here / name
            if on_file is not None:
                on_file(full)
            found.append(_stat(full, root, real_root))
    found.sort(key=lambda f: f.rel)
    return found


def _stat(full: Path, root: Path, real_root: Path) -> Found:
    rel = _rel(full, root)
    try:
        st = full.lstat()
        if stat.S_ISLNK(st.st_mode):
            if not _inside(full, real_root):
                return Found(rel, full, problem=_outside(full))
            st = full.stat()  # a link inside IN_DIR: judge its target
        if not stat.S_ISREG(st.st_mode):
            return Found(
                rel, full, problem="not a regular file (device, socket, fifo or directory)"
            )
    except FileNotFoundError:
        if full.is_symlink():
            return Found(rel, full, problem="broken symbolic link (its target does not exist)")
        return Found(rel, full, problem="file was deleted before it could be read")
    except OSError as exc:
        return Found(rel, full, problem=f"cannot read ({exc.strerror or exc})")
    return Found(rel, full, st.st_size, st.st_mtime_ns, st.st_ino)


def _inside(path: Path, real_root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(real_root)
    except (OSError, RuntimeError):  # symlink loop
        return False


def _outside(path: Path) -> str:
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return f"symbolic link points outside IN_DIR (to {target}): not followed"


def _rel(full: Path, root: Path) -> str:
    return full.relative_to(root).as_posix()


class Stability:
    """Watch mode: a file is ready once two polls in a row see the same size and mtime and
    it has not been written to for `quiet_s` (a copy paused longer than that still gets
    caught by the content hash: a later, complete version is a changed file, screened again)."""

    def __init__(self, quiet_s: float = 1.0) -> None:
        self.quiet_ns = int(quiet_s * 1e9)
        self._last: dict[str, tuple[int, int, int]] = {}

    def ready(self, found: list[Found]) -> list[Found]:
        now = time.time_ns()
        seen = {f.rel: f.signature for f in found if f.problem is None}
        ready = [
            f
            for f in found
            if f.problem is not None
            or (self._last.get(f.rel) == f.signature and now - f.mtime_ns >= self.quiet_ns)
        ]
        self._last = seen
        return ready
