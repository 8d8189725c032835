#!/usr/bin/env python3
"""Check every TensorRT and pycuda name edgescreen uses against the real bindings, per version.

TensorRT cannot be installed without a GPU, but NVIDIA publishes the Python *bindings* as
small wheels on PyPI (``tensorrt-cu12-bindings``): a pybind11 module, ``tensorrt.so``, whose
read-only data holds every Python name it registers (``"set_tensor_address"``,
``"platform_has_fast_int8"``, enum members such as ``"GPU_FALLBACK"``) and every docstring,
plus an ``__init__.py`` defining a few names in Python (``nptype``, ``__version__``). This
script downloads those wheels (or takes them from ``--wheels DIR``), reads the strings
without importing anything, and compares them with ``docs/tensorrt-api.md``, the single
source of truth for which names the code uses. pycuda names are checked against the pycuda
sdist's sources. Nothing here needs a GPU, TensorRT or pycuda; stdlib only.

How a name is judged present in a TensorRT version
--------------------------------------------------
The .so is scanned like ``strings`` for NUL-terminated printable runs. The linker merges
a string into the tail of a longer one (``"INT8"`` lives only as the end of ``"UINT8"``,
``"desc"`` as the end of ``"input_desc"``), so a token counts as present when an
identifier-shaped string *equals it or ends with it* (a run that starts with up to three
stray non-letter bytes of whatever precedes it, ``"7UINT8"``, still yields ``UINT8``). Docstrings are not searched for
tokens: they mention names that no longer exist (TensorRT 11's format docstrings still say
"FP16"). A table name such as ``IBuilderConfig.set_timing_cache(ignore_mismatch=)`` is
present when every token (``IBuilderConfig``, ``set_timing_cache``, ``ignore_mismatch``;
a leading ``trt.``/``cuda.``/``pycuda.`` module alias is dropped) is present, or is defined
in the wheel's ``__init__.py``.

A bare token cannot say which enum it belongs to: ``INT8`` exists in TensorRT 11 as
``DataType.INT8`` although ``BuilderFlag.INT8`` was removed. For such rows the table gives
a phrase of the member's own docstring and marks it ``(required)``; the name then counts as
present only if that phrase is found as well.

Deprecation: a name is deprecated in a version when its own docstring says
``[DEPRECATED]``. Method and enum-member docstrings do not name their method, so the
docstring is found through the row's docstring phrase; properties are found through the
``:ivar name: ... [DEPRECATED] ...`` line of their class docstring. Where neither applies the
deprecation state is "unknown" and only reported, unless the table claims a deprecation,
which must then be confirmable.

Table format (docs/tensorrt-api.md)
-----------------------------------
A machine-read table is a GitHub pipe table preceded by ``<!-- check_trt_api: tensorrt -->``
or ``<!-- check_trt_api: pycuda -->`` (other tables are ignored). Columns are found by their
header text, in any order:

- ``name``: the name in backticks, first backticked span of the cell. ``trt.X.Y`` for
  module-level names (``trt.BuilderFlag.FP16``), ``Class.member`` for members
  (``IBuilderConfig.set_flag``), ``Class.method(kw=)`` for a keyword argument we pass,
  ``cuda.X`` for ``pycuda.driver`` attributes.
- ``used in``: ``file:function`` (free text). ``(implicit`` (e.g. ``(implicit: int(...))``)
  marks a use the source scan cannot see (``int(allocation)``, ``memoryview(host_memory)``),
  so the row is not reported as unused.
- ``docstring``: optional; backticked phrase(s) of the name's own docstring in the bindings,
  ``(required)`` to make the phrase part of the presence test (see above).
- one column per version, headed ``10.3``, ``10.16``, ``11.4`` (TensorRT) or ``2022.2``,
  ``2025.1.2`` (pycuda): ``yes``/``no`` (first word; anything after it is a note). A version
  is compared with the column of the same major.minor, else the nearest lower one of the
  same major.
- ``deprecated`` (TensorRT table): ``—`` (or ``-``/empty) when not deprecated, else the
  TensorRT version it was deprecated in (``10.1``); the check expects ``[DEPRECATED]`` in
  every checked version at or after it where the name exists.
- any other column (``for``, ``reference``) is documentation only.

Completeness
------------
``scan_usage`` parses our TensorRT modules (``SCANNED_FILES``) with ``ast`` and collects the
attributes accessed on expressions that hold TensorRT/pycuda objects (``RECEIVERS``, per
file, with the reason for each), attributes of results of known calls (``CALL_RESULTS``:
``network.get_input(0).name`` is ``ITensor.name``), constant names passed to
``getattr``/``hasattr``, keyword arguments of those calls, methods of our subclasses of
TensorRT classes (the calibrator), ``pycuda.*`` imports, and enum member names built as
strings (``DYNAMIC_ENUMS``). Functions where a receiver name means something else are skipped
(``EXCLUDED_FUNCTIONS``: ``parser`` is an ArgumentParser in ``add_engine_command``). Each use
must be in the table: exactly, or as the prefix of a row (``trt.MemoryPoolType`` is covered by
``trt.MemoryPoolType.WORKSPACE``); a use on an object of unknown class (``?.name``) needs a
row with that last component. A row no use matches is reported as stale (an error too), unless
its ``used in`` cell says ``(implicit``.

Usage::

    python tools/check_trt_api.py [--versions 10.3.0 11.4.0.106] [--pycuda 2025.1.2]
                                  [--wheels DIR] [--cache-dir DIR] [--no-download] [--json]

``--pycuda`` with no version skips pycuda; ``--verbose`` lists every name with how each of its
tokens was found. Wheels are looked for in ``--wheels DIR``, then the cache
(``~/.cache/edgescreen/trt-bindings``, or ``$EDGESCREEN_TRT_CACHE``), then downloaded there with
``pip download --no-deps``.

Exit status: 0 everything matches; 1 mismatches (listed); 2 a wheel or sdist could not be
obtained (the message says which and why).
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TABLE = REPO / "docs" / "tensorrt-api.md"

# TensorRT 10.3 is JetPack 6.1/6.2's; then the newest 10.x and 11.x on PyPI when written.
DEFAULT_VERSIONS = ("10.3.0", "10.16.1.11", "11.4.0.106")
# pyproject's trt extra asks for pycuda>=2022.2; 2025.1.2 is the newest when written.
DEFAULT_PYCUDA = ("2022.2", "2025.1.2")
BINDINGS_DIST = "tensorrt-cu12-bindings"
DEFAULT_CACHE = Path(
    os.environ.get("EDGESCREEN_TRT_CACHE", Path.home() / ".cache" / "edgescreen" / "trt-bindings")
)

# -- what the completeness scan reads --------------------------------------------------------
SCANNED_FILES = (
    "export/trt.py",
    "runtime/backends/trt.py",
    "runtime/backends/cuda_mem.py",
    "runtime/engine_cache.py",
)

# Expressions (a name or a dotted self attribute) that hold TensorRT/pycuda objects, per file,
# and the class (or module alias) they hold. Chosen by reading the code; what is left out is
# left out on purpose:
# - export/trt.py: `trt` is the tensorrt module (a parameter filled by import_tensorrt());
#   `logger` and `serialized` are only passed on, never dereferenced. Inside the calibrator,
#   `self._stream`/`self._buffer` are our cuda_mem wrappers, not pycuda objects. `profile`
#   in plan_build is a tuple; in build_engine it is the optimization profile (same name,
#   only the latter has attributes accessed).
# - runtime/backends/trt.py: `self._stream`, `self._buffers`, `self._cuda_ctx` are our
#   cuda_mem wrappers (their pycuda calls are scanned in cuda_mem.py).
# - runtime/backends/cuda_mem.py: `cuda`/`self._cuda` are the pycuda.driver module;
#   `self.host` is the numpy array pagelocked_empty returns (its size/nbytes/base are
#   numpy's), and `base` is that array's .base, pycuda's page-locked HostAllocation.
# - runtime/engine_cache.py: only `trt.__version__`.
RECEIVERS: dict[str, dict[str, str]] = {
    "export/trt.py": {
        "trt": "trt",
        "builder": "Builder",
        "network": "INetworkDefinition",
        "parser": "OnnxParser",
        "err": "ParserError",
        "config": "IBuilderConfig",
        "profile": "IOptimizationProfile",
        "calib_profile": "IOptimizationProfile",
        "cache": "ITimingCache",
    },
    "runtime/backends/trt.py": {
        "trt": "trt",
        "self._trt": "trt",
        "self._runtime": "Runtime",
        "self.engine": "ICudaEngine",
        "self.context": "IExecutionContext",
    },
    "runtime/backends/cuda_mem.py": {
        "cuda": "cuda",
        "self._cuda": "cuda",
        "dev": "Device",
        "self._ctx": "Context",
        "self._stream": "Stream",
        "self.device": "DeviceAllocation",
        "base": "HostAllocation",
    },
    "runtime/engine_cache.py": {"trt": "trt"},
}

# Functions not scanned, because a receiver name means something else there.
EXCLUDED_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "export/trt.py": ("add_engine_command",),  # `parser` there is an argparse.ArgumentParser
}

# What a call returns, so chained uses resolve: `network.get_input(0).name` -> ITensor.name.
CALL_RESULTS: dict[str, str] = {
    "trt.Builder": "Builder",
    "trt.OnnxParser": "OnnxParser",
    "trt.Runtime": "Runtime",
    "trt.Logger": "Logger",
    "Builder.create_network": "INetworkDefinition",
    "Builder.create_builder_config": "IBuilderConfig",
    "Builder.create_optimization_profile": "IOptimizationProfile",
    "Builder.build_serialized_network": "IHostMemory",
    "INetworkDefinition.get_input": "ITensor",
    "OnnxParser.get_error": "ParserError",
    "IBuilderConfig.create_timing_cache": "ITimingCache",
    "IBuilderConfig.get_timing_cache": "ITimingCache",
    "ITimingCache.serialize": "IHostMemory",
    "Runtime.deserialize_cuda_engine": "ICudaEngine",
    "ICudaEngine.create_execution_context": "IExecutionContext",
    "cuda.Device": "Device",
    "Device.retain_primary_context": "Context",
    "cuda.Stream": "Stream",
    "cuda.mem_alloc": "DeviceAllocation",
}

# Enum members named by string constants and resolved with getattr at run time:
# (file, function, enums the constants belong to).
DYNAMIC_ENUMS = (
    (file, function, ("trt.NetworkDefinitionCreationFlag", "trt.BuilderFlag"))
    for file, function in (
        ("export/trt.py", "plan_build"),
        ("export/trt.py", "_network_flags"),
        ("export/trt.py", "_builder_flags"),
    )
)

# Methods of our TensorRT subclasses that TensorRT does not call (ours, or the constructor).
OWN_METHODS = frozenset({"__init__", "free"})

MODULE_ALIASES = ("trt", "cuda", "pycuda")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_GLUED = re.compile(r"[^\sA-Za-z_]{1,3}([A-Za-z_][A-Za-z0-9_]*)\Z")
_NAME = re.compile(r"([A-Za-z_][\w.]*)(?:\((\w+)=\))?\Z")


class Unobtainable(Exception):
    """A bindings wheel or a pycuda sdist could not be found or downloaded."""


# -- the table ------------------------------------------------------------------------------
@dataclass
class Row:
    kind: str  # "tensorrt" | "pycuda"
    name: str
    used_in: str
    phrases: tuple[str, ...]
    phrase_required: bool
    expected: dict[str, bool]  # version column header -> expected present
    deprecated_since: tuple[int, int] | None
    line: int

    @property
    def implicit(self) -> bool:
        return re.search(r"\(implicit\b", self.used_in) is not None


def _cells(line: str) -> list[str]:
    s = line.strip()
    if s.startswith("|"):
        s = s[1:]
    if s.endswith("|"):
        s = s[:-1]
    return [c.strip() for c in s.split("|")]


def _backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text))


def name_tokens(name: str) -> list[str]:
    """The identifiers a table name needs: `trt.BuilderFlag.FP16` -> [BuilderFlag, FP16]."""
    m = _NAME.match(name)
    if not m:
        raise ValueError(f"cannot read the table name {name!r}")
    parts = m.group(1).split(".")
    while parts and parts[0] in MODULE_ALIASES and len(parts) > 1:
        parts = parts[1:]
    return parts + ([m.group(2)] if m.group(2) else [])


def parse_table(text: str) -> list[Row]:
    """Rows of the machine-read tables (see the module docstring for the format)."""
    rows: list[Row] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        mark = re.search(r"<!--\s*check_trt_api:\s*(\w+)\s*-->", lines[i])
        i += 1
        if not mark:
            continue
        kind = mark.group(1)
        if kind not in ("tensorrt", "pycuda"):
            raise ValueError(f"line {i}: unknown table kind {kind!r}")
        while i < len(lines) and not lines[i].strip().startswith("|"):
            i += 1
        if i + 1 >= len(lines):
            raise ValueError(f"line {i}: table marker without a table")
        header = [h.lower() for h in _cells(lines[i])]
        if "name" not in header:
            raise ValueError(f"line {i + 1}: table has no 'name' column")
        version_cols = {h: n for n, h in enumerate(header) if re.fullmatch(r"\d+(\.\d+)+", h)}
        if not version_cols:
            raise ValueError(f"line {i + 1}: table has no version columns (e.g. '10.3')")
        col = {h: n for n, h in enumerate(header)}
        i += 2  # header and the |---| line
        while i < len(lines) and lines[i].strip().startswith("|"):
            cells = _cells(lines[i])
            lineno = i + 1
            i += 1
            if len(cells) != len(header):
                raise ValueError(f"line {lineno}: {len(cells)} cells, the header has {len(header)}")
            names = _backticked(cells[col["name"]])
            if not names:
                raise ValueError(f"line {lineno}: no `name` in the name cell")
            name = names[0].strip()
            name_tokens(name)  # validates
            expected = {}
            for h, n in version_cols.items():
                word = (cells[n].split() or [""])[0].lower().strip(".,;")
                if word not in ("yes", "no"):
                    raise ValueError(
                        f"line {lineno}: column {h} must be yes or no, got {cells[n]!r}"
                    )
                expected[h] = word == "yes"
            phrases: tuple[str, ...] = ()
            required = False
            if "docstring" in col:
                phrases = tuple(_backticked(cells[col["docstring"]]))
                required = "(required)" in cells[col["docstring"]]
            since = None
            if "deprecated" in col:
                m = re.search(r"(\d+)\.(\d+)", cells[col["deprecated"]])
                since = (int(m.group(1)), int(m.group(2))) if m else None
            rows.append(
                Row(
                    kind=kind,
                    name=name,
                    used_in=cells[col["used in"]] if "used in" in col else "",
                    phrases=phrases,
                    phrase_required=required,
                    expected=expected,
                    deprecated_since=since,
                    line=lineno,
                )
            )
    if not rows:
        raise ValueError("no machine-read table found (<!-- check_trt_api: tensorrt -->)")
    seen: set[tuple[str, str]] = set()
    for row in rows:
        if (row.kind, row.name) in seen:
            raise ValueError(f"line {row.line}: {row.name} is listed twice")
        seen.add((row.kind, row.name))
    return rows


def column_for(version: str, columns: list[str]) -> str:
    """The table column holding the expectations for `version` (see the module docstring)."""
    v = _version_key(version)
    same_major = [c for c in columns if _version_key(c)[0] == v[0]]
    exact = [c for c in same_major if _version_key(c)[:2] == v[:2]]
    if exact:
        return exact[0]
    lower = [c for c in same_major if _version_key(c) <= v]
    if lower:
        return max(lower, key=_version_key)
    raise ValueError(
        f"the table has no column for version {version} (columns: {', '.join(columns)})"
    )


# -- the TensorRT bindings ------------------------------------------------------------------
def c_strings(data: bytes, min_len: int = 3) -> list[str]:
    """NUL-terminated printable ASCII runs, like `strings`, but only runs that end at a NUL."""
    pattern = rb"([\t\n\r\x20-\x7e]{%d,})\x00" % min_len
    return [m.group(1).decode("ascii") for m in re.finditer(pattern, data)]


def python_defined_names(source: str) -> set[str]:
    """Names a Python module defines at any level: def/class names, assignment targets
    (`x = ...` defines x, `Cls.attr = ...` defines attr)."""

    def target_names(t: ast.AST) -> list[str]:
        if isinstance(t, ast.Name):
            return [t.id]
        if isinstance(t, ast.Attribute):
            return [t.attr]
        if isinstance(t, ast.Tuple | ast.List):
            return [n for e in t.elts for n in target_names(e)]
        if isinstance(t, ast.Starred):
            return target_names(t.value)
        return []

    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                names.update(target_names(t))
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            names.update(target_names(node.target))
    return names


def _squash(text: str) -> str:
    return " ".join(text.split())


_DEPRECATED = re.compile(r"\[DEPRECATED\]\s*(.*?)(?:\n\s*\n|$)", re.S)


def deprecation_text(docstring: str) -> str | None:
    """The sentence after [DEPRECATED], whitespace squashed; None if not deprecated."""
    m = _DEPRECATED.search(docstring)
    return _squash(m.group(1))[:200] if m else None


def deprecation_version(text: str | None) -> tuple[int, int] | None:
    m = re.search(r"TensorRT (\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


class Bindings:
    """The names and docstrings of one TensorRT bindings build, from its bytes."""

    def __init__(self, so_bytes: bytes, init_py: str = "", label: str = "") -> None:
        self.label = label
        strings = c_strings(so_bytes)
        self.identifiers = {s for s in strings if _IDENT.match(s)}
        # A run can start with a stray printable byte of whatever precedes it ("7UINT8"):
        # keep the identifier it ends with when the prefix is short and has no whitespace.
        for s in strings:
            m = _GLUED.match(s)
            if m:
                self.identifiers.add(m.group(1))
        self.docstrings = [s for s in strings if not _IDENT.match(s)]
        self._squashed = [_squash(s) for s in self.docstrings]
        self.py_names = python_defined_names(init_py) if init_py else set()
        self.ivars: dict[str, list[str]] = {}
        for doc in self.docstrings:
            for m in re.finditer(r"^\s*:ivar (\w+):(.*)$", doc, re.M):
                self.ivars.setdefault(m.group(1), []).append(m.group(2).strip())
        self._token_cache: dict[str, str | None] = {}

    @classmethod
    def from_wheel(cls, wheel: Path) -> Bindings:
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
            so = [n for n in names if re.search(r"tensorrt_bindings/tensorrt[^/]*\.(so|pyd)$", n)]
            init = [n for n in names if n.endswith("tensorrt_bindings/__init__.py")]
            if not so:
                raise Unobtainable(f"{wheel.name}: no tensorrt_bindings/tensorrt*.so inside")
            return cls(
                zf.read(so[0]),
                zf.read(init[0]).decode("utf-8", "replace") if init else "",
                label=wheel.name,
            )

    def token(self, tok: str) -> str | None:
        """How `tok` is present: 'exact', 'tail of <string>', '__init__.py', or None."""
        if tok not in self._token_cache:
            how = None
            if tok in self.identifiers:
                how = "exact"
            elif tok in self.py_names:
                how = "__init__.py"
            else:
                longer = [s for s in self.identifiers if s.endswith(tok)]
                if longer:
                    how = f"tail of {min(longer, key=len)}"
            self._token_cache[tok] = how
        return self._token_cache[tok]

    def docstrings_with(self, phrase: str) -> list[str]:
        p = _squash(phrase)
        return [d for d, s in zip(self.docstrings, self._squashed, strict=True) if p in s]

    def deprecation(self, row: Row) -> tuple[bool | None, str | None, str]:
        """(deprecated?, text, how it was found); deprecated is None when unknown."""
        for phrase in row.phrases:
            docs = self.docstrings_with(phrase)
            if docs:
                texts = [t for t in map(deprecation_text, docs) if t]
                return (bool(texts), texts[0] if texts else None, f"docstring with {phrase!r}")
        leaf = name_tokens(row.name)[-1]
        ivars = self.ivars.get(leaf)
        if ivars:
            texts = [deprecation_text(t) for t in ivars]
            if all(texts):
                return True, texts[0], f":ivar {leaf}:"
            if not any(texts):
                return False, None, f":ivar {leaf}:"
            return None, None, f":ivar {leaf}: (deprecated in one class, not in another)"
        return None, None, "no docstring attributable"


@dataclass
class NameResult:
    name: str
    line: int
    present: bool
    expected: bool
    tokens: dict[str, str | None]
    phrase_found: bool | None
    deprecated: bool | None = None
    deprecation: str | None = None
    deprecation_source: str = ""
    expected_deprecated: bool = False
    problems: list[str] = field(default_factory=list)


def check_trt_version(rows: list[Row], bindings: Bindings, version: str) -> list[NameResult]:
    trt_rows = [r for r in rows if r.kind == "tensorrt"]
    column = column_for(version, list(trt_rows[0].expected))
    v = _version_key(version)
    results = []
    for row in trt_rows:
        tokens = {t: bindings.token(t) for t in name_tokens(row.name)}
        present = all(tokens.values())
        phrase_found = None
        if row.phrases:
            phrase_found = any(bindings.docstrings_with(p) for p in row.phrases)
            if row.phrase_required:
                present = present and phrase_found
        res = NameResult(
            name=row.name,
            line=row.line,
            present=present,
            expected=row.expected[column],
            tokens=tokens,
            phrase_found=phrase_found,
        )
        if present != res.expected:
            missing = [t for t, how in tokens.items() if not how]
            why = (
                f"token(s) {', '.join(missing)} not in the bindings"
                if missing
                else (
                    f"docstring phrase {row.phrases[0]!r} not found"
                    if row.phrase_required and not phrase_found
                    else "all tokens found"
                )
            )
            res.problems.append(
                f"table says {'present' if res.expected else 'absent'} (column {column}), "
                f"the bindings say {'present' if present else 'absent'}: {why}"
            )
        if present:
            dep, text, source = bindings.deprecation(row)
            res.deprecated, res.deprecation, res.deprecation_source = dep, text, source
            res.expected_deprecated = bool(row.deprecated_since and v[:2] >= row.deprecated_since)
            since = ".".join(map(str, row.deprecated_since)) if row.deprecated_since else None
            if dep is None and res.expected_deprecated:
                res.problems.append(
                    f"table says deprecated since {since}, but no docstring of this name could "
                    f"be found to confirm it ({source}); give a docstring phrase"
                )
            elif dep is True and not res.expected_deprecated:
                res.problems.append(
                    f"the bindings say [DEPRECATED] {text!r}, the table says "
                    + (f"deprecated only from {since}" if since else "not deprecated")
                )
            elif dep is False and res.expected_deprecated:
                res.problems.append(
                    f"table says deprecated since {since}, the docstring ({source}) does not"
                )
            elif dep is True and res.expected_deprecated:
                said = deprecation_version(text)
                if said and said != row.deprecated_since:
                    res.problems.append(
                        f"table says deprecated since {since}, the bindings say {text!r}"
                    )
        results.append(res)
    return results


# -- pycuda ---------------------------------------------------------------------------------
def pycuda_names(sdist: Path) -> set[str]:
    """Names pycuda.driver exports, read from the sdist's C++ wrapper and Python sources."""
    names: set[str] = set()
    with tarfile.open(sdist) as tf:
        for member in tf.getmembers():
            path = member.name.split("/", 1)[-1]
            if not member.isfile():
                continue
            if re.fullmatch(r"src/wrapper/[^/]+\.(cpp|hpp)", path):
                src = tf.extractfile(member).read().decode("utf-8", "replace")
                names |= {s for s in re.findall(r'"([A-Za-z_]\w*)"', src)}
                names |= set(
                    re.findall(r"\b(?:DEF_SIMPLE_\w+|DECLARE_EXC|ENUM_VALUE)\(\s*(\w+)", src)
                )
            elif re.fullmatch(r"pycuda/[^/]+\.py", path):
                names.add(Path(path).stem)  # the module itself (pycuda.driver)
                if path == "pycuda/driver.py":
                    src = tf.extractfile(member).read().decode("utf-8", "replace")
                    names |= python_defined_names(src)
    if not names:
        raise Unobtainable(f"{sdist.name}: no pycuda sources inside")
    return names


def check_pycuda_version(rows: list[Row], names: set[str], version: str) -> list[NameResult]:
    pc_rows = [r for r in rows if r.kind == "pycuda"]
    if not pc_rows:
        return []
    column = column_for(version, list(pc_rows[0].expected))
    results = []
    for row in pc_rows:
        tokens = {t: ("defined" if t in names else None) for t in name_tokens(row.name)}
        present = all(tokens.values())
        res = NameResult(row.name, row.line, present, row.expected[column], tokens, None)
        if present != res.expected:
            missing = [t for t, how in tokens.items() if not how]
            res.problems.append(
                f"table says {'present' if res.expected else 'absent'} (column {column}), "
                f"pycuda {version} says {'present' if present else 'absent'}"
                + (f": {', '.join(missing)} not defined" if missing else "")
            )
        results.append(res)
    return results


# -- getting the wheels and sdists ----------------------------------------------------------
def _find(directory: Path | None, patterns: list[str]) -> Path | None:
    if directory is None or not directory.is_dir():
        return None
    for pattern in patterns:
        found = sorted(directory.glob(pattern))
        if found:
            return found[0]
    return None


def _pip_download(requirement: str, dest: Path, extra: list[str], timeout: float) -> str:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    cmd += ["--timeout", "20", "--retries", "1", "-d", str(dest), *extra, requirement]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"pip download {requirement} took longer than {timeout:.0f} s"
    except OSError as exc:
        return f"could not run pip ({exc})"
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return f"pip download {requirement} failed: " + " / ".join(tail)
    return ""


def obtain(
    kind: str,
    version: str,
    *,
    wheels: Path | None = None,
    cache: Path = DEFAULT_CACHE,
    download: bool = True,
    timeout: float = 300,
) -> Path:
    """The bindings wheel (kind 'tensorrt') or pycuda sdist (kind 'pycuda') for `version`."""
    if kind == "tensorrt":
        patterns = [f"tensorrt_cu12_bindings-{version}-*.whl"]
        requirement = f"{BINDINGS_DIST}=={version}"
        # This interpreter's wheel first; else the Linux x86_64 CPython 3.11 one (no wheel
        # for e.g. Python 3.13 or macOS). The names inside are the same for every tag.
        attempts = [
            ["--only-binary=:all:"],
            ["--only-binary=:all:", "--python-version", "3.11"]
            + ["--platform", "manylinux_2_17_x86_64", "--platform", "manylinux_2_28_x86_64"],
        ]
    else:
        patterns = [f"pycuda-{version}.tar.gz"]
        requirement = f"pycuda=={version}"
        attempts = [["--no-binary=pycuda"]]
    found = _find(wheels, patterns) or _find(cache, patterns)
    if found:
        return found
    if not download:
        raise Unobtainable(
            f"{requirement}: not in {wheels or '(no --wheels)'} nor {cache}, and downloads are off"
        )
    errors = []
    for extra in attempts:
        errors.append(_pip_download(requirement, cache, extra, timeout))
        found = _find(cache, patterns)
        if found:
            return found
    raise Unobtainable(f"{requirement}: {errors[-1] or 'pip saved no matching file'}")


# -- completeness: what our code uses --------------------------------------------------------
@dataclass(frozen=True)
class Usage:
    name: str  # canonical, e.g. "IBuilderConfig.set_flag"; "?.name" when only the leaf is known
    where: str  # file:line
    code: str


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _resolve(node: ast.AST, receivers: dict[str, str]) -> str | None:
    """The API name an expression stands for ('IBuilderConfig', 'trt.Logger'), or None."""
    dotted = _dotted(node)
    if dotted is not None and dotted in receivers:
        return receivers[dotted]
    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, receivers)
        if base is None:
            return None
        return "?" if base == "?" else f"{base}.{node.attr}"
    if isinstance(node, ast.Call):
        func = _resolve(node.func, receivers)
        if func is None:
            return None
        return CALL_RESULTS.get(func, "?")  # "?" : some API object of unknown class
    return None


def _join(base: str, attr: str) -> str:
    return f"?.{attr}" if base == "?" else f"{base}.{attr}"


def scan_usage(repo: Path = REPO) -> list[Usage]:
    """Every TensorRT/pycuda name the scanned modules use (see the module docstring)."""
    usages: list[Usage] = []
    for rel in SCANNED_FILES:
        path = repo / rel
        source = path.read_text()
        tree = ast.parse(source, filename=rel)
        receivers = RECEIVERS[rel]

        def add(name: str, node: ast.AST, rel: str = rel, source: str = source) -> None:
            code = ast.get_source_segment(source, node) or ""
            usages.append(Usage(name, f"{rel}:{node.lineno}", " ".join(code.split())[:80]))

        skipped = {
            id(sub)
            for fn in ast.walk(tree)
            if isinstance(fn, ast.FunctionDef) and fn.name in EXCLUDED_FUNCTIONS.get(rel, ())
            for sub in ast.walk(fn)
        }
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Attribute):
                if _dotted(node) in receivers:
                    continue  # the receiver itself (self.engine), not a use of the API
                base = _resolve(node.value, receivers)
                if base is not None and node.attr != "__init__":
                    add(_join(base, node.attr), node)
            elif isinstance(node, ast.Call):
                func = _resolve(node.func, receivers)
                if func is not None:
                    for kw in node.keywords:
                        if kw.arg:
                            add(f"{func}({kw.arg}=)", node)
                if (
                    isinstance(node.func, ast.Name)
                    and node.func.id in ("getattr", "hasattr", "setattr")
                    and len(node.args) >= 2
                ):
                    base = _resolve(node.args[0], receivers)
                    attr = node.args[1]
                    if base is not None:
                        if isinstance(attr, ast.Constant) and isinstance(attr.value, str):
                            add(_join(base, attr.value), node)
                        else:
                            add(base, node)  # dynamic member: see DYNAMIC_ENUMS
            elif isinstance(node, ast.Import | ast.ImportFrom):
                # `import pycuda.driver as cuda`: the module is an API name of its own.
                modules = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [f"{node.module}.{a.name}" for a in node.names if node.module]
                )
                for module in modules:
                    if module.startswith("pycuda."):
                        add(module, node)
            elif isinstance(node, ast.ClassDef):
                for b in node.bases:
                    base = _resolve(b, receivers)
                    if base is None:
                        continue
                    owner = base.split(".")[-1]
                    for item in node.body:
                        if (
                            isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                            and item.name not in OWN_METHODS
                        ):
                            add(f"{owner}.{item.name}", item)

        for file, function, enums in DYNAMIC_ENUMS:
            if file != rel:
                continue
            funcs = [
                n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function
            ]
            if not funcs:
                raise ValueError(f"{rel}: function {function} not found (DYNAMIC_ENUMS)")
            for node in ast.walk(funcs[0]):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and re.fullmatch(r"[A-Z][A-Z0-9_]+", node.value)
                ):
                    add("|".join(f"{e}.{node.value}" for e in enums), node)
    return usages


def check_completeness(rows: list[Row], usages: list[Usage]) -> tuple[list[Usage], list[Row]]:
    """(uses missing from the table, table rows no use was found for)."""
    names = {r.name for r in rows}
    leaves = {name_tokens(r.name)[-1] for r in rows}

    def covered(u: Usage) -> set[str]:
        hits: set[str] = set()
        for alt in u.name.split("|"):
            if alt.startswith("?."):
                leaf = alt[2:]
                if leaf in leaves:
                    hits |= {n for n in names if name_tokens(n)[-1] == leaf}
            else:
                hits |= {n for n in names if n == alt or n.startswith(alt + ".")}
        return hits

    missing, used = [], set()
    for u in usages:
        hits = covered(u)
        if hits:
            used |= hits
        else:
            missing.append(u)
    unused = [r for r in rows if r.name not in used and not r.implicit]
    return missing, unused


# -- report ---------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> tuple[int, dict]:
    report: dict = {"table": str(args.table), "tensorrt": {}, "pycuda": {}, "problems": 0}
    rows = parse_table(Path(args.table).read_text())
    fetch = functools.partial(
        obtain,
        wheels=args.wheels,
        cache=args.cache_dir,
        download=not args.no_download,
        timeout=args.timeout,
    )
    try:
        for version in args.versions:
            wheel = fetch("tensorrt", version)
            results = check_trt_version(rows, Bindings.from_wheel(wheel), version)
            report["tensorrt"][version] = {
                "wheel": wheel.name,
                "results": [asdict(r) for r in results],
            }
        for version in args.pycuda:
            sdist = fetch("pycuda", version)
            results = check_pycuda_version(rows, pycuda_names(sdist), version)
            report["pycuda"][version] = {
                "sdist": sdist.name,
                "results": [asdict(r) for r in results],
            }
    except Unobtainable as exc:
        report["error"] = f"cannot obtain {exc}"
        return 2, report
    missing, unused = check_completeness(rows, scan_usage(REPO))
    report["completeness"] = {
        "missing": [asdict(u) for u in missing],
        "unused_rows": [r.name for r in unused],
    }
    problems = (
        len(missing)
        + len(unused)
        + sum(
            len(r["problems"])
            for group in ("tensorrt", "pycuda")
            for v in report[group].values()
            for r in v["results"]
        )
    )
    report["problems"] = problems
    return (1 if problems else 0), report


def format_report(report: dict, verbose: bool = False) -> str:
    out = [f"table: {report['table']}"]
    if "error" in report:
        out.append(f"ERROR: {report['error']}")
        return "\n".join(out)
    for version, v in report["tensorrt"].items():
        results = v["results"]
        bad = [r for r in results if r["problems"]]
        present = sum(r["present"] for r in results)
        out.append(
            f"\nTensorRT {version} ({v['wheel']}): {len(results)} names, {present} present, "
            f"{len(results) - present} absent, {len(bad)} mismatch(es)"
        )
        for r in bad:
            for p in r["problems"]:
                out.append(f"  MISMATCH {r['name']} (table line {r['line']}): {p}")
        dep = [r for r in results if r["deprecated"]]
        for r in dep:
            out.append(f"  deprecated: {r['name']}: {r['deprecation']}")
        unknown = [r["name"] for r in results if r["present"] and r["deprecated"] is None]
        if unknown:
            out.append(
                f"  deprecation not attributable from docstrings for {len(unknown)} name(s)"
                + (": " + ", ".join(unknown) if verbose else " (--verbose lists them)")
            )
        if verbose:
            for r in results:
                how = ", ".join(f"{t}={h or 'MISSING'}" for t, h in r["tokens"].items())
                if r["phrase_found"] is not None:
                    how += f", docstring phrase {'found' if r['phrase_found'] else 'MISSING'}"
                out.append(f"    {'yes' if r['present'] else 'no ':3} {r['name']}  [{how}]")
    for version, v in report["pycuda"].items():
        results = v["results"]
        bad = [r for r in results if r["problems"]]
        out.append(
            f"\npycuda {version} ({v['sdist']}): {len(results)} names, "
            f"{sum(r['present'] for r in results)} present, {len(bad)} mismatch(es)"
        )
        for r in bad:
            for p in r["problems"]:
                out.append(f"  MISMATCH {r['name']} (table line {r['line']}): {p}")
    comp = report.get("completeness", {})
    out.append(
        f"\ncompleteness ({', '.join(SCANNED_FILES)}): "
        f"{len(comp.get('missing', []))} use(s) missing from the table, "
        f"{len(comp.get('unused_rows', []))} stale row(s)"
    )
    for u in comp.get("missing", []):
        out.append(f"  MISSING {u['name']} at {u['where']}: {u['code']}")
    for name in comp.get("unused_rows", []):
        out.append(
            f"  STALE {name}: no scanned use matches this row (remove it, or mark its 'used in' "
            "cell '(implicit: ...)' if the scan cannot see the use)"
        )
    out.append(
        "\nOK: everything matches"
        if report["problems"] == 0
        else f"\n{report['problems']} problem(s)"
    )
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Check TensorRT/pycuda names used by edgescreen against the real bindings."
    )
    p.add_argument("--versions", nargs="+", default=list(DEFAULT_VERSIONS), metavar="V")
    p.add_argument(
        "--pycuda", nargs="*", default=list(DEFAULT_PYCUDA), metavar="V", help="none: skip pycuda"
    )
    p.add_argument("--wheels", type=Path, default=None, help="directory with wheels/sdists")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--no-download", action="store_true", help="never run pip download")
    p.add_argument("--timeout", type=float, default=300, help="seconds per pip download")
    p.add_argument("--table", type=Path, default=TABLE)
    p.add_argument("--json", action="store_true", help="the full report as JSON")
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status, report = run(args)
    except (ValueError, OSError, SyntaxError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report, verbose=args.verbose))
    return status


if __name__ == "__main__":
    sys.exit(main())
