"""Property-based fuzz of turnout's HTTP/1.1 client, with h11 (httpx's parser) as the reference.

Random responses, valid and mutated (truncated, bytes inserted, deleted or
replaced, CRLFs turned into bare LFs, lying chunk sizes and lengths, obsolete
folding, odd Transfer-Encodings...), are served from a raw loopback socket.
For each, the native client must either return exactly what h11 parses from
the same bytes (status, reason, headers, body), or raise one of its own typed
errors (``HTTPClientError``) where h11 raises; never another exception, never
hang (every exchange runs under a timeout). The one place it may refuse what
h11 accepts is a documented limit (``ResponseTooLarge``) or a chunk-size of
17 to 20 hex digits (turnout takes at most 16).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from turnout.backends._client import HTTPClientError, HTTPPool, RemoteProtocolError, ResponseTooLarge


@dataclass(frozen=True)
class Parsed:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes


def h11_parse(data: bytes) -> Parsed | h11.RemoteProtocolError:
    """What h11, as a client that sent one POST, makes of ``data`` followed by the server closing."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
    conn.send(h11.Request(method="POST", target="/", headers=[("host", "fuzz"), ("content-length", "2")]))
    conn.send(h11.Data(data=b"{}"))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    conn.receive_data(b"")
    head: h11.Response | None = None
    body = b""
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                headers: dict[str, str] = {}
                for name, value in head.headers:
                    key, text = name.decode("ascii"), value.decode("latin-1")
                    headers[key] = f"{headers[key]}, {text}" if key in headers else text
                return Parsed(head.status_code, head.reason.decode("latin-1"), headers, body)
            else:
                assert isinstance(event, h11.InformationalResponse), f"unexpected h11 event {event!r}"
    except h11.RemoteProtocolError as exc:
        return exc


async def native_parse(data: bytes) -> Parsed | HTTPClientError:
    """What turnout's client makes of ``data``, served from a raw socket that closes after sending it."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            writer.write(data)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    pool = HTTPPool(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        async with asyncio.timeout(5):  # a hang fails the test with TimeoutError, not an HTTPClientError
            try:
                resp = await pool.request("POST", "/", b"{}", b"", connect_timeout=2.0)
                body = await resp.read()
            except HTTPClientError as exc:
                return exc
        return Parsed(resp.status, resp.reason, dict(resp.headers), body)
    finally:
        await pool.aclose()
        server.close()
        await server.wait_closed()


# -- responses ------------------------------------------------------------------------------------------------

NAMES = ["content-type", "x-request-id", "X-Mixed-Case", "server", "cache-control", "x-empty", "set-cookie"]
VALUES = st.text(st.sampled_from('abc XYZ019-_=;,/\t"\x01\x7f\xe9'), max_size=12)


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    """A well-formed HTTP/1.1 (or 1.0) response, in one of the three body framings, sometimes after a 100."""
    version = draw(st.sampled_from(["1.1", "1.1", "1.0"]))
    status = draw(st.sampled_from([200, 200, 201, 204, 206, 299, 304, 404, 500, 503, 999]))
    reason = draw(st.sampled_from(["OK", "", "Some Reason", "odd\treason\xe9"]))
    body = draw(st.binary(max_size=120))
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    fields = [(draw(st.sampled_from(NAMES)), draw(VALUES).strip(" \t")) for _ in range(draw(st.integers(0, 4)))]
    if framing == "length":
        n = str(len(body))
        fields += draw(
            st.sampled_from(
                [
                    [("Content-Length", n)],
                    [("content-length", n), ("Content-Length", n)],
                    [("content-length", f"{n}, {n}")],
                    [("content-length", "00" + n)],
                ]
            )
        )
    elif framing == "chunked":
        fields.append(("Transfer-Encoding", draw(st.sampled_from(["chunked", "Chunked", "CHUNKED"]))))
    fields = draw(st.permutations(fields))
    line_end = "\r\n"
    head = f"HTTP/{version} {status}" + (f" {reason}" if reason or draw(st.booleans()) else "") + line_end
    head += "".join(f"{k}:{draw(st.sampled_from(['', ' ', '  ', chr(9)]))}{v}{line_end}" for k, v in fields)
    out = head.encode("latin-1") + b"\r\n"
    if draw(st.booleans()):
        out = b"HTTP/1.1 100 Continue\r\n\r\n" + out
    if framing == "chunked":
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)]) if b > a]
        for piece in pieces:
            size = draw(st.sampled_from(["%x", "%X", "%04x"])) % len(piece)
            ext = draw(st.sampled_from(["", "", ";name=value", "; x", " "]))
            out += f"{size}{ext}\r\n".encode() + piece + b"\r\n"
        out += b"0\r\n" + draw(st.sampled_from([b"", b"x-trailer: yes\r\n", b"x-trailer: a\n"]))
        out += b"\r\n"
    else:
        out += body
    return out


HEAD_MUTATIONS = [
    (rb"\r\n", b"\n"),  # bare LF line ends (h11 accepts them)
    (rb"(?m)^(x-request-id:)", rb"\1\r\n folded"),  # obsolete line folding
    (rb"(?i)content-length: ?(\d+)", rb"Content-Length: -\1"),
    (rb"(?i)content-length: ?(\d+)", rb"content-length: \1\r\ncontent-length: 1\1"),
    (rb"(?i)content-length: ?(\d+)", b"content-length: \xb2"),
    (rb"(?i)content-length: ?(\d+)", rb"content-length: +\1"),
    (rb"(?i)transfer-encoding: ?(\w+)", rb"Transfer-Encoding: gzip, \1"),
    (rb"(?i)transfer-encoding: ?(\w+)", rb"Transfer-Encoding: \1\r\nTransfer-Encoding: \1"),
    (rb"(?i)transfer-encoding: ?(\w+)", rb"Transfer-Encoding: identity"),
    (rb"(?m)^([0-9a-fA-F]+)(\r\n)", rb"-\1\2"),  # chunk sizes int(x, 16) accepts and HTTP does not
    (rb"(?m)^([0-9a-fA-F]+)(\r\n)", rb"0x\1\2"),
    (rb"(?m)^([0-9a-fA-F]+)(\r\n)", rb"\1_0\2"),
    (rb"(?m)^([0-9a-fA-F]+)(\r\n)", rb" \1\2"),
    (rb"HTTP/1\.(\d) (\d+)", rb"HTTP/1.\1 \2\2"),
    (rb"HTTP/1\.(\d) (\d+)", rb"HTTP/2.\1 \2"),
    (rb"HTTP/1\.(\d) (\d+) ?", rb"HTTP/1.\1  \2"),
    (rb"HTTP/1\.1 100 Continue", rb"HTTP/1.1 101 Switching Protocols"),
    (rb"(?m)^(server|content-type):", rb"\1 :"),
    (rb"\r\n\r\n", rb"\r\n"),
    (rb"0\r\n(\r\n)?$", rb"0\r\nbad trailer\r\n\r\n"),
    (rb"0\r\n(\r\n)?$", rb"0\r\n content-length: 5\r\n\r\n"),
]
INTERESTING = b"\r\n \t\x00-x:0;\xb2\x80"


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = draw(responses())
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["regex", "truncate", "insert", "delete", "replace"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "regex":
            pattern, repl = draw(st.sampled_from(HEAD_MUTATIONS))
            data = re.sub(pattern, repl, data, count=draw(st.integers(0, 1)))
        elif kind == "truncate":
            data = data[:at]
        elif kind == "insert":
            data = data[:at] + bytes([draw(st.sampled_from(INTERESTING))]) + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + 1 :]
        else:
            data = data[:at] + bytes([draw(st.sampled_from(INTERESTING))]) + data[at + 1 :]
    return data


def stricter_on_purpose(exc: HTTPClientError, data: bytes) -> bool:
    """Where turnout may refuse what h11 accepts: a limit, or a chunk-size of 17 to 20 hex digits."""
    if isinstance(exc, ResponseTooLarge):
        return True
    return isinstance(exc, RemoteProtocolError) and re.search(rb"(?m)^[0-9A-Fa-f]{17,20}", data) is not None


def check(data: bytes) -> None:
    native = asyncio.run(native_parse(data))
    reference = h11_parse(data)
    if isinstance(native, Parsed):
        assert native == reference, f"native {native!r} but h11 {reference!r} for {data!r}"
    elif isinstance(reference, Parsed):
        assert stricter_on_purpose(native, data), f"native raised {native!r}, h11 parsed {reference!r} from {data!r}"


FUZZ = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(responses())
def test_valid_responses_parse_exactly_as_h11_parses_them(data: bytes) -> None:
    native = asyncio.run(native_parse(data))
    assert isinstance(native, Parsed), f"{native!r} for {data!r}"
    assert native == h11_parse(data)


@FUZZ
@given(mutated())
def test_mutated_responses_parse_as_h11_does_or_raise_typed_errors(data: bytes) -> None:
    check(data)


def test_known_disagreements_with_int_and_isdigit_are_refused() -> None:
    for data in (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n-1\r\nx\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0x1\r\nx\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1_0\r\n0123456789abcdef\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: \xb2\r\n\r\nxx",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nxxx",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nxYY0\r\n\r\n",
    ):
        assert isinstance(h11_parse(data), h11.RemoteProtocolError)
        assert isinstance(asyncio.run(native_parse(data)), RemoteProtocolError)
        check(data)


def test_a_bare_lf_head_hands_the_body_bytes_back() -> None:
    # The head ends at "\n\n", before the CRLF CRLF the client reads up to, which lies inside the body.
    data = b"HTTP/1.1 200 OK\ncontent-length: 9\n\nab\r\n\r\ncde"
    assert asyncio.run(native_parse(data)) == h11_parse(data) == Parsed(200, "OK", {"content-length": "9"}, b"ab\r\n\r\ncde")
