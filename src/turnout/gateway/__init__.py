"""turnout.gateway: the HTTP-free request pipeline (stages over a RequestContext, plans, endpoints, accounting).

The server (``turnout.server``) is a thin ASGI layer over :class:`Gateway`. ``docs/architecture.md`` draws
the stages and names the seam each feature plugs into.
"""

from turnout.gateway.chain import Attempt
from turnout.gateway.context import RequestContext
from turnout.gateway.endpoints import Endpoint, ModelTarget
from turnout.gateway.offload import Offloader
from turnout.gateway.pipeline import Gateway
from turnout.gateway.plans import PlanExecutor, register_plan
from turnout.gateway.reliability import Backoff, CircuitBreaker
from turnout.gateway.routes import RouteRuntime
from turnout.gateway.stages import Answer, Block, Redirect, Stages, register_stage
from turnout.gateway.streaming import StreamSession
from turnout.types import Price

__all__ = [
    "Answer",
    "Attempt",
    "Backoff",
    "Block",
    "CircuitBreaker",
    "Endpoint",
    "Gateway",
    "ModelTarget",
    "Offloader",
    "PlanExecutor",
    "Price",
    "Redirect",
    "RequestContext",
    "RouteRuntime",
    "Stages",
    "StreamSession",
    "register_plan",
    "register_stage",
]
