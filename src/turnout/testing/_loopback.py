"""A raw asyncio HTTP/1.1 server on loopback, run in a background thread: what the wire fakes share.

:class:`LoopbackServer` owns the lifecycle (a daemon thread with its own loop,
or :meth:`~LoopbackServer.serve_forever` on the caller's loop; sync and async
context managers; stopping cuts every open connection) and reads requests;
subclasses (:class:`~turnout.testing.scripted.ScriptedServer`,
:class:`~turnout.testing.hostile.HostileServer`) write the answers in
:meth:`~LoopbackServer.handle`. A raw server keeps the per-request overhead far
below a framework's, which matters because the benches use these as
fixed-latency upstreams at concurrency 64.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any, Self


@dataclass
class WireRequest:
    """One request as read off the wire: method, path (without the query), lower-cased headers, body."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


async def read_request(reader: asyncio.StreamReader) -> WireRequest | None:
    """The next request on a keep-alive connection, or None when the client closed it (or sent garbage)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
    headers = {}
    for line in lines[1:]:
        k, sep, v = line.partition(":")
        if sep:
            headers[k.strip().lower()] = v.strip()
    length = headers.get("content-length") or "0"
    if not length.isdigit():
        return None
    n = int(length)
    body = await reader.readexactly(n) if n else b""
    return WireRequest(method, path.split("?", 1)[0], headers, body)


class LoopbackServer:
    """Serves on ``host:port`` (port 0 picks a free one) from a daemon thread, until :meth:`stop`.

    Use as a context manager (sync or async) or call :meth:`start` / :meth:`stop`.
    Subclasses implement :meth:`handle`, called once per accepted connection.
    """

    #: the background thread's name (and the word used in start-up errors)
    kind = "loopback"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def root_url(self) -> str:
        """``http://host:port``, without an API prefix."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The API root clients use, e.g. ``http://127.0.0.1:41234/v1``."""
        return f"{self.root_url}/v1"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection (return to close it)."""
        raise NotImplementedError

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> Self:
        """Start serving in a daemon thread; returns once the port is bound."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run_thread, name=self.kind, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise RuntimeError(f"{self.kind} server failed to start: {self._error}") from self._error
        return self

    def stop(self) -> None:
        """Stop serving, cut open connections, join the thread. Idempotent."""
        if self._thread is None or self._loop is None or self._stop is None:
            return
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._thread = None

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Block until :meth:`serve_forever` has bound its port (for callers running it on their own loop)."""
        return self._ready.wait(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    def _run_thread(self) -> None:
        try:
            asyncio.run(self.serve_forever())
        except BaseException as e:  # noqa: BLE001 - surfaced to start(); the thread must not die silently
            self._error = e
            self._ready.set()

    async def serve_forever(self) -> None:
        """Serve on the running loop until :meth:`stop` (also used by the standalone process)."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._connection, self.host, self.port, backlog=2048)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handle(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        except asyncio.CancelledError:
            # Only stop() cancels these tasks: the server is going away, so cut the
            # connection and end quietly instead of logging a cancelled-task error.
            writer.transport.abort()
            return
        finally:
            self._tasks.discard(task)
            if not writer.transport.is_closing():
                writer.close()


__all__ = ["LoopbackServer", "WireRequest", "read_request"]
