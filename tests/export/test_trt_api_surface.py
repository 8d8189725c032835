"""tools/check_trt_api.py: the TensorRT/pycuda names we use exist in the real bindings.

(a) needs nothing: string extraction and token matching on a synthetic blob, the table
parser, and the completeness scan of our real TensorRT modules against docs/tensorrt-api.md.
(b) (slow) downloads the real bindings wheels (tensorrt-cu12-bindings, about 1 MB each) and
pycuda sdists from PyPI into the wheel cache, and skips with the reason when it cannot.
No TensorRT, pycuda or GPU is involved in either.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load_checker():
    path = REPO / "tools" / "check_trt_api.py"
    spec = importlib.util.spec_from_file_location("check_trt_api", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


chk = _load_checker()

# A fake pybind11 .so: identifier strings (one tail-merged), docstrings, binary noise.
BLOB = (
    b"\x7fELF\x02\x01\x01\x00\x00\x13\x37"
    b"UINT8\x00"  # "INT8" lives only as the tail of this one
    b"set_tensor_address\x00"
    b"IBuilderConfig\x00"
    b"BuilderFlag\x00"
    b"ab\x00"  # too short to count
    b"\x01\x02\x03\xff"
    b"Enable Int8 layer selection.\n   [DEPRECATED] Deprecated in TensorRT 10.12. Superseded.\x00"
    b"\n    Holds properties.\n\n    :ivar int8_calibrator: :class:`IInt8Calibrator` [DEPRECATED]"
    b" Deprecated in TensorRT 10.1. Superseded by explicit quantization.\n"
    b"    :ivar DLA_core: :class:`int` The DLA core.\n\x00"
    b"Mentions FP16 and platform_has_fast_int8 in prose only\x00"
    b"int8_calibrator\x00DLA_core\x00"
)
INIT_PY = (
    "__version__ = '10.99.0'\n\ndef nptype(trt_type):\n    return None\n\nLogger.Severity = 1\n"
)


def test_c_strings_needs_a_nul_and_a_minimum_length():
    strings = chk.c_strings(BLOB)
    assert "set_tensor_address" in strings and "IBuilderConfig" in strings
    assert "7UINT8" in strings  # the printable byte before it (0x37) sticks to the run
    assert "ab" not in strings
    assert not any("\x13" in s or "ELF" in s for s in strings)


def test_tokens_are_matched_as_identifiers_not_inside_docstrings():
    b = chk.Bindings(BLOB, INIT_PY)
    assert b.token("UINT8") == "exact"  # recovered from "7UINT8"
    assert b.token("INT8") == "tail of UINT8"  # the linker's tail merging
    assert b.token("set_tensor_address") == "exact"
    assert b.token("FP16") is None  # only in a docstring
    assert b.token("platform_has_fast_int8") is None  # only in a docstring
    assert b.token("nptype") == "__init__.py"
    assert b.token("__version__") == "__init__.py"
    assert b.token("Severity") == "__init__.py"
    assert b.token("Logger") is None  # `Logger.Severity = ...` defines Severity, not Logger
    assert b.token("set_flag") is None


def test_docstring_phrases_and_deprecations():
    b = chk.Bindings(BLOB, INIT_PY)
    assert b.docstrings_with("Enable   Int8\nlayer selection")  # whitespace-insensitive
    row = chk.Row("tensorrt", "IBuilderConfig.int8_calibrator", "", (), False, {}, (10, 1), 1)
    dep, text, source = b.deprecation(row)
    assert dep is True and source == ":ivar int8_calibrator:"
    assert chk.deprecation_version(text) == (10, 1)
    row = chk.Row("tensorrt", "IBuilderConfig.DLA_core", "", (), False, {}, None, 1)
    assert b.deprecation(row)[0] is False
    row = chk.Row("tensorrt", "IExecutionContext.set_tensor_address", "", (), False, {}, None, 1)
    assert b.deprecation(row)[0] is None  # nothing attributable: unknown, not "fine"


TABLE = """
<!-- check_trt_api: tensorrt -->
| name | used in | docstring | 10.3 | 11.4 | deprecated |
|---|---|---|---|---|---|
| `trt.BuilderFlag.INT8` | x.py:f | `Enable Int8 layer selection` (required) | yes | no (removed) | 10.12 |
| `IBuilderConfig.int8_calibrator` | x.py:f | | yes | no | 10.1 |
| `IExecutionContext.set_tensor_address` | x.py:g | | yes | yes | — |
| `IBuilderConfig.set_flag(flag=)` | x.py:g | | no | no | — |
"""


def test_parse_table_and_columns():
    rows = chk.parse_table(TABLE)
    assert [r.name for r in rows][:2] == ["trt.BuilderFlag.INT8", "IBuilderConfig.int8_calibrator"]
    assert rows[0].phrase_required and rows[0].phrases == ("Enable Int8 layer selection",)
    assert rows[0].expected == {"10.3": True, "11.4": False}
    assert rows[0].deprecated_since == (10, 12) and rows[2].deprecated_since is None
    assert chk.name_tokens("IBuilderConfig.set_flag(flag=)") == [
        "IBuilderConfig",
        "set_flag",
        "flag",
    ]
    assert chk.name_tokens("trt.BuilderFlag.INT8") == ["BuilderFlag", "INT8"]
    cols = ["10.3", "10.16", "11.4"]
    assert chk.column_for("10.16.1.11", cols) == "10.16"
    assert chk.column_for("10.8.0", cols) == "10.3"
    assert chk.column_for("11.4.0.106", cols) == "11.4"
    with pytest.raises(ValueError):
        chk.column_for("12.0.0", cols)
    with pytest.raises(ValueError):
        chk.parse_table(TABLE.replace("| yes | yes | — |", "| maybe | yes | — |"))


def test_check_version_on_the_synthetic_bindings():
    rows = chk.parse_table(TABLE)
    b = chk.Bindings(BLOB, INIT_PY)
    res = {r.name: r for r in chk.check_trt_version(rows, b, "10.16.0")}  # column 10.3
    # INT8 token present (tail of UINT8) and its docstring phrase found: present, deprecated 10.12.
    assert res["trt.BuilderFlag.INT8"].present and not res["trt.BuilderFlag.INT8"].problems
    assert res["trt.BuilderFlag.INT8"].deprecated is True
    assert res["IBuilderConfig.int8_calibrator"].problems == []
    # set_tensor_address has no IExecutionContext string in the blob: absent, table says yes.
    assert res["IExecutionContext.set_tensor_address"].problems
    assert not res["IBuilderConfig.set_flag(flag=)"].problems  # absent, as the table says
    # Without the INT8 docstring the required phrase is missing: absent, as 11.4 expects.
    blob11 = BLOB.replace(b"Enable Int8 layer selection", b"Enable nothing")
    res11 = {r.name: r for r in chk.check_trt_version(rows, chk.Bindings(blob11), "11.4.0")}
    assert not res11["trt.BuilderFlag.INT8"].present
    assert res11["trt.BuilderFlag.INT8"].problems == []
    # ...and a table claiming a deprecation the docstrings do not show is reported.
    res_old = {r.name: r for r in chk.check_trt_version(rows, b, "10.3.0")}
    assert any(
        "the bindings say [DEPRECATED]" in p for p in res_old["trt.BuilderFlag.INT8"].problems
    )


def test_real_table_parses():
    rows = chk.parse_table(chk.TABLE.read_text())
    trt = [r for r in rows if r.kind == "tensorrt"]
    pycuda = [r for r in rows if r.kind == "pycuda"]
    assert len(trt) > 50 and len(pycuda) > 15
    assert all(set(r.expected) == {"10.3", "10.16", "11.4"} for r in trt)
    by_name = {r.name: r for r in trt}
    for removed in (
        "Builder.platform_has_fast_int8",
        "trt.IInt8EntropyCalibrator2",
        "IBuilderConfig.int8_calibrator",
        "IBuilderConfig.set_calibration_profile",
        "trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH",
        "trt.BuilderFlag.FP16",
        "trt.BuilderFlag.INT8",
    ):
        assert by_name[removed].expected == {"10.3": True, "10.16": True, "11.4": False}, removed


def test_completeness_of_the_table_for_our_real_modules():
    rows = chk.parse_table(chk.TABLE.read_text())
    usages = chk.scan_usage(REPO)
    names = {u.name for u in usages}
    # The scan sees direct, chained, getattr/hasattr, keyword, subclass and string-built uses.
    for expected in (
        "IExecutionContext.execute_async_v3",
        "ITensor.name",  # network.get_input(0).name
        "Builder.platform_has_fast_int8",  # getattr(builder, "platform_has_fast_int8", None)
        "ParserError.node_name",  # hasattr(err, "node_name")
        "IBuilderConfig.set_timing_cache(ignore_mismatch=)",
        "IInt8EntropyCalibrator2.get_batch",
        "trt.NetworkDefinitionCreationFlag.INT8|trt.BuilderFlag.INT8",
        "cuda.memcpy_htod_async",
        "Device.retain_primary_context",  # cuda.Device(ordinal).retain_primary_context()
        "pycuda.driver",
        "trt.__version__",
    ):
        assert expected in names, expected
    assert not any(n.startswith("OnnxParser.add_") for n in names)  # argparse's parser skipped
    missing, unused = chk.check_completeness(rows, usages)
    assert missing == [], [f"{u.name} at {u.where}" for u in missing]
    assert unused == [], [r.name for r in unused]


def test_completeness_reports_a_use_missing_from_the_table():
    rows = [r for r in chk.parse_table(chk.TABLE.read_text()) if r.name != "ITensor.name"]
    missing, _ = chk.check_completeness(rows, chk.scan_usage(REPO))
    assert [u.name for u in missing] == ["ITensor.name"]
    assert missing[0].where.startswith("export/trt.py:")


def test_no_download_without_wheels_exits_2(tmp_path, capsys):
    status = chk.main(
        ["--versions", "10.3.0", "--cache-dir", str(tmp_path), "--no-download", "--pycuda"]
    )
    assert status == 2
    assert "cannot obtain tensorrt-cu12-bindings==10.3.0" in capsys.readouterr().out


# -- (b) the real bindings ----------------------------------------------------------------
CACHE = Path(os.environ.get("EDGESCREEN_TRT_CACHE", chk.DEFAULT_CACHE))


@pytest.fixture(scope="module")
def downloads() -> Path:
    """The default versions' wheels and sdists in the cache, downloaded when missing."""
    try:
        for v in chk.DEFAULT_VERSIONS:
            chk.obtain("tensorrt", v, cache=CACHE, timeout=120)
        for v in chk.DEFAULT_PYCUDA:
            chk.obtain("pycuda", v, cache=CACHE, timeout=180)
    except chk.Unobtainable as exc:
        pytest.skip(f"needs the TensorRT bindings wheels / pycuda sdists from PyPI: {exc}")
    return CACHE


@pytest.mark.slow
def test_names_against_the_real_bindings(downloads):
    rows = chk.parse_table(chk.TABLE.read_text())
    for version in chk.DEFAULT_VERSIONS:
        wheel = chk.obtain("tensorrt", version, cache=downloads, download=False)
        results = chk.check_trt_version(rows, chk.Bindings.from_wheel(wheel), version)
        problems = [f"{r.name}: {p}" for r in results for p in r.problems]
        assert problems == [], f"TensorRT {version}: {problems}"
        present = {r.name for r in results if r.present}
        deprecated = {r.name for r in results if r.deprecated}
        if version.startswith("11."):
            assert "trt.BuilderFlag.INT8" not in present  # though DataType.INT8 remains
            assert "Builder.platform_has_fast_int8" not in present
            assert "trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED" in deprecated
        else:
            assert {"trt.BuilderFlag.INT8", "trt.IInt8EntropyCalibrator2"} <= present
            assert "IBuilderConfig.int8_calibrator" in deprecated
    for version in chk.DEFAULT_PYCUDA:
        sdist = chk.obtain("pycuda", version, cache=downloads, download=False)
        results = chk.check_pycuda_version(rows, chk.pycuda_names(sdist), version)
        assert [r.name for r in results if r.problems] == [], f"pycuda {version}"


@pytest.mark.slow
def test_cli_against_the_real_bindings(downloads, capsys):
    status = chk.main(["--cache-dir", str(downloads), "--no-download"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "OK: everything matches" in out
