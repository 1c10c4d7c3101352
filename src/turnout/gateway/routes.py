"""A route at run time: router (scores) + policy (decides), synchronous and free of I/O.

:meth:`RouteRuntime.decide` is CPU work (a router's forward pass, the policy) and is called through the
gateway's :class:`~turnout.gateway.offload.Offloader`, never on the event loop. The prompt's embedding is
*not* computed here: the gateway's embedding service computes it once per request (the router, a domain
guard and the semantic cache share it) and passes it in; a route built without that service (a test, a
script) may still embed inline with its own ``embedder``.

Costs come from the *fleet's* prices, not the router's: a router trained on other models predicts
quality; what a fleet model costs is known from config (prompt tokens x input price +
:data:`~turnout.routing.calibration.EXPECTED_OUTPUT_TOKENS` x output price).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from turnout.embed.base import Embedder
from turnout.routing.base import Router
from turnout.routing.calibration import EXPECTED_OUTPUT_TOKENS
from turnout.routing.policy import Policy
from turnout.tokens import estimate_tokens
from turnout.types import ChatRequest, Decision, Plan, Price

if TYPE_CHECKING:
    from turnout.gateway.budget import RouteBudget


@dataclass(frozen=True, slots=True)
class RouteOverrides:
    """Per-request changes a matched decision rule makes to how a route decides (None: the route's own).

    ``router`` scores the candidates instead of the route's router (named ``router_name``); ``lam`` is the
    cost weight (it replaces a route budget's for this request); ``max_cost`` excludes candidates predicted
    to cost more than that many USD.
    """

    router: Router | None = None
    router_name: str | None = None
    lam: float | None = None
    max_cost: float | None = None


@dataclass
class RouteRuntime:
    """One configured route. ``candidates`` maps router model names to fleet model names.

    ``budget`` (a :class:`~turnout.gateway.budget.RouteBudget`), when set, supplies the λ of every decision
    instead of the policy's own, and its state is reported in the decision. ``embedder_name`` names the
    gateway embedding service's embedder the router's features come from (``embedder`` is that embedder,
    for warm-up and for deciding outside a gateway). ``plan`` turns the policy's decision into the plan the
    gateway executes (default: the chosen model with its fallbacks); a cascade route sets it.
    """

    name: str
    router: Router
    router_name: str
    candidates: Mapping[str, str]
    prices: Mapping[str, Price]
    policy: Policy
    embedder: Embedder | None = None
    fallbacks: list[str] = field(default_factory=list)
    budget: RouteBudget | None = None
    embedder_name: str | None = None
    plan: Callable[[Decision], Plan] | None = None

    def __post_init__(self) -> None:
        if self.embedder is not None and self.embedder_name is None:
            # an embedder object handed in directly: served under a name of its own
            self.embedder_name = f"route:{self.name}:{getattr(self.embedder, 'name', 'embedder')}"

    def decide(
        self, request: ChatRequest, allowed: Collection[str] | None = None, *, vector: np.ndarray | None = None
    ) -> Decision:
        """Score every candidate for ``request`` and let the policy choose (blocking).

        ``vector`` is the prompt's embedding by this route's embedder; without it the route embeds
        inline (when it has an embedder) or, for routers that need no features (prior, baselines),
        passes one empty row.
        """
        t0 = time.perf_counter()
        text = request.prompt_text()
        if vector is not None:
            X = np.asarray(vector)[None, :]
        elif self.embedder is not None:
            X = self.embedder.embed_one(text)[None, :]
        else:
            X = np.zeros((1, 1), dtype=np.float32)
        pred = self.router.predict(X)
        index = {m: i for i, m in enumerate(pred.models)}
        tokens = estimate_tokens(text)
        fleet, quality, cost = [], [], []
        for router_model, fleet_model in self.candidates.items():
            i = index.get(router_model)
            fleet.append(fleet_model)
            quality.append(float(pred.quality[0, i]) if i is not None else float("nan"))
            cost.append(self.prices[fleet_model].cost(tokens, EXPECTED_OUTPUT_TOKENS))
        budget = self.budget
        decision = self.policy.decide(
            quality,
            cost,
            fleet,
            route=self.name,
            router_name=self.router_name,
            prompt_tokens=tokens,
            allowed=allowed,
            lam=budget.lam() if budget is not None else None,
            budget=budget.describe() if budget is not None else None,
        )
        if budget is not None:
            decision.reason("budget", budget.reason(), **(decision.budget or {}))
        if self.fallbacks:
            # Configured fallbacks win over the policy's utility order: the operator knows the fleet.
            decision.fallbacks = [m for m in self.fallbacks if m != decision.model]
        decision.plan = self.plan(decision) if self.plan is not None else Plan.single(decision.model, decision.fallbacks)
        decision.elapsed_ms = (time.perf_counter() - t0) * 1000.0
        return decision

    def overridden(self, o: RouteOverrides) -> RouteRuntime:
        """A shallow copy of this route that decides with ``o``'s router, λ and cost cap (one request's view).

        Shared state (the budget's counters, a bandit's statistics) stays shared; only what ``o`` names is
        replaced. A router that scores the fleet's own model names is mapped to them.
        """
        rt = copy.copy(self)
        if o.router is not None:
            rt.router = o.router
            rt.router_name = o.router_name or type(o.router).__name__
            scored = set(getattr(o.router, "models", None) or ())
            if scored and not set(self.candidates) & scored and set(self.candidates.values()) & scored:
                rt.candidates = {m: m for m in self.candidates.values()}
        if o.lam is not None or o.max_cost is not None:
            rt.policy = copy.copy(self.policy)
            if o.lam is not None:
                rt.policy.lam = float(o.lam)
                rt.budget = None  # the rule's λ, not the budget's, for this request (its spend is still counted)
            if o.max_cost is not None:
                rt.policy.max_cost = float(o.max_cost)
        return rt


__all__ = ["EXPECTED_OUTPUT_TOKENS", "Price", "RouteOverrides", "RouteRuntime"]
