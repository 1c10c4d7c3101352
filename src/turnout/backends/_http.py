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

Both transports bound what an answer may make turnout hold (:class:`Limits`:
32 MiB for a body read whole, 1 MiB for a stream line and for one server-sent
event, by default), refuse request headers that would break the request on
the wire (CR, LF, NUL: a ValueError naming the header when the transport is
built), and read JSON strictly (``NaN``, ``Infinity`` and numbers beyond a
double's range are not JSON: BackendProtocolError). A stream may also go quiet
for at most ``Timeouts.idle`` seconds between two events.

How wire trouble is classed (the gateway falls back on every one of them before
the first byte reaches its client; after it, the stream ends with an error event):

==============================================  ===========================================
what happened                                   turnout error
==============================================  ===========================================
refused, reset, unreachable, TLS, body cut off  BackendConnectionError (retryable)
no connection / first token / event / answer    BackendTimeoutError, ``phase`` connect /
in time                                         first_token / idle / total (retryable)
malformed head, length, chunk, gzip, JSON, SSE  BackendProtocolError (retryable)
over a Limits bound                             BackendProtocolError (not retryable)
==============================================  ===========================================
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from turnout import fastjson
from turnout.backends import _client
from turnout.backends._h1 import Limits, ResponseTooLarge, bounded_lines, check_request_headers
from turnout.backends.base import Timeouts
from turnout.errors import (
    BackendConnectionError,
    BackendError,
    BackendProtocolError,
    BackendStatusError,
    BackendTimeoutError,
)
from turnout.fastjson import dumps as dumps  # re-exported: compact JSON bytes of a request body
from turnout.tokens import MAX_SANE_TOKENS, sane_count
from turnout.types import Usage

#: the most of an error body kept on a BackendStatusError (bodies can be whole HTML pages)
MAX_ERROR_BODY = 4096
_DEFAULT_LIMITS = Limits()


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

    ``headers`` (credentials, API version, content type) are checked and
    encoded once here, not per request: a value with CR, LF or NUL raises
    ValueError naming the header. The transport owns the pool; :meth:`aclose`
    closes it. ``limits`` bounds every answer.
    """

    def __init__(
        self, base_url: str, headers: Mapping[str, str], *, max_connections: int = 256, limits: Limits | None = None
    ) -> None:
        self._headers = check_request_headers(headers)
        try:
            self.pool = _client.HTTPPool(base_url, max_connections=max_connections, limits=limits)
        except _client.InvalidURL as exc:
            raise ValueError(f"bad base_url: {exc}") from None
        self.limits = self.pool.limits

    async def send(self, method: str, path: str, body: bytes, *, connect_timeout: float) -> WireResponse:
        return await self.pool.request(method, path, body, self._headers, connect_timeout=connect_timeout)

    async def aclose(self) -> None:
        await self.pool.aclose()


class _HttpxResponse:
    """An httpx answer read under the same Limits as the native client's."""

    __slots__ = ("_limits", "_resp", "reason", "status")

    def __init__(self, resp: httpx.Response, limits: Limits) -> None:
        self._resp = resp
        self._limits = limits
        self.status = resp.status_code
        self.reason = resp.reason_phrase

    async def _pieces(self, budget: int) -> AsyncIterator[bytes]:
        declared = self._resp.headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > budget:
            raise ResponseTooLarge(f"the body's content-length {declared} exceeds {budget} bytes")
        total = 0
        async for piece in self._resp.aiter_bytes():
            total += len(piece)
            if total > budget:
                raise ResponseTooLarge(f"the body exceeds {budget} bytes")
            yield piece

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self._pieces(self._limits.body)])

    def iter_lines(self) -> AsyncIterator[str]:
        return bounded_lines(self._pieces(self._limits.stream), self._limits.line)

    async def aclose(self) -> None:
        await self._resp.aclose()


class HttpxTransport:
    """An ``httpx.AsyncClient``: a caller's own (proxies, HTTP/2, ``httpx.MockTransport`` in tests),
    or one made here when the environment says to use a proxy.

    A caller's client is *not* closed by :meth:`aclose` (``owned=False``): whoever created it closes it.
    Headers and answers are checked and bounded as :class:`NativeTransport` does.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        headers: Mapping[str, str],
        *,
        owned: bool = False,
        limits: Limits | None = None,
    ) -> None:
        check_request_headers(headers)
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers)
        self.owned = owned
        self.limits = limits or Limits()

    async def send(self, method: str, path: str, body: bytes, *, connect_timeout: float) -> WireResponse:
        # read timeouts stay off: first-token and total deadlines are enforced around each read
        req = self.client.build_request(
            method,
            self.base_url + path,
            content=body,
            headers=self.headers,
            timeout=httpx.Timeout(None, connect=connect_timeout, pool=connect_timeout),
        )
        return _HttpxResponse(await self.client.send(req, stream=True), self.limits)

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


def make_transport(
    base_url: str,
    headers: Mapping[str, str],
    *,
    client: httpx.AsyncClient | None,
    max_connections: int,
    limits: Limits | None = None,
) -> Transport:
    """The caller's httpx client when given; an owned httpx client when a proxy applies (the native
    client speaks no proxy protocol); else a native keep-alive pool of ``max_connections``.
    Every one of them bounds its answers by ``limits`` (default :class:`Limits`)."""
    if client is not None:
        return HttpxTransport(client, base_url, headers, limits=limits)
    if proxy_applies(base_url):
        pool = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        return HttpxTransport(
            httpx.AsyncClient(limits=pool, timeout=httpx.Timeout(None), trust_env=True),
            base_url,
            headers,
            owned=True,
            limits=limits,
        )
    return NativeTransport(base_url, headers, max_connections=max_connections, limits=limits)


class Deadlines:
    """The first-token, idle and total deadlines of one attempt, on the loop's clock.

    ``current`` is the first-token deadline until :meth:`got_first` is called,
    then the total one. :meth:`next_event` is a stream's deadline for its next
    event: the first-token one until the first, then ``Timeouts.idle`` from now,
    never past the total. ``phase`` names which of them a timeout hit.
    """

    __slots__ = ("_idle_armed", "_loop", "first", "first_seen", "timeouts", "total")

    def __init__(self, timeouts: Timeouts) -> None:
        self._loop = asyncio.get_running_loop()
        now = self._loop.time()
        self.timeouts = timeouts
        self.total = now + timeouts.total
        self.first = min(self.total, now + timeouts.first_token)
        self.first_seen = False
        self._idle_armed = False  # whether the last deadline handed out was the idle one

    def got_first(self) -> None:
        self.first_seen = True

    @property
    def current(self) -> float:
        self._idle_armed = False
        return self.total if self.first_seen else self.first

    def next_event(self) -> float:
        """The deadline for a stream's next event (read it just before waiting for that event)."""
        if not self.first_seen:
            self._idle_armed = False
            return self.first
        idle_at = self._loop.time() + self.timeouts.idle
        self._idle_armed = idle_at < self.total
        return idle_at if self._idle_armed else self.total

    @property
    def phase(self) -> str:
        if self._idle_armed:
            return "idle"
        if not self.first_seen and self.first < self.total:
            return "first_token"
        return "total"

    def limit(self) -> float:
        phase = self.phase
        if phase == "idle":
            return self.timeouts.idle
        return self.timeouts.total if phase == "total" else self.timeouts.first_token


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
        message = (
            f"no stream event for {limit:g}s"
            if phase == "idle"
            else f"no {'first token' if phase == 'first_token' else 'complete answer'} within {limit:g}s"
        )
        raise BackendTimeoutError(message, backend=backend, model=model, phase=phase) from e
    # -- the native client (and the limits both transports share) -------------
    except _client.ConnectTimeout as e:
        raise BackendTimeoutError(f"could not connect in time ({e})", backend=backend, model=model, phase="connect") from e
    except (_client.ConnectError, _client.ReadError) as e:
        raise BackendConnectionError(str(e), backend=backend, model=model) from e
    except _client.IncompleteResponse as e:
        # a body cut short is a broken connection to the caller: retryable, like httpx's RemoteProtocolError
        raise BackendConnectionError(f"IncompleteResponse: {e}", backend=backend, model=model) from e
    except _client.ResponseTooLarge as e:
        # the same request would likely be answered the same way: move on to a fallback instead of retrying
        raise BackendProtocolError(f"ResponseTooLarge: {e}", backend=backend, model=model, retryable=False) from e
    except _client.RemoteProtocolError as e:
        raise BackendProtocolError(f"RemoteProtocolError: {e}", backend=backend, model=model) from e
    except _client.HTTPClientError as e:
        raise BackendConnectionError(f"{type(e).__name__}: {e}", backend=backend, model=model) from e
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
        raise BackendStatusError(
            reason, backend=backend, status=resp.status, model=model, body=raw, request_fault=True, param=param
        )
    raise BackendStatusError(message, backend=backend, status=resp.status, model=model, body=raw)


#: a pydantic / FastAPI request validation report, as OpenAI-compatible Python servers send it
_VALIDATION = re.compile(r"validation error.*?'loc': \(([^)]*)\).*?'msg': '([^']*)'", re.DOTALL)


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
            dl.got_first()  # the head is in: the body may take until the total deadline (no idle rule: one read)
            async with asyncio.timeout_at(dl.current):
                await raise_for_status(resp, backend, model)
                return await resp.read()
        finally:
            await resp.aclose()


@asynccontextmanager
async def open_stream(
    transport: Transport, path: str, body: bytes, backend: str, model: str, deadlines: Deadlines
) -> AsyncIterator[WireResponse]:
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
    cut = re.search(r'Traceback \(most recent call last\)|^\s*File "[^"]+", line \d+', text, re.MULTILINE)
    return (text[: cut.start()] if cut else text).strip()[:300]


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:24]} is beyond a double's range")
    return value


def loads(data: str | bytes, backend: str, model: str | None, what: str) -> Any:
    """Parse JSON strictly (orjson when installed); raise BackendProtocolError naming what was being parsed.

    ``NaN``, ``Infinity`` and numbers beyond a double's range (``1e400``) are
    refused, as orjson refuses them: they are not JSON, and an answer holding
    one could not be passed on to the client as JSON either.
    """
    try:
        return fastjson.loads(data)
    except ValueError:
        pass  # orjson also refuses integers beyond 64 bits: let the standard parser decide and word the error
    try:
        return json.loads(data, parse_constant=_not_json, parse_float=_finite)
    except ValueError as e:
        snippet = data[:120] if isinstance(data, str) else data[:120].decode("utf-8", "replace")
        raise BackendProtocolError(f"invalid JSON in {what}: {e} (got {snippet!r})", backend=backend, model=model) from e


@dataclass(slots=True)
class SSEEvent:
    """One server-sent event: its ``event`` name (``message`` by default) and joined ``data``."""

    event: str
    data: str


async def iter_sse(lines: AsyncIterator[str], max_event: int = _DEFAULT_LIMITS.event) -> AsyncIterator[SSEEvent]:
    """Parse server-sent events (WHATWG rules) from decoded lines.

    Multi-line ``data:`` fields are joined with ``\\n``; ``:`` comment lines
    (keep-alives) and ``id:``/``retry:`` fields are skipped; a blank line
    dispatches. A last event not followed by a blank line is still dispatched:
    some servers close right after it, and dropping it would lose ``[DONE]``.
    An event whose data grows past ``max_event`` characters raises
    ResponseTooLarge (each line is bounded already; this bounds their sum).
    """
    event = ""
    data: list[str] = []
    size = 0
    async for line in lines:
        if not line:
            if data:
                yield SSEEvent(event or "message", "\n".join(data))
            event, data, size = "", [], 0
            continue
        if line.startswith(":"):
            continue
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            size += len(value) + 1
            if size > max_event:
                raise ResponseTooLarge(f"a server-sent event exceeds {max_event} characters")
            data.append(value)
        elif field == "event":
            event = value
        # id, retry and unknown fields are ignored, as the spec says
    if data:
        yield SSEEvent(event or "message", "\n".join(data))


log = logging.getLogger("turnout.backends")


def token_count(value: Any) -> int | None:
    """``value`` as a token count if it is a sane one, else None.

    Sane: a non-negative integer up to :data:`~turnout.tokens.MAX_SANE_TOKENS`
    (:func:`~turnout.tokens.sane_count`; an integral float such as ``12.0`` too).
    Not: negative, huge, fractional, NaN, a string (``"12"``), a boolean, null.
    """
    if sane_count(value):
        return value
    if isinstance(value, float) and value.is_integer() and 0 <= value <= MAX_SANE_TOKENS:
        return int(value)
    return None


class UsageCheck:
    """Checks the token counts a provider reports; one per backend, which it warns about once.

    Policy (the gateway must be able to account every answer): a count that
    is missing is estimated from the text, silently (llama.cpp sends none when
    streaming); a count that is present but not sane (:func:`token_count`) is
    replaced by the same estimate, and the first time a backend sends one a
    warning is logged. The answer itself is kept: only its accounting was
    broken. The caller rewrites the body's ``usage`` so the client sees the
    numbers turnout accounted.
    """

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.warned = False

    def count(self, raw: Mapping[str, Any], keys: tuple[str, ...], estimate: Callable[[], int]) -> tuple[int, bool]:
        """(the sum of ``raw``'s ``keys``, True) when every one present is sane and one at least is present;
        else (``estimate()``, False), warning when a present one was not sane."""
        total = 0
        seen = False
        for key in keys:
            value = raw.get(key)
            if value is None:
                continue
            n = token_count(value)
            if n is None:
                self._warn(key, value)
                return estimate(), False
            total += n
            seen = True
        return (total, True) if seen else (estimate(), False)

    def usage(
        self,
        raw: Any,
        prompt: Callable[[], int],
        completion: Callable[[], int],
        *,
        prompt_keys: tuple[str, ...] = ("prompt_tokens",),
        completion_keys: tuple[str, ...] = ("completion_tokens",),
    ) -> tuple[Usage, bool]:
        """(usage, True) when ``raw`` reported sane counts for both sides; else (usage with the missing or
        insane side estimated by ``prompt()`` / ``completion()``, False)."""
        if not isinstance(raw, Mapping):
            if raw is not None:
                self._warn("usage", raw)
            return Usage(prompt(), completion()), False
        p, p_ok = self.count(raw, prompt_keys, prompt)
        c, c_ok = self.count(raw, completion_keys, completion)
        return Usage(p, c), p_ok and c_ok

    def _warn(self, key: str, value: Any) -> None:
        if not self.warned:
            self.warned = True
            log.warning(
                "backend %s reported an invalid token count %s=%.40r; estimating it from the text instead "
                "(logged once per backend)",
                self.backend,
                key,
                value,
            )
