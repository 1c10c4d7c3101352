"""turnout's own HTTP/1.1 client (backends/_client.py): keep-alive, bounds, body framings, TLS, faults."""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Self

import pytest

from turnout.backends._client import ConnectTimeout, HTTPPool, IncompleteResponse, ReadError, RemoteProtocolError
from turnout.backends._http import translate
from turnout.errors import BackendConnectionError, BackendProtocolError, BackendTimeoutError
from turnout.testing.scripted import ScriptedServer, Step

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A loopback server whose every connection runs ``handler``; counts the connections it accepted."""

    def __init__(self, handler: Handler, ssl_ctx: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_ctx = ssl_ctx
        self.connections = 0

    async def __aenter__(self) -> Self:
        async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(r, w)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                w.close()

        self.server = await asyncio.start_server(on_conn, "127.0.0.1", 0, ssl=self.ssl_ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()


async def read_request(r: asyncio.StreamReader) -> bytes:
    head = await r.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0)
    return head + await r.readexactly(length)


def answer(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def test_sequential_requests_reuse_one_keep_alive_connection() -> None:
    with ScriptedServer(Step(text="hi")) as srv:
        pool = HTTPPool(srv.base_url)
        try:
            for _ in range(5):
                resp = await pool.request(
                    "POST",
                    "/chat/completions",
                    b'{"model": "m", "messages": []}',
                    b"content-type: application/json\r\n",
                    connect_timeout=1.0,
                )
                assert resp.status == 200 and b"hi" in await resp.read()
            assert pool.open_connections == 1 and pool.idle_connections == 1 and srv.count == 5
        finally:
            await pool.aclose()
        assert pool.idle_connections == 0


async def test_pool_never_opens_more_than_max_connections_and_serves_every_waiter() -> None:
    with ScriptedServer(Step(text="slow", latency=0.05)) as srv:
        pool = HTTPPool(srv.base_url, max_connections=2)
        peak = 0

        async def one() -> bytes:
            nonlocal peak
            resp = await pool.request("POST", "/chat/completions", b"{}", b"", connect_timeout=5.0)
            peak = max(peak, pool.open_connections)
            return await resp.read()

        try:
            bodies = await asyncio.gather(*(one() for _ in range(7)))
            assert len(bodies) == 7 and all(b"slow" in b for b in bodies)
            assert peak == 2 and pool.open_connections == 2
        finally:
            await pool.aclose()


async def test_waiting_for_a_full_pool_is_bounded_by_the_connect_timeout_and_frees_nothing() -> None:
    with ScriptedServer(Step(latency=0.5)) as srv:
        pool = HTTPPool(srv.base_url, max_connections=1)
        try:
            busy = asyncio.create_task(pool.request("POST", "/chat/completions", b"{}", b"", connect_timeout=1.0))
            await asyncio.sleep(0.05)
            with pytest.raises(ConnectTimeout):
                await pool.request("POST", "/chat/completions", b"{}", b"", connect_timeout=0.05)
            with pytest.raises(BackendTimeoutError) as info, translate("b", "m"):
                await pool.request("POST", "/chat/completions", b"{}", b"", connect_timeout=0.05)
            assert info.value.phase == "connect"
            await (await busy).read()
            assert pool.open_connections == 1  # the timed-out waiters took no slot
        finally:
            await pool.aclose()


async def test_a_cancelled_exchange_closes_its_connection_and_frees_the_slot() -> None:
    with ScriptedServer(Step(latency=5.0)) as srv:
        pool = HTTPPool(srv.base_url, max_connections=1)
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await pool.request("POST", "/chat/completions", b"{}", b"", connect_timeout=1.0)
            assert pool.open_connections == 0
            srv.script.default = Step(text="fresh")
            resp = await pool.request("POST", "/chat/completions", b"{}", b"", connect_timeout=1.0)
            assert b"fresh" in await resp.read()
        finally:
            await pool.aclose()


async def test_an_idle_connection_the_server_closed_is_not_reused() -> None:
    async def once_then_close(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(answer(b"one"))  # keep-alive announced, but the server hangs up right after
        await w.drain()

    async with RawServer(once_then_close) as srv:
        pool = HTTPPool(f"http://127.0.0.1:{srv.port}")
        try:
            for _ in range(3):
                resp = await pool.request("POST", "/", b"{}", b"", connect_timeout=1.0)
                assert await resp.read() == b"one"
                await asyncio.sleep(0.05)  # the server's FIN arrives while the connection is idle
            assert srv.connections == 3
        finally:
            await pool.aclose()


async def test_chunked_gzip_and_sse_lines_are_decoded() -> None:
    text = b'data: {"a": 1}\r\n\r\ndata: [DONE]\n\n'
    packed = gzip.compress(text)

    async def chunked(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            await read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-encoding: gzip\r\n\r\n")
            for i in range(0, len(packed), 7):  # awkward chunk boundaries
                part = packed[i : i + 7]
                w.write(b"%x\r\n%s\r\n" % (len(part), part))
                await w.drain()
            w.write(b"0\r\n\r\n")

    async with RawServer(chunked) as srv:
        pool = HTTPPool(f"http://127.0.0.1:{srv.port}/api")
        try:
            resp = await pool.request("POST", "/x", b"{}", b"", connect_timeout=1.0)
            assert [line async for line in resp.iter_lines()] == ['data: {"a": 1}', "", "data: [DONE]", ""]
            resp = await pool.request("POST", "/x", b"{}", b"", connect_timeout=1.0)
            assert await resp.read() == text
            assert srv.connections == 1  # a chunked answer read to its end keeps the connection
        finally:
            await pool.aclose()


@pytest.mark.parametrize(
    ("reply", "error", "translated"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\nshort", IncompleteResponse, BackendConnectionError),
        (b"SPDY/9 what\r\n\r\n", RemoteProtocolError, BackendProtocolError),
        (b"", ReadError, BackendConnectionError),
    ],
    ids=["body-cut-short", "not-http", "closed-without-answer"],
)
async def test_broken_answers_raise_and_translate(reply: bytes, error: type, translated: type) -> None:
    async def broken(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(reply)
        await w.drain()

    async with RawServer(broken) as srv:
        pool = HTTPPool(f"http://127.0.0.1:{srv.port}")
        try:
            with pytest.raises(error):
                resp = await pool.request("POST", "/", b"{}", b"", connect_timeout=1.0)
                await resp.read()
            with pytest.raises(translated), translate("b", "m"):
                resp = await pool.request("POST", "/", b"{}", b"", connect_timeout=1.0)
                await resp.read()
            assert pool.open_connections == 0
        finally:
            await pool.aclose()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a test certificate")
async def test_https_verifies_the_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def ok(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            await read_request(r)
            w.write(answer(b"secure"))

    async with RawServer(ok, server_ctx) as srv:
        trusting = ssl.create_default_context(cafile=str(cert))
        pool = HTTPPool(f"https://localhost:{srv.port}", ssl_context=trusting)
        try:
            resp = await pool.request("POST", "/", b"{}", b"", connect_timeout=2.0)
            assert await resp.read() == b"secure"
        finally:
            await pool.aclose()
        strict = HTTPPool(f"https://localhost:{srv.port}")  # certifi's bundle does not trust it
        with pytest.raises(BackendConnectionError, match="TLS"), translate("b", "m"):
            await strict.request("POST", "/", b"{}", b"", connect_timeout=2.0)
        await strict.aclose()


async def test_a_proxy_in_the_environment_switches_the_backend_to_httpx(monkeypatch) -> None:
    from turnout.backends._http import HttpxTransport, NativeTransport, make_transport, proxy_applies

    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    assert isinstance(make_transport("https://api.example.com/v1", {}, client=None, max_connections=4), NativeTransport)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    assert proxy_applies("https://api.example.com/v1") and not proxy_applies("http://127.0.0.1:8000/v1")
    t = make_transport("https://api.example.com/v1", {}, client=None, max_connections=4)
    assert isinstance(t, HttpxTransport) and t.owned
    await t.aclose()
    assert t.client.is_closed  # owned: the backend closes it
    assert isinstance(make_transport("http://127.0.0.1:8000/v1", {}, client=None, max_connections=4), NativeTransport)


LLAMA_VALIDATION_500 = json.dumps(
    {
        "error": {
            "message": (
                "1 validation error:\n  {'type': 'int_parsing', 'loc': ('body', 'seed'), "
                "'msg': 'Input should be a valid integer, unable to parse string as an integer', 'input': 'x'}\n\n"
                '  File "/site-packages/llama_cpp/server/app.py", '
                "line 376, in create_chat_completion\n    POST /v1/chat/completions"
            ),
            "type": "internal_server_error",
        }
    }
)


class _Answer:
    def __init__(self, status: int, body: str) -> None:
        self.status, self.reason, self._body = status, "Internal Server Error", body.encode()

    async def read(self) -> bytes:
        return self._body


async def test_a_server_answering_its_own_request_validation_with_a_500_is_the_requests_fault():
    from turnout.backends._http import raise_for_status
    from turnout.errors import BackendStatusError

    with pytest.raises(BackendStatusError) as info:
        await raise_for_status(_Answer(500, LLAMA_VALIDATION_500), "local", "smollm2")
    err = info.value
    assert err.request_fault and not err.retryable and err.param == "seed"
    assert "Input should be a valid integer" in str(err) and "File " not in str(err) and "app.py" not in str(err)
    with pytest.raises(BackendStatusError) as plain:  # an ordinary 500 stays the provider's trouble
        await raise_for_status(_Answer(500, json.dumps({"error": {"message": "CUDA out of memory"}})), "x", "m")
    assert plain.value.retryable and not plain.value.request_fault


def test_provider_stack_traces_are_cut_from_error_messages():
    from turnout.backends._http import error_message

    raw = 'boom\nTraceback (most recent call last):\n  File "/srv/app.py", line 3, in f\n    x()\nValueError'
    assert error_message(raw) == "boom"
    assert error_message(json.dumps({"error": {"message": "bad thing"}})) == "bad thing"
