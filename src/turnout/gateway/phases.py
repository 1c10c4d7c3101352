"""The request-side phases of the pipeline that are made of stages: signals, guards, cache; and the dry run's notes.

:func:`run_request_stages` runs the configured stages of each phase (then the request's own plugins, which a
matched decision rule added) and acts on the first outcome of a phase: a :class:`Block` raises its error, a
:class:`Redirect` changes the target or restricts the models, an :class:`Answer` ends the request's way to the
models. In a dry run (``/v1/route``) outcomes are explained rather than acted on, except a redirect, which the
decision then follows. :func:`annotate_dry_run` adds what the chain would meet now.
"""

from __future__ import annotations

from typing import Any

from turnout.errors import UnknownModelError
from turnout.gateway.context import RequestContext
from turnout.gateway.parts import GatewayParts
from turnout.gateway.stages import Answer, Block, Redirect
from turnout.types import Decision, Plan


def with_plugins(stages: list[Any], ctx: RequestContext, phase: str | None, hook: str) -> list[Any]:
    """The configured ``stages`` of a phase, then this request's plugins of that phase that implement ``hook``."""
    if not ctx.plugins:
        return stages
    extra = [p for p in ctx.plugins if (phase is None or getattr(p, "phase", None) == phase) and callable(getattr(p, hook, None))]
    return [*stages, *extra] if extra else stages


async def run_request_stages(gw: GatewayParts, ctx: RequestContext) -> Answer | None:
    """Signals, guards, cache: the first outcome of a phase acts (dry run: reported, not acted on)."""
    for phase, stages in gw.stages.request.items():
        for st in with_plugins(stages, ctx, phase, "on_request"):
            outcome = await st.on_request(ctx)
            if outcome is None:
                continue
            name = getattr(st, "name", type(st).__name__)
            if gw.metrics is not None:
                gw.metrics.inc_stage(name, type(outcome).__name__.lower())
            if isinstance(outcome, Block):
                if ctx.dry_run:
                    ctx.note("guard", f"{name} would refuse this request: {outcome.error}", stage=name, error=outcome.error.kind)
                    continue
                ctx.note("guard", f"{name} refused the request: {outcome.error}", stage=name)
                raise outcome.error
            if isinstance(outcome, Redirect):
                _redirect(gw, ctx, name, outcome)
                break  # the rest of the phase saw the request before the redirect
            if isinstance(outcome, Answer):
                ctx.note(
                    "cache" if phase == "cache" else "guard",
                    f"{name} {'would answer' if ctx.dry_run else 'answered'} without a model"
                    + (f": {outcome.reason}" if outcome.reason else ""),
                    stage=name,
                    source=outcome.source,
                )
                if not ctx.dry_run:
                    return outcome
    return None


def _redirect(gw: GatewayParts, ctx: RequestContext, stage: str, r: Redirect) -> None:
    if r.route is not None:
        if r.route not in gw.routes and r.route not in gw.targets:
            raise UnknownModelError(
                f"stage {stage!r} redirected the request to {r.route!r}, which is neither a "
                f"route nor a model (fix the stage's config)",
                param="model",
            )
        ctx.note(
            "redirect",
            f"{stage} redirected the request from {ctx.target!r} to {r.route!r}" + (f": {r.reason}" if r.reason else ""),
            stage=stage,
            to=r.route,
        )
        ctx.target = r.route
    if r.models is not None:
        ctx.restrict = frozenset(r.models) if ctx.restrict is None else ctx.restrict & frozenset(r.models)
        ctx.note(
            "redirect",
            f"{stage} restricted the request to {', '.join(sorted(ctx.restrict)) or 'no model'}"
            + (f": {r.reason}" if r.reason else ""),
            stage=stage,
            models=sorted(ctx.restrict),
        )


def answered_by_stage(ctx: RequestContext, answer: Answer) -> None:
    """Record that ``answer`` (a stage's) is what the client gets: no model, no plan, nothing to pay."""
    ctx.answered_by = answer.source
    ctx.model = answer.model
    ctx.response_text = answer.response.content
    ctx.usage = answer.response.usage
    ctx.response_headers.update(answer.headers or {})
    ctx.decision = Decision(
        route=ctx.target,
        model=answer.model,
        candidates=[],
        lam=0.0,
        router=answer.source,
        reasons=list(ctx.notes),
        signals=ctx.signals,
        rule=ctx.rule,
        plan=Plan("answer", []),
    )


def annotate_dry_run(gw: GatewayParts, ctx: RequestContext, decision: Decision) -> None:
    """What the chain would meet, for /v1/route: fallbacks the key may not use, breakers open, endpoints out."""
    usable = gw.usable_for(ctx)
    if usable is not None:
        for m in decision.fallbacks:
            if m not in usable:
                decision.reason(
                    "fallback_skipped",
                    f"fallback {m} will be skipped: key {getattr(ctx.key, 'name', None)!r} may not use it",
                    model=m,
                )
    # a dry run says what the chain would meet: models whose every endpoint's breaker is open are skipped
    assert decision.plan is not None
    for m in decision.plan.models:
        t = gw.targets.get(m)
        if t is None:
            continue
        if t.state == "open":
            decision.reason(
                "breaker_open",
                f"{m} would be skipped now: its circuit breaker is open "
                f"(recent failures; it is tried again after {t.breaker.cooldown_s:g} s)",
                model=m,
            )
        elif t.state == "half-open":
            decision.reason(
                "breaker_open",
                f"{m} is being probed after recent failures: one request at a time goes through until one succeeds",
                model=m,
            )
        for e in t.endpoints:
            if len(t.endpoints) > 1 and (e.breaker.state != "closed" or e.out_of_rotation):
                why = "held out by the health monitor" if e.out_of_rotation else e.breaker.state
                decision.reason("breaker_open", f"{m}: endpoint {e.name} is out of rotation ({why})", model=m, endpoint=e.name)


__all__ = ["annotate_dry_run", "answered_by_stage", "run_request_stages", "with_plugins"]
