"""``turnout serve``: load and resolve the config, build the gateway, say what it serves, run uvicorn.

Config errors are raised (and printed by ``turnout.cli.main``, exit 2) before any port is bound or child
process started. At start-up it prints what is served — the URL, each route with its router and candidates,
each model with its endpoint(s) and price, the keys, the request log, a ready-to-paste ``curl`` and Python
example — then each child's start-up progress; and, unless ``--quiet``, one line per request (id, route →
model or plan, status, latency, tokens, cost, what answered when no model did).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from typing import Any

from turnout.errors import MissingDependency


def _reload_on_sighup(gateway: Any) -> None:
    """SIGHUP re-reads the decisions file (validated before it replaces the rules; a bad one is logged and ignored)."""
    import signal

    reloadable = [st for st in gateway.stages.all if callable(getattr(st, "reload_soon", None))]
    if reloadable and hasattr(signal, "SIGHUP"):  # uvicorn handles SIGINT and SIGTERM only
        signal.signal(signal.SIGHUP, lambda _sig, _frame: [st.reload_soon() for st in reloadable])


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("serve", help="run the OpenAI-compatible routing server")
    p.add_argument("--config", help="turnout.yaml (default: the embedded two-model llama.cpp fleet)")
    p.add_argument("--host", help="override server.host")
    p.add_argument("--port", type=int, help="override server.port")
    p.add_argument("--quiet", action="store_true", help="no line per request (start-up and errors only)")
    p.set_defaults(func=run)


def _price(p: dict[str, float]) -> str:
    return f"${p['input_per_mtok']:g}/${p['output_per_mtok']:g} per M tokens in/out"


def summary_lines(info: dict[str, Any], url: str, source: str) -> list[str]:
    """What ``turnout serve`` prints before it starts (``info`` is :meth:`Gateway.describe`)."""
    lines = [f"turnout serving {url}/v1  (config: {source})", "routes:"]
    for name, r in info["routes"].items():
        extra = f", embedder {r['embedder']}" if r["embedder"] else ""
        extra += ", budget" if r["budget"] else ""
        lines.append(f"  {name}: router {r['router']}{extra} over {', '.join(r['candidates'])}")
    if not info["routes"]:
        lines.append("  (none: ask for a model by name)")
    lines.append("models:")
    for name, m in info["models"].items():
        eps = m["endpoints"]
        where = ", ".join(e["base_url"] or e["backend"] for e in eps)
        lines.append(
            f"  {name}: {len(eps)} endpoint(s) [{where}]"
            + (f" balanced by {m['balancer']}" if len(eps) > 1 else "")
            + f", {_price(m['price'])}"
        )
    if info["stages"]:
        lines.append(f"stages: {', '.join(info['stages'])}")
    keys = info["keys"]
    lines.append(f"keys: {keys} configured" if keys else "keys: none (an open server: any key or none is accepted)")
    lines.append(f"request log: {info['request_log'] or 'off'}")
    first = next(iter(info["routes"]), None) or next(iter(info["models"]), "auto")
    lines += [
        "try it:",
        f"  curl -s {url}/v1/chat/completions -H 'content-type: application/json' "
        f'-d \'{{"model": "{first}", "messages": [{{"role": "user", "content": "Name a colour."}}]}}\'',
        f"  python -c \"from openai import OpenAI; c = OpenAI(base_url='{url}/v1', api_key='unused'); "
        f"print(c.chat.completions.create(model='{first}', messages=[{{'role': 'user', 'content': 'hi'}}])"
        '.choices[0].message.content)"',
        f'  why a model was chosen: curl -s {url}/v1/route -d \'{{"model": "{first}", "messages": '
        '[{"role": "user", "content": "Prove that sqrt(2) is irrational"}]}\'',
    ]
    return lines


def _logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    for name in ("turnout.requests", "turnout.serve"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.propagate = False
        lg.setLevel(logging.WARNING if quiet and name == "turnout.requests" else logging.INFO)


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
    from turnout.gateway.builder import build_gateway
    from turnout.server.app import create_app

    gateway = build_gateway(cfg)
    host = args.host or cfg.server.host
    port = args.port if args.port is not None else cfg.server.port
    _logging(bool(args.quiet))
    say = logging.getLogger("turnout.serve").info
    url = f"http://{host}:{port}"
    for line in summary_lines(gateway.describe(), url, cfg.source):
        print(line, file=sys.stderr)
    app = create_app(gateway, max_body_bytes=cfg.server.max_body_bytes, progress=say)
    httptools = importlib.util.find_spec("httptools") is not None
    if httptools:
        from turnout.server.protocols import header_timeout_protocol

        http: Any = header_timeout_protocol(cfg.server.header_timeout_s)
    else:
        http = "h11"  # no header-read timeout: put nginx in front (docs/deploy.md)
    _reload_on_sighup(gateway)
    uvicorn.run(
        app,
        host=host,
        port=port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http=http,
        workers=1,
        access_log=False,
        log_level="warning" if args.quiet else "info",
    )
    return 0
