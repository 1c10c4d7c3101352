"""The fallback chain of one request: which model to try next, and what became of every try.

Both ways of answering walk the same chain, ``[chosen model] + fallbacks``:
:meth:`Gateway.chat` (one whole answer) and :meth:`Gateway.chat_stream` (a
stream, up to its first chunk). They differ only in what *one try* does, so
everything else lives here, once:

* the circuit breaker: a model whose breaker is open is skipped (recorded as a
  :class:`~turnout.errors.BackendUnavailableError`);
* authorisation: a model the API key may not use is skipped (recorded as a
  :class:`~turnout.errors.ModelNotAllowedError`), never silently called;
* retries: up to ``attempts`` tries per model, with jittered backoff between
  them, on retryable failures only; a non-retryable one moves on at once;
* fallback counting in metrics, and the exhausted-chain error carrying every
  attempt's error in order.

Usage (the caller reports each try's outcome)::

    chain = Chain(targets, decision, attempts, metrics=metrics)
    async for target in chain:            # sleeps the backoff before a retry
        try:
            result = await one_try(target)
        except BackendError as exc:
            chain.failed(exc)             # then the next try, or the next model
            continue
        except BaseException:
            chain.abandoned()             # the client left: neither success nor failure
            raise
        chain.succeeded()
        return result
    raise chain.exhausted()
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from turnout.backends.base import Backend, Timeouts
from turnout.errors import (
    AllBackendsFailedError,
    BackendError,
    BackendStatusError,
    BackendUnavailableError,
    ModelNotAllowedError,
    UnsupportedRequestError,
    UpstreamRejectedError,
)
from turnout.gateway.reliability import Backoff, CircuitBreaker
from turnout.gateway.routes import Price
from turnout.types import Decision


@dataclass
class ModelTarget:
    """A fleet model at run time: its backend, upstream name, price and reliability settings."""

    name: str
    backend: Backend
    upstream: str
    price: Price = field(default_factory=Price)
    context_window: int | None = None
    fallbacks: list[str] = field(default_factory=list)
    timeouts: Timeouts = field(default_factory=Timeouts)
    attempts: int = 2
    backoff: Backoff = field(default_factory=Backoff)
    breaker: CircuitBreaker = field(default_factory=lambda: CircuitBreaker(5, 30.0))


@dataclass(slots=True)
class Attempt:
    """One try of one model (or one model skipped): ``error`` is None on success."""

    model: str
    backend: str
    elapsed_s: float
    error: BackendError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def chain_of(decision: Decision) -> list[str]:
    """``[decision.model] + decision.fallbacks``, each model once, in order."""
    chain: list[str] = []
    for m in (decision.model, *decision.fallbacks):
        if m not in chain:
            chain.append(m)
    return chain


class Chain:
    """An async iterator of the model targets to try for one request, in order.

    ``attempts`` (the request's list) receives one :class:`Attempt` per try or
    skip. ``usable`` is the set of models the request's API key may use (None:
    every model); ``key_name`` names the key in the skip message.
    """

    def __init__(self, targets: Mapping[str, ModelTarget], decision: Decision, attempts: list[Attempt], *,
                 metrics: Any | None = None, usable: Collection[str] | None = None, key_name: str | None = None) -> None:
        self._targets = targets
        self._route = decision.route
        self._models = chain_of(decision)
        self._attempts = attempts
        self._metrics = metrics
        self._usable = usable
        self._key_name = key_name
        self.errors: list[BackendError] = []
        self._i = 0  # the model being tried
        self._n = 0  # tries of that model so far
        self._done_with_model = False
        self._current: ModelTarget | None = None
        self._t0 = 0.0

    def __aiter__(self) -> Chain:
        return self

    async def __anext__(self) -> ModelTarget:
        while self._i < len(self._models):
            t = self._targets[self._models[self._i]]
            if self._done_with_model or self._n >= t.attempts:
                self._next_model()
                continue
            if not self._allowed(t.name):
                self._skip(t, ModelNotAllowedError(
                    f"skipped: key {self._key_name!r} may not use {t.name!r} (not in its allowed list)",
                    backend=t.backend.name, model=t.name))
                continue
            if self._n:
                await asyncio.sleep(t.backoff.delay(self._n - 1))
            if not t.breaker.allow():
                self._skip(t, BackendUnavailableError("circuit breaker open; skipped", backend=t.backend.name,
                                                      model=t.name, retryable=False))
                continue
            self._n += 1
            self._current = t
            self._t0 = time.perf_counter()
            return t
        raise StopAsyncIteration

    def _skip(self, t: ModelTarget, err: BackendError) -> None:
        self._attempts.append(Attempt(t.name, t.backend.name, 0.0, err))
        self.errors.append(err)
        self._done_with_model = True

    def _allowed(self, model: str) -> bool:
        return self._usable is None or model in self._usable

    def _next_model(self) -> None:
        # a fallback is counted between models the key may use: a skipped one was never a step of the chain
        if self._metrics is not None and self._allowed(self._models[self._i]):
            following = next((m for m in self._models[self._i + 1:] if self._allowed(m)), None)
            if following is not None:
                self._metrics.inc_fallback(self._route, self._models[self._i], following)
        self._i += 1
        self._n = 0
        self._done_with_model = False

    @property
    def elapsed_s(self) -> float:
        """Seconds since the current try started."""
        return time.perf_counter() - self._t0

    def succeeded(self) -> None:
        """The current try answered. (Recording breaker success is the caller's: a stream only
        counts as a success once it has ended well.)"""
        t = self._current
        assert t is not None, "succeeded() before a try"
        self._attempts.append(Attempt(t.name, t.backend.name, self.elapsed_s))

    def failed(self, err: BackendError) -> None:
        """The current try failed with ``err``: counted, breaker updated; the next ``__anext__`` decides what follows."""
        t = self._current
        assert t is not None, "failed() before a try"
        # Only provider trouble opens the breaker; a 400 is the request's fault.
        if err.retryable:
            t.breaker.record_failure()
        else:
            t.breaker.release()
            self._done_with_model = True
        self._attempts.append(Attempt(t.name, t.backend.name, self.elapsed_s, err))
        self.errors.append(err)
        if self._metrics is not None:
            self._metrics.inc_error(err.kind)

    def abandoned(self) -> None:
        """The current try was cut short from outside (client gone): free its breaker probe slot."""
        if self._current is not None:
            self._current.breaker.release()

    def exhausted(self) -> AllBackendsFailedError | UpstreamRejectedError:
        """The error to raise when iteration ended without success: every attempt's error, in order.

        When every attempt was refused for the request itself (a provider's 400 or validation
        error, or a request its protocol cannot express), the request is at fault, not the
        fleet: an :class:`UpstreamRejectedError` (400).
        """
        if self.errors and all((isinstance(e, BackendStatusError) and e.request_fault)
                               or isinstance(e, UnsupportedRequestError) for e in self.errors):
            return UpstreamRejectedError(self.errors)
        return AllBackendsFailedError(self.errors, route=self._route)


__all__ = ["Attempt", "Chain", "ModelTarget", "chain_of"]
