"""turnout.gateway: the HTTP-free pipeline (route -> backend chain with retries, timeouts, breakers).

The server (``turnout.server``) is a thin ASGI layer over :class:`Gateway`.
"""

from turnout.gateway.chain import Attempt, ModelTarget
from turnout.gateway.offload import Offloader
from turnout.gateway.pipeline import Gateway, StreamSession
from turnout.gateway.reliability import Backoff, CircuitBreaker
from turnout.gateway.routes import Price, RouteRuntime

__all__ = ["Attempt", "Backoff", "CircuitBreaker", "Gateway", "ModelTarget", "Offloader", "Price", "RouteRuntime", "StreamSession"]
