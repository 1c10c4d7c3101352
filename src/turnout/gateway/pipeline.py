"""The HTTP-free gateway: authenticate, route, call the backend chain, account, log.

Flow of one request::

    key check -> route (embed + router + policy, offloaded; λ from the route's budget) or passthrough
              -> chain = [chosen] + fallbacks (one iterator for both modes: gateway/chain.py)
              -> per model: may the key use it?, breaker check, up to N tries with
                 jittered backoff, connect / first-token / total timeouts
              -> cost = usage x price -> key spend, route budget, metrics, request log

**Shared state.** Key spend and route budgets' running figures live in
:class:`turnout.state.Counters`. In-process ones are called inline; remote
ones (Redis) are called on a small pool of their own, so a round trip never
stalls the event loop nor queues behind routing work on the offload pool. A
key-budget check that cannot reach them fails the request with
:class:`~turnout.errors.StateError` (503); a route-budget write that fails
after an answer is logged and counted, and the answer is still served.

**Streaming commit rule.** :meth:`Gateway.chat_stream` returns only once a
backend has produced its first chunk. Any failure *before* that (timeout,
reset, 5xx, a stream cut before its first event, garbage) falls back to the
next model transparently: the client has received nothing yet. Once the first
chunk is handed out the stream is *committed* to that model: a later failure
is raised from the iterator, and the server ends the SSE stream with an
OpenAI-format error event and ``data: [DONE]`` — never a silent truncation.
Closing the session early (client disconnect) closes the upstream stream.

An exhausted chain raises :class:`~turnout.errors.AllBackendsFailedError` (or, when every backend refused the request itself, :class:`~turnout.errors.UpstreamRejectedError`, a 400)
carrying every attempt's error. Every request, success or failure, is counted
in metrics and written to the request log.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

from turnout.errors import (
    BackendError,
    BackendProtocolError,
    BackendTimeoutError,
    StateError,
    TurnoutError,
    UnknownModelError,
)
from turnout.gateway.chain import Attempt, Chain, ModelTarget
from turnout.gateway.offload import Offloader
from turnout.gateway.routes import RouteRuntime
from turnout.routing.policy import estimate_tokens
from turnout.types import ChatRequest, ChatResponse, Decision, StreamChunk, Usage

log = logging.getLogger(__name__)

#: threads for calls to remote counters (network waits, not CPU: more than the offload pool's two)
STATE_THREADS = 8


class _Metrics(Protocol):
    def observe_request(self, route: str, model: str, status: str, latency_s: float, ttft_s: float | None = ...,
                        decision_s: float | None = ..., prompt_tokens: int = ..., completion_tokens: int = ...,
                        cost_usd: float = ...) -> None: ...
    def inc_fallback(self, route: str, from_model: str, to_model: str) -> None: ...
    def inc_error(self, kind: str) -> None: ...


class _RequestLog(Protocol):
    def record(self, entry: Any) -> None: ...


async def _maybe_await(value: Any) -> Any:
    # The key store is synchronous in-process and may be asynchronous with Redis.
    return await value if inspect.isawaitable(value) else value


class Gateway:
    """Routes and serves chat requests over a fleet; knows nothing about HTTP.

    Build it with :meth:`from_config` (backends, routers, metrics, request log
    and keys from ``turnout.yaml``) or directly from run-time parts in tests.

    Example::

        gw = Gateway.from_config(load_config("turnout.yaml"))
        resp, decision, attempts = await gw.chat(ChatRequest("auto", [{"role": "user", "content": "hi"}]))
        await gw.aclose()
    """

    def __init__(
        self,
        models: Mapping[str, ModelTarget],
        routes: Mapping[str, RouteRuntime] | None = None,
        *,
        metrics: _Metrics | None = None,
        request_log: _RequestLog | None = None,
        keys: Any | None = None,
        offloader: Offloader | None = None,
        status_for: Callable[[BaseException | None], int | None] | None = None,
        state: Any | None = None,
        on_close: list[Callable[[], Any]] | None = None,
    ) -> None:
        self.targets = dict(models)
        self.routes = dict(routes or {})
        self.metrics = metrics
        self.request_log = request_log
        self.keys = keys
        self.offloader = offloader or Offloader()
        #: the shared counters the key store and route budgets were built with (from config); :meth:`start` pings them
        self.state = state
        self._state_pool: Offloader | None = None  # for remote counters, made on first use
        #: the server's error table, so that logged rows carry the HTTP status the client saw
        self.status_for = status_for
        self._on_close = list(on_close or [])
        self._closed = False
        #: processes the gateway owns (llama.cpp servers); started by :meth:`start`
        self.children: list[Any] = []
        #: True once :meth:`start` has brought every child up (the server's /readyz)
        self.ready = False
        #: backends that refused a connection when :meth:`start` probed them: name -> reason (a warning, not fatal)
        self.unreachable: dict[str, str] = {}
        self._usable: dict[str, frozenset[str]] = {}  # key name -> models it may be answered by

    async def start(self) -> None:
        """Reach the shared counters, start owned child processes (llama.cpp servers), load the routes' embedders,
        then report ready. Unreachable counters (Redis down) raise StateError here, before any port serves."""
        ping = getattr(self.state, "ping", None)
        if ping is not None:
            await self.offloader.run(ping)
        for child in self.children:
            await child.astart()
        for rt in self.routes.values():
            # loading MiniLM takes ~0.5 s (seconds more for its one-time ONNX export): not on a request
            await self.offloader.run(rt.warm_up)
        self.unreachable = await self._probe_backends()
        for name, why in self.unreachable.items():
            log.warning("backend %s is not reachable now (%s): its models will fail over to their fallbacks until "
                        "it answers", name, why)
        self.ready = True

    async def _probe_backends(self, timeout_s: float = 1.0) -> dict[str, str]:
        """Backends (by name) whose host does not accept a TCP connection now, with the reason.

        A start-up check only: a remote API may come and go, so this warns (log, /readyz)
        rather than refusing to start; the breakers and fallbacks handle it per request.
        """
        from urllib.parse import urlsplit

        backends = {t.backend.name: t.backend for t in self.targets.values()}

        async def probe(url: str) -> str | None:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, port), timeout_s)
            except (OSError, asyncio.TimeoutError) as exc:
                return "timed out" if isinstance(exc, asyncio.TimeoutError) else (exc.strerror or type(exc).__name__)
            writer.close()
            return None

        urls = {name: b.base_url for name, b in backends.items() if isinstance(getattr(b, "base_url", None), str)}
        found = await asyncio.gather(*(probe(u) for u in urls.values()))
        return {name: why for name, why in zip(urls, found) if why is not None}

    async def call_state(self, owner: Any, fn: Callable[..., Any], /, *args: Any) -> Any:
        """``fn(*args)``, which uses ``owner.counters``: inline when those are in-process, else on the state pool."""
        if getattr(getattr(owner, "counters", None), "in_process", False):
            return await _maybe_await(fn(*args))
        if self._state_pool is None:
            self._state_pool = Offloader(max_workers=STATE_THREADS, name="turnout-state")
        return await _maybe_await(await self._state_pool.run(fn, *args))

    @classmethod
    def from_config(cls, cfg: Any) -> Gateway:
        """Build every part named in a resolved :class:`~turnout.config.TurnoutConfig` (starts no process)."""
        from turnout.gateway.builder import build_gateway

        return build_gateway(cfg)

    # ----------------------------------------------------------------- queries
    def models(self) -> list[dict[str, Any]]:
        """Routes and models, in OpenAI ``/v1/models`` item form (routes first)."""
        items = [{"id": r, "object": "model", "created": 0, "owned_by": "turnout", "turnout": {"kind": "route", "candidates": list(rt.candidates.values())}} for r, rt in self.routes.items()]
        items += [{"id": m, "object": "model", "created": 0, "owned_by": t.backend.name, "turnout": {"kind": "model", "context_window": t.context_window, "price": {"input_per_mtok": t.price.input_per_mtok, "output_per_mtok": t.price.output_per_mtok}}} for m, t in self.targets.items()]
        return items

    async def route(self, request: ChatRequest, *, allowed: list[str] | None = None, key: Any | None = None) -> Decision:
        """The decision for ``request`` without calling any model (a dry run).

        With ``key`` (a :class:`~turnout.gateway.keys.KeySpec`), the reasons say
        which fallbacks the chain would skip because the key may not use them.
        """
        name = request.model
        if name in self.routes:
            decision = await self.offloader.run(self.routes[name].decide, request, allowed)
        elif name in self.targets:
            t = self.targets[name]
            decision = Decision(route="passthrough", model=name, candidates=[], lam=0.0, router="passthrough",
                                fallbacks=[m for m in t.fallbacks if m != name], reasons=[f"'{name}' was asked for by name"])
        else:
            raise UnknownModelError(
                f"no route or model named '{name}'; available: {', '.join([*self.routes, *self.targets])}", param="model"
            )
        usable = self.usable_models(key)
        if usable is not None:
            decision.reasons += [f"fallback {m} will be skipped: key {key.name!r} may not use it"
                                 for m in decision.fallbacks if m not in usable]
        # a dry run says what the chain would meet: models whose circuit breaker is open now are skipped
        for m in [decision.model, *decision.fallbacks]:
            t = self.targets.get(m)
            if t is not None and t.breaker.state == "open":
                decision.reasons.append(f"{m} would be skipped now: its circuit breaker is open "
                                        f"(recent failures; it is tried again after {t.breaker.cooldown_s:g} s)")
        return decision

    def usable_models(self, key: Any | None) -> frozenset[str] | None:
        """The models an API key may be answered by (None: every model).

        A key's ``allowed`` list names routes and models. It may be answered by
        the models it names and by the candidates of the routes it names: asking
        for a route means accepting whichever candidate the router picks. Any
        other model, a fallback included, is skipped by the chain.
        """
        allowed = getattr(key, "allowed", None)
        if allowed is None:
            return None
        cached = self._usable.get(key.name)
        if cached is None:
            names = {a for a in allowed if a in self.targets}
            for a in allowed:
                if a in self.routes:
                    names.update(self.routes[a].candidates.values())
            cached = self._usable[key.name] = frozenset(names)
        return cached

    # ------------------------------------------------------------ non-streamed
    async def chat(
        self, request: ChatRequest, *, api_key: str | None = None, request_id: str | None = None
    ) -> tuple[ChatResponse, Decision, list[Attempt]]:
        """Answer ``request`` through the fallback chain; raises a TurnoutError subclass on failure.

        Cancelling the call (the server does when the client hangs up) cancels
        the backend call in flight and ends the chain there, with no retry and
        no fallback; the request is logged and counted as ``cancelled``.
        """
        rec = _Record(self, request, request_id)
        try:
            decision = await rec.begin(api_key)
            resp, model = await self._complete_chain(request, decision, rec)
            usage = resp.usage or Usage(estimate_tokens(request.prompt_text()), estimate_tokens(resp.content or ""))
            rec.model = model
            await rec.finish(usage, resp.content)
            return resp, decision, rec.attempts
        except BaseException as exc:
            await rec.fail(exc)
            raise

    def _chain(self, decision: Decision, rec: _Record) -> Chain:
        return Chain(self.targets, decision, rec.attempts, metrics=self.metrics,
                     usable=self.usable_models(rec.key), key_name=getattr(rec.key, "name", None))

    async def _complete_chain(self, request: ChatRequest, decision: Decision, rec: _Record) -> tuple[ChatResponse, str]:
        chain = self._chain(decision, rec)
        async for t in chain:
            try:
                async with asyncio.timeout(t.timeouts.total):
                    resp = await t.backend.complete(request, model=t.upstream, timeouts=t.timeouts)
            except TimeoutError:
                chain.failed(BackendTimeoutError(f"no complete answer within {t.timeouts.total}s", backend=t.backend.name,
                                                 model=t.name, phase="total"))
            except BackendError as exc:
                chain.failed(exc)
            except BaseException:
                chain.abandoned()
                raise
            else:
                t.breaker.record_success()
                chain.succeeded()
                return resp, t.name
        raise chain.exhausted()

    # ---------------------------------------------------------------- streamed
    async def chat_stream(
        self, request: ChatRequest, *, api_key: str | None = None, request_id: str | None = None
    ) -> StreamSession:
        """Open a stream: returns once a model has produced its first chunk (see the commit rule)."""
        rec = _Record(self, request, request_id)
        try:
            decision = await rec.begin(api_key)
            return await self._open_stream(request, decision, rec)
        except BaseException as exc:
            await rec.fail(exc)
            raise

    async def _open_stream(self, request: ChatRequest, decision: Decision, rec: _Record) -> StreamSession:
        chain = self._chain(decision, rec)
        async for t in chain:
            upstream = t.backend.stream(request, model=t.upstream, timeouts=t.timeouts).__aiter__()
            try:
                async with asyncio.timeout(t.timeouts.first_token):
                    first = await upstream.__anext__()
            except StopAsyncIteration:
                err: BackendError = BackendProtocolError("the stream ended before its first event", backend=t.backend.name, model=t.name)
            except TimeoutError:
                err = BackendTimeoutError(f"no first token within {t.timeouts.first_token}s", backend=t.backend.name,
                                          model=t.name, phase="first_token")
            except BackendError as exc:
                err = exc
            except BaseException:
                chain.abandoned()
                await _close_quietly(upstream)
                raise
            else:
                # committed: the breaker's verdict waits for the end of the stream (StreamSession)
                chain.succeeded()
                rec.model = t.name
                rec.ttft_s = time.perf_counter() - rec.t0
                return StreamSession(self, rec, t, upstream, first, decision)
            await _close_quietly(upstream)
            chain.failed(err)
        raise chain.exhausted()

    async def record_rejected(self, request_id: str, exc: BaseException, *, model: str = "", prompt: str = "") -> None:
        """Log a request the server refused before it reached the pipeline (bad JSON, too large)."""
        rec = _Record(self, ChatRequest(model=model, messages=[]), request_id)
        rec.prompt = prompt
        await rec.fail(exc)

    async def aclose(self) -> None:
        """Close every backend pool, the offload pool and the owned resources (request log, children)."""
        if self._closed:
            return
        self._closed = True
        seen: set[int] = set()
        for t in self.targets.values():
            if id(t.backend) not in seen:
                seen.add(id(t.backend))
                await t.backend.aclose()
        self.offloader.close()
        if self._state_pool is not None:
            self._state_pool.close()
        for child in self.children:
            await child.astop()
        for fn in self._on_close:
            await _maybe_await(fn())


class StreamSession:
    """A committed stream: the decision, the model serving it, and its chunks.

    Iterate it once. A failure after the first chunk is raised from the
    iterator (the server turns it into an SSE error event); :meth:`aclose`
    closes the upstream stream and records the request if it was cut short.
    """

    def __init__(self, gateway: Gateway, rec: _Record, target: ModelTarget, upstream: AsyncIterator[StreamChunk],
                 first: StreamChunk, decision: Decision) -> None:
        self.gateway = gateway
        self.decision = decision
        self.model = target.name
        self.request_id = rec.request_id
        self.attempts = rec.attempts
        self._rec = rec
        self._target = target
        self._upstream = upstream
        self._first: StreamChunk | None = first
        self._done = False
        self.usage: Usage | None = None

    def __aiter__(self) -> AsyncIterator[StreamChunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[StreamChunk]:
        rec, t = self._rec, self._target
        texts: list[str] = []
        pieces = 0
        usage: Usage | None = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + t.timeouts.total - (time.perf_counter() - rec.t0)
        try:
            chunk: StreamChunk | None = self._first
            self._first = None
            while chunk is not None:
                if chunk.text:
                    texts.append(chunk.text)
                    pieces += 1
                if chunk.usage is not None:
                    usage = chunk.usage
                yield chunk
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await self._upstream.__anext__()
                except StopAsyncIteration:
                    chunk = None
                except TimeoutError:
                    raise BackendTimeoutError(f"stream not finished within {t.timeouts.total}s", backend=t.backend.name, model=t.name, phase="total") from None
        except BackendError as exc:
            self._done = True
            t.breaker.record_failure()
            self.gateway.metrics and self.gateway.metrics.inc_error(exc.kind)
            rec.response_text = "".join(texts)
            await rec.fail(exc)
            raise
        except BaseException as exc:  # client gone (GeneratorExit / CancelledError): close upstream, log it
            if not self._done:
                self._done = True
                await _close_quietly(self._upstream)
                rec.response_text = "".join(texts)
                await rec.fail(exc)
            raise
        t.breaker.record_success()
        # llama.cpp sends no usage when streaming: one chunk is about one token.
        self.usage = usage or Usage(estimate_tokens(rec.request.prompt_text()), pieces)
        self._done = True
        await rec.finish(self.usage, "".join(texts))

    async def aclose(self) -> None:
        """Stop early: close the upstream stream and log the request as cancelled. Idempotent."""
        if self._done:
            return
        self._done = True
        await _close_quietly(self._upstream)
        await self._rec.fail(asyncio.CancelledError("client closed the stream"))


async def _close_quietly(it: AsyncIterator[StreamChunk]) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except BackendError:
        # Closing a stream that already failed may re-raise its error; that error was already counted.
        pass


class _Record:
    """Accounting of one request: timing, key, spend, metrics and the request-log row."""

    def __init__(self, gw: Gateway, request: ChatRequest, request_id: str | None) -> None:
        self.gw = gw
        self.request = request
        self.request_id = request_id or uuid.uuid4().hex
        self.t0 = time.perf_counter()
        self.ts = time.time()
        self.key: Any = None
        self.decision: Decision | None = None
        self.model = ""
        self.ttft_s: float | None = None
        self.attempts: list[Attempt] = []
        self.prompt: str | None = None
        self.response_text: str | None = None
        self._logged = False

    async def begin(self, api_key: str | None) -> Decision:
        gw = self.gw
        if gw.keys is not None:
            self.key = await _maybe_await(gw.keys.authenticate(api_key))
            # Asking for an allowed route accepts its candidates; other fallbacks the chain skips (usable_models).
            await _maybe_await(gw.keys.authorize(self.key, self.request.model))
            await gw.call_state(gw.keys, gw.keys.check_budget, self.key)
        self.decision = await gw.route(self.request)
        self.model = self.decision.model
        return self.decision

    async def finish(self, usage: Usage, text: str | None) -> None:
        target = self.gw.targets[self.model]
        cost = target.price.cost(usage.prompt_tokens, usage.completion_tokens)
        gw = self.gw
        if self.key is not None and cost:
            # a new request checks the key's budget first, and is refused (503) while the store is down
            await self._count_after_answer(f"spend {cost:.6g} USD of key {self.key.name!r}", gw.keys,
                                           gw.keys.record_spend, self.key, cost)
        d = self.decision
        if d is not None and d.router != "passthrough":
            rt = gw.routes.get(d.route)
            if rt is not None and rt.budget is not None:  # actual spend steers the route's λ
                await self._count_after_answer(f"route {d.route!r} budget", rt.budget, rt.budget.observe,
                                               self.model, cost)
        self.response_text = text
        self._write("ok", None, usage, cost)

    async def _count_after_answer(self, what: str, owner: Any, fn: Callable[..., Any], *args: Any) -> None:
        """``gw.call_state(owner, fn, *args)`` once the answer exists: a StateError is logged and counted, not raised.

        The answer is paid for; losing it because a counter could not be written would lose the user's money
        and work. Only the figure (a key's spend, a route's running totals) misses this answer.
        """
        gw = self.gw
        try:
            await gw.call_state(owner, fn, *args)
        except StateError as exc:
            log.warning("request %s: %s not updated: %s", self.request_id, what, exc)
            if gw.metrics is not None:
                gw.metrics.inc_error(exc.kind)

    async def fail(self, exc: BaseException) -> None:
        if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            self._write("cancelled", "client_disconnect", None, 0.0, exc=None)
            return
        kind = exc.kind if isinstance(exc, TurnoutError) else "internal_error"
        if self.gw.metrics is not None:
            self.gw.metrics.inc_error(kind)
        self._write("error", kind, None, 0.0, exc=exc)

    def _write(self, status: str, error_kind: str | None, usage: Usage | None, cost: float, exc: BaseException | None = None) -> None:
        if self._logged:
            return
        self._logged = True
        gw, d = self.gw, self.decision
        latency = time.perf_counter() - self.t0
        route = d.route if d else (self.request.model if self.request.model in gw.routes else "passthrough")
        model = self.model or "-"
        pt, ct = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
        decision_s = d.elapsed_ms / 1000.0 if d and d.router != "passthrough" else None
        if gw.metrics is not None:
            gw.metrics.observe_request(route, model, status, latency, self.ttft_s, decision_s, pt, ct, cost)
        if gw.request_log is None:
            return
        from turnout.gateway.requestlog import LogEntry  # only needed when a log is configured

        http_status = gw.status_for(exc) if gw.status_for is not None else None
        gw.request_log.record(LogEntry(
            id=self.request_id, ts=self.ts, key_name=getattr(self.key, "name", None), route=route, model=model,
            status=status, error_kind=error_kind,
            candidates=[{"model": c.model, "quality": c.quality, "cost": c.cost, "utility": c.utility, "excluded": c.excluded} for c in (d.candidates if d else [])],
            prompt=self.prompt if self.prompt is not None else self.request.prompt_text(),
            response_text=self.response_text, prompt_tokens=pt, completion_tokens=ct, cost_usd=cost,
            latency_s=latency, ttft_s=self.ttft_s, decision_ms=d.elapsed_ms if d else None,
            fallbacks_tried=_fallbacks_tried(self.attempts), http_status=http_status,
            lam=d.lam if d is not None and d.router != "passthrough" else None, budget=d.budget if d is not None else None,
        ))


def _fallbacks_tried(attempts: list[Attempt]) -> list[str]:
    """Models tried after the first one, in order, each once."""
    seen: list[str] = []
    for a in attempts:
        if a.model not in seen:
            seen.append(a.model)
    return seen[1:]


__all__ = ["Attempt", "Gateway", "ModelTarget", "StreamSession"]
