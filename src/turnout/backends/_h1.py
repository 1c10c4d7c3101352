"""HTTP/1.1 message syntax for turnout's client: its error tree, its size limits, and parsing without I/O.

Parsing follows h11 (the parser httpx uses), which the fuzz test holds it to
(``tests/backends/test_http_fuzz.py``): the same status-line, header-field,
``Content-Length``, ``Transfer-Encoding`` and chunk-header grammar, bare-LF
line endings in heads and trailers accepted, obsolete line folding unfolded.
Where h11 accepts and turnout refuses, it is on purpose and listed here:

* sizes over :class:`Limits` (h11 has none but the head's) raise
  :class:`ResponseTooLarge`;
* a chunk-size of more than 16 hex digits (h11 takes 20; 16 already exceed any limit).

A well-formed CRLF head takes a fast path (one regex over the whole head, then
plain string splitting); anything else takes the general path, which unfolds,
accepts bare LFs and words the error.

Errors (translated into turnout's tree by :func:`turnout.backends._http.translate`)::

    HTTPClientError
    ├── InvalidURL            the base URL is not http(s)://host
    ├── ConnectError          refused, unreachable, DNS, TLS handshake
    ├── ConnectTimeout        no connection (or pool slot) within the connect timeout
    ├── ReadError             the connection broke while writing or reading
    └── RemoteProtocolError   the server broke HTTP/1.1 (malformed head, framing, chunking)
        ├── IncompleteResponse    it closed the connection before the answer was complete
        └── ResponseTooLarge      a head, body, chunk, line or event over its Limits bound
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

MiB = 1024 * 1024


class HTTPClientError(Exception):
    """Base of the native client's errors (translated into turnout's BackendError tree by the backends)."""


class InvalidURL(HTTPClientError):
    """The base URL is not ``http://`` or ``https://`` with a host."""


class ConnectError(HTTPClientError):
    """Could not open a connection: refused, unreachable, name resolution or TLS handshake failed."""


class ConnectTimeout(HTTPClientError):
    """No connection (or no free pool slot) within the connect timeout."""


class ReadError(HTTPClientError):
    """The connection broke while the request was written or the answer read."""


class RemoteProtocolError(HTTPClientError):
    """The server broke HTTP/1.1: a malformed status line, header, length or chunk."""


class IncompleteResponse(RemoteProtocolError):
    """The server closed the connection before the head or the body was complete."""


class ResponseTooLarge(RemoteProtocolError):
    """A part of the answer exceeds its :class:`Limits` bound; reading stopped there."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one answer may make the client hold or read, in bytes.

    ``head``: status line and headers (and a chunked body's trailers).
    ``body``: a body read whole (``read()``), declared or actual, before and after
    decompression. ``chunk``: one chunk's declared size. ``line``: one line of a
    streamed body (an SSE line). ``event``: one server-sent event, its data lines
    together. ``stream``: a streamed body in all, after decompression. Memory per
    streaming connection stays near ``line`` + ``event`` whatever the server sends.
    """

    head: int = 64 * 1024
    body: int = 32 * MiB
    chunk: int = 32 * MiB
    line: int = 1 * MiB
    event: int = 1 * MiB
    stream: int = 512 * MiB

    def __post_init__(self) -> None:
        for name in ("head", "body", "chunk", "line", "event", "stream"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"Limits.{name} must be a positive number of bytes, not {value!r}")


# -- grammar (h11's _abnf, as bytes regexes) -----------------------------------------------------------
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_VCHAR_OBS = rb"[^\x00\s]"  # h11: any byte but NUL and whitespace (obs-text included)
_FIELD_VALUE = rb"(?:%s+(?:[ \t]+%s+)*)?" % (_VCHAR_OBS, _VCHAR_OBS)
_FIELD = rb"(%s):[ \t]*(%s)[ \t]*" % (_TOKEN, _FIELD_VALUE)
_STATUS = rb"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: ((?:[ \t]|%s)*))?" % _VCHAR_OBS
_STATUS_LINE = re.compile(_STATUS)
_FIELD_LINE = re.compile(_FIELD)
# A whole well-formed CRLF head in one match (the fast path; anything else takes the general one). The same
# grammar, flattened for speed: OWS, then vchars and inner blanks, then OWS, is any run of bytes that are
# neither NUL nor whitespace other than space and tab; possessive, as nothing is ever given back.
_HEAD_CRLF = re.compile(
    rb"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: ([^\x00\n\r\x0b\x0c]*+))?\r\n"
    rb"(?:%s:[^\x00\n\r\x0b\x0c]*+\r\n)*+\r\n" % _TOKEN
)
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;.*)?[ \t]*\r\n")
_BLANK_LINE = re.compile(rb"\n\r?\n")
_REQUEST_NAME = re.compile(r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_FRAMING_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_REQUEST_VALUE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")  # no control character but tab, so no CR, LF or NUL


@dataclass(slots=True)
class Head:
    """A parsed response head: status, reason, whether HTTP/1.0 rules apply, and the fields.

    ``headers`` maps lower-cased names to values; repeated fields are joined
    with ``", "``; ``content-length`` is normalised to its one value and
    ``transfer-encoding`` to ``chunked`` (as h11 does).
    """

    status: int
    reason: str
    http10: bool
    headers: dict[str, str]


def head_end(raw: bytes) -> int:
    """Where h11 ends the head in ``raw`` (one past its blank line), or -1 when it has none.

    ``raw`` was read up to the first CRLF CRLF; a head with bare LFs may end earlier.
    """
    if raw[:1] == b"\n":
        return 1
    if raw[:2] == b"\r\n":
        return 2
    m = _BLANK_LINE.search(raw)
    return m.end() if m else -1


def parse_head(raw: bytes) -> Head:
    """Parse one response head, its blank line included; raise RemoteProtocolError where h11 would."""
    m = _HEAD_CRLF.fullmatch(raw)
    if m is None:
        return _parse_head_general(raw)
    # The regex has checked every byte against h11's grammar: plain string splitting is exact from here.
    status = int(m[3])
    if status < 100:
        raise RemoteProtocolError(f"status {status} is not an HTTP status")
    lines = raw[:-4].decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.lower()
        value = value.strip(" \t")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if "transfer-encoding" in headers or not _plain_length(headers.get("content-length")):
        _check_framing(headers)
    reason = m[4]
    return Head(status, reason.decode("latin-1") if reason else "", m[1] == b"0" or (m[1] == b"1" and m[2] == b"0"), headers)


def _plain_length(length: str | None) -> bool:
    """Whether a Content-Length value needs no more checking: absent, or one decimal number of at most 20 digits."""
    return length is None or (length.isascii() and length.isdigit() and len(length) <= 20)


def _check_framing(headers: dict[str, str]) -> None:
    """h11's rules on joined fields: one decimal Content-Length (repeats must agree), one ``chunked`` Transfer-Encoding."""
    length = headers.get("content-length")
    if length is not None and not _plain_length(length):
        values = {v.strip(" \t") for v in length.split(",")}
        value = values.pop()
        if values:
            raise RemoteProtocolError("conflicting content-length headers")
        if not _plain_length(value):
            raise RemoteProtocolError(f"bad content-length {length[:40]!r} (one decimal number expected)")
        headers["content-length"] = value
    te = headers.get("transfer-encoding")
    if te is not None:
        if te.lower() != "chunked":  # two fields, even both chunked, join into something else
            raise RemoteProtocolError(f"unsupported transfer-encoding {te[:40]!r} (only one 'chunked')")
        headers["transfer-encoding"] = "chunked"


def _parse_head_general(raw: bytes) -> Head:
    """The general path: bare-LF line ends, obsolete folding, and precise errors for what is malformed."""
    lines = [line[:-1] if line.endswith(b"\r") else line for line in raw.split(b"\n")]
    del lines[-2:]  # the blank line
    first, lines = (lines[0] if lines else b""), lines[1:]
    if not first:
        raise RemoteProtocolError("no status line before the blank line")
    m = _STATUS_LINE.fullmatch(first)
    if m is None:
        raise RemoteProtocolError(f"not an HTTP/1.1 status line: {first[:80]!r}")
    major, minor, code, reason = m.groups()
    status = int(code)
    if status < 100:
        raise RemoteProtocolError(f"status {status} is not an HTTP status")
    headers = normalise(parse_fields(lines))
    return Head(status, (reason or b"").decode("latin-1"), (major, minor) < (b"1", b"1"), headers)


def parse_fields(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    """``name: value`` lines (line ends removed) into fields, unfolding obsolete line folding as h11 does."""
    unfolded: list[bytes] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not unfolded:
                raise RemoteProtocolError("a continuation line before the first header")
            unfolded[-1] += b" " + line.lstrip(b" \t")
        else:
            unfolded.append(line)
    fields = []
    for line in unfolded:
        m = _FIELD_LINE.fullmatch(line)
        if m is None:
            raise RemoteProtocolError(f"malformed header line: {line[:80]!r}")
        fields.append((m.group(1), m.group(2)))
    return fields


def normalise(fields: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Fields as a dict (repeats joined), with h11's rules for ``Content-Length`` and ``Transfer-Encoding``."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in fields:
        name = raw_name.decode("ascii").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    _check_framing(headers)
    return headers


def body_length(head: Head, method: str) -> int | None:
    """The declared body length: 0 for HEAD, 204 and 304, None when chunked or read until close."""
    if method == "HEAD" or head.status in (204, 304):
        return 0
    if "transfer-encoding" in head.headers:
        return None
    length = head.headers.get("content-length")
    return int(length) if length is not None else None


def chunk_size(line: bytes, limits: Limits) -> int:
    """The size of the chunk a chunk-size line (CRLF included) announces, checked against ``limits.chunk``."""
    m = _CHUNK_LINE.fullmatch(line)
    if m is None:
        raise RemoteProtocolError(f"bad chunk-size line {line[:40]!r} (1 to 16 hex digits expected)")
    size = int(m.group(1), 16)
    if size > limits.chunk:
        raise ResponseTooLarge(f"a chunk of {size} bytes exceeds the {limits.chunk}-byte limit")
    return size


def check_request_headers(headers: Mapping[str, str]) -> bytes:
    """The ``name: value\\r\\n`` block of fixed request headers; ValueError names a header that cannot be sent.

    A value with CR, LF, NUL or another control character (an API key read
    from a file with its newline, say) would split or corrupt the request on
    the wire. The value itself is never echoed: it is often a secret. Host,
    Content-Length, Transfer-Encoding and Connection are the client's own (a
    second Content-Length would make the request ambiguous).
    """
    parts = []
    for name, value in headers.items():
        if not _REQUEST_NAME.fullmatch(name):
            raise ValueError(f"header name {name!r} is not an HTTP token")
        if name.lower() in _FRAMING_HEADERS:
            raise ValueError(f"header {name!r} is the client's to set (from the URL and the body), not the caller's")
        if not _REQUEST_VALUE.fullmatch(value) or value != value.strip(" \t"):
            raise ValueError(
                f"the value of header {name!r} contains a line break, NUL, another control character or "
                "surrounding whitespace; fix where it comes from (an API key variable with a newline?)"
            )
        try:
            parts.append(f"{name}: {value}\r\n".encode("latin-1"))
        except UnicodeEncodeError:
            raise ValueError(f"the value of header {name!r} has characters outside Latin-1") from None
    return b"".join(parts)


async def bounded_lines(pieces: AsyncIterator[bytes], max_line: int) -> AsyncIterator[str]:
    """UTF-8 text lines of a byte stream, split on ``\\n`` (a ``\\r`` before it dropped), at most ``max_line`` bytes.

    Linear in the input: each piece is scanned once, and a line spread over
    many pieces is joined once, when its end arrives (an endless line raises
    ResponseTooLarge after ``max_line`` bytes instead of rescanning a growing
    buffer). Lines split on a byte, so a multi-byte character is never cut.
    """
    pending: list[bytes] = []
    pending_len = 0
    async for piece in pieces:
        if b"\n" not in piece:
            pending_len += len(piece)
            if pending_len > max_line:
                raise ResponseTooLarge(f"a line of the stream exceeds {max_line} bytes")
            pending.append(piece)
            continue
        lines = piece.split(b"\n")
        if pending:
            lines[0] = b"".join(pending) + lines[0]
            pending.clear()
        tail = lines.pop()
        if pending_len + len(piece) > max_line and max(map(len, lines)) > max_line:
            raise ResponseTooLarge(f"a line of the stream exceeds {max_line} bytes")
        for line in lines:
            yield (line[:-1] if line.endswith(b"\r") else line).decode("utf-8", "replace")
        pending_len = len(tail)
        if pending_len > max_line:
            raise ResponseTooLarge(f"a line of the stream exceeds {max_line} bytes")
        if tail:
            pending.append(tail)
    if pending:
        last = b"".join(pending)
        yield (last[:-1] if last.endswith(b"\r") else last).decode("utf-8", "replace")


__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "HTTPClientError",
    "Head",
    "IncompleteResponse",
    "InvalidURL",
    "Limits",
    "ReadError",
    "RemoteProtocolError",
    "ResponseTooLarge",
    "body_length",
    "bounded_lines",
    "check_request_headers",
    "chunk_size",
    "head_end",
    "normalise",
    "parse_fields",
    "parse_head",
]
