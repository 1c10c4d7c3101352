"""A small HTTP/1.1 keep-alive client: just what the backends need, at a fraction of httpx's cost.

Why not httpx: one non-streamed exchange through httpx → httpcore → h11 →
anyio cost about 0.3 ms of CPU on the project's 2-core machine (a third of
turnout's whole added latency; profiled with py-spy at concurrency 1). This
client writes a request in one ``write`` and parses the answer with a few
``bytes`` operations on asyncio streams: tens of microseconds.

What it does: HTTP/1.1 over TCP or TLS to one origin; a bounded pool of
keep-alive connections (idle ones reused newest first, callers beyond the
bound wait first come, first served); ``Content-Length``, chunked and
read-until-close bodies; gzip/deflate bodies should a server compress despite
``accept-encoding: identity``. An idle connection the server has closed (its
EOF has arrived) is never reused. A request is never sent twice: a POST that
reached a paid provider may have been billed, so retrying is the gateway's
decision, not the transport's (httpcore behaves the same way).

What it does not do: HTTP/2, proxies, redirects, cookies. A caller who needs
them passes its own ``httpx.AsyncClient`` to the backend instead
(:class:`turnout.backends._http.HttpxTransport`).

Errors are this module's own small tree (:class:`HTTPClientError`); the
backends translate them into turnout's tree in one place
(:func:`turnout.backends._http.translate`), as httpx maps httpcore's.

Example::

    pool = HTTPPool("http://127.0.0.1:8000")
    resp = await pool.request("POST", "/v1/chat/completions", b'{"model": "m"}',
                              b"content-type: application/json\\r\\n", connect_timeout=5.0)
    body = await resp.read()        # the connection goes back to the pool
    await pool.aclose()
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

#: headers longer than this are not an LLM provider's answer
MAX_HEAD_BYTES = 64 * 1024
#: asyncio's StreamReader buffer limit (also the longest chunk-size or SSE line it will hold)
_STREAM_LIMIT = 1024 * 1024
#: write() buffers above this are drained before reading the answer (a large request body)
_DRAIN_ABOVE = 256 * 1024


class HTTPClientError(Exception):
    """Base of this client's errors (translated into turnout's BackendError tree by the backends)."""


class InvalidURL(HTTPClientError):
    """The base URL is not ``http://`` or ``https://`` with a host."""


class ConnectError(HTTPClientError):
    """Could not open a connection: refused, unreachable, name resolution or TLS handshake failed."""


class ConnectTimeout(HTTPClientError):
    """No connection (or no free pool slot) within the connect timeout."""


class ReadError(HTTPClientError):
    """The connection broke while the request was written or the answer read."""


class RemoteProtocolError(HTTPClientError):
    """The server broke HTTP/1.1: a malformed status line or headers, or a body cut short."""


class _Conn:
    """One TCP (or TLS) connection and when it last went idle."""

    __slots__ = ("reader", "writer", "idle_since")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def usable(self, now: float, expiry: float) -> bool:
        # A server that closed an idle connection has sent EOF, which the reader has seen.
        return not (self.reader.at_eof() or self.writer.transport.is_closing() or now - self.idle_since > expiry)

    def close(self) -> None:
        # abort, not close: a half-read answer must not be drained, and nothing is left to flush
        self.writer.transport.abort()


class HTTPPool:
    """Keep-alive connections to one origin (``scheme://host:port``), at most ``max_connections`` open.

    The pool owns its connections; :meth:`aclose` closes them. Requests are
    made with :meth:`request`, which returns once the answer's status line and
    headers are in; read the body with the :class:`Response` methods, which
    give the connection back when it is complete.
    """

    def __init__(self, base_url: str, *, max_connections: int = 256, keepalive_expiry: float = 30.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidURL(f"{base_url!r} is not an http:// or https:// URL with a host")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        #: the path prefix of the base URL (e.g. "/v1"), without a trailing slash
        self.prefix = parts.path.rstrip("/")
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self._ssl: ssl.SSLContext | None = None
        if self.scheme == "https":
            self._ssl = ssl_context or default_ssl_context()
        default_port = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        authority = host if self.port == default_port else f"{host}:{self.port}"
        # sent with every request: identity so that no provider compresses a small JSON answer
        self._fixed = f"host: {authority}\r\naccept-encoding: identity\r\n".encode("latin-1")
        self._idle: list[_Conn] = []  # a stack: the most recently used connection is reused first
        self._waiters: collections.deque[asyncio.Future[_Conn | None]] = collections.deque()
        self._open = 0  # connections open or being opened, idle ones included
        self._closed = False

    @property
    def open_connections(self) -> int:
        """Connections open now (busy and idle)."""
        return self._open

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    # -- connections -----------------------------------------------------------
    async def _connect(self) -> _Conn:
        try:
            reader, writer = await asyncio.open_connection(
                self.host, self.port, ssl=self._ssl, server_hostname=self.host if self._ssl else None,
                limit=_STREAM_LIMIT)
        except ssl.SSLError as exc:
            raise ConnectError(f"TLS handshake with {self.host}:{self.port} failed: {exc}") from exc
        except OSError as exc:
            raise ConnectError(f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}") from exc
        return _Conn(reader, writer)

    async def _acquire(self) -> _Conn:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.usable(now, self.keepalive_expiry):
                return conn
            conn.close()
            self._open -= 1
        if self._open >= self.max_connections:
            fut: asyncio.Future[_Conn | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                handed = await fut
            except BaseException:
                # cancelled (the connect timeout or the caller): pass on what was handed over meanwhile
                if fut.done() and not fut.cancelled():
                    self._hand_over(fut.result())
                else:
                    self._waiters.remove(fut)
                raise
            if handed is not None:
                return handed
            # None: a connection was closed and its slot handed to us; it is counted already
        else:
            self._open += 1
        try:
            return await self._connect()
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    def _hand_over(self, conn: _Conn | None) -> None:
        """Give ``conn`` (or, for None, a free slot) to the first live waiter, else keep it."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        if conn is None:
            self._open -= 1
        else:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)

    def _wake_one(self) -> None:
        # a slot became free without a connection to hand over: the first waiter opens its own
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                self._open += 1
                fut.set_result(None)
                return

    def _release(self, conn: _Conn, reusable: bool) -> None:
        if reusable and not self._closed:
            self._hand_over(conn)
            return
        conn.close()
        self._open -= 1
        self._wake_one()

    # -- one exchange ----------------------------------------------------------
    async def request(self, method: str, path: str, body: bytes, headers: bytes, *, connect_timeout: float) -> Response:
        """Send one request and return once the answer's head is in.

        ``path`` is appended to the base URL's path; ``headers`` is a block of
        ``name: value\\r\\n`` lines (host, accept-encoding and content-length
        are added here). Waiting for a free connection and connecting are
        bounded by ``connect_timeout``; reading is the caller's to bound.
        """
        if self._closed:
            raise ConnectError("the connection pool is closed")
        data = b"%s %s HTTP/1.1\r\n%s%scontent-length: %d\r\n\r\n%s" % (
            method.encode("ascii"), (self.prefix + path).encode("ascii"), self._fixed, headers, len(body), body)
        try:
            async with asyncio.timeout(connect_timeout):
                conn = await self._acquire()
        except TimeoutError:
            raise ConnectTimeout(f"no connection to {self.host}:{self.port} within {connect_timeout:g}s") from None
        try:
            conn.writer.write(data)
            if conn.writer.transport.get_write_buffer_size() > _DRAIN_ABOVE:
                await conn.writer.drain()
            return await self._read_head(conn, method)
        except HTTPClientError:
            self._release(conn, False)
            raise
        except (ConnectionError, OSError) as exc:
            self._release(conn, False)
            raise ReadError(f"connection to {self.host}:{self.port} broke: {exc}") from exc
        except BaseException:
            # cancelled mid-exchange: the connection's state is unknown, never reuse it
            self._release(conn, False)
            raise

    async def _read_head(self, conn: _Conn, method: str) -> Response:
        reader = conn.reader
        while True:
            try:
                raw = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if not exc.partial:
                    raise ReadError(f"{self.host}:{self.port} closed the connection without answering") from None
                raise RemoteProtocolError("the server closed the connection in the middle of the headers") from None
            except asyncio.LimitOverrunError:
                raise RemoteProtocolError(f"response headers exceed {MAX_HEAD_BYTES} bytes") from None
            if len(raw) > MAX_HEAD_BYTES:
                raise RemoteProtocolError(f"response headers exceed {MAX_HEAD_BYTES} bytes")
            lines = raw[:-4].decode("latin-1").split("\r\n")
            version, _, rest = lines[0].partition(" ")
            code, _, reason = rest.partition(" ")
            if not version.startswith("HTTP/1.") or not code.isdigit() or len(code) != 3:
                raise RemoteProtocolError(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
            status = int(code)
            if 100 <= status < 200 and status != 101:
                continue  # 100 Continue and other interim answers: the real one follows
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep:
                    raise RemoteProtocolError(f"malformed header line: {line[:80]!r}")
                name = name.strip().lower()
                value = value.strip()
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            return Response(self, conn, status, reason, headers, method, version == "HTTP/1.0")

    async def aclose(self) -> None:
        """Close every idle connection; busy ones close when their answer is done. Idempotent."""
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._open -= len(self._idle)
        self._idle.clear()
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(ConnectError("the connection pool was closed"))


class Response:
    """An answer whose head has arrived; the body is read with :meth:`read`, :meth:`iter_bytes` or :meth:`iter_lines`.

    Read the body to the end or call :meth:`aclose`: only a completely read
    body of a keep-alive answer gives the connection back to the pool.
    """

    def __init__(self, pool: HTTPPool, conn: _Conn, status: int, reason: str, headers: dict[str, str],
                 method: str, http10: bool) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self._pool = pool
        self._conn: _Conn | None = conn
        te = headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        self._chunked = "chunked" in te
        self._length: int | None = None
        if method == "HEAD" or status in (204, 304):
            self._length = 0
        elif not self._chunked and length is not None:
            if not length.isdigit():
                raise RemoteProtocolError(f"bad content-length {length!r}")
            self._length = int(length)
        connection = headers.get("connection", "").lower()
        self._keep_alive = ("close" not in connection and not (http10 and "keep-alive" not in connection)
                            and (self._chunked or self._length is not None))
        enc = headers.get("content-encoding", "identity").lower()
        if enc in ("gzip", "x-gzip", "deflate"):
            # wbits 47: zlib or gzip header, detected automatically
            self._decoder: zlib._Decompress | None = zlib.decompressobj(47)
        elif enc in ("identity", ""):
            self._decoder = None
        else:
            raise RemoteProtocolError(f"unsupported content-encoding {enc!r} (we asked for identity)")
        self._done = self._length == 0 and not self._chunked
        if self._done:
            self._finish()

    def _finish(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            self._pool._release(conn, self._keep_alive)

    async def _raw_pieces(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        reader = conn.reader
        with self._body_errors(lambda exc: "the server closed the connection in the middle of the body"):
            if self._chunked:
                while True:
                    line = await reader.readuntil(b"\r\n")
                    size_text = line.split(b";", 1)[0].strip()
                    try:
                        size = int(size_text, 16)
                    except ValueError:
                        raise RemoteProtocolError(f"bad chunk size {size_text[:20]!r}") from None
                    if size == 0:
                        # trailers (rare) end with an empty line
                        while await reader.readuntil(b"\r\n") != b"\r\n":
                            pass
                        break
                    piece = await reader.readexactly(size + 2)
                    yield piece[:-2]
            elif self._length is not None:
                left = self._length
                while left:
                    piece = await reader.read(min(left, 65536))
                    if not piece:
                        raise RemoteProtocolError(f"the body ended {left} bytes short of its content-length")
                    left -= len(piece)
                    yield piece
            else:
                while piece := await reader.read(65536):
                    yield piece
        self._done = True
        self._finish()

    def _abandon(self) -> None:
        self._keep_alive = False
        self._finish()

    @contextmanager
    def _body_errors(self, short: Callable[[asyncio.IncompleteReadError], str]) -> Iterator[None]:
        """Map errors raised while reading the body to this module's tree; any error abandons the connection.

        ``short(exc)`` words the message for a body that ended early (it depends on how it was read).
        """
        try:
            yield
        except asyncio.IncompleteReadError as exc:
            self._abandon()
            raise RemoteProtocolError(short(exc)) from None
        except asyncio.LimitOverrunError:
            self._abandon()
            raise RemoteProtocolError("a chunk-size line is too long") from None
        except (ConnectionError, OSError) as exc:
            self._abandon()
            raise ReadError(f"the connection broke while reading the body: {exc}") from exc
        except BaseException:
            self._abandon()
            raise

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives, decoded (gzip/deflate) when the server compressed it."""
        async for piece in self._raw_pieces():
            if self._decoder is not None:
                try:
                    piece = self._decoder.decompress(piece)
                except zlib.error as exc:
                    raise RemoteProtocolError(f"undecodable compressed body: {exc}") from exc
            if piece:
                yield piece

    async def read(self) -> bytes:
        """The whole body (then the connection goes back to the pool)."""
        if self._done and self._decoder is None:
            return b""
        if self._length is not None and self._decoder is None and self._conn is not None:
            # the common case, one call: no per-piece generator round trips
            conn, length = self._conn, self._length
            with self._body_errors(
                    lambda exc: f"the body ended {length - len(exc.partial)} bytes short of its content-length"):
                data = await conn.reader.readexactly(length)
            self._done = True
            self._finish()
            return data
        return b"".join([piece async for piece in self.iter_bytes()])

    async def iter_lines(self) -> AsyncIterator[str]:
        """The body as UTF-8 text lines split on ``\\n`` (a ``\\r`` before it is dropped), without line ends."""
        buf = ""
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        async for piece in self.iter_bytes():
            buf += decoder.decode(piece)
            if "\n" not in buf:
                continue
            *lines, buf = buf.split("\n")
            for line in lines:
                yield line[:-1] if line.endswith("\r") else line
        buf += decoder.decode(b"", final=True)
        if buf:
            yield buf[:-1] if buf.endswith("\r") else buf

    async def aclose(self) -> None:
        """Give the connection back (if the body was read to the end) or close it. Idempotent."""
        if self._conn is not None:
            self._keep_alive = self._keep_alive and self._done
            self._finish()


def default_ssl_context() -> ssl.SSLContext:
    """A verifying TLS context with certifi's CA bundle when installed (as httpx uses), else the system's."""
    try:
        import certifi

        ctx = ssl.create_default_context(cafile=certifi.where())
    except ImportError:  # pragma: no cover - certifi comes with httpx
        ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "HTTPClientError",
    "HTTPPool",
    "InvalidURL",
    "ReadError",
    "RemoteProtocolError",
    "Response",
    "default_ssl_context",
]
