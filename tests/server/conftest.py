"""Fixture ``serve``: start turnout on a real uvicorn; stopped at the end of the test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from turnout.gateway.builder import build_gateway

from server_helpers import Served


@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[Served] = []

    def _serve(cfg: Any, **kw: Any) -> Served:
        s = Served(build_gateway(cfg), **kw).__enter__()
        started.append(s)
        return s

    yield _serve
    for s in started:
        s.__exit__()


@pytest.fixture
def serve_started() -> Iterator[Any]:
    """Like ``serve`` but the lifespan starts the gateway's children (llama.cpp servers)."""
    started: list[Served] = []

    def _serve(cfg: Any, **kw: Any) -> Served:
        s = Served(build_gateway(cfg), start_children=True, **kw).__enter__()
        started.append(s)
        return s

    yield _serve
    for s in started:
        s.__exit__()
