"""Plan executors: how the gateway carries out a :class:`~turnout.types.Plan`.

A decision carries a plan (:class:`turnout.types.Plan`); an executor registered under the plan's ``kind``
carries it out with a :class:`~turnout.gateway.calls.ModelCaller`, which pays for and records every model
call. An executor implements two coroutines:

* ``complete(caller, plan) -> ChatResponse``: the whole answer;
* ``open_stream(caller, plan) -> OpenStream | ChatResponse``: a live stream committed to one model (the
  streaming commit rule), or, for plans that must see whole answers before choosing one (a cascade's
  acceptance check, a fan-out's vote), the chosen answer, which the gateway then streams like a live one.

Either sets ``caller.ctx.model`` to the model whose answer the client gets. The server never sees plans:
a new kind registers here and needs nothing else. Built-in: ``single`` (one model with its fallbacks: the
chain of earlier versions), and, loaded on first use (:data:`BUILTIN_PLANS`), ``cascade``
(:mod:`turnout.gateway.cascade`), ``fanout`` and ``rounds`` (:mod:`turnout.gateway.fanout`).

Example (a plugin plan)::

    class EchoPlan:
        kind = "echo"
        async def complete(self, caller, plan): ...
        async def open_stream(self, caller, plan): return await self.complete(caller, plan)
    register_plan(EchoPlan())
"""

from __future__ import annotations

import importlib
from typing import Protocol

from turnout.errors import ConfigError
from turnout.gateway.calls import ModelCaller, OpenStream
from turnout.types import PLAN_SINGLE, ChatResponse, Plan


class PlanExecutor(Protocol):
    """Carries out plans of one ``kind``."""

    kind: str

    async def complete(self, caller: ModelCaller, plan: Plan) -> ChatResponse: ...

    async def open_stream(self, caller: ModelCaller, plan: Plan) -> OpenStream | ChatResponse: ...


class SinglePlan:
    """One model, then its fallbacks on error: ``plan.steps[0]``."""

    kind = PLAN_SINGLE

    async def complete(self, caller: ModelCaller, plan: Plan) -> ChatResponse:
        step = plan.steps[0]
        resp, attempt = await caller.complete([step.model, *step.fallbacks])
        caller.ctx.model = attempt.model
        return resp

    async def open_stream(self, caller: ModelCaller, plan: Plan) -> OpenStream:
        step = plan.steps[0]
        opened = await caller.open_stream([step.model, *step.fallbacks])
        caller.ctx.model = opened.target.name
        return opened


_EXECUTORS: dict[str, PlanExecutor] = {PLAN_SINGLE: SinglePlan()}
#: turnout's other executors, imported on first use (a gateway without cascades never loads them)
BUILTIN_PLANS: dict[str, str] = {
    "cascade": "turnout.gateway.cascade:CascadePlan",
    "fanout": "turnout.gateway.fanout:FanoutPlan",
    "rounds": "turnout.gateway.fanout:RoundsPlan",
}


def register_plan(executor: PlanExecutor) -> None:
    """Serve plans of ``executor.kind`` with ``executor`` (replaces an earlier one of that kind)."""
    _EXECUTORS[executor.kind] = executor


def plan_executor(kind: str) -> PlanExecutor:
    """The executor of plans of ``kind``; ConfigError naming the known kinds."""
    ex = _EXECUTORS.get(kind)
    if ex is None and kind in BUILTIN_PLANS:
        module, _, cls = BUILTIN_PLANS[kind].partition(":")
        ex = _EXECUTORS[kind] = getattr(importlib.import_module(module), cls)()
    if ex is None:
        raise ConfigError(
            f"no executor for plans of kind {kind!r}", key="plan.kind", fix=f"use one of: {', '.join(plan_kinds())}"
        )
    return ex


def plan_kinds() -> list[str]:
    """Every plan kind an executor serves (registered or built in)."""
    return sorted(set(_EXECUTORS) | set(BUILTIN_PLANS))


__all__ = ["BUILTIN_PLANS", "PlanExecutor", "SinglePlan", "plan_executor", "plan_kinds", "register_plan"]
