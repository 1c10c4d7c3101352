"""Network helpers below the HTTP client: a free loopback port, and connecting with Happy Eyeballs.

:func:`free_port` is the one helper tests, benches and the llama.cpp fleet use
to pick a port; any room that may import the backends may use it.

:func:`open_connection` connects like :func:`asyncio.open_connection` but
races the host's addresses (RFC 8305 "Happy Eyeballs"): the next address is
tried after :data:`HAPPY_EYEBALLS_DELAY` without waiting for the previous
attempt to fail, address families alternate, and the first connection up wins.
A host whose IPv6 address black-holes SYNs therefore falls back to IPv4 in a
quarter of a second instead of after the OS's connect timeout (minutes).
asyncio's own ``happy_eyeballs_delay`` does the same on the stock loop, but
uvloop (the loop ``turnout serve`` runs on when installed) does not accept
that argument, so the race is written here once, for every loop.

Example::

    reader, writer = await open_connection("api.example.com", 443, ssl=ctx, limit=1 << 20)
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import ssl as _ssl
from typing import Any

#: seconds before the next address is tried while earlier attempts are still pending (RFC 8305 recommends 250 ms)
HAPPY_EYEBALLS_DELAY = 0.25

_Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago (whoever needs it binds it right after)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _interleave(infos: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Addresses with families alternating, the resolver's first family first (RFC 8305 section 4)."""
    by_family: dict[int, list[tuple[Any, ...]]] = {}
    for info in infos:
        by_family.setdefault(info[0], []).append(info)
    rounds = itertools.zip_longest(*by_family.values())
    return [info for batch in rounds for info in batch if info is not None]


def _close_late_winner(task: asyncio.Task[_Streams]) -> None:
    """A losing attempt that connected anyway: close its transport (and never leave an exception unread)."""
    if task.cancelled():
        return
    if task.exception() is None:
        task.result()[1].transport.abort()


async def open_connection(
    host: str, port: int, *, ssl: _ssl.SSLContext | None = None, limit: int, delay: float = HAPPY_EYEBALLS_DELAY
) -> _Streams:
    """Connect to ``host:port`` racing its addresses; raise the first attempt's ``OSError`` when all fail.

    ``ssl`` wraps the connection in TLS with ``host`` as the server name;
    ``limit`` is the StreamReader's buffer limit. Cancelling the call (a
    connect timeout) cancels every attempt in flight.
    """
    loop = asyncio.get_running_loop()
    server_hostname = host if ssl is not None else None
    infos = _interleave(await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM))
    if not infos:
        raise OSError(f"no address for {host}")

    def attempt(info: tuple[Any, ...]) -> asyncio.Task[_Streams]:
        return asyncio.ensure_future(
            asyncio.open_connection(info[4][0], info[4][1], ssl=ssl, server_hostname=server_hostname, family=info[0], limit=limit)
        )

    if len(infos) == 1:  # the common case (an IP literal, a single-address host): nothing to race
        return await attempt(infos[0])
    pending: set[asyncio.Task[_Streams]] = set()
    errors: list[BaseException] = []
    upcoming = iter(infos)
    try:
        while True:
            nxt = next(upcoming, None)
            if nxt is not None:
                pending.add(attempt(nxt))
            if not pending:
                raise errors[0]
            # wait for a result, but start the next address after `delay` (or at once when all so far failed)
            done, pending = await asyncio.wait(
                pending, timeout=delay if nxt is not None else None, return_when=asyncio.FIRST_COMPLETED
            )
            errors += [exc for task in done if (exc := task.exception()) is not None]
            winners = [task for task in done if task.exception() is None]
            for extra in winners[1:]:  # two connected in the same instant: keep one
                extra.result()[1].transport.abort()
            if winners:
                return winners[0].result()
    finally:
        for task in pending:
            task.cancel()
            task.add_done_callback(_close_late_winner)


__all__ = ["HAPPY_EYEBALLS_DELAY", "free_port", "open_connection"]
