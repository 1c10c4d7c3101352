"""What the pipeline's parts (model calls, streams, accounting) may use of the gateway that runs them.

:class:`~turnout.gateway.pipeline.Gateway` satisfies :class:`GatewayParts` structurally; the parts depend on
this protocol, not on the gateway module, so the pipeline imports its parts and never the other way round.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from turnout.gateway.balance import BalanceKey
    from turnout.gateway.context import RequestContext
    from turnout.gateway.embeddings import EmbeddingService
    from turnout.gateway.endpoints import ModelTarget
    from turnout.gateway.offload import Offloader
    from turnout.gateway.routes import RouteRuntime
    from turnout.gateway.stages import Stages


class GatewayParts(Protocol):
    """The gateway as its parts see it: the fleet, the routes, the counters and the log."""

    targets: dict[str, ModelTarget]
    routes: dict[str, RouteRuntime]
    metrics: Any
    request_log: Any
    keys: Any
    status_for: Callable[[BaseException | None], int | None] | None
    balanced: bool
    #: per-key rpm/tpm (gateway/ratelimit.py), the shared feedback index, what a failed budget hold does
    limiter: Any
    feedback_index: Any
    budgets_on_failure: str
    #: the configured stages, the offload pool (CPU work off the loop) and the shared embedding service
    stages: Stages
    offloader: Offloader
    embeddings: EmbeddingService

    def usable_for(self, ctx: RequestContext) -> frozenset[str] | None: ...

    def balance_key(self, ctx: RequestContext) -> BalanceKey: ...


__all__ = ["GatewayParts"]
