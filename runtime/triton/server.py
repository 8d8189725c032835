"""Start NVIDIA's `tritonserver` binary, from `nvidia-pytriton`, bound to loopback by default.

nvidia-pytriton ships a real Triton server (C++; HTTP, gRPC, the Python backend) that
starts on a machine without a GPU. It lives in an environment of its own (`.venv-triton`,
made with `pip install -e '.[triton-server]'`): the Python-backend stub in pytriton 0.7 is
built against NumPy 1 and returns wrong tensors under NumPy 2, which the main environment
has. The server runs that environment's Python for the `edgescreen` model, so the stub
sees NumPy 1, OpenCV and ONNX Runtime built for it, and this runtime.

Triton listens on every interface unless told; `TritonServer` passes 127.0.0.1 for HTTP,
gRPC and metrics unless the caller names another address.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import BackendUnavailable

ENV_VARIABLE = "EDGESCREEN_TRITON_ENV"
ENV_NAME = ".venv-triton"
INSTALL_HINT = (
    f"python3 -m venv {ENV_NAME} && {ENV_NAME}/bin/pip install -e '.[triton-server]' "
    f"(from the edgescreen checkout), or point {ENV_VARIABLE} / --triton-env at such an "
    "environment"
)
_PROBE = (
    "import json, pathlib, sys, pytriton; root = pathlib.Path(pytriton.__file__).parent; "
    "libs = root / 'tritonserver' / 'external_libs'; "
    "libs = libs if libs.is_dir() else root.parent / 'nvidia_pytriton.libs'; "
    "print(json.dumps({'root': str(root / 'tritonserver'), 'libs': str(libs), "
    "'python': '%d.%d' % sys.version_info[:2]}))"
)


@dataclass(frozen=True)
class ServerInstall:
    env: Path  # the virtual environment the Python backend runs in
    root: Path  # pytriton/tritonserver: bin/, backends/, python_backend_stubs/
    libs: Path  # the shared libraries the binary links against
    python: str  # "3.11": which stub the Python backend needs

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"


def candidate_envs(explicit: str | Path | None = None) -> list[Path]:
    found = [Path(explicit)] if explicit else []
    if os.environ.get(ENV_VARIABLE):
        found.append(Path(os.environ[ENV_VARIABLE]))
    found += [Path.cwd() / ENV_NAME, Path(sys.prefix).parent / ENV_NAME]
    return found


def find_install(env: str | Path | None = None) -> ServerInstall:
    """The first environment with nvidia-pytriton installed; raises with the install line."""
    tried = []
    for candidate in candidate_envs(env):
        python = candidate / "bin" / "python"
        tried.append(str(candidate))
        if not python.exists():
            continue
        probe = subprocess.run(
            [str(python), "-c", _PROBE], capture_output=True, text=True, timeout=60
        )
        if probe.returncode != 0:
            continue
        info = json.loads(probe.stdout.strip().splitlines()[-1])
        install = ServerInstall(
            candidate.absolute(), Path(info["root"]), Path(info["libs"]), info["python"]
        )
        if install.binary.exists():
            return install
    raise BackendUnavailable(
        f"no Triton server found (looked for nvidia-pytriton in {', '.join(tried)}); {INSTALL_HINT}"
    )


# Libraries whose version decides the numbers a screening gives: the server environment
# gets the very versions this environment has, so Triton answers like `edgescreen screen`.
MATCHED = ("opencv-python-headless", "onnxruntime")


def project_root() -> Path | None:
    """The checkout this package runs from (an editable install), if any."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def make_env(path: str | Path, *, quiet: bool = True) -> ServerInstall:
    """Create the server environment: nvidia-pytriton and NumPy 1, this runtime, and the same
    OpenCV and ONNX Runtime as here.

    OpenCV's wheels since 4.11 declare numpy>=2 but their extension modules are built to
    run on NumPy 1 too (NumPy 2's default build target), so the matching version is
    installed without its dependency declaration, after everything else.
    """
    from importlib.metadata import PackageNotFoundError, version

    path = Path(path).absolute()
    pip = [str(path / "bin" / "python"), "-m", "pip", "install", *(["-q"] if quiet else [])]
    subprocess.run(
        [getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(path)], check=True
    )
    root = project_root()
    source = f"{root}[triton-server]" if root else "edgescreen[triton-server]"
    subprocess.run([*pip, *(["-e"] if root else []), source], check=True)
    pins = []
    for dist in MATCHED:
        try:
            pins.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            continue
    if pins:
        subprocess.run([*pip, "--no-deps", *pins], check=True)
    return find_install(path)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class TritonServer:
    """One tritonserver process over a repository. A context manager: starts, waits, stops.

    Only `models` are loaded (explicit model control): the pytriton build has the Python
    backend alone, so the repository's onnxruntime/tensorrt network models, which are
    written for NVIDIA's containers, are left for those.
    """

    def __init__(
        self,
        repository: str | Path,
        *,
        models: tuple[str, ...] = ("edgescreen",),
        install: ServerInstall | None = None,
        host: str = "127.0.0.1",
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,  # None: no metrics endpoint
        log_path: str | Path | None = None,
    ) -> None:
        self.repository = Path(repository).absolute()
        self.models = models
        self.install = install or find_install()
        self.host = host
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self.metrics_port = metrics_port
        self._work = Path(tempfile.mkdtemp(prefix="edgescreen-triton-"))
        self._own_log = log_path is None  # a log in the scratch folder goes with it on stop
        self.log_path = Path(log_path) if log_path else self._work / "tritonserver.log"
        self.process: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def command(self, backends: Path) -> list[str]:
        cmd = [
            str(self.install.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in self.models),
            "--exit-on-error=true",
            "--strict-readiness=true",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
        ]
        if self.metrics_port is None:
            cmd.append("--allow-metrics=false")
        else:
            cmd += [f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}"]
        return cmd

    def _backends(self) -> Path:
        """Triton's backend folder with the stub for the environment's Python put in place."""
        backends = self._work / "backends"
        shutil.copytree(self.install.root / "backends", backends)
        stub = (
            self.install.root
            / "python_backend_stubs"
            / self.install.python
            / "triton_python_backend_stub"
        )
        if not stub.exists():
            raise BackendUnavailable(
                f"nvidia-pytriton has no Python-backend stub for Python {self.install.python}"
            )
        shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")
        return backends

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{self.install.env / 'bin'}:{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.install.env)
        env["LD_LIBRARY_PATH"] = ":".join(
            p for p in (str(self.install.libs), env.get("LD_LIBRARY_PATH")) if p
        )
        env["PYTHONNOUSERSITE"] = "1"
        env.pop("PYTHONPATH", None)  # the stub must import the server environment's packages
        return env

    def start(self, timeout: float = 120.0) -> TritonServer:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child writes it for its whole life
        self.process = subprocess.Popen(
            self.command(self._backends()),
            env=self._env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in a terminal reaches us first; we stop it
        )
        log.close()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def ready(self) -> bool:
        url = f"http://{self.http_url}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"tritonserver exited with {self.process.returncode} before it was ready:\n"
                    + self.log_tail()
                )
            if self.ready():
                return
            time.sleep(0.25)
        raise TimeoutError(f"tritonserver not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # Triton drains in-flight requests
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self._work if self._own_log else self._work / "backends", ignore_errors=True)

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
