"""`edgescreen triton` (write a model repository) and `edgescreen serve` (run it in Triton)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
from pathlib import Path

from ..backends import backend_names

EXIT_OK, EXIT_ERROR = 0, 2


def _repository_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32")
    p.add_argument("--backend", choices=("auto", *backend_names()), default="auto")
    p.add_argument(
        "--network",
        default=None,
        metavar="MODEL",
        help="run the network as this repository model (e.g. network-trt-fp16) through "
        "Triton's BLS instead of in the edgescreen model's own process (NVIDIA containers)",
    )
    p.add_argument(
        "--no-dynamic-batching",
        dest="dynamic_batching",
        action="store_false",
        help="one request per execution (for comparison)",
    )
    p.add_argument("--instances", type=int, default=1, help="model instances (default 1)")
    p.add_argument("--workers", type=int, default=2, help="decode/preprocess threads per instance")
    p.add_argument("--threads", type=int, default=None, help="inference threads per instance")
    p.add_argument(
        "--max-image-mb", type=float, default=64.0, help="refuse larger uploads (default 64)"
    )


def _write(args: argparse.Namespace, out: Path):
    from .repository import write_repository

    return write_repository(
        args.bundle,
        out,
        precision=args.precision,
        backend=args.backend,
        network_model=args.network,
        dynamic_batching=args.dynamic_batching,
        instances=args.instances,
        workers=args.workers,
        threads=args.threads,
        max_image_mb=args.max_image_mb,
    )


def cmd_triton(args: argparse.Namespace) -> int:
    repo = _write(args, args.out)
    if args.json:
        print(json.dumps(repo.to_dict(), indent=2))
    else:
        print(f"wrote Triton model repository {repo.path}")
        for name, what in repo.models.items():
            print(f"  {name:24s} {what}")
        print(
            "serve it here with `edgescreen serve` (Python backend), or in NVIDIA's container "
            "(onnxruntime and tensorrt backends too); see README, Scale out"
        )
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from ..card import CARD_FILE
    from .repository import SCREEN_MODEL
    from .server import TritonServer, find_install, make_env

    if args.make_env is not None:
        install = make_env(args.make_env)
        print(f"server environment ready: {install.env} (tritonserver {install.binary})")
        return EXIT_OK
    if args.bundle is None:
        raise SystemExit("edgescreen serve: give a BUNDLE or REPO (or --make-env DIR)")
    install = find_install(args.triton_env)
    with tempfile.TemporaryDirectory(prefix="edgescreen-repo-") as scratch:
        if (args.bundle / CARD_FILE).is_file():
            repo = _write(args, args.repo or Path(scratch) / "repository").path
        else:
            repo = args.bundle  # already a repository
        models = (SCREEN_MODEL,) + ((args.network,) if args.network else ())
        server = TritonServer(
            repo,
            models=models,
            install=install,
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            log_path=args.log,
        )
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        with server:
            where = {
                "http": server.http_url,
                "grpc": server.grpc_url,
                "model": SCREEN_MODEL,
                "repository": str(repo),
                "log": str(server.log_path),
            }
            if args.json:
                print(json.dumps(where), flush=True)
            else:
                print(
                    f"Triton serving {SCREEN_MODEL} from {repo}: HTTP {server.http_url}, "
                    f"gRPC {server.grpc_url} (log {server.log_path}); Ctrl-C stops",
                    flush=True,
                )
            while not stop.wait(1.0):
                if server.process is not None and server.process.poll() is not None:
                    print(f"tritonserver exited:\n{server.log_tail()}", file=sys.stderr)
                    return EXIT_ERROR
    return EXIT_OK


def add_triton_command(sub) -> None:
    p = sub.add_parser(
        "triton",
        help="write an NVIDIA Triton model repository from a bundle",
        description="Write a model repository Triton loads as is: the network for the "
        "onnxruntime (and, where engines were built, tensorrt) backends, and an `edgescreen` "
        "Python-backend model that takes encoded images and returns screening results.",
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE")
    p.add_argument("--out", required=True, type=Path, metavar="REPO")
    _repository_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_triton)


def add_serve_command(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a bundle (or a repository) with a Triton server on loopback",
        description="Start the tritonserver binary of nvidia-pytriton (from the "
        "environment made with `pip install -e '.[triton-server]'`) on BUNDLE, written as a "
        "repository first, or on a repository written by `edgescreen triton`.",
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE|REPO", nargs="?")
    p.add_argument(
        "--make-env",
        type=Path,
        default=None,
        metavar="DIR",
        help="create the server environment in DIR (e.g. .venv-triton) and exit",
    )
    p.add_argument("--repo", type=Path, default=None, help="write the repository here (kept)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; Triton's own default is every interface)",
    )
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus metrics (off)")
    p.add_argument("--triton-env", type=Path, default=None, help="environment with nvidia-pytriton")
    p.add_argument("--log", type=Path, default=None, help="server log file")
    _repository_options(p)
    p.add_argument("--json", action="store_true", help="print the endpoints as one JSON line")
    p.set_defaults(func=cmd_serve)
