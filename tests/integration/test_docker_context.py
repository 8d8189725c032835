"""jetson/Dockerfile, checked without a Docker engine: its COPY lines, applied to this repository
(filtered by jetson/Dockerfile.dockerignore, as BuildKit does), give a tree that `pip install .`
can build, and that wheel holds every module pyproject.toml maps into the package. The build
imports nothing that needs the NVIDIA runtime (libcuda), and the image's user can use the GPU
(group video, `docker run --group-add video`)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "jetson" / "Dockerfile"
IGNORE = DOCKERFILE.with_name(DOCKERFILE.name + ".dockerignore")


# ------------------------------------------------------------------ a small Dockerfile reader


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comment lines dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or (not line.strip() and not buf):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, f"unterminated continuation: {buf!r}"
    return out


def header_commands(text: str, program: str) -> list[str]:
    """The commands the leading comment block documents (`# <program> ...`, continuations joined)."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    out, buf = [], None
    for line in lines:
        if buf is not None:
            buf += " " + line.rstrip("\\").strip()
            if not line.endswith("\\"):
                out.append(buf)
                buf = None
        elif line.startswith(program + " "):
            if line.endswith("\\"):
                buf = line.rstrip("\\").strip()
            else:
                out.append(line)
    return out


def copy_args(args: str) -> tuple[list[str], str]:
    """COPY's sources and destination (shell or JSON form); a COPY --from is not from the context."""
    words = json.loads(args) if args.startswith("[") else shlex.split(args)
    flags = [w for w in words if w.startswith("--")]
    assert not any(f.startswith("--from") for f in flags), args
    paths = [w for w in words if not w.startswith("--")]
    assert len(paths) >= 2, args
    for src in paths[:-1]:
        assert not any(c in src for c in "*?["), f"wildcards are not emulated here: {src}"
    return paths[:-1], paths[-1]


# ------------------------------------------------------------ .dockerignore, as BuildKit reads it


def compile_patterns(lines: list[str]) -> list[tuple[bool, re.Pattern]]:
    """(exclude?, regex) per .dockerignore line: `**` spans directories, `*` and `?` do not."""
    out = []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        pat = str(PurePosixPath(line.lstrip("!").strip().lstrip("/")))
        rx, i = "", 0
        while i < len(pat):
            if pat.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif pat.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif pat[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif pat[i] == "?":
                rx, i = rx + "[^/]", i + 1
            else:
                rx, i = rx + re.escape(pat[i]), i + 1
        out.append((exclude, re.compile(rx)))
    return out


def ignore_patterns() -> list[tuple[bool, re.Pattern]]:
    """The Dockerfile's own ignore file (BuildKit prefers it), else the root's .dockerignore."""
    path = IGNORE if IGNORE.is_file() else ROOT / ".dockerignore"
    return compile_patterns(path.read_text().splitlines()) if path.is_file() else []


def ignored(rel: PurePosixPath, patterns) -> bool:
    """Docker's rule: the last matching pattern decides; a pattern matching a parent directory
    excludes everything in it."""
    result = False
    candidates = [rel, *rel.parents][:-1]  # the path and its parent dirs, without "."
    for exclude, rx in patterns:
        if any(rx.fullmatch(str(c)) for c in candidates):
            result = exclude
    return result


# ------------------------------------------------------------------ the image's /src, emulated


def materialize(image: Path) -> Path:
    """Apply every COPY before the `pip install .` RUN to `image` (a fake root) and return the
    directory that RUN builds: its WORKDIR."""
    patterns = ignore_patterns()
    workdir = PurePosixPath("/")
    for instr, args in instructions(DOCKERFILE.read_text()):
        if instr == "WORKDIR":
            workdir = workdir / args
        elif instr == "ADD":
            pytest.fail(f"ADD is not emulated: {args}")
        elif instr == "COPY":
            sources, dest = copy_args(args)
            target = image / (workdir / dest).relative_to("/")
            into_dir = dest.endswith("/") or len(sources) > 1
            for src in sources:
                rel = PurePosixPath(src.strip("/") or ".")
                path = ROOT / rel
                assert path.exists(), f"COPY {src}: not in the build context"
                assert rel == PurePosixPath(".") or not ignored(rel, patterns), (
                    f"COPY {src}: excluded by {IGNORE.name}"
                )
                if path.is_dir():
                    for f in sorted(path.rglob("*")):
                        frel = f.relative_to(ROOT)
                        if f.is_dir() or ignored(PurePosixPath(frel.as_posix()), patterns):
                            continue
                        out = target / f.relative_to(path)
                        out.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(f, out)
                else:
                    out = target / path.name if into_dir else target
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, out)
        elif instr == "RUN" and re.search(
            r"pip install\b[^&;]*\s[\"']?\.(\[[^\]]*\])?[\"']?(\s|$)", args
        ):
            return image / workdir.relative_to("/")
    pytest.fail("no RUN ... pip install . in the Dockerfile")


def test_context_builds_the_wheel(tmp_path):
    """`pip wheel` on exactly what the Dockerfile copies (as `pip install ".[runtime]"` builds it
    in the image): fails when a package directory pyproject.toml names is not copied."""
    context = materialize(tmp_path / "image")
    out = tmp_path / "wheels"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out)]
        + [str(context)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (wheel,) = out.glob("edgescreen-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    # Every module of every package pyproject.toml lists is in it, as from the full repository.
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = setup["package-dir"]
    for pkg in setup["packages"]:
        top = next(
            p for p in sorted(dirs, key=len, reverse=True) if pkg == p or pkg.startswith(p + ".")
        )
        src = (
            ROOT / dirs[top] / Path(*pkg[len(top) + 1 :].split("."))
            if pkg != top
            else ROOT / dirs[top]
        )
        modules = sorted(src.glob("*.py"))
        assert modules, pkg
        for m in modules:
            assert f"{pkg.replace('.', '/')}/{m.name}" in names, (pkg, m.name)
    for pkg, globs in setup.get("package-data", {}).items():
        base = ROOT / dirs[pkg]
        for g in globs:
            for f in base.glob(g):
                assert f"{pkg.replace('.', '/')}/{f.relative_to(base).as_posix()}" in names, f
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_context_holds_what_the_image_runs(tmp_path):
    """The kit's check-runtime.py, which a RUN calls, is copied too."""
    context = materialize(tmp_path / "image")
    runs = [a for i, a in instructions(DOCKERFILE.read_text()) if i == "RUN"]
    for script in ("jetson/check-runtime.py",):
        assert any(script in r for r in runs)
        assert (context / script).is_file(), script


def test_dockerignore_keeps_the_context_small():
    patterns = ignore_patterns()
    if not patterns:
        pytest.skip("no .dockerignore for jetson/Dockerfile")
    for rel in (".venv/bin/python", ".git/HEAD", "build/lib/x.py", "runtime/__pycache__/a.pyc"):
        assert ignored(PurePosixPath(rel), patterns), rel
    for rel in (
        "runtime/cli.py",
        "benchmarks/cli.py",
        "pyproject.toml",
        "README.md",
        "jetson/setup.sh",
    ):
        assert not ignored(PurePosixPath(rel), patterns), rel


def test_dockerignore_reader():
    """The emulation above, on the examples of Docker's .dockerignore documentation."""
    pats = compile_patterns(["# comment", "*/temp*", "*/*/temp*", "temp?", "**/*.go"])
    for rel in (
        "somedir/temporary.txt",
        "somedir/temp",
        "a/b/temp.txt",
        "tempa",
        "x/y/z.go",
        "z.go",
    ):
        assert ignored(PurePosixPath(rel), pats), rel
    for rel in ("temporary.txt", "a/b/c/temp", "temp", "x.gox"):
        assert not ignored(PurePosixPath(rel), pats), rel
    pats = compile_patterns(["*.md", "!README*.md", "README-secret.md"])
    assert ignored(PurePosixPath("CHANGES.md"), pats)
    assert not ignored(PurePosixPath("docs/CHANGES.md"), pats)  # `*` stays in the root
    assert not ignored(PurePosixPath("README.md"), pats)
    assert ignored(PurePosixPath("README-secret.md"), pats)
    assert ignored(PurePosixPath("build/lib/x.py"), compile_patterns(["build"]))  # a parent


# --------------------------------------------------------------- build needs no NVIDIA runtime

CUDA_IMPORT = re.compile(r"\bimport\s+[\w., ]*\b(tensorrt|pycuda)\b|pycuda\.(driver|autoinit)\b")


def test_build_imports_nothing_that_needs_libcuda():
    """`import tensorrt` / `pycuda.driver` during `docker build` needs the NVIDIA runtime as the
    daemon's default runtime (libcuda is mounted only at run time); the build only finds them."""
    text = DOCKERFILE.read_text()
    runs = [a for i, a in instructions(text) if i == "RUN"]
    offending = [r for r in runs if CUDA_IMPORT.search(r)]
    assert not offending, offending
    checks = [r for r in runs if "check-runtime.py" in r]
    assert checks and not any("--cuda" in r for r in checks), checks
    # The header says why, and how to check the real import at run time.
    assert "default-runtime" in text
    assert any("check-runtime.py --cuda" in c for c in header_commands(text, "docker run"))


def test_pycuda_built_against_jetpack_cuda_and_the_installed_numpy():
    runs = [a for i, a in instructions(DOCKERFILE.read_text()) if i == "RUN"]
    assert not any("python3-pycuda" in r for r in runs)
    runtime = next(i for i, r in enumerate(runs) if re.search(r"pip install\b.*\.\[runtime\]", r))
    pycuda = next(i for i, r in enumerate(runs) if "pip install" in r and "pycuda" in r)
    assert runtime < pycuda and "--no-build-isolation" in runs[pycuda]
    envs = " ".join(a for i, a in instructions(DOCKERFILE.read_text()) if i == "ENV")
    assert "CUDA_ROOT=/usr/local/cuda" in envs


# ----------------------------------------------------------------------------- GPU access


def test_image_user_is_in_group_video():
    ins = instructions(DOCKERFILE.read_text())
    users = [a for i, a in ins if i == "USER"]
    assert users and users[-1] == "edgescreen"
    runs = " && ".join(a for i, a in ins if i == "RUN")
    m = re.search(r"useradd\b[^&;]*", runs)
    assert m, "no useradd"
    useradd = shlex.split(m.group(0))
    groups = []
    for flag in ("-G", "--groups"):
        if flag in useradd:
            groups += useradd[useradd.index(flag) + 1].split(",")
    groups += re.findall(r"usermod\s+-a?G\s+(\S+)\s+edgescreen", runs)
    assert "video" in groups, useradd


def test_documented_docker_run_adds_group_video():
    cmds = header_commands(DOCKERFILE.read_text(), "docker run")
    assert len(cmds) >= 2, cmds
    for c in cmds:
        words = shlex.split(c)
        assert "--runtime" in words and words[words.index("--runtime") + 1] == "nvidia", c
        assert "--group-add" in words and words[words.index("--group-add") + 1] == "video", c


def test_image_state_dir():
    """Run-time state goes to EDGESCREEN_STATE_DIR (owned by the user), never into the bundle."""
    ins = instructions(DOCKERFILE.read_text())
    envs = " ".join(a for i, a in ins if i == "ENV")
    assert "EDGESCREEN_STATE_DIR=/var/lib/edgescreen" in envs
    runs = " ".join(a for i, a in ins if i == "RUN")
    assert re.search(r"install -d -o edgescreen\b.*/var/lib/edgescreen", runs)
