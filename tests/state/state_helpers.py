"""Shared by the state tests: each shared structure runs the same cases in memory and in a real Redis."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from turnout.state import RedisCounters


@contextlib.asynccontextmanager
async def redis_clients(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[], RedisCounters]]:
    """A factory of Redis clients as separate replicas hold them: one real server, one fresh prefix per test.

    Every client made is closed when the block ends. Needs the ``redis_url`` fixture (skips without a
    redis-server)::

        async with redis_clients(request) as client:
            a, b = RedisMarks(client()), RedisMarks(client())
    """
    url = request.getfixturevalue("redis_url")
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    made: list[RedisCounters] = []

    def client() -> RedisCounters:
        made.append(RedisCounters(url, prefix=prefix))
        return made[-1]

    try:
        yield client
    finally:
        for c in made:
            await c.aclose()
