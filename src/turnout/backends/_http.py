"""Plumbing shared by the HTTP backends: the transport seam, deadlines, SSE, error mapping.

A backend sends its requests through a *transport*: by default turnout's own
HTTP/1.1 keep-alive pool (:class:`NativeTransport` over
:mod:`turnout.backends._client`, about ten times cheaper per request than
httpx), or, when the caller hands the backend an ``httpx.AsyncClient``
(HTTP/2, ``httpx.MockTransport`` in tests), :class:`HttpxTransport` over that
client, which stays the caller's to close. When the environment names a proxy
for the backend's URL (``HTTPS_PROXY`` and friends, as httpx honours them), an
httpx client the backend owns is used instead, so deployments behind an egress
proxy keep working.

Everything foreign that can go wrong on the wire is translated *here* into
:mod:`turnout.errors` classes, in one context manager (:func:`translate`), the
way httpx maps httpcore's errors in one place. Backends never let a transport
exception escape.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from turnout.backends import _client
from turnout.backends.base import Timeouts
from turnout.errors import (
    BackendConnectionError,
    BackendError,
    BackendProtocolError,
    BackendStatusError,
    BackendTimeoutError,
)

try:  # orjson parses and writes the bodies several times faster; optional (the 'server' extra brings it)
    import orjson

    def dumps(obj: Any) -> bytes:
        """Compact JSON bytes of a request body."""
        return orjson.dumps(obj)

    def _fast_loads(data: str | bytes) -> Any:
        return orjson.loads(data)
except ImportError:  # pragma: no cover - exercised when orjson is absent

    def dumps(obj: Any) -> bytes:
        """Compact JSON bytes of a request body."""
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    _fast_loads = json.loads

#: the most of an error body kept on a BackendStatusError (bodies can be whole HTML pages)
MAX_ERROR_BODY = 4096


class WireResponse(Protocol):
    """An answer whose status and headers have arrived; the body is still to be read."""

    status: int
    reason: str

    async def read(self) -> bytes: ...
    def iter_lines(self) -> AsyncIterator[str]: ...
    async def aclose(self) -> None: ...


class Transport(Protocol):
    """How a backend sends one request to its base URL. ``path`` is relative to the base URL's path."""

    async def send(self, method: str, path: str, body: bytes, *, connect_timeout: float) -> WireResponse: ...
    async def aclose(self) -> None: ...


class NativeTransport:
    """turnout's own keep-alive pool (:class:`~turnout.backends._client.HTTPPool`) with fixed headers.

    ``headers`` (credentials, API version, content type) are encoded once here,
    not per request. The transport owns the pool; :meth:`aclose` closes it.
    """

    def __init__(self, base_url: str, headers: Mapping[str, str], *, max_connections: int = 256) -> None:
        try:
            self.pool = _client.HTTPPool(base_url, max_connections=max_connections)
        except _client.InvalidURL as exc:
            raise ValueError(f"bad base_url: {exc}") from None
        block = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._headers = block.encode("latin-1")

    async def send(self, method: str, path: str, body: bytes, *, connect_timeout: float) -> WireResponse:
        return await self.pool.request(method, path, body, self._headers, connect_timeout=connect_timeout)

    async def aclose(self) -> None:
        await self.pool.aclose()


class _HttpxResponse:
    __slots__ = ("_resp", "status", "reason")

    def __init__(self, resp: httpx.Response) -> None:
        self._resp = resp
        self.status = resp.status_code
        self.reason = resp.reason_phrase

    async def read(self) -> bytes:
        return await self._resp.aread()

    def iter_lines(self) -> AsyncIterator[str]:
        return self._resp.aiter_lines()

    async def aclose(self) -> None:
        await self._resp.aclose()


class HttpxTransport:
    """An ``httpx.AsyncClient``: a caller's own (proxies, HTTP/2, ``httpx.MockTransport`` in tests),
    or one made here when the environment says to use a proxy.

    A caller's client is *not* closed by :meth:`aclose` (``owned=False``): whoever created it closes it.
    """

    def __init__(self, client: httpx.AsyncClient, base_url: str, headers: Mapping[str, str], *, owned: bool = False) -> None:
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers)
        self.owned = owned

    async def send(self, method: str, path: str, body: bytes, *, connect_timeout: float) -> WireResponse:
        # read timeouts stay off: first-token and total deadlines are enforced around each read
        req = self.client.build_request(method, self.base_url + path, content=body, headers=self.headers,
                                        timeout=httpx.Timeout(None, connect=connect_timeout, pool=connect_timeout))
        return _HttpxResponse(await self.client.send(req, stream=True))

    async def aclose(self) -> None:
        if self.owned:
            await self.client.aclose()


def proxy_applies(base_url: str) -> bool:
    """True when the environment (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, minus ``NO_PROXY``) proxies this URL."""
    import urllib.request
    from urllib.parse import urlsplit

    parts = urlsplit(base_url)
    proxies = urllib.request.getproxies()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(parts.hostname or "")


def make_transport(base_url: str, headers: Mapping[str, str], *, client: httpx.AsyncClient | None,
                   max_connections: int) -> Transport:
    """The caller's httpx client when given; an owned httpx client when a proxy applies (the native
    client speaks no proxy protocol); else a native keep-alive pool of ``max_connections``."""
    if client is not None:
        return HttpxTransport(client, base_url, headers)
    if proxy_applies(base_url):
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        return HttpxTransport(httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(None), trust_env=True),
                              base_url, headers, owned=True)
    return NativeTransport(base_url, headers, max_connections=max_connections)


class Deadlines:
    """The first-token and total deadlines of one attempt, on the loop's clock.

    ``current`` is the first-token deadline until :meth:`got_first` is called,
    then the total one. ``phase`` names which of them a timeout hit.
    """

    __slots__ = ("timeouts", "total", "first", "first_seen")

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
    """Map transport (native or httpx) and asyncio errors raised inside the block to turnout's BackendError tree."""
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
    # -- the native client ----------------------------------------------------
    except _client.ConnectTimeout as e:
        raise BackendTimeoutError(f"could not connect in time ({e})", backend=backend, model=model, phase="connect") from e
    except (_client.ConnectError, _client.ReadError) as e:
        raise BackendConnectionError(str(e), backend=backend, model=model) from e
    except _client.RemoteProtocolError as e:
        # a body cut short is a broken connection to the caller: retryable, like httpx's RemoteProtocolError
        raise BackendConnectionError(f"RemoteProtocolError: {e}", backend=backend, model=model) from e
    # -- a caller's httpx client ----------------------------------------------
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
    except OSError as e:  # a socket error no layer above wrapped
        raise BackendConnectionError(f"{type(e).__name__}: {e}", backend=backend, model=model) from e


async def raise_for_status(resp: WireResponse, backend: str, model: str | None) -> None:
    """Turn an HTTP error status into BackendStatusError, with the provider's own message."""
    if resp.status < 400:
        return
    raw = (await resp.read())[:MAX_ERROR_BODY].decode("utf-8", "replace")
    message = error_message(raw) or resp.reason
    param, reason = validation_error(message)
    if reason is not None:  # the server validated the request and refused it (llama.cpp answers that with a 500)
        raise BackendStatusError(reason, backend=backend, status=resp.status, model=model, body=raw,
                                 request_fault=True, param=param)
    raise BackendStatusError(message, backend=backend, status=resp.status, model=model, body=raw)


#: a pydantic / FastAPI request validation report, as OpenAI-compatible Python servers send it
_VALIDATION = re.compile(r"validation error.*?'loc': \(([^)]*)\).*?'msg': '([^']*)'", re.S)


def validation_error(message: str) -> tuple[str | None, str | None]:
    """(param, reason) when ``message`` is a request-validation report naming a body field, else (None, None).

    ``"1 validation error: {'type': 'int_parsing', 'loc': ('body', 'seed'), 'msg': 'Input should be ...'}"``
    gives ``("seed", "seed: Input should be ...")``.
    """
    m = _VALIDATION.search(message)
    if not m:
        return None, None
    loc = [part.strip().strip("'\"") for part in m.group(1).split(",") if part.strip()]
    if not loc or loc[0] != "body":
        return None, None
    param = ".".join(loc[1:]) or None
    return param, f"{param}: {m.group(2)}" if param else m.group(2)


async def fetch_body(transport: Transport, path: str, body: bytes, backend: str, model: str, timeouts: Timeouts) -> bytes:
    """One non-streamed POST under the connect, first-token (response head) and total deadlines;
    every failure is translated."""
    dl = Deadlines(timeouts)
    with translate(backend, model, dl):
        async with asyncio.timeout_at(dl.current):
            resp = await transport.send("POST", path, body, connect_timeout=timeouts.connect)
        try:
            dl.got_first()
            async with asyncio.timeout_at(dl.current):
                await raise_for_status(resp, backend, model)
                return await resp.read()
        finally:
            await resp.aclose()


@asynccontextmanager
async def open_stream(transport: Transport, path: str, body: bytes, backend: str, model: str,
                      deadlines: Deadlines) -> AsyncIterator[WireResponse]:
    """POST a streamed request and yield the response once its status is known to be good; the
    response is closed on the way out (which gives its connection back only if it was read to the
    end). Reading the body (and translating its errors) is the caller's job, under ``deadlines``."""
    with translate(backend, model, deadlines):
        async with asyncio.timeout_at(deadlines.current):
            resp = await transport.send("POST", path, body, connect_timeout=deadlines.timeouts.connect)
    try:
        with translate(backend, model, deadlines):
            async with asyncio.timeout_at(deadlines.current):
                await raise_for_status(resp, backend, model)
        yield resp
    finally:
        await resp.aclose()


def error_message(raw: str) -> str:
    """The human message inside an OpenAI- or Anthropic-style error body, else the raw text.

    Without the provider's stack trace (a server that puts one in its error message shows
    its own files, which are no business of our clients) and cut to 300 characters; the
    whole body stays on the error (``BackendStatusError.body``) for the server log.
    """
    try:
        obj = json.loads(raw)
    except ValueError:
        return _without_trace(raw)
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return _without_trace(err["message"])
        if isinstance(err, str):
            return _without_trace(err)
    return _without_trace(raw)


def _without_trace(text: str) -> str:
    """``text`` up to a Python traceback (``Traceback (most recent call last)`` or ``File "...", line N``)."""
    cut = re.search(r'Traceback \(most recent call last\)|^\s*File "[^"]+", line \d+', text, re.M)
    return (text[: cut.start()] if cut else text).strip()[:300]


def loads(data: str | bytes, backend: str, model: str | None, what: str) -> Any:
    """Parse JSON (orjson when installed); raise BackendProtocolError naming what was being parsed."""
    try:
        return _fast_loads(data)
    except ValueError:
        pass  # orjson is stricter (NaN, huge integers): let the standard parser decide and word the error
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
