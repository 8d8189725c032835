"""The Jetson deployment kit (jetson/), checked off-device: shell scripts parse and pass
shellcheck, the systemd unit verifies as shipped and runs what it self-tested (TensorRT, the
same bundle and precision, state outside the read-only bundle), setup.sh builds pycuda in the
venv and adds 'render' only where it exists (run with fake system tools), check-runtime.py finds
without importing, and bench-with-power.sh records nulls (not a crash) where the Jetson tools
are missing and parses them where they are (faked here).
Nothing here needs a Jetson, a GPU or TensorRT."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
JETSON = ROOT / "jetson"
SCRIPTS = sorted(JETSON.glob("*.sh"))
UNIT = JETSON / "edgescreen-batch.service"
BENCH = JETSON / "bench-with-power.sh"
SETUP = JETSON / "setup.sh"
CHECK = JETSON / "check-runtime.py"
EXE = "/opt/edgescreen/venv/bin/edgescreen"  # the unit's ExecStart(Pre) program
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
    """The unit where the mount-namespace route is not open: only the program of ExecStart(Pre),
    which only a Jetson install provides, becomes /bin/true; its arguments, User=, Group=,
    SupplementaryGroups= and EnvironmentFile= stay as shipped."""
    out = tmp_path / "fallback" / UNIT.name
    out.parent.mkdir()
    out.write_text(UNIT.read_text().replace(EXE, "/bin/true"))
    return out


def _namespace_ok() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    r = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, timeout=30
    )
    return r.returncode == 0


def _verify(unit: Path, *, installed: bool):
    """`systemd-analyze verify unit`. With installed, in a private mount namespace made to look
    like a Jetson after setup.sh: /opt a tmpfs holding a stand-in for EXE, /etc/passwd and
    /etc/group copies with the 'edgescreen' user and group (and 'video' where missing) bound
    over the real ones. The unit is verified byte for byte as shipped, and nothing outside the
    namespace changes. Returns None where that namespace cannot be made."""
    verify = f"systemd-analyze verify {shlex.quote(str(unit))}"
    if not installed:
        return subprocess.run(["sh", "-c", verify], capture_output=True, text=True, timeout=60)
    etc = unit.parent.parent / "etc-sandbox"
    etc.mkdir(exist_ok=True)
    passwd = Path("/etc/passwd").read_text()
    group = Path("/etc/group").read_text()
    if not re.search(r"^video:", group, re.M):
        group += "video:x:44:edgescreen\n"
    (etc / "passwd").write_text(
        passwd + "edgescreen:x:990:990::/var/lib/edgescreen:/usr/sbin/nologin\n"
    )
    (etc / "group").write_text(group + "edgescreen:x:990:\n")
    exe = shlex.quote(EXE)
    setup = " && ".join(
        [
            "mount -t tmpfs tmpfs /opt",
            f"mkdir -p $(dirname {exe})",
            f"cp /bin/true {exe}",
            f"mount --bind {shlex.quote(str(etc / 'passwd'))} /etc/passwd",
            f"mount --bind {shlex.quote(str(etc / 'group'))} /etc/group",
            "getent passwd edgescreen >/dev/null",
        ]
    )
    cmd = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        f"{{ {setup}; }} || exit 99; {verify}",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return None if r.returncode == 99 else r


def _check_verify(r) -> None:
    out = r.stdout + r.stderr
    # Only lines about our unit count: in a container systemd also complains about its own
    # environment (no running manager, unrelated units on the host).
    ours = [line for line in out.splitlines() if UNIT.name in line]
    # (systemd-analyze exits 0 on mere warnings such as an unknown key: hence the line check.)
    assert not ours and r.returncode == 0, out


@pytest.mark.parametrize("render", [True, False], ids=["with-render", "no-render"])
def test_unit_systemd_analyze_verify(tmp_path, render):
    """The unit and the drop-in setup.sh adds, installed by setup.sh's own install_unit."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    systemd_dir = _install_unit(tmp_path, render=render)
    unit = systemd_dir / UNIT.name
    assert unit.read_bytes() == UNIT.read_bytes()
    r = _verify(unit, installed=True) if _namespace_ok() else None
    if r is None:  # no mount namespace here: everything but the program path as shipped
        fallback = _unit_for_verify(tmp_path)
        if render:
            shutil.copytree(systemd_dir / f"{UNIT.name}.d", fallback.parent / f"{UNIT.name}.d")
        r = _verify(fallback, installed=False)
    _check_verify(r)


def _unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # keep the keys' case
    cp.read_string(UNIT.read_text())
    return cp


def test_unit_parses():
    cp = _unit()
    assert {"Unit", "Service", "Install"} <= set(cp.sections())
    svc = cp["Service"]
    assert svc["Restart"] == "on-failure"
    assert "edgescreen batch" in svc["ExecStart"] and "--watch" in svc["ExecStart"]
    assert svc["KillSignal"] == "SIGINT"
    assert cp["Install"]["WantedBy"] == "multi-user.target"


def test_unit_user_groups_and_sandbox():
    """What `systemd-analyze verify` cannot see: a missing group fails the unit only at start
    (216/GROUP), so the unit names only 'video' ('render' is setup.sh's drop-in)."""
    svc = _unit()["Service"]
    assert svc["User"] == "edgescreen" and svc["Group"] == "edgescreen"
    assert svc["SupplementaryGroups"].split() == ["video"]
    assert svc["ProtectSystem"] == "strict"
    assert svc["NoNewPrivileges"] == "yes" and svc["ProtectHome"] == "yes"
    assert "PrivateDevices" not in svc  # the GPU is a device
    assert "--backend tensorrt" in svc["ExecStartPre"]
    assert svc["ExecStart"].rstrip().endswith("--backend tensorrt")


def _writable(svc) -> list[Path]:
    paths = [Path(p.lstrip("-")) for p in svc.get("ReadWritePaths", "").split()]
    paths += [Path("/var/lib") / d for d in svc.get("StateDirectory", "").split()]
    return paths


def _under(path: Path, roots: list[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def test_unit_state_dir_is_writable_and_bundle_is_not(tmp_path):
    """The self-test marker goes to EDGESCREEN_STATE_DIR (else $STATE_DIRECTORY): both must be
    the writable /var/lib/edgescreen, and the bundle must stay read-only to the service."""
    svc = _unit()["Service"]
    env = dict(kv.split("=", 1) for kv in shlex.split(svc["Environment"]))
    state = Path(env["EDGESCREEN_STATE_DIR"])
    assert state == Path("/var/lib/edgescreen")
    assert svc["StateDirectory"].split() == ["edgescreen"]  # $STATE_DIRECTORY = the same path
    assert _under(state, _writable(svc))
    batch_env = _env_file(_write_batch_env(tmp_path).read_text())
    assert not _under(Path(batch_env["EDGESCREEN_BUNDLE"]), _writable(svc))
    assert _under(Path(batch_env["EDGESCREEN_BUNDLE"]), [Path(svc["ReadOnlyPaths"])])


def test_unit_environment_sends_the_runtime_state_to_the_state_dir(tmp_path, monkeypatch):
    """edgescreen's own state_dir(), in the environment the unit gives it."""
    golden = pytest.importorskip("edgescreen.runtime.golden")
    if not hasattr(golden, "state_dir"):
        pytest.skip("this edgescreen has no state_dir()")
    svc = _unit()["Service"]
    env = dict(kv.split("=", 1) for kv in shlex.split(svc["Environment"]))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/" + svc["StateDirectory"])
    monkeypatch.setenv("HOME", "/var/lib/edgescreen")  # the user's home (useradd --home)
    state = golden.state_dir()
    assert _under(state, _writable(svc)), state
    bundle = Path(_env_file(_write_batch_env(tmp_path).read_text())["EDGESCREEN_BUNDLE"])
    assert not _under(state, [bundle]), state


# ------------------------------------------------- setup.sh, run with fake system tools


def _tools(d: Path, tools: dict[str, str]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, body in tools.items():
        p = d / name
        p.write_text(body)
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return d


def _getent(render: bool) -> str:
    known = "video render" if render else "video"
    return (
        "#!/bin/sh\n"
        f'for g in {known}; do [ "$1 $2" = "group $g" ] && {{ echo "$g:x:44:"; exit 0; }}; done\n'
        "exit 2\n"
    )


def _source_setup(
    tmp_path: Path, body: str, tools: dict[str, str], **env
) -> subprocess.CompletedProcess:
    """Source setup.sh (which then only defines), point its paths into tmp_path, run `body`."""
    b = _tools(tmp_path / "fakebin", tools)
    script = (
        f"source {shlex.quote(str(SETUP))}\n"
        f"PREFIX={tmp_path}/opt STATE={tmp_path}/state UPLOADS={tmp_path}/uploads\n"
        f"CONF_DIR={tmp_path}/etc SYSTEMD_DIR={tmp_path}/systemd BIN_LINK={tmp_path}/bin-link\n"
        f"{body}\n"
    )
    e = {"PATH": f"{b}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8", **env}
    return subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=60, env=e, cwd=tmp_path
    )


def _install_unit(tmp_path: Path, *, render: bool) -> Path:
    r = _source_setup(tmp_path, "install_unit", {"getent": _getent(render)})
    assert r.returncode == 0, r.stdout + r.stderr
    return tmp_path / "systemd"


def _write_batch_env(tmp_path: Path) -> Path:
    """The batch.env setup.sh writes, with its real paths (only CONF_DIR points elsewhere)."""
    script = f"source {shlex.quote(str(SETUP))}\nCONF_DIR={tmp_path}/etc\nwrite_batch_env\n"
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return tmp_path / "etc" / "batch.env"


@pytest.mark.parametrize("render", [True, False], ids=["with-render", "no-render"])
def test_setup_render_dropin_only_where_the_group_exists(tmp_path, render):
    systemd = _install_unit(tmp_path, render=render)
    assert (systemd / UNIT.name).read_bytes() == UNIT.read_bytes()
    dropin = systemd / f"{UNIT.name}.d" / "render.conf"
    if render:
        cp = configparser.ConfigParser(interpolation=None)
        cp.optionxform = str
        cp.read_string(dropin.read_text())
        assert cp["Service"]["SupplementaryGroups"] == "render"
    else:
        assert not dropin.exists()


def test_setup_render_dropin_removed_when_the_group_is_gone(tmp_path):
    _install_unit(tmp_path, render=True)
    dropin = tmp_path / "systemd" / f"{UNIT.name}.d" / "render.conf"
    assert dropin.exists()
    (tmp_path / "fakebin" / "getent").write_text(_getent(False))
    r = _source_setup(tmp_path, "install_unit", {})
    assert r.returncode == 0, r.stdout + r.stderr
    assert not dropin.exists()


LOGGER = '#!/bin/sh\necho "$(basename "$0") $*" >> "$SETUP_LOG"\n'
FAKE_VENV_PYTHON = (
    '#!/bin/sh\necho "venv-python $* [CUDA_ROOT=${CUDA_ROOT:-} PATH=$PATH]" >> "$SETUP_LOG"\n'
)
# python3 -m venv [--system-site-packages] DIR: a venv whose python only logs.
FAKE_PYTHON3 = (
    LOGGER
    + 'for d; do :; done\nmkdir -p "$d/bin"\n'
    + "cat > \"$d/bin/python\" <<'EOF'\n"
    + FAKE_VENV_PYTHON
    + "EOF\n"
    + 'chmod +x "$d/bin/python"\n'
)
# install without -o/-g (no such user here): directories and files as asked.
FAKE_INSTALL = (
    "#!/bin/bash\n"
    'echo "install $*" >> "$SETUP_LOG"\n'
    "args=()\n"
    'while [ $# -gt 0 ]; do case "$1" in -o|-g) shift ;; *) args+=("$1") ;; esac; shift; done\n'
    'exec /usr/bin/install "${args[@]}"\n'
)


def _run_setup_main(tmp_path: Path, *, render: bool) -> list[str]:
    tools = {
        name: LOGGER + ("exit 1\n" if name in ("id", "dpkg-query") else "")
        for name in ("apt-get", "dpkg-query", "id", "useradd", "usermod", "ln", "systemctl")
    }
    tools |= {"python3": FAKE_PYTHON3, "install": FAKE_INSTALL, "getent": _getent(render)}
    log = tmp_path / "setup.log"
    r = _source_setup(tmp_path, "preflight() { :; }\nmain", tools, SETUP_LOG=str(log))
    assert r.returncode == 0, r.stdout + r.stderr
    return log.read_text().splitlines()


@pytest.mark.parametrize("render", [True, False], ids=["with-render", "no-render"])
def test_setup_builds_pycuda_in_the_venv(tmp_path, render):
    """Never apt's python3-pycuda (built for the system numpy); pycuda built in the venv against
    JetPack's CUDA and the venv's numpy, after edgescreen (which brings that numpy)."""
    log = _run_setup_main(tmp_path, render=render)
    apt = [line for line in log if line.startswith("apt-get install")]
    assert apt and not any("pycuda" in line for line in apt), log
    assert any("python3-dev" in line and "build-essential" in line for line in apt), log
    assert any("python3-libnvinfer" in line for line in apt), log
    pip = [line for line in log if line.startswith("venv-python -m pip install")]
    runtime = next(i for i, line in enumerate(pip) if f"{ROOT}[runtime]" in line)
    (pycuda,) = [i for i, line in enumerate(pip) if "pycuda>=" in line]
    assert runtime < pycuda, pip
    line = pip[pycuda]
    for flag in ("--no-build-isolation", "--ignore-installed", "--no-binary pycuda"):
        assert flag in line, line
    assert "CUDA_ROOT=/usr/local/cuda " in line and "PATH=/usr/local/cuda/bin:" in line, line
    check = [line for line in log if "check-runtime.py" in line]
    assert check and "--cuda" in check[0] and "--venv-pycuda" in check[0], log
    assert log.index(check[0]) > log.index(next(x for x in log if "pycuda>=" in x))
    assert "usermod -aG video edgescreen" in log
    assert ("usermod -aG render edgescreen" in log) is render
    assert (tmp_path / "systemd" / f"{UNIT.name}.d" / "render.conf").exists() is render
    assert (tmp_path / "etc" / "batch.env").is_file()
    assert log[-1] == "systemctl daemon-reload"


def test_setup_never_mentions_apt_pycuda_install():
    text = SETUP.read_text()
    assert not re.search(r"apt(-get)?\s+install[^\n]*python3-pycuda", text)


# -------------------------------------- the unit's command lines, expanded as systemd does


def _env_file(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")):
            k, v = line.split("=", 1)
            env[k.strip()] = v.strip()
    return env


def _expand(cmdline: str, env: dict[str, str]) -> list[str]:
    """systemd's Exec= expansion: `${VAR}` is one word, a word that is `$VAR` splits on blanks."""
    assert '"' not in cmdline and "'" not in cmdline  # (no quoting to emulate)
    argv = []
    for word in cmdline.split():
        m = re.fullmatch(r"\$(\w+)", word)
        if m:
            argv += env.get(m.group(1), "").split()
        else:
            argv.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), word))
    return argv


LEGACY_BATCH_ENV = """EDGESCREEN_UPLOADS=/srv/uploads
EDGESCREEN_BUNDLE=/opt/edgescreen/bundles/dr
EDGESCREEN_PRECISION=fp16
EDGESCREEN_BATCH_ARGS=--bundle /opt/edgescreen/bundles/dr --precision int8 --backend auto --db /var/lib/edgescreen/ledger.sqlite
"""


@pytest.mark.parametrize("which", ["written-by-setup", "legacy"])
def test_unit_screens_what_it_self_tested(tmp_path, which):
    """ExecStartPre self-tests the TensorRT engine and ExecStart screens with that very bundle,
    precision and backend, through edgescreen's own argument parser; with a batch.env of an older
    setup.sh too (setup.sh keeps an existing one)."""
    from edgescreen.runtime.cli import build_parser

    svc = _unit()["Service"]
    text = _write_batch_env(tmp_path).read_text() if which != "legacy" else LEGACY_BATCH_ENV
    env = dict(kv.split("=", 1) for kv in shlex.split(svc["Environment"]))
    env |= _env_file(text)  # EnvironmentFile= overrides Environment=
    runs = {}
    for key in ("ExecStartPre", "ExecStart"):
        argv = _expand(svc[key], env)
        assert argv[0] == EXE, argv
        args, unknown = build_parser().parse_known_args(argv[1:])
        assert not unknown, (key, unknown)
        runs[args.command] = args
    pre, batch = runs["selftest"], runs["batch"]
    assert pre.backend == batch.backend == "tensorrt"
    assert pre.bundle == batch.bundle == Path(env["EDGESCREEN_BUNDLE"])
    assert pre.precision == batch.precision == env["EDGESCREEN_PRECISION"]
    assert batch.watch and batch.in_dir == Path(env["EDGESCREEN_UPLOADS"])
    assert _under(batch.db, _writable(svc)) and _under(batch.in_dir, _writable(svc))


# ------------------------------------------------------------------- check-runtime.py

FAKE_NO_DRIVER = 'raise ImportError("libcuda.so.1: cannot open shared object file")\n'


def _fake_modules(d: Path, *, driver: bool = True, cuda_works: bool = False) -> Path:
    """tensorrt and pycuda as they are in an image built without the NVIDIA runtime: present
    on disk, but importing them fails for want of libcuda (or works, with cuda_works)."""
    (d / "tensorrt").mkdir(parents=True)
    (d / "pycuda").mkdir()
    (d / "pycuda" / "__init__.py").write_text("VERSION = (2025, 1, 2)\n")
    if cuda_works:
        (d / "tensorrt" / "__init__.py").write_text('__version__ = "10.3.0"\n')
        (d / "pycuda" / "driver.py").write_text(
            "def init():\n    pass\n\n\nclass Device:\n    def __init__(self, i):\n        pass\n\n"
            "    def name(self):\n        return 'Orin (fake)'\n"
        )
    else:
        (d / "tensorrt" / "__init__.py").write_text(FAKE_NO_DRIVER)
        (d / "pycuda" / "driver.py").write_text("from pycuda._driver import *  # noqa\n")
    if driver:
        (d / "pycuda" / "_driver.py").write_text(FAKE_NO_DRIVER)
    return d


def _check_runtime(fakes: Path, *args: str, python: str = sys.executable):
    env = {**os.environ, "PYTHONPATH": str(fakes)}
    return subprocess.run(
        [python, str(CHECK), *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_check_runtime_finds_without_importing(tmp_path):
    """What `docker build` runs: tensorrt and pycuda are found, never imported (no libcuda)."""
    r = _check_runtime(_fake_modules(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "tensorrt: " + str(tmp_path / "tensorrt" / "__init__.py") in r.stdout


def test_check_runtime_reports_a_missing_extension(tmp_path):
    r = _check_runtime(_fake_modules(tmp_path, driver=False))
    assert r.returncode == 1
    assert "pycuda._driver is not installed" in r.stderr


def test_check_runtime_cuda_imports_for_real(tmp_path):
    r = _check_runtime(_fake_modules(tmp_path / "a"), "--cuda")
    assert r.returncode == 1 and "libcuda.so.1" in r.stderr, r.stdout + r.stderr
    r = _check_runtime(_fake_modules(tmp_path / "b", cuda_works=True), "--cuda")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "TensorRT 10.3.0" in r.stdout and "Orin (fake)" in r.stdout


def test_check_runtime_refuses_a_pycuda_outside_the_venv(tmp_path):
    if sys.prefix == sys.base_prefix:
        pytest.skip("the tests do not run in a venv")
    r = _check_runtime(_fake_modules(tmp_path / "outside"), "--venv-pycuda")
    assert r.returncode == 1 and "not from the venv" in r.stderr, r.stdout + r.stderr
    # The same pycuda inside a venv's own site-packages passes that check.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    fakes = _fake_modules(tmp_path / "inside")
    shutil.move(fakes / "pycuda", Path(site) / "pycuda")
    r = _check_runtime(fakes, "--venv-pycuda", python=str(python))
    assert "not from the venv" not in r.stderr, r.stdout + r.stderr


def test_check_runtime_is_python_3_10():
    """JetPack 6's python is 3.10; the tests run on a newer one."""
    import ast

    ast.parse(CHECK.read_text(), feature_version=(3, 10))
    assert os.access(CHECK, os.X_OK)


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
