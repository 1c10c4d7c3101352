"""Plumbing shared by the HTTP backends: the pooled client, deadlines, SSE, error mapping.

Everything foreign that can go wrong on the wire is translated *here* into
:mod:`turnout.errors` classes, in one context manager (:func:`translate`), the
way httpx maps httpcore's errors in one place. Backends never let an
``httpx`` exception escape.
"""

from __future__ import annotations

import asyncio
import json
import math
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from turnout.backends.base import Timeouts
from turnout.errors import (
    BackendConnectionError,
    BackendError,
    BackendProtocolError,
    BackendStatusError,
    BackendTimeoutError,
)

#: the most of an error body kept on a BackendStatusError (bodies can be whole HTML pages)
MAX_ERROR_BODY = 4096


def make_client(
    *, max_connections: int, connect_timeout: float, headers: dict[str, str], ssl_context: ssl.SSLContext | None = None
) -> httpx.AsyncClient:
    """One pooled HTTP/1.1 keep-alive client per backend.

    Read timeouts are off on purpose: first-token and total deadlines are
    enforced with ``asyncio.timeout`` around each read, so a slow stream is
    judged on the whole answer and not on the gap between two chunks.
    """
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=30.0,
    )
    timeout = httpx.Timeout(None, connect=connect_timeout, pool=None)
    # Building an SSL context loads the CA bundle (~30 ms): shards share one.
    verify: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
    return httpx.AsyncClient(limits=limits, timeout=timeout, headers=headers, http2=False, verify=verify)


class ClientPool:
    """Several pooled httpx clients used as one, each request going to the least busy.

    Why not one client with 256 connections: httpcore's pool does work
    proportional to (waiting requests × connections) on every state change, so
    one pool of 64 busy connections cost about 9 ms of CPU per request on a
    2-core machine, against about 2 ms for 8 pools of 8 (measured with the
    scripted server at concurrency 64). Each shard holds at most
    ``shard_size`` keep-alive connections; idle shards open nothing.
    """

    def __init__(self, clients: list[httpx.AsyncClient], *, owned: bool) -> None:
        self.clients = clients
        self.inflight = [0] * len(clients)
        self.owned = owned

    @classmethod
    def create(cls, *, max_connections: int, connect_timeout: float, headers: dict[str, str],
               shard_size: int = 8) -> ClientPool:
        n = max(1, math.ceil(max_connections / shard_size))
        per = math.ceil(max_connections / n)
        ctx = ssl.create_default_context()
        return cls([make_client(max_connections=per, connect_timeout=connect_timeout, headers=headers, ssl_context=ctx)
                    for _ in range(n)], owned=True)

    def acquire(self) -> int:
        """Index of the least busy client, counted as busy until :meth:`release`."""
        i = min(range(len(self.inflight)), key=self.inflight.__getitem__)
        self.inflight[i] += 1
        return i

    def release(self, i: int) -> None:
        self.inflight[i] -= 1

    async def aclose(self) -> None:
        if self.owned:
            for c in self.clients:
                await c.aclose()


class Deadlines:
    """The first-token and total deadlines of one attempt, on the loop's clock.

    ``current`` is the first-token deadline until :meth:`got_first` is called,
    then the total one. ``phase`` names which of them a timeout hit.
    """

    def __init__(self, timeouts: Timeouts) -> None:
        now = asyncio.get_running_loop().time()
        self.timeouts = timeouts
        self.total = now + timeouts.total
        self.first = min(self.total, now + timeouts.first_token)
        self.first_seen = False

    def got_first(self) -> None:
        self.first_seen = True

    @property
    def current(self) -> float:
        return self.total if self.first_seen else self.first

    @property
    def phase(self) -> str:
        if not self.first_seen and self.first < self.total:
            return "first_token"
        return "total"

    def limit(self) -> float:
        return self.timeouts.total if self.phase == "total" else self.timeouts.first_token


@contextmanager
def translate(backend: str, model: str | None, deadlines: Deadlines | None = None) -> Iterator[None]:
    """Map httpx and asyncio errors raised inside the block to turnout's BackendError tree."""
    try:
        yield
    except BackendError:
        raise
    except TimeoutError as e:  # asyncio.timeout_at expired (builtin TimeoutError on 3.11+)
        phase = deadlines.phase if deadlines else "total"
        limit = deadlines.limit() if deadlines else float("nan")
        raise BackendTimeoutError(
            f"no {'first token' if phase == 'first_token' else 'complete answer'} within {limit:g}s",
            backend=backend,
            model=model,
            phase=phase,
        ) from e
    except (httpx.ConnectTimeout, httpx.PoolTimeout) as e:
        raise BackendTimeoutError(
            f"could not connect in time ({type(e).__name__})", backend=backend, model=model, phase="connect"
        ) from e
    except httpx.TimeoutException as e:
        raise BackendTimeoutError(f"{type(e).__name__}: {e}", backend=backend, model=model, phase="total") from e
    except (httpx.ConnectError, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.CloseError) as e:
        raise BackendConnectionError(f"{type(e).__name__}: {e or 'connection lost'}", backend=backend, model=model) from e
    except httpx.DecodingError as e:
        raise BackendProtocolError(f"undecodable body: {e}", backend=backend, model=model) from e
    except httpx.UnsupportedProtocol as e:
        raise BackendConnectionError(
            f"bad base_url ({e}); it must start with http:// or https://", backend=backend, model=model, retryable=False
        ) from e
    except httpx.TransportError as e:
        raise BackendConnectionError(f"{type(e).__name__}: {e}", backend=backend, model=model) from e


async def raise_for_status(resp: httpx.Response, backend: str, model: str | None) -> None:
    """Turn an HTTP error status into BackendStatusError, with the provider's own message."""
    if resp.status_code < 400:
        return
    raw = (await resp.aread())[:MAX_ERROR_BODY].decode("utf-8", "replace")
    raise BackendStatusError(error_message(raw) or resp.reason_phrase, backend=backend, status=resp.status_code, model=model, body=raw)


async def fetch_body(
    pool: ClientPool,
    build: Callable[[httpx.AsyncClient], httpx.Request],
    backend: str,
    model: str,
    timeouts: Timeouts,
) -> bytes:
    """One non-streamed exchange on the least busy pooled client, under the connect,
    first-token (response headers) and total deadlines; every failure is translated."""
    dl = Deadlines(timeouts)
    slot = pool.acquire()
    client = pool.clients[slot]
    try:
        with translate(backend, model, dl):
            async with asyncio.timeout_at(dl.current):
                resp = await client.send(build(client), stream=True)
            try:
                dl.got_first()
                async with asyncio.timeout_at(dl.current):
                    await raise_for_status(resp, backend, model)
                    return await resp.aread()
            finally:
                await resp.aclose()
    finally:
        pool.release(slot)


@asynccontextmanager
async def open_stream(
    pool: ClientPool,
    build: Callable[[httpx.AsyncClient], httpx.Request],
    backend: str,
    model: str,
    deadlines: Deadlines,
) -> AsyncIterator[httpx.Response]:
    """Send a streamed request on the least busy pooled client and yield the response once its
    status is known to be good; the response is closed and the slot released on the way out.
    Reading the body (and translating its errors) is the caller's job, under ``deadlines``."""
    slot = pool.acquire()
    client = pool.clients[slot]
    try:
        with translate(backend, model, deadlines):
            async with asyncio.timeout_at(deadlines.current):
                resp = await client.send(build(client), stream=True)
        try:
            with translate(backend, model, deadlines):
                async with asyncio.timeout_at(deadlines.current):
                    await raise_for_status(resp, backend, model)
            yield resp
        finally:
            await resp.aclose()
    finally:
        pool.release(slot)


def error_message(raw: str) -> str:
    """The human message inside an OpenAI- or Anthropic-style error body, else the raw text."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return raw.strip()[:300]
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
        if isinstance(err, str):
            return err
    return raw.strip()[:300]


def loads(data: str | bytes, backend: str, model: str | None, what: str) -> Any:
    """json.loads that raises BackendProtocolError naming what was being parsed."""
    try:
        return json.loads(data)
    except ValueError as e:
        snippet = data[:120] if isinstance(data, str) else data[:120].decode("utf-8", "replace")
        raise BackendProtocolError(f"invalid JSON in {what}: {e} (got {snippet!r})", backend=backend, model=model) from e


@dataclass(slots=True)
class SSEEvent:
    """One server-sent event: its ``event`` name (``message`` by default) and joined ``data``."""

    event: str
    data: str


async def iter_sse(lines: AsyncIterator[str]) -> AsyncIterator[SSEEvent]:
    """Parse server-sent events (WHATWG rules) from decoded lines.

    Multi-line ``data:`` fields are joined with ``\\n``; ``:`` comment lines
    (keep-alives) and ``id:``/``retry:`` fields are skipped; a blank line
    dispatches. A last event not followed by a blank line is still dispatched:
    some servers close right after it, and dropping it would lose ``[DONE]``.
    """
    event = ""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield SSEEvent(event or "message", "\n".join(data))
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value
        # id, retry and unknown fields are ignored, as the spec says
    if data:
        yield SSEEvent(event or "message", "\n".join(data))


def estimate_tokens(text: str) -> int:
    """Approximate token count: about 4 characters per token for English BPE vocabularies.

    Used only when a provider sends no usage (llama.cpp's server when streaming).
    It is an estimate, within roughly ±30% of the real tokenizer on prose.
    """
    return math.ceil(len(text) / 4) if text else 0


def estimate_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Approximate prompt tokens of a chat: text of every message plus ~4 tokens of framing each."""
    total = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        total += estimate_tokens(content or "") + 4
    return total
