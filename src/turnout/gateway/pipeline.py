"""The HTTP-free gateway: one request pipeline of typed stages over a :class:`RequestContext`.

Every chat request goes through the same fixed order (``docs/architecture.md`` draws it)::

    authenticate  key -> spec; may it use what it asked for; is its budget spent?
    signals       stages that read the request and write ctx.signals (language, domain, keywords, ...)
    guards        stages that may block it (typed error), or redirect it to another route or model set
    cache         stages that may answer it without any model (a semantic cache hit)
    decide        route: embedding (shared, batched) + router + policy -> Decision with its Plan;
                  a model asked for by name: passthrough with its fallbacks
    admit         the plan's worst-case cost is held against the key's budget
    execute       the plan's executor makes the model calls (chain, retries, endpoints, breakers)
    response      stages that transform or refuse the answer (a stream piece by piece)
    account       every call paid for; key spend, route budget, metrics, request log (+ child rows), once

A stage that is not configured costs nothing: the configured ones are sorted into per-phase lists when the
gateway is built (:class:`~turnout.gateway.stages.Stages`). The streaming commit rule, the accounting of
streams cut or left by their client, and the plans' executors live in :mod:`~turnout.gateway.streaming`,
:mod:`~turnout.gateway.accounting` and :mod:`~turnout.gateway.plans`.

**Streaming commit rule.** :meth:`Gateway.chat_stream` returns only once a model has produced its first
chunk (or a whole answer was chosen, as a cache hit or a cascade's accepted step). Any failure *before*
that falls back to the next model transparently; after it the stream is committed and a later failure is
raised from the iterator (the server ends the SSE stream with an error event and ``data: [DONE]``).

An exhausted chain raises :class:`~turnout.errors.AllBackendsFailedError` (or, when every backend refused
the request itself, :class:`~turnout.errors.UpstreamRejectedError`, a 400) carrying every attempt's error.
Every request, success or failure, is paid for, counted in metrics and written to the request log.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from turnout.errors import UnknownModelError
from turnout.gateway.accounting import Ledger
from turnout.gateway.balance import BalanceKey, prefix_key
from turnout.gateway.calls import ModelCaller, OpenStream
from turnout.gateway.chain import Attempt
from turnout.gateway.context import RequestContext
from turnout.gateway.embeddings import EmbeddingService
from turnout.gateway.endpoints import ModelTarget
from turnout.gateway.feedback import FeedbackResult, OnlineLearning
from turnout.gateway.fleetview import describe, model_items, unreachable_backends
from turnout.gateway.keys import KeySpec, shown_name
from turnout.gateway.offload import Offloader
from turnout.gateway.phases import annotate_dry_run, answered_by_stage, run_request_stages, with_plugins
from turnout.gateway.plans import plan_executor
from turnout.gateway.ratelimit import RateLimiter
from turnout.gateway.routes import RouteRuntime
from turnout.gateway.stages import Answer, Stages
from turnout.gateway.streaming import StreamSession
from turnout.types import ChatRequest, ChatResponse, Decision, StreamChunk

log = logging.getLogger(__name__)


class _Metrics(Protocol):
    def observe_request(
        self,
        route: str,
        model: str,
        status: str,
        latency_s: float,
        ttft_s: float | None = ...,
        decision_s: float | None = ...,
        prompt_tokens: int = ...,
        completion_tokens: int = ...,
        cost_usd: float = ...,
    ) -> None: ...
    def inc_fallback(self, route: str, from_model: str, to_model: str) -> None: ...
    def inc_error(self, kind: str) -> None: ...
    def inc_answered_by(self, route: str, source: str) -> None: ...
    def inc_stage(self, stage: str, outcome: str) -> None: ...
    def render(self) -> tuple[bytes, str]: ...
    def observe_call(self, route: str, model: str, prompt_tokens: int, completion_tokens: int, cost_usd: float) -> None: ...


class _RequestLog(Protocol):
    def record(self, entry: Any) -> None: ...


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class Gateway:
    """Routes and serves chat requests over a fleet; knows nothing about HTTP.

    Build it with :func:`turnout.gateway.builder.build_gateway` from
    ``turnout.yaml``, or directly from run-time parts in tests.

    Example::

        gw = build_gateway(load_config("turnout.yaml"))
        await gw.start()
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
        stages: Stages | None = None,
        embeddings: EmbeddingService | None = None,
        limiter: RateLimiter | None = None,
        health: Any | None = None,
        feedback_index: Any | None = None,
        budgets_on_failure: str = "closed",
    ) -> None:
        self.targets = dict(models)
        self.routes = dict(routes or {})
        self.metrics = metrics
        self.request_log = request_log
        self.keys = keys
        self.offloader = offloader or Offloader()
        #: the shared state store (key spend and holds, route budgets); :meth:`start` pings it
        self.state = state
        #: the server's error table, so that logged rows carry the HTTP status the client saw
        self.status_for = status_for
        self.stages = stages or Stages()
        self.embeddings = embeddings or EmbeddingService(self.offloader)
        for rt in self.routes.values():
            if rt.embedder is not None and rt.embedder_name is not None:
                self.embeddings.add(rt.embedder_name, rt.embedder)
        #: per-key requests/tokens per minute (gateway/ratelimit.py); by default over the keys' own state store
        self.limiter = limiter if limiter is not None else RateLimiter.for_keys(keys, metrics=metrics)
        #: endpoint probes and shared out-of-rotation marks (gateway/health.py): started by start(), stopped by aclose()
        self.health = health
        #: request id -> key, route, decision, shared by replicas (state/feedback_index.py); None in one process
        self.feedback_index = feedback_index
        #: a budget hold the state store cannot place: "closed" refuses the request (503), "open" serves it unheld
        self.budgets_on_failure = budgets_on_failure
        self.ledger = Ledger(self)
        #: routes that learn from feedback (bandit routes): the feedback path, their state's savers
        self.learning = OnlineLearning(self)
        self._on_close = list(on_close or [])
        self._closed = False
        #: processes the gateway owns (llama.cpp servers); started by :meth:`start`
        self.children: list[Any] = []
        #: True once :meth:`start` has brought every child up (the server's /readyz)
        self.ready = False
        #: backends that refused a connection when :meth:`start` probed them: name -> reason (a warning, not fatal)
        self.unreachable: dict[str, str] = {}
        self._usable: dict[str, frozenset[str]] = {}  # key name -> models it may be answered by
        #: whether any model balances over several endpoints (then requests compute a prefix key)
        self.balanced = any(len(t.endpoints) > 1 for t in self.targets.values())

    # ------------------------------------------------------------------------------------ lifecycle
    async def start(self, progress: Callable[[str], None] | None = None) -> None:
        """Reach the shared state, start owned child processes, load the embedders, then report ready.

        Unreachable shared state (Redis down) raises StateError here, before any port serves. ``progress``
        is told of each step (``turnout serve`` prints them).
        """
        say = progress or (lambda _msg: None)
        if self.state is not None:
            say("shared state: " + repr(self.state))
            await _maybe_await(self.state.ping())
        for rt in self.routes.values():
            if rt.budget is not None:
                await rt.budget.refresh()  # totals written before a restart (persisted) or by other replicas
        await self.learning.start()  # savers of the learned state (loaded from its file when the route was built)
        for child in self.children:
            say(f"starting {child}")
            await child.astart()
            say(f"ready: {child}")
        if self.embeddings.names:
            say(f"loading embedder(s): {', '.join(self.embeddings.names)}")
            # loading MiniLM takes ~0.5 s (seconds more for its one-time ONNX export): not on a request
            await self.offloader.run(self.embeddings.warm_up)
        self.unreachable = await unreachable_backends(self.targets)
        for name, why in self.unreachable.items():
            log.warning(
                "backend %s is not reachable now (%s): its models will fail over to their fallbacks until it answers", name, why
            )
        if self.health is not None:
            say(f"health: {self.health!r}")
            await self.health.start()
        for st in self.stages.all:  # a stage that watches something in the background (a decisions file) starts it
            start = getattr(st, "start", None)
            if callable(start):
                await _maybe_await(start())
        self.ready = True

    async def aclose(self) -> None:
        """Close the stages, every backend pool, the embedders, the offload pool and the owned resources. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for st in self.stages.all:  # what a stage started (a decisions-file watch) stops first, as start() began it
            close = getattr(st, "aclose", None)
            if callable(close):
                await _maybe_await(close())
        if self.health is not None:
            await self.health.aclose()  # before the backends and the state it probes and writes marks to
        if self.feedback_index is not None:
            await self.feedback_index.aclose()  # its last entries go out before the state's connection closes
        await self.learning.aclose()  # the last save of the learned state, while the offload pool still runs
        seen: set[int] = set()
        for t in self.targets.values():
            for e in t.endpoints:
                if id(e.backend) not in seen:
                    seen.add(id(e.backend))
                    await e.backend.aclose()
        await self.embeddings.aclose()
        self.offloader.close()
        for child in self.children:
            await child.astop()
        if self.state is not None and hasattr(self.state, "aclose"):
            await _maybe_await(self.state.aclose())
        for fn in self._on_close:
            await _maybe_await(fn())

    # -------------------------------------------------------------------------------------- queries
    def models(self, key: Any | None = None) -> list[dict[str, Any]]:
        """Routes and models in OpenAI ``/v1/models`` item form (routes first); with ``key``, only what it may use."""
        return model_items(self, key)

    def describe(self) -> dict[str, Any]:
        """What this gateway serves: routes (router, candidates), models (endpoints, price), stages, keys, log."""
        return describe(self)

    def usable_models(self, key: KeySpec | None) -> frozenset[str] | None:
        """The models an API key may be answered by (None: every model).

        A key's ``allowed`` list names routes and models. It may be answered by the models it names and by
        the candidates of the routes it names: asking for a route means accepting whichever candidate the
        router picks. Any other model, a fallback included, is skipped by the chain.
        """
        if key is None or key.allowed is None:
            return None
        allowed = key.allowed
        cached = self._usable.get(key.name)
        if cached is None:
            names = {a for a in allowed if a in self.targets}
            for a in allowed:
                if a in self.routes:
                    names.update(self.routes[a].candidates.values())
            cached = self._usable[key.name] = frozenset(names)
        return cached

    def usable_for(self, ctx: RequestContext) -> frozenset[str] | None:
        """The models this request may be answered by: its key's, within a stage's restriction, plus a redirect's."""
        usable = self.usable_models(ctx.key)
        if ctx.target != ctx.request.model and usable is not None:
            # an operator's redirect (a guard's) is sanctioned: its route's candidates, or its model, are usable
            rt = self.routes.get(ctx.target)
            usable = usable | frozenset(rt.candidates.values() if rt is not None else (ctx.target,))
        if ctx.restrict is not None:
            usable = ctx.restrict if usable is None else usable & ctx.restrict
        return usable

    def balance_key(self, ctx: RequestContext) -> BalanceKey:
        """The request's prefix key for the endpoint balancers (computed once per request)."""
        key: BalanceKey | None = ctx.balance_key
        if key is None:
            key = ctx.balance_key = prefix_key(ctx.request.messages, session_id=ctx.headers.get("x-session-id"))
        return key

    # ----------------------------------------------------------------------------- the pipeline
    def _context(
        self, request: ChatRequest, request_id: str | None, headers: Mapping[str, str] | None, *, dry_run: bool = False
    ) -> RequestContext:
        return RequestContext(
            request, request_id or uuid.uuid4().hex, headers=headers, embed=self.embeddings.embed, dry_run=dry_run
        )

    async def _authenticate(self, ctx: RequestContext, api_key: str | None) -> None:
        keys = self.keys
        if keys is None:
            return
        ctx.key = await _maybe_await(keys.authenticate(api_key))
        # asking for an allowed route accepts its candidates; other fallbacks the chain skips (usable_models)
        await _maybe_await(keys.authorize(ctx.key, ctx.request.model))
        if getattr(keys.counters, "in_process", False) and ctx.key.budget_usd is not None:
            # a spent key is refused before any routing work; with shared state the hold (one round trip) decides
            await keys.check_budget(ctx.key)
        if self.limiter is not None:
            await self.limiter.admit(ctx)  # rpm/tpm: one atomic window update, only for a key that has a limit

    async def _decide(self, ctx: RequestContext) -> Decision:
        name = ctx.target
        rt = self.routes.get(name)
        if rt is not None:
            vec = await ctx.embedding(rt.embedder_name) if rt.embedder_name is not None else None
            if rt.budget is not None:
                await rt.budget.refresh_if_stale()
            if ctx.overrides is not None:
                rt = rt.overridden(ctx.overrides)  # a matched decision rule's router, lambda or cost cap
            allowed = ctx.restrict
            decision = await self.offloader.run(_decide_with, rt, ctx.request, allowed, vec)
            if not ctx.dry_run:
                self.learning.decided(ctx, rt, decision, vec)  # a learning route keeps the context for feedback
        elif name in self.targets:
            t = self.targets[name]
            decision = Decision(
                route="passthrough",
                model=name,
                candidates=[],
                lam=0.0,
                router="passthrough",
                fallbacks=[m for m in t.fallbacks if m != name],
            )
            decision.reason("passthrough", f"'{name}' was asked for by name", model=name)
            if ctx.restrict is not None and name not in ctx.restrict:
                decision.reason("redirect", f"'{name}' is not among the models a stage allowed; the chain skips it")
        else:
            raise UnknownModelError(
                f"no route or model named '{shown_name(name)}'; available: {', '.join([*self.routes, *self.targets])}",
                param="model",
            )
        decision.reasons[:0] = ctx.notes
        decision.signals = ctx.signals
        decision.rule = ctx.rule
        ctx.decision = decision
        ctx.model = decision.model  # until another model of the plan answers
        return decision

    async def feedback(self, request_id: str, score: float, comment: str | None = None, key: Any | None = None) -> FeedbackResult:
        """Store a score for a logged request and let its route learn from it (see :mod:`~turnout.gateway.feedback`).

        ``key``: the authenticated key's spec; only its own requests can be scored (NotFoundError otherwise).
        """
        return await self.learning.feedback(request_id, score, comment, key)

    async def route(
        self,
        request: ChatRequest,
        *,
        allowed: list[str] | None = None,
        key: Any | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Decision:
        """The decision for ``request`` without calling any model, holding or charging anything (a dry run).

        The signal, guard and cache stages run and say what they *would* do (a block, an answer) in the
        reasons; a redirect is followed. With ``key`` (a :class:`~turnout.gateway.keys.KeySpec`), the reasons
        say which fallbacks the chain would skip because the key may not use them.
        """
        ctx = self._context(request, None, headers, dry_run=True)
        ctx.key = key
        if allowed is not None:
            ctx.restrict = frozenset(allowed)
        await run_request_stages(self, ctx)
        decision = await self._decide(ctx)
        annotate_dry_run(self, ctx, decision)
        return decision

    async def _prepare(self, ctx: RequestContext, api_key: str | None) -> Answer | None:
        """Every phase before the model calls; an Answer when a stage answered instead."""
        await self._authenticate(ctx, api_key)
        if self.stages.request["signals"] or self.stages.request["guard"] or self.stages.request["cache"] or ctx.plugins:
            answer = await run_request_stages(self, ctx)
            if answer is not None:
                answered_by_stage(ctx, answer)
                return answer
        await self._decide(ctx)
        await self.ledger.admit(ctx)
        return None

    def _respond(self, ctx: RequestContext, resp: ChatResponse) -> ChatResponse:
        for st in with_plugins(self.stages.response, ctx, "response", "on_response"):
            resp = st.on_response(ctx, resp)
        return resp

    async def _completed(self, ctx: RequestContext, resp: ChatResponse | None) -> None:
        if resp is None:
            return
        for hook in with_plugins(self.stages.complete, ctx, None, "on_complete"):
            try:
                await hook.on_complete(ctx, resp)
            except Exception:  # a completion hook's failure is logged, never the client's
                log.exception("request %s: completion hook %s failed", ctx.request_id, getattr(hook, "name", hook))

    # ----------------------------------------------------------------------------- non-streamed
    async def chat(
        self,
        request: ChatRequest,
        *,
        api_key: str | None = None,
        request_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[ChatResponse, Decision, list[Attempt]]:
        """Answer ``request``; raises a TurnoutError subclass on failure.

        Cancelling the call (the server does when the client hangs up) cancels the backend call in flight
        and ends the plan there, with no retry and no fallback; what was generated is paid for and the
        request logged and counted as ``cancelled``.
        """
        resp, ctx = await self.serve_chat(request, api_key=api_key, request_id=request_id, headers=headers)
        assert ctx.decision is not None
        return resp, ctx.decision, ctx.attempts

    async def serve_chat(
        self,
        request: ChatRequest,
        *,
        api_key: str | None = None,
        request_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[ChatResponse, RequestContext]:
        """:meth:`chat`, returning the request's context (model, response headers, attempts) with the answer."""
        ctx = self._context(request, request_id, headers)
        try:
            answer = await self._prepare(ctx, api_key)
            if answer is not None:
                resp = answer.response
            else:
                assert ctx.decision is not None and ctx.decision.plan is not None
                plan = ctx.decision.plan
                resp = await plan_executor(plan.kind).complete(ModelCaller(self, ctx), plan)
                ctx.usage = resp.usage
                # a stage's own answer is final (as when streamed): a cached one was transformed when it was stored
                resp = self._respond(ctx, resp)
            ctx.response_text = resp.content
        except BaseException as exc:
            await self._fail(ctx, exc)
            raise
        await self._completed(ctx, resp if ctx.answered_by == "model" else None)
        await self.ledger.finish(ctx, "ok")
        return resp, ctx

    async def _fail(self, ctx: RequestContext, exc: BaseException) -> None:
        if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            await self.ledger.finish(ctx, "cancelled", None)
        else:
            await self.ledger.finish(ctx, "error", exc)

    # --------------------------------------------------------------------------------- streamed
    async def chat_stream(
        self,
        request: ChatRequest,
        *,
        api_key: str | None = None,
        request_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> StreamSession:
        """Open a stream: returns once a model has produced its first chunk (see the commit rule)."""
        ctx = self._context(request, request_id, headers)
        try:
            answer = await self._prepare(ctx, api_key)
            if answer is not None:
                return self._replay_session(ctx, answer.response)
            assert ctx.decision is not None and ctx.decision.plan is not None
            plan = ctx.decision.plan
            opened = await plan_executor(plan.kind).open_stream(ModelCaller(self, ctx), plan)
        except BaseException as exc:
            await self._fail(ctx, exc)
            raise
        if isinstance(opened, OpenStream):
            ctx.ttft_s = ctx.elapsed_s
            try:
                filters = self._filters(ctx)
            except Exception as exc:  # a response stage's bug: the upstream stream is open, close and pay for it
                await StreamSession(self, ctx, live=opened, finish=self._stream_finisher(ctx)).fail(exc)
                raise
            return StreamSession(self, ctx, live=opened, finish=self._stream_finisher(ctx), filters=filters)
        try:
            resp = self._respond(ctx, opened)  # a whole answer (a cascade's, a fan-out's): checked as a whole
        except BaseException as exc:
            await self._fail(ctx, exc)
            raise
        ctx.usage = resp.usage
        return self._replay_session(ctx, resp)

    def _filters(self, ctx: RequestContext) -> list[Any]:
        out = []
        for st in with_plugins(self.stages.filters, ctx, "response", "stream_filter"):
            f = st.stream_filter(ctx)
            if f is not None:
                out.append(f)
        return out

    def _replay_session(self, ctx: RequestContext, resp: ChatResponse) -> StreamSession:
        from turnout.cache.replay import replay_chunks

        ctx.ttft_s = ctx.elapsed_s
        body = resp.body if isinstance(resp.body, dict) else {}
        chunks = [
            StreamChunk(body=c, text=_delta_text(c), finish_reason=_finish(c))
            for c in replay_chunks(body, id=f"chatcmpl-{ctx.request_id}")
        ]
        if chunks and resp.usage is not None:
            chunks[-1].usage = resp.usage
        ctx.response_text = resp.content
        # a model's whole answer (a cascade's) was already checked by the response stages; a stage's own is final
        return StreamSession(self, ctx, replay=chunks, finish=self._stream_finisher(ctx, resp), filters=[])

    def _stream_finisher(self, ctx: RequestContext, whole: ChatResponse | None = None) -> Any:
        async def finish(status: str, exc: BaseException | None, resp: ChatResponse | None) -> None:
            if status == "ok" and ctx.answered_by == "model":
                await self._completed(ctx, resp or whole)
            await self.ledger.finish(ctx, status, exc if status == "error" else None)

        return finish

    async def record_rejected(self, request_id: str, exc: BaseException, *, model: str = "", prompt: str = "") -> None:
        """Log a request the server refused before it reached the pipeline (bad JSON, too large)."""
        ctx = self._context(ChatRequest(model=model, messages=[]), request_id, None)
        await self.ledger.finish(ctx, "error", exc)


def _decide_with(rt: RouteRuntime, request: ChatRequest, allowed: frozenset[str] | None, vec: Any) -> Decision:
    return rt.decide(request, allowed, vector=vec)


def _delta_text(chunk: dict[str, Any]) -> str:
    try:
        text = chunk["choices"][0]["delta"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        return ""
    return text if isinstance(text, str) else ""


def _finish(chunk: dict[str, Any]) -> str | None:
    try:
        reason = chunk["choices"][0].get("finish_reason")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    return reason if isinstance(reason, str) else None


__all__ = ["Attempt", "Gateway", "ModelTarget", "StreamSession"]
