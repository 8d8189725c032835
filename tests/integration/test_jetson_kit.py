"""The Jetson deployment kit (jetson/), checked off-device: shell scripts parse and pass
shellcheck, the systemd unit verifies, and bench-with-power.sh records nulls (not a crash)
where the Jetson tools are missing and parses them where they are (faked here).
Nothing here needs a Jetson, a GPU or TensorRT."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
JETSON = ROOT / "jetson"
SCRIPTS = sorted(JETSON.glob("*.sh"))
UNIT = JETSON / "edgescreen-batch.service"
BENCH = JETSON / "bench-with-power.sh"
NULL_FIELDS = (
    "nvpmodel",
    "jetson_clocks",
    "l4t",
    "module",
    "tensorrt",
    "tegrastats_log",
    "tegrastats_summary",
)


def test_scripts_found():
    assert BENCH in SCRIPTS and len(SCRIPTS) >= 3


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_n(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    r = subprocess.run(
        ["shellcheck", "-x", str(script)], capture_output=True, text=True, cwd=JETSON
    )
    assert r.returncode == 0, r.stdout + r.stderr


def _unit_for_verify(tmp_path: Path) -> Path:
    """The unit with what only a Jetson install provides replaced: ExecStart(Pre) -> /bin/true,
    User/Group -> root, EnvironmentFile optional."""
    text = UNIT.read_text()
    text = re.sub(r"^(ExecStart(?:Pre)?)=.*$", r"\1=/bin/true", text, flags=re.M)
    text = re.sub(r"^User=.*$", "User=root", text, flags=re.M)
    text = re.sub(r"^Group=.*$", "Group=root", text, flags=re.M)
    text = re.sub(r"^EnvironmentFile=(?!-)", "EnvironmentFile=-", text, flags=re.M)
    out = tmp_path / UNIT.name
    out.write_text(text)
    return out


def test_unit_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = _unit_for_verify(tmp_path)
    r = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    out = r.stdout + r.stderr
    # Only lines about our unit count: in a container systemd also complains about its own
    # environment (no running manager, unrelated units on the host).
    ours = [line for line in out.splitlines() if UNIT.name in line]
    # (systemd-analyze exits 0 on mere warnings such as an unknown key: hence the line check.)
    assert not ours and r.returncode == 0, out


def test_unit_parses():
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # keep the keys' case
    cp.read_string(UNIT.read_text())
    assert {"Unit", "Service", "Install"} <= set(cp.sections())
    svc = cp["Service"]
    assert svc["Restart"] == "on-failure"
    assert "edgescreen batch" in svc["ExecStart"] and "--watch" in svc["ExecStart"]
    assert svc["KillSignal"] == "SIGINT"
    assert cp["Install"]["WantedBy"] == "multi-user.target"


# ---------------------------------------------------------------- bench-with-power.sh

FAKE_EDGESCREEN = """#!/bin/sh
echo "fake edgescreen $*"
out=benchmarks/results
while [ $# -gt 0 ]; do
    case "$1" in --out) out="$2"; shift ;; --out=*) out="${1#--out=}" ;; esac
    shift
done
mkdir -p "$out" && echo '{}' > "$out/fakehost-2026.json"
exit "${FAKE_RC:-0}"
"""
FAKE_TEGRASTATS = """#!/bin/sh
log=/dev/stdout
while [ $# -gt 0 ]; do case "$1" in --logfile) log="$2"; shift ;; esac; shift; done
i=0
while :; do
    i=$((i + 1))
    echo "RAM 2000/7620MB GR3D_FREQ $((i * 10))% cpu@50C VDD_IN $((4000 + i * 100))mW/4000mW" >> "$log"
    sleep 0.1
done
"""
FAKE_NVPMODEL = "#!/bin/sh\nprintf 'NV Power Mode: 15W\\n0\\n'\n"
FAKE_CLOCKS = "#!/bin/sh\necho 'GPU MinFreq=624750000 MaxFreq=624750000 CurrentFreq=624750000'\n"


def _bin(tmp_path: Path, tools: dict[str, str]) -> Path:
    b = tmp_path / "bin"
    b.mkdir()
    for name, body in tools.items():
        p = b / name
        p.write_text(body)
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return b


def _run_bench(tmp_path: Path, tools: dict[str, str], args: list[str], **env):
    b = _bin(tmp_path, {"edgescreen": FAKE_EDGESCREEN, **tools})
    # Only the fake tools and the basics: a real Jetson tool on this machine must not leak in.
    path = os.pathsep.join([str(b), "/usr/bin", "/bin"])
    e = {"PATH": path, "HOME": str(tmp_path), "LANG": "C.UTF-8", **env}
    return subprocess.run(
        ["bash", str(BENCH), *args], cwd=tmp_path, env=e, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def need_python3():
    if shutil.which("python3", path="/usr/bin:/bin") is None:
        pytest.skip("no system python3 for the sidecar")


def test_bench_off_jetson_writes_nulls(tmp_path, need_python3):
    if Path("/etc/nv_tegra_release").exists():
        pytest.skip("this is a Jetson: the fields would not be null")
    r = _run_bench(tmp_path, {}, ["--out", "res", "--batches", "1"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fake edgescreen bench --out res --batches 1" in r.stdout
    power = json.loads((tmp_path / "res" / "power.json").read_text())
    for k in NULL_FIELDS:
        assert power[k] is None, (k, power[k])
    assert power["exit_status"] == 0
    assert power["results"] == ["res/fakehost-2026.json"]


def test_bench_default_out_and_failure_status(tmp_path, need_python3):
    r = _run_bench(tmp_path, {}, [], FAKE_RC="3")
    assert r.returncode == 3, r.stdout + r.stderr
    power = json.loads((tmp_path / "benchmarks" / "results" / "power.json").read_text())
    assert power["exit_status"] == 3


def test_bench_with_fake_jetson_tools(tmp_path, need_python3):
    tools = {
        "tegrastats": FAKE_TEGRASTATS,
        "nvpmodel": FAKE_NVPMODEL,
        "jetson_clocks": FAKE_CLOCKS,
        "edgescreen": FAKE_EDGESCREEN.replace("mkdir", "sleep 1; mkdir"),
    }
    r = _run_bench(tmp_path, tools, ["--out=res"])
    assert r.returncode == 0, r.stdout + r.stderr
    power = json.loads((tmp_path / "res" / "power.json").read_text())
    assert power["nvpmodel"] == "15W" and power["nvpmodel_id"] == 0
    assert power["jetson_clocks"] is True
    log = Path(tmp_path / power["tegrastats_log"])
    assert log.is_file() and log.parent == tmp_path / "res"
    summary = power["tegrastats_summary"]
    assert summary["vdd_in_mw"]["samples"] >= 2 and summary["vdd_in_mw"]["max"] >= 4100
    assert summary["gpu_percent"]["max"] >= 10
    # tegrastats was stopped: the log stops growing.
    size = log.stat().st_size
    subprocess.run(["sleep", "0.4"])
    assert log.stat().st_size == size
