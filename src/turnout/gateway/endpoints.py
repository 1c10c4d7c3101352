"""Models and the endpoints that serve them: several replicas behind one model, each with its own breaker.

A fleet model (``gpt-4o``, ``qwen2.5-7b``) is served by one or more *endpoints*: a backend (its base
URL, credentials and connection pool) with a weight. Replicas of a vLLM or llama.cpp server are
endpoints of one model. Each endpoint has its own circuit breaker and in-flight count, so one dead
replica is taken out of rotation while the model keeps serving from the others; the model counts as
unavailable only when every endpoint's breaker is open.

Which endpoint serves a try is a :class:`~turnout.gateway.balance.Balancer`'s choice (least in-flight
by default; round-robin, power of two choices, consistent hashing and DualMap-style prefix-cache
affinity by config). An :class:`Endpoint` *is* the balancer's view of it (the attributes of
:class:`~turnout.gateway.balance.EndpointView`, kept live), so choosing allocates nothing.

Example::

    t = ModelTarget("qwen", endpoints=[Endpoint("a", backend_a), Endpoint("b", backend_b)], upstream="qwen2.5-7b")
    ep = t.pick(key)          # a healthy endpoint whose breaker lets a try through, or None
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from turnout.backends.base import Backend, Timeouts
from turnout.gateway.balance import BalanceKey, Balancer, create_balancer
from turnout.gateway.reliability import Backoff, CircuitBreaker
from turnout.types import Price

#: weight of the newest observation in the endpoints' moving averages
EWMA_ALPHA = 0.2


class Endpoint:
    """One copy of a model: a backend, a weight, a circuit breaker and live load figures.

    ``in_flight`` counts tries sent and not finished; ``ewma_ttft_s`` and ``ewma_service_s`` are moving
    averages of time to first token and of the whole service time of tries that found a free slot
    (the balancers' TTFT estimate uses them). ``healthy`` is False while the breaker is open or the
    endpoint is out of rotation (``out_of_rotation``: set by the health monitor, :mod:`turnout.gateway.health`,
    when a probe failed or another replica marked it; requests only read it).
    """

    __slots__ = (
        "backend",
        "breaker",
        "ewma_prefill_tok_s",
        "ewma_service_s",
        "ewma_ttft_s",
        "in_flight",
        "name",
        "out_of_rotation",
        "slots",
        "weight",
    )

    def __init__(
        self, name: str, backend: Backend, *, weight: float = 1.0, breaker: CircuitBreaker | None = None, slots: int = 1
    ) -> None:
        self.name = name
        self.backend = backend
        self.weight = weight
        self.breaker = breaker if breaker is not None else CircuitBreaker(5, 30.0)
        self.slots = slots
        self.in_flight = 0
        self.ewma_ttft_s: float | None = None
        self.ewma_prefill_tok_s: float | None = None
        self.ewma_service_s: float | None = None
        self.out_of_rotation = False

    @property
    def healthy(self) -> bool:
        """In rotation: not held out by the health monitor, and the breaker is closed or half-open (a probe may go
        through)."""
        return not self.out_of_rotation and self.breaker.state != "open"

    def observe(self, *, ttft_s: float | None, service_s: float | None, found_slot: bool) -> None:
        """Fold one finished try into the moving averages (service time only when no queue was involved)."""
        if ttft_s is not None:
            self.ewma_ttft_s = ttft_s if self.ewma_ttft_s is None else self.ewma_ttft_s + EWMA_ALPHA * (ttft_s - self.ewma_ttft_s)
        if service_s is not None and found_slot:
            self.ewma_service_s = (
                service_s if self.ewma_service_s is None else self.ewma_service_s + EWMA_ALPHA * (service_s - self.ewma_service_s)
            )

    def describe(self) -> dict[str, Any]:
        """What ``/v1/models``, ``/readyz`` and the start-up summary say about this endpoint."""
        return {
            "name": self.name,
            "backend": self.backend.name,
            "base_url": getattr(self.backend, "base_url", None),
            "weight": self.weight,
            "breaker": self.breaker.state,
            "in_flight": self.in_flight,
            "in_rotation": self.healthy,
        }

    def __repr__(self) -> str:
        out = ", out of rotation" if self.out_of_rotation else ""
        return f"Endpoint({self.name!r}, breaker={self.breaker.state}{out}, in_flight={self.in_flight})"


class ModelTarget:
    """A fleet model at run time: its endpoints, upstream name, price and reliability settings.

    Give either ``backend`` (one endpoint, named after the backend; ``breaker`` is its breaker) or
    ``endpoints`` (several; ``balancer`` chooses among them, least in-flight by default).
    ``breaker`` reads and replaces the first endpoint's breaker, as a single-endpoint model's only one.
    ``private`` marks a model whose provider may see personal data (a PII guard may allow only those).
    """

    def __init__(
        self,
        name: str,
        backend: Backend | None = None,
        upstream: str | None = None,
        *,
        price: Price | None = None,
        context_window: int | None = None,
        fallbacks: Sequence[str] = (),
        timeouts: Timeouts | None = None,
        attempts: int = 2,
        backoff: Backoff | None = None,
        breaker: CircuitBreaker | None = None,
        endpoints: Sequence[Endpoint] | None = None,
        balancer: Balancer | None = None,
        private: bool = False,
    ) -> None:
        if endpoints:
            if backend is not None:
                raise ValueError(f"model {name!r}: give backend or endpoints, not both")
            self.endpoints = list(endpoints)
        elif backend is not None:
            self.endpoints = [Endpoint(backend.name, backend, breaker=breaker)]
        else:
            raise ValueError(f"model {name!r} needs a backend or at least one endpoint")
        self.name = name
        self.upstream = upstream or name
        self.price = price or Price()
        self.context_window = context_window
        self.fallbacks = list(fallbacks)
        self.timeouts = timeouts or Timeouts()
        self.attempts = attempts
        self.backoff = backoff or Backoff()
        self.private = private
        self.balancer: Balancer = balancer or create_balancer("least_loaded")
        self.balancer.on_change(self.endpoints)

    @property
    def backend(self) -> Backend:
        """The first endpoint's backend (the only one of a single-endpoint model)."""
        return self.endpoints[0].backend

    @backend.setter
    def backend(self, value: Backend) -> None:
        if len(self.endpoints) != 1:
            raise AttributeError(f"model {self.name!r} has {len(self.endpoints)} endpoints: set endpoints[i].backend")
        self.endpoints[0].backend = value

    @property
    def breaker(self) -> CircuitBreaker:
        return self.endpoints[0].breaker

    @breaker.setter
    def breaker(self, value: CircuitBreaker) -> None:
        self.endpoints[0].breaker = value

    @property
    def state(self) -> str:
        """``closed`` if any endpoint serves, ``half-open`` if only probes would go through, else ``open`` (an
        endpoint out of rotation counts as open)."""
        states = {"open" if e.out_of_rotation else e.breaker.state for e in self.endpoints}
        return "closed" if "closed" in states else ("half-open" if "half-open" in states else "open")

    def pick(self, key: BalanceKey, exclude: Sequence[Endpoint] = ()) -> Endpoint | None:
        """An endpoint for one try, its breaker's permission taken; None when no endpoint may be tried now.

        Endpoints in ``exclude`` (those that already failed this request) are avoided while another
        healthy one exists. The balancer only sees healthy endpoints; one whose breaker then refuses
        (its half-open probe is already out) is dropped and the choice made again.
        """
        pool = [e for e in self.endpoints if e.healthy]
        if exclude and len(pool) > len(exclude):
            fresh = [e for e in pool if e not in exclude]
            pool = fresh or pool
        while pool:
            ep = pool[0] if len(pool) == 1 else self.balancer.choose(pool, key)
            if ep.breaker.allow():
                return ep
            pool = [e for e in pool if e is not ep]
        return None

    def describe(self) -> dict[str, Any]:
        """Backend(s), endpoint(s), price and state, for ``/v1/models`` and the start-up summary."""
        return {
            "upstream": self.upstream,
            "context_window": self.context_window,
            "private": self.private,
            "price": {"input_per_mtok": self.price.input_per_mtok, "output_per_mtok": self.price.output_per_mtok},
            "balancer": self.balancer.name,
            "state": self.state,
            "endpoints": [e.describe() for e in self.endpoints],
        }

    def __repr__(self) -> str:
        return f"ModelTarget({self.name!r}, {len(self.endpoints)} endpoint(s))"


__all__ = ["EWMA_ALPHA", "Endpoint", "ModelTarget"]
