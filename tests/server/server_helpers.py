"""Helpers for server tests: turnout on a real uvicorn (a thread, a free loopback port) and a scripted fleet config."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

uvicorn = pytest.importorskip("uvicorn")

from turnout.backends._net import free_port  # noqa: E402
from turnout.config import parse_config, resolve  # noqa: E402
from turnout.gateway import Gateway  # noqa: E402
from turnout.server.app import create_app  # noqa: E402


class Served:
    """turnout running in a thread: ``base_url`` for the openai client, ``gateway`` for inspection."""

    def __init__(self, gateway: Gateway, max_body_bytes: int = 1_048_576, start_children: bool = False) -> None:
        self.gateway = gateway
        # bind now and hand the socket to uvicorn: uvicorn binds only after the lifespan has started the
        # llama.cpp children, and their health checks' outgoing connections could take a port merely reserved
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        app = create_app(gateway, max_body_bytes=max_body_bytes, start_children=start_children)
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False, lifespan="on")
        )
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root + "/v1"

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 90  # llama.cpp children start inside the lifespan
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def fleet_config(
    upstreams: dict[str, str],
    *,
    routes: dict[str, Any] | None = None,
    request_log: str | None = None,
    backend_extra: dict[str, Any] | None = None,
    keys: list[dict[str, Any]] | None = None,
) -> Any:
    """A config with one openai backend per scripted upstream and one model per backend, each the next's fallback."""
    names = list(upstreams)
    data: dict[str, Any] = {
        "server": {"request_log": request_log, "metrics": True},
        "backends": {
            f"b-{m}": {
                "protocol": "openai",
                "base_url": url,
                "timeouts": {"connect": 1, "first_token": 0.5, "total": 3},
                "retries": {"attempts": 2, "backoff_s": 0.01, "max_backoff_s": 0.02},
                "cooldown": {"failures": 50, "seconds": 1},
                **(backend_extra or {}),
            }
            for m, url in upstreams.items()
        },
        "models": {
            m: {
                "backend": f"b-{m}",
                "upstream_model": "scripted",
                "price": {"input_per_mtok": 1, "output_per_mtok": 2},
                "context_window": 4096,
                "fallbacks": names[i + 1 :],
            }
            for i, m in enumerate(names)
        },
        "routes": routes
        if routes is not None
        else {
            "auto": {
                "router": {"type": "prior", "params": {"quality": {m: 0.9 - 0.1 * i for i, m in enumerate(names)}}},
                "candidates": names,
                "lambda": 0.0,
            }
        },
    }
    if keys is not None:
        data["keys"] = keys
    return resolve(parse_config(data, source="test.yaml"))


__all__ = ["Served", "fleet_config", "free_port"]
