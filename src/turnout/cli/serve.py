"""``turnout serve``: load and resolve the config, build the gateway, run uvicorn.

Config errors are raised (and printed by ``turnout.cli.main``, exit 2) before
any port is bound or child process started.
"""

from __future__ import annotations

import argparse
import importlib.util
import os

from turnout.errors import MissingDependency


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("serve", help="run the OpenAI-compatible routing server")
    p.add_argument("--config", help="turnout.yaml (default: the embedded two-model llama.cpp fleet)")
    p.add_argument("--host", help="override server.host")
    p.add_argument("--port", type=int, help="override server.port")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Set before numpy/onnxruntime/llama.cpp load: on a small shared box, multi-threaded BLAS
    # and spinning OpenMP workers stall single-row routing (70x slower measured) and the children.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from turnout.config import default_config, load_config

    cfg = load_config(args.config) if args.config else default_config()
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingDependency("uvicorn", "server", "turnout serve") from exc
    from turnout.gateway import Gateway
    from turnout.server.app import create_app

    gateway = Gateway.from_config(cfg)
    app = create_app(gateway, max_body_bytes=cfg.server.max_body_bytes)
    uvicorn.run(
        app,
        host=args.host or cfg.server.host,
        port=args.port if args.port is not None else cfg.server.port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        workers=1,
        access_log=False,
        log_level="info",
    )
    return 0
