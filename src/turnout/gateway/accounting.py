"""The last stage of every request: pay, count and log — exactly once, whatever happened.

**Admission** (:meth:`Ledger.admit`, after the decision, before any model call): the request's worst
case is *held* against its API key's budget (:meth:`turnout.gateway.keys.KeyStore.hold`): for each model
the plan may call, its prompt tokens × input price + the most it may generate (``max_tokens``, else what
is left of its context window, else :data:`DEFAULT_MAX_OUTPUT_TOKENS`) × output price; a single plan
holds its dearest model, a cascade or fan-out the sum of its steps (and of its ``extra_calls``: a
cascade's probes). A key whose budget is gone (or held by requests in flight) is refused there, before
anything is spent.

**Settlement** (:meth:`Ledger.finish`): what every model call generated is paid for — a whole answer, a
cascade's rejected answers, the part of a stream that was generated before it failed or its client hung
up (usage when the backend sent it, else tokens estimated from the text). The hold is released and the
cost recorded against the key, the route budget observes it, the metrics count it, the request log gets
the request with one child row per call, and one line goes to the ``turnout.requests`` logger.

A failure to write shared state after an answer (Redis gone) is logged and counted, never the client's
problem: the answer is paid for; losing it would lose the user's money and work.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING, Any

from turnout.errors import AuthenticationError, StateError, TurnoutError
from turnout.gateway.context import RequestContext
from turnout.tokens import estimate_prompt_tokens
from turnout.types import PLAN_SINGLE, Plan

if TYPE_CHECKING:
    from turnout.gateway.parts import GatewayParts

log = logging.getLogger(__name__)
#: one line per finished request (``turnout serve`` prints it unless ``--quiet``)
request_lines = logging.getLogger("turnout.requests")

#: output tokens assumed for the worst case when neither the request nor the model bounds them
DEFAULT_MAX_OUTPUT_TOKENS = 4096
#: what a request refused before its key was known keeps of its prompt in the log (none: it could be anything)
UNAUTHENTICATED_PROMPT = "(not stored: the request was refused before its API key was accepted)"


def max_output_tokens(ctx: RequestContext, context_window: int | None, prompt_tokens: int) -> int:
    """The most one answer to this request may generate on a model with ``context_window``."""
    asked = ctx.request.asked_max_tokens()
    if asked is not None:
        return asked
    if context_window:
        return max(1, context_window - prompt_tokens)
    return DEFAULT_MAX_OUTPUT_TOKENS


class Ledger:
    """Holds, settles and records the requests of one gateway."""

    def __init__(self, gw: GatewayParts) -> None:
        self.gw = gw

    # -- admission ------------------------------------------------------------------------
    def worst_case_usd(self, ctx: RequestContext, plan: Plan) -> float:
        """The most ``plan`` may cost for this request (see the module docstring)."""
        pt = estimate_prompt_tokens(ctx.request.messages)
        targets = self.gw.targets

        def dearest(models: list[str]) -> float:
            costs = [
                targets[m].price.cost(pt, max_output_tokens(ctx, targets[m].context_window, pt)) for m in models if m in targets
            ]
            return max(costs, default=0.0)

        per_step = [dearest([s.model, *s.fallbacks]) for s in plan.steps]
        total = per_step[0] if plan.kind == PLAN_SINGLE else sum(per_step)
        if plan.aggregator and plan.aggregator in targets:
            total += dearest([plan.aggregator])
        # calls a plan makes beside its steps (a cascade step's probes and extra samples)
        total += sum(dearest([m]) for m in plan.params.get("extra_calls") or [] if isinstance(m, str))
        return total

    async def admit(self, ctx: RequestContext) -> None:
        """Hold the plan's worst case against the key's budget; BudgetExceededError (or StateError) refuses it."""
        gw, key, d = self.gw, ctx.key, ctx.decision
        if gw.keys is None or key is None or d is None or d.plan is None or key.budget_usd is None:
            return
        amount = self.worst_case_usd(ctx, d.plan)
        try:
            await gw.keys.hold(key, ctx.request_id, amount)
        except StateError as exc:
            if gw.budgets_on_failure != "open":
                raise StateError(
                    f"{exc}; the budget of key {key.name!r} cannot be checked, so the request is "
                    "refused (state.on_failure.budgets: closed)"
                ) from exc
            # fail open: served unheld (its spend is still recorded, if the store is back by then)
            d.reason("budget", f"budget not checked (the state store failed; state.on_failure.budgets: open): {exc}")
            log.warning(
                "request %s: serving key %r without a budget hold (state.on_failure.budgets: open): %s",
                ctx.request_id,
                key.name,
                exc,
            )
            if gw.metrics is not None:
                gw.metrics.inc_error(exc.kind)
            return
        ctx.held_usd = amount if math.isfinite(amount) else 0.0

    # -- settlement -----------------------------------------------------------------------
    async def finish(self, ctx: RequestContext, status: str, exc: BaseException | None = None) -> None:
        """Pay for, count and log ``ctx`` (``status`` ``ok``, ``error`` or ``cancelled``). Idempotent, never raises."""
        if ctx.settled:
            return
        ctx.settled = True
        gw = self.gw
        cost = ctx.cost_usd
        kind = None
        if status == "error":
            kind = exc.kind if isinstance(exc, TurnoutError) else "internal_error"
            if gw.metrics is not None:
                gw.metrics.inc_error(kind)
        elif status == "cancelled":
            kind = "client_disconnect"
        if gw.keys is not None and ctx.key is not None and (cost or ctx.held_usd):
            await self._after_answer(
                ctx, f"spend {cost:.6g} USD of key {ctx.key.name!r}", gw.keys.settle(ctx.key, ctx.request_id, cost)
            )
        if gw.limiter is not None and gw.limiter.holding(ctx):
            if gw.limiter.windows.in_process:
                await gw.limiter.settle(ctx)  # no I/O, never suspends: nothing to shield from a hang-up
            else:
                await self._after_answer(ctx, f"tokens of key {getattr(ctx.key, 'name', None)!r}", gw.limiter.settle(ctx))
        d = ctx.decision
        if (
            d is not None
            and d.router != "passthrough"
            and ctx.model in gw.targets
            and (status == "ok" or cost > 0)
            and ctx.answered_by == "model"
        ):
            rt = gw.routes.get(d.route)
            if rt is not None and rt.budget is not None:  # actual spend steers the route's λ
                await self._after_answer(ctx, f"route {d.route!r} budget", rt.budget.observe(ctx.model, cost))
        self._write(ctx, status, kind, cost, exc)
        if gw.feedback_index is not None and ctx.decision is not None:
            self._index(ctx, status, cost)

    def _index(self, ctx: RequestContext, status: str, cost: float) -> None:
        """Queue the request for the shared feedback index (never awaits; see turnout.state.feedback_index)."""
        from turnout.state.feedback_index import LoggedRequest

        d = ctx.decision
        assert d is not None
        rt = self.gw.routes.get(d.route)
        # a learning route may leave what it needs to learn on another replica (its decision's features)
        peek = getattr(rt, "feedback_context", None)
        self.gw.feedback_index.record(
            LoggedRequest(
                id=ctx.request_id,
                key_name=getattr(ctx.key, "name", None),
                route=d.route,
                model=ctx.model or "-",
                status=status,
                answered_by=ctx.answered_by,
                cost_usd=cost,
                ts=ctx.ts,
                decision={
                    "router": d.router,
                    "propensity": d.propensity,
                    "reasons": [{"kind": r.kind, "data": _jsonable(r.data)} for r in d.reasons if r.kind == d.router],
                },
                context=_jsonable(peek(ctx.request_id)) if callable(peek) else None,
            )
        )

    async def _after_answer(self, ctx: RequestContext, what: str, call: Any) -> None:
        try:
            # a settlement must not be lost to the client's hang-up: shield it from cancellation
            await asyncio.shield(call)
        except StateError as exc:
            log.warning("request %s: %s not recorded: %s", ctx.request_id, what, exc)
            if self.gw.metrics is not None:
                self.gw.metrics.inc_error(exc.kind)
        except asyncio.CancelledError:
            pass  # the shielded call still completes

    def _write(self, ctx: RequestContext, status: str, error_kind: str | None, cost: float, exc: BaseException | None) -> None:
        gw, d = self.gw, ctx.decision
        latency = ctx.elapsed_s
        route = d.route if d else (ctx.target if ctx.target in gw.routes else "passthrough")
        model = ctx.model or "-"
        pt = sum(a.usage.prompt_tokens for a in ctx.attempts if a.usage)
        ct = sum(a.usage.completion_tokens for a in ctx.attempts if a.usage)
        routed = d is not None and d.router != "passthrough"
        decision_s = d.elapsed_ms / 1000.0 if d is not None and routed else None
        if gw.metrics is not None:
            # tokens and cost go to the model that made them: a cascade's rejected step or a fan-out member is not
            # the answering model's spend
            own = [a for a in ctx.attempts if a.model == model]
            gw.metrics.observe_request(
                route, model, status, latency, ctx.ttft_s, decision_s,
                sum(a.usage.prompt_tokens for a in own if a.usage), sum(a.usage.completion_tokens for a in own if a.usage),
                sum(a.cost_usd for a in own),
            )  # fmt: skip
            for a in ctx.attempts:
                if a.model != model and (a.cost_usd or a.usage):
                    u = a.usage
                    gw.metrics.observe_call(route, a.model, u.prompt_tokens if u else 0, u.completion_tokens if u else 0,
                                            a.cost_usd)  # fmt: skip
            if ctx.answered_by != "model":
                gw.metrics.inc_answered_by(route, ctx.answered_by)
        self._line(ctx, route, model, status, error_kind, latency, pt, ct, cost)
        if gw.request_log is None:
            return
        from turnout.gateway.logschema import LogEntry  # only needed when a log is configured

        authenticated = not isinstance(exc, AuthenticationError)
        gw.request_log.record(
            LogEntry(
                id=ctx.request_id,
                ts=ctx.ts,
                key_name=getattr(ctx.key, "name", None),
                route=route,
                model=model,
                status=status,
                error_kind=error_kind,
                candidates=[
                    {"model": c.model, "quality": c.quality, "cost": c.cost, "utility": c.utility, "excluded": c.excluded}
                    for c in (d.candidates if d else [])
                ],
                prompt=ctx.prompt_text if authenticated else UNAUTHENTICATED_PROMPT,
                response_text=ctx.response_text,
                prompt_tokens=pt,
                completion_tokens=ct,
                cost_usd=cost,
                latency_s=latency,
                ttft_s=ctx.ttft_s,
                decision_ms=d.elapsed_ms if d else None,
                fallbacks_tried=fallbacks_tried(ctx),
                http_status=gw.status_for(exc) if gw.status_for else None,
                lam=d.lam if d is not None and routed else None,
                budget=d.budget if d is not None else None,
                propensity=d.propensity if d is not None else None,
                decision=decision_record(ctx),
                answered_by=ctx.answered_by,
                calls=[a.to_dict() for a in ctx.attempts],
            )
        )

    def _line(
        self,
        ctx: RequestContext,
        route: str,
        model: str,
        status: str,
        error_kind: str | None,
        latency: float,
        pt: int,
        ct: int,
        cost: float,
    ) -> None:
        if not request_lines.isEnabledFor(logging.INFO):
            return
        d = ctx.decision
        what = model
        if d is not None and d.plan is not None and d.plan.kind != PLAN_SINGLE:
            what = f"{d.plan.kind}[{' > '.join(s.model for s in d.plan.steps)}] -> {model}"
        extra = "" if ctx.answered_by == "model" else f" answered_by={ctx.answered_by}"
        if ctx.rule:
            extra += f" rule={ctx.rule}"
        outcome = status if error_kind is None else f"{status}:{error_kind}"
        request_lines.info(
            "%s %s -> %s %s %.0fms tokens=%d+%d $%.6f%s",
            ctx.request_id[:12],
            route,
            what,
            outcome,
            latency * 1000,
            pt,
            ct,
            cost,
            extra,
        )


def fallbacks_tried(ctx: RequestContext) -> list[str]:
    """Models tried after the first one, in order, each once."""
    seen: list[str] = []
    for a in ctx.attempts:
        if a.model not in seen:
            seen.append(a.model)
    return seen[1:]


def decision_record(ctx: RequestContext) -> dict[str, Any] | None:
    """The decision as the log keeps it: plan, rule, signals, reasons (the stages' notes included)."""
    d = ctx.decision
    if d is None and not ctx.notes and not ctx.signals:
        return None
    own = d.reasons if d else []
    # the decision's reasons already start with the notes written before it (by identity): each is kept once
    kept = {id(r) for r in own}
    reasons = [*(n for n in ctx.notes if id(n) not in kept), *own]
    return {
        "plan": None
        if d is None or d.plan is None
        else {
            "kind": d.plan.kind,
            "steps": [
                {"model": s.model, "fallbacks": s.fallbacks, "accept": s.accept, "threshold": s.threshold} for s in d.plan.steps
            ],
            "aggregator": d.plan.aggregator,
        },
        "rule": ctx.rule,
        "signals": _jsonable(ctx.signals),
        "propensity": d.propensity if d else None,
        "reasons": [{"kind": r.kind, "detail": r.detail, "data": _jsonable(r.data)} for r in reasons],
        "at": time.time(),
    }


def _jsonable(value: Any) -> Any:
    """``value`` with what JSON cannot hold made into strings (signal values may be numpy scalars, sets...)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        try:
            return _jsonable(item())
        except (TypeError, ValueError):
            pass
    return str(value)


__all__ = ["DEFAULT_MAX_OUTPUT_TOKENS", "Ledger", "decision_record", "fallbacks_tried", "max_output_tokens"]
