"""A route at run time: embedder + router (scores) + policy (decides), all synchronous.

:meth:`RouteRuntime.decide` is CPU work (embedding, a router's forward pass)
and is always called through the gateway's :class:`~turnout.gateway.offload.Offloader`,
never on the event loop.

Costs come from the *fleet's* prices, not the router's: a router trained on
other models predicts quality; what a fleet model costs is known from config
(prompt tokens x input price + ``expected_output_tokens`` x output price).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from turnout.embed.base import Embedder
from turnout.routing.base import Router
from turnout.routing.policy import Policy, estimate_tokens
from turnout.types import ChatRequest, Decision

if TYPE_CHECKING:
    from turnout.gateway.budget import RouteBudget

#: output length assumed when pricing a candidate before it answers
EXPECTED_OUTPUT_TOKENS = 256


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million input and output tokens."""

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1e6


@dataclass
class RouteRuntime:
    """One configured route. ``candidates`` maps router model names to fleet model names.

    ``budget`` (a :class:`~turnout.gateway.budget.RouteBudget`), when set,
    supplies the λ of every decision instead of the policy's own, and its state
    is reported in the decision.
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

    def warm_up(self) -> None:
        """Load the embedder's model now (blocking), so that the first request does not pay for it."""
        if self.embedder is not None:
            self.embedder.embed_one("turnout warm-up")

    def decide(self, request: ChatRequest, allowed: Collection[str] | None = None) -> Decision:
        """Score every candidate for ``request`` and let the policy choose (blocking)."""
        t0 = time.perf_counter()
        text = request.prompt_text()
        # Routers without an embedder (prior, baselines) still need one row per prompt.
        X = self.embedder.embed_one(text)[None, :] if self.embedder is not None else np.zeros((1, 1), dtype=np.float32)
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
            quality, cost, fleet, route=self.name, router_name=self.router_name, prompt_tokens=tokens, allowed=allowed,
            lam=budget.lam() if budget is not None else None, budget=budget.describe() if budget is not None else None,
        )
        if budget is not None:
            decision.reasons.append(budget.reason())
        if self.fallbacks:
            # Configured fallbacks win over the policy's utility order: the operator knows the fleet.
            decision.fallbacks = [m for m in self.fallbacks if m != decision.model]
        decision.elapsed_ms = (time.perf_counter() - t0) * 1000.0
        return decision


__all__ = ["EXPECTED_OUTPUT_TOKENS", "Price", "RouteRuntime"]
