"""Issue #12's client defects, one regression test each: header injection, Happy Eyeballs, leaked responses,
bounded line splitting, strict JSON, sane usage counts, the idle deadline, Content-Length ownership."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from turnout.backends import OpenAIBackend, Timeouts, create_backend
from turnout.backends._client import HTTPPool, Limits, ResponseTooLarge
from turnout.backends._h1 import bounded_lines, check_request_headers
from turnout.backends._http import Deadlines, NativeTransport, iter_sse, loads, token_count, translate
from turnout.backends._net import free_port
from turnout.errors import BackendProtocolError, BackendTimeoutError, ConfigError
from turnout.testing import ScriptedServer, Step

SECRET = "sk-live-123"


@pytest.mark.parametrize("bad", [SECRET + "\n", SECRET + "\r\nx-injected: 1", SECRET + "\x00", "\x7f" + SECRET])
def test_a_header_value_that_would_break_the_request_is_refused_when_the_transport_is_built(bad: str) -> None:
    with pytest.raises(ValueError, match="'Authorization'") as info:
        OpenAIBackend("x", "http://127.0.0.1:9/v1", api_key=bad)
    assert SECRET not in str(info.value)  # the value is never echoed: it is a secret
    with pytest.raises(ValueError, match="'x-api-key'"):
        NativeTransport("http://127.0.0.1:9", {"x-api-key": bad})
    with pytest.raises(ConfigError, match="backends.prod"):  # through the registry: a config error naming the backend
        create_backend("openai", "prod", base_url="http://127.0.0.1:9/v1", api_key=bad)


async def test_the_httpx_transport_refuses_them_too() -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(ValueError, match="'Authorization'"):
            OpenAIBackend("x", "http://127.0.0.1:9/v1", api_key=SECRET + "\r\n", client=client)


@pytest.mark.parametrize("name", ["content-length", "Host", "transfer-encoding", "bad name", "x:y"])
def test_framing_headers_are_the_clients_and_names_must_be_tokens(name: str) -> None:
    with pytest.raises(ValueError, match=repr(name)):
        check_request_headers({name: "1"})


def test_surrounding_whitespace_and_non_latin1_values_are_refused_and_good_ones_encoded() -> None:
    for bad in (" " + SECRET, SECRET + "\t", "k\u20ac"):
        with pytest.raises(ValueError, match="'x-key'"):
            check_request_headers({"x-key": bad})
    assert check_request_headers({"a": "b\tc", "B-2": "\u00e9"}) == (b"a: b\tc\r\nB-2: \xe9\r\n")


def test_a_base_url_path_that_cannot_go_on_the_request_line_is_refused() -> None:
    for url in ("http://127.0.0.1:9/v 1", "http://127.0.0.1:9/v\u00e91", "http://127.0.0.1:99999/v1"):
        with pytest.raises(ValueError, match="bad base_url"):
            NativeTransport(url, {})


async def test_the_request_content_length_is_computed_by_the_client() -> None:
    heads: list[bytes] = []

    async def record(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        head = await r.readuntil(b"\r\n\r\n")
        heads.append(head)
        await r.readexactly(int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]))
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await w.drain()
        w.close()

    server = await asyncio.start_server(record, "127.0.0.1", 0)
    transport = NativeTransport(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", {"x-a": "b"})
    resp = await transport.send("POST", "/x", "héllo".encode(), connect_timeout=2)
    assert await resp.read() == b"ok"
    await transport.aclose()
    server.close()
    assert heads[0].lower().count(b"content-length") == 1 and b"content-length: 6\r\n" in heads[0]


@pytest.fixture
def black_hole() -> Iterator[tuple[str, int]]:
    """127.0.0.2:P, a listener whose accept queue is full: the kernel drops further SYNs, as a dead address does."""
    listener = socket.socket()
    listener.bind(("127.0.0.2", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):  # a non-blocking connect is under way
            s.connect(("127.0.0.2", port))
        fillers.append(s)
    time.sleep(0.1)
    yield "127.0.0.2", port
    for s in fillers:
        s.close()
    listener.close()


async def test_a_host_whose_first_address_is_dead_falls_back_to_the_next_fast(
    black_hole: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    dead, port = black_hole

    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nalive")
        await w.drain()

    live = await asyncio.start_server(answer, "127.0.0.1", port)
    loop = asyncio.get_running_loop()

    async def resolve(host: str, p: int, **kw: object) -> list[tuple[object, ...]]:
        # what a dual-stack name resolves to when its first address (IPv6, say) black-holes connections
        assert host == "dual.example"
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (dead, p)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", p)),
        ]

    monkeypatch.setattr(loop, "getaddrinfo", resolve)
    pool = HTTPPool(f"http://dual.example:{port}")
    started = time.monotonic()
    resp = await pool.request("GET", "/", b"", b"", connect_timeout=5.0)
    assert await resp.read() == b"alive"
    assert time.monotonic() - started < 2.0  # one Happy Eyeballs delay (0.25 s), not the 5 s connect timeout
    await pool.aclose()
    live.close()


async def test_a_response_dropped_unread_gives_its_pool_slot_back() -> None:
    with ScriptedServer(Step(text="hello")) as srv:
        pool = HTTPPool(srv.base_url, max_connections=1)
        leaked = await pool.request("POST", "/chat/completions", b"{}", b"", connect_timeout=1.0)
        assert leaked.status == 200
        del leaked  # forgot to read or aclose it
        gc.collect()
        resp = await pool.request("POST", "/chat/completions", b"{}", b"", connect_timeout=1.0)
        assert b"hello" in await resp.read()
        assert pool.open_connections == 1
        await pool.aclose()


async def _pieces(*parts: bytes) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


async def test_lines_are_split_across_pieces_without_cutting_characters() -> None:
    e = "é".encode()
    lines = [x async for x in bounded_lines(_pieces(b"da", b"ta: a" + e[:1], e[1:] + b"\r", b"\n\nlast\r"), 64)]
    assert lines == ["data: a\u00e9", "", "last"]


async def test_a_line_over_the_limit_raises_wherever_its_pieces_fall() -> None:
    assert [x async for x in bounded_lines(_pieces(b"x" * 8, b"\n"), 8)] == ["x" * 8]
    for parts in ([b"x" * 9], [b"xxxx", b"xxxxx"], [b"x" * 9 + b"\n"], [b"\n" + b"x" * 9], [b"xxxxx", b"xxxx\n"]):
        with pytest.raises(ResponseTooLarge):
            [x async for x in bounded_lines(_pieces(*parts), 8)]


async def test_an_event_over_the_limit_raises() -> None:
    async def lines() -> AsyncIterator[str]:
        for _ in range(100):
            yield "data: " + "x" * 10

    with pytest.raises(ResponseTooLarge, match="exceeds 500 characters"):
        [ev async for ev in iter_sse(lines(), max_event=500)]


def test_limits_must_be_positive_byte_counts() -> None:
    for bad in ({"body": 0}, {"line": -1}, {"event": True}, {"stream": 1.5}):
        with pytest.raises(ValueError, match="Limits"):
            Limits(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"a": -Infinity}', "1e400", '{"u": -1e999}'])
def test_json_that_is_not_json_is_a_protocol_error(text: str) -> None:
    with pytest.raises(BackendProtocolError, match="invalid JSON in the body"):
        loads(text, "b", "m", "the body")


def test_big_integers_are_still_json() -> None:
    # (orjson reads them as floats, the standard parser as ints; either way token_count finds them insane)
    n = loads(b'{"n": 123456789012345678901234567890}', "b", "m", "x")["n"]
    assert n == pytest.approx(1.2345678901234568e29) and token_count(n) is None


@pytest.mark.parametrize(
    ("value", "count"),
    [
        (0, 0),
        (12, 12),
        (12.0, 12),
        (10**9, 10**9),
        (10**9 + 1, None),
        (-1, None),
        (-1000000, None),
        (1.5, None),
        (float("nan"), None),
        (float("inf"), None),
        ("12", None),
        (True, None),
        (None, None),
        ([1], None),
    ],
)
def test_token_counts_are_sane_or_none(value: object, count: int | None) -> None:
    assert token_count(value) == count


async def test_the_idle_deadline_runs_from_the_last_event_and_never_past_the_total() -> None:
    dl = Deadlines(Timeouts(connect=1, first_token=0.5, total=10, idle=0.2))
    assert dl.next_event() == dl.first and dl.phase == "first_token"
    dl.got_first()
    now = asyncio.get_running_loop().time()
    assert now + 0.2 <= dl.next_event() < now + 0.3 and dl.phase == "idle" and dl.limit() == 0.2
    with pytest.raises(BackendTimeoutError, match="no stream event for 0.2s") as info, translate("b", "m", dl):
        async with asyncio.timeout_at(dl.next_event()):
            await asyncio.sleep(1)
    assert info.value.phase == "idle"
    long_idle = Deadlines(Timeouts(connect=1, first_token=0.5, total=1, idle=60))  # idle > total: total rules
    long_idle.got_first()
    assert long_idle.next_event() == long_idle.total and long_idle.phase == "total"


def test_free_port_gives_a_bindable_port() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
