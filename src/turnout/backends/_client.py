"""A small HTTP/1.1 keep-alive client: just what the backends need, at a fraction of httpx's cost.

Why not httpx: one non-streamed exchange through httpx → httpcore → h11 →
anyio cost about 0.3 ms of CPU on the project's 2-core machine (a third of
turnout's whole added latency; profiled with py-spy at concurrency 1). This
client writes a request in one ``write`` and parses the answer with a few
``bytes`` operations and regexes on asyncio streams: tens of microseconds.

What it does: HTTP/1.1 over TCP or TLS to one origin, connecting with Happy
Eyeballs (:mod:`turnout.backends._net`); a bounded pool of keep-alive
connections (idle ones reused newest first, callers beyond the bound wait
first come, first served); ``Content-Length``, chunked and read-until-close
bodies; gzip/deflate bodies should a server compress despite
``accept-encoding: identity``. An idle connection the server has closed (its
EOF has arrived) is never reused. A request is never sent twice: a POST that
reached a paid provider may have been billed, so retrying is the gateway's
decision, not the transport's (httpcore behaves the same way).

What it refuses: anything h11 would refuse (the grammar lives in
:mod:`turnout.backends._h1`), and anything over its :class:`Limits`: a head,
a body read whole, a chunk, a stream line or a whole stream too large, checked
*before* the bytes are buffered (a declared 2 GB ``Content-Length`` fails at
the head; a gzip bomb fails once its output passes the limit, never inflating
more than 64 KiB at a time). A :class:`Response` dropped without being read or
closed gives its pool slot back when it is garbage-collected.

What it does not do: HTTP/2, proxies, redirects, cookies. A caller who needs
them passes its own ``httpx.AsyncClient`` to the backend instead
(:class:`turnout.backends._http.HttpxTransport`).

Errors are :mod:`turnout.backends._h1`'s small tree (:class:`HTTPClientError`,
re-exported here); the backends translate them into turnout's tree in one place
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
import collections
import re
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from turnout.backends import _net
from turnout.backends._h1 import (
    ConnectError,
    ConnectTimeout,
    Head,
    HTTPClientError,
    IncompleteResponse,
    InvalidURL,
    Limits,
    ReadError,
    RemoteProtocolError,
    ResponseTooLarge,
    body_length,
    bounded_lines,
    chunk_size,
    head_end,
    normalise,
    parse_fields,
    parse_head,
)

#: write() buffers above this are drained before reading the answer (a large request body)
_DRAIN_ABOVE = 256 * 1024
#: the most one read takes from the socket, and the most one decompression step produces
_PIECE = 64 * 1024
_PATH = re.compile(r"[!-~]*")  # printable ASCII, no space: a path we can put on the request line as is


class _Conn:
    """One TCP (or TLS) connection, its loop, and when it last went idle."""

    __slots__ = ("idle_since", "loop", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.loop = asyncio.get_running_loop()
        self.idle_since = 0.0

    def usable(self, now: float, expiry: float) -> bool:
        # A server that closed an idle connection has sent EOF, which the reader has seen. One that sent
        # bytes nobody asked for (more than its last answer framed) would have them read as the next
        # answer's head: such a connection is not reused either (the buffer is asyncio's, see _unread).
        return not (
            self.reader.at_eof()
            or self.writer.transport.is_closing()
            or now - self.idle_since > expiry
            or vars(self.reader)["_buffer"]
        )

    def close(self) -> None:
        # abort, not close: a half-read answer must not be drained, and nothing is left to flush
        self.writer.transport.abort()


def _unread(reader: asyncio.StreamReader, data: bytes) -> None:
    """Put ``data`` back in front of ``reader``'s buffer.

    asyncio has no public unread; its StreamReader has kept a ``bytearray``
    ``_buffer`` since Python 3.4. Only a head with bare-LF line ends (a server
    breaking the CRLF rule, which h11 tolerates) ends before the CRLF CRLF we
    read up to, so only then does the body's start need to go back.
    """
    buffer: bytearray = vars(reader)["_buffer"]
    buffer[:0] = data


class HTTPPool:
    """Keep-alive connections to one origin (``scheme://host:port``), at most ``max_connections`` open.

    The pool owns its connections; :meth:`aclose` closes them. Requests are
    made with :meth:`request`, which returns once the answer's status line and
    headers are in; read the body with the :class:`Response` methods, which
    give the connection back when it is complete. ``limits`` bounds every answer.
    """

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int = 256,
        keepalive_expiry: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        limits: Limits | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        try:
            port = parts.port
        except ValueError as exc:
            raise InvalidURL(f"{base_url!r} has a bad port: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidURL(f"{base_url!r} is not an http:// or https:// URL with a host")
        if not _PATH.fullmatch(parts.path):
            raise InvalidURL(f"the path of {base_url!r} has spaces, control or non-ASCII characters (percent-encode them)")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = port or (443 if parts.scheme == "https" else 80)
        #: the path prefix of the base URL (e.g. "/v1"), without a trailing slash
        self.prefix = parts.path.rstrip("/")
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self.limits = limits or Limits()
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
            # the reader's limit bounds the head (readuntil fails past it) and chunk-size and trailer lines
            reader, writer = await _net.open_connection(self.host, self.port, ssl=self._ssl, limit=self.limits.head)
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
        ``name: value\\r\\n`` lines, checked by the caller
        (:func:`turnout.backends._h1.check_request_headers`); host,
        accept-encoding and content-length (always ours, from ``len(body)``)
        are added here. Waiting for a free connection and connecting are
        bounded by ``connect_timeout``; reading is the caller's to bound.
        """
        if self._closed:
            raise ConnectError("the connection pool is closed")
        data = b"%s %s HTTP/1.1\r\n%s%scontent-length: %d\r\n\r\n%s" % (
            method.encode("ascii"),
            (self.prefix + path).encode("ascii"),
            self._fixed,
            headers,
            len(body),
            body,
        )
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
                raw = exc.partial  # at EOF: a head with bare-LF line ends may still be complete
                if head_end(raw) < 0:
                    raise IncompleteResponse("the server closed the connection in the middle of the headers") from None
            except asyncio.LimitOverrunError:
                raise ResponseTooLarge(f"response headers exceed {self.limits.head} bytes") from None
            if len(raw) > self.limits.head:
                raise ResponseTooLarge(f"response headers exceed {self.limits.head} bytes")
            # Usually the head ends at the CRLF CRLF just read; with bare LFs it may end earlier (h11's rule)
            if b"\n\n" in raw or raw.find(b"\n\r\n") != len(raw) - 3:
                end = head_end(raw)
                if end < len(raw):
                    _unread(reader, raw[end:])
                    raw = raw[:end]
            head = parse_head(raw)
            if head.status == 101:
                raise RemoteProtocolError("101 Switching Protocols, though no upgrade was asked for")
            if head.status >= 200:
                return Response(self, conn, head, method)
            # 100 Continue and other interim answers: the real one follows

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
    body of a keep-alive answer gives the connection back to the pool. A
    response dropped without either is aborted when garbage-collected, and
    its slot freed.
    """

    _conn: _Conn | None = None  # class default: __del__ of a half-built instance finds nothing to free

    def __init__(self, pool: HTTPPool, conn: _Conn, head: Head, method: str) -> None:
        self.status = head.status
        self.reason = head.reason
        self.headers = head.headers
        self._pool = pool
        self._limits = pool.limits
        self._length = body_length(head, method)
        self._chunked = self._length is None and "transfer-encoding" in head.headers
        connection = head.headers.get("connection", "").lower()
        self._keep_alive = (
            "close" not in connection
            and not (head.http10 and "keep-alive" not in connection)
            and (self._chunked or self._length is not None)
        )
        enc = head.headers.get("content-encoding", "identity").lower()
        self._decoder: zlib._Decompress | None = None
        if enc in ("gzip", "x-gzip", "deflate"):
            self._decoder = zlib.decompressobj(47)  # wbits 47: zlib or gzip header, detected automatically
        elif enc not in ("identity", ""):
            raise RemoteProtocolError(f"unsupported content-encoding {enc!r} (we asked for identity)")
        self._done = self._length == 0
        self._conn = conn  # last: from here on this response owns the connection
        if self._done:
            self._finish()

    def __del__(self) -> None:
        conn = self._conn
        if conn is not None:  # dropped while holding its connection: abort it and free the slot, on the loop's thread
            self._conn = None
            # not contextlib.suppress: at interpreter exit a finaliser may run after module globals are cleared
            try:  # noqa: SIM105
                conn.loop.call_soon_threadsafe(self._pool._release, conn, False)
            except RuntimeError:  # the loop is closed; nothing is left to free
                pass

    def _finish(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            self._pool._release(conn, self._keep_alive)

    def _abandon(self) -> None:
        self._keep_alive = False
        self._finish()

    @contextmanager
    def _body_errors(self) -> Iterator[None]:
        """Map errors raised while reading the body to this module's tree; any error abandons the connection."""
        try:
            yield
        except asyncio.IncompleteReadError:
            self._abandon()
            raise IncompleteResponse("the server closed the connection in the middle of the body") from None
        except asyncio.LimitOverrunError:
            self._abandon()
            raise ResponseTooLarge(f"a chunk-size or trailer line exceeds {self._limits.head} bytes") from None
        except (ConnectionError, OSError) as exc:
            self._abandon()
            raise ReadError(f"the connection broke while reading the body: {exc}") from exc
        except BaseException:
            self._abandon()
            raise

    async def _raw_pieces(self, budget: int) -> AsyncIterator[bytes]:
        """The body as it arrives, undecoded, at most ``budget`` bytes (ResponseTooLarge past it)."""
        conn = self._conn
        if conn is None:
            return
        reader = conn.reader
        total = 0
        with self._body_errors():
            if self._chunked:
                while size := chunk_size(await reader.readuntil(b"\r\n"), self._limits):
                    total += size
                    if total > budget:
                        raise ResponseTooLarge(f"the body exceeds {budget} bytes")
                    if size <= _PIECE:
                        piece = await reader.readexactly(size + 2)
                        if piece[-2:] != b"\r\n":
                            raise RemoteProtocolError("chunk data is not followed by CRLF (a chunk size that lies)")
                        yield piece[:-2]
                        continue
                    while size:  # a large chunk is passed on as it arrives, never buffered whole
                        piece = await reader.read(min(size, _PIECE))
                        if not piece:
                            raise IncompleteResponse("the server closed the connection in the middle of a chunk")
                        size -= len(piece)
                        yield piece
                    if await reader.readexactly(2) != b"\r\n":
                        raise RemoteProtocolError("chunk data is not followed by CRLF (a chunk size that lies)")
                await self._trailers(reader)
            elif self._length is not None:
                left = self._length
                if left > budget:
                    raise ResponseTooLarge(f"the body's content-length {left} exceeds {budget} bytes")
                while left:
                    piece = await reader.read(min(left, _PIECE))
                    if not piece:
                        raise IncompleteResponse(f"the body ended {left} bytes short of its content-length")
                    left -= len(piece)
                    yield piece
            else:
                while piece := await reader.read(_PIECE):
                    total += len(piece)
                    if total > budget:
                        raise ResponseTooLarge(f"the body exceeds {budget} bytes")
                    yield piece
        self._done = True
        self._finish()

    async def _trailers(self, reader: asyncio.StreamReader) -> None:
        """Read a chunked body's trailer fields to the blank line; validate them as h11 does, keep none."""
        lines: list[bytes] = []
        size = 0
        while True:
            line = await reader.readuntil(b"\n")
            size += len(line)
            if size > self._limits.head:
                raise ResponseTooLarge(f"the trailers exceed {self._limits.head} bytes")
            line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
            if not line:
                break
            lines.append(line)
        if lines:
            normalise(parse_fields(lines))

    async def iter_bytes(self, budget: int | None = None) -> AsyncIterator[bytes]:
        """The body as it arrives, decoded (gzip/deflate) when the server compressed it.

        At most ``budget`` bytes before and after decoding (default: the
        limits' ``stream``); past it, ResponseTooLarge.
        """
        budget = self._limits.stream if budget is None else budget
        decoder = self._decoder
        if decoder is None:
            async for piece in self._raw_pieces(budget):
                yield piece
            return
        total = 0
        async for piece in self._raw_pieces(budget):
            try:
                out = decoder.decompress(piece, _PIECE)
                while True:  # never more than _PIECE inflated at once: a bomb stops at the budget
                    total += len(out)
                    if total > budget:
                        self._abandon()
                        raise ResponseTooLarge(f"the decompressed body exceeds {budget} bytes")
                    if out:
                        yield out
                    if not decoder.unconsumed_tail:
                        break
                    out = decoder.decompress(decoder.unconsumed_tail, _PIECE)
            except zlib.error as exc:
                self._abandon()
                raise RemoteProtocolError(f"undecodable compressed body: {exc}") from exc

    async def read(self) -> bytes:
        """The whole body, at most the limits' ``body`` bytes (then the connection goes back to the pool)."""
        if self._done and self._decoder is None:
            return b""
        limit = self._limits.body
        if self._length is not None and self._decoder is None and self._conn is not None:
            # the common case, one call: no per-piece generator round trips
            conn, length = self._conn, self._length
            if length > limit:
                self._abandon()
                raise ResponseTooLarge(f"the body's content-length {length} exceeds {limit} bytes")
            with self._body_errors():
                try:
                    data = await conn.reader.readexactly(length)
                except asyncio.IncompleteReadError as exc:
                    raise IncompleteResponse(
                        f"the body ended {length - len(exc.partial)} bytes short of its content-length"
                    ) from None
            self._done = True
            self._finish()
            return data
        return b"".join([piece async for piece in self.iter_bytes(limit)])

    def iter_lines(self) -> AsyncIterator[str]:
        """The body as UTF-8 text lines split on ``\\n`` (a ``\\r`` before it is dropped), without line ends.

        A line longer than the limits' ``line`` raises ResponseTooLarge.
        """
        return bounded_lines(self.iter_bytes(), self._limits.line)

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
    "IncompleteResponse",
    "InvalidURL",
    "Limits",
    "ReadError",
    "RemoteProtocolError",
    "Response",
    "ResponseTooLarge",
    "default_ssl_context",
]
