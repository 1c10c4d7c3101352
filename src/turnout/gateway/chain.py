"""The fallback chain of one request: which model to try next, and what became of every try.

Every model call of a plan walks a chain, ``[model] + fallbacks``, whether it
wants one whole answer or a stream up to its first chunk (:mod:`turnout.gateway.calls`).
The two differ only in what *one try* does, so everything else lives here, once:

* endpoints: each try goes to one endpoint of the model, chosen by the model's
  balancer among the healthy ones; a retry avoids the endpoints that already
  failed this request while another is healthy;
* circuit breakers, one per endpoint: a model every one of whose endpoints has
  its breaker open is skipped (recorded as a
  :class:`~turnout.errors.BackendUnavailableError`);
* authorisation: a model the API key may not use is skipped (recorded as a
  :class:`~turnout.errors.ModelNotAllowedError`), never silently called;
* retries: up to ``attempts`` tries per model, with jittered backoff between
  them, on retryable failures only; a non-retryable one moves on at once;
* fallback counting in metrics, and the exhausted-chain error carrying every
  attempt's error in order.

Usage (the caller reports each try's outcome)::

    chain = Chain(targets, ["m1", "m2"], attempts, metrics=metrics, route="auto")
    async for target in chain:            # sleeps the backoff before a retry
        try:
            result = await one_try(target, chain.endpoint)
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
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from turnout.errors import (
    AllBackendsFailedError,
    BackendError,
    BackendStatusError,
    BackendUnavailableError,
    ModelNotAllowedError,
    UnsupportedRequestError,
    UpstreamRejectedError,
)
from turnout.gateway.balance import BalanceKey
from turnout.gateway.endpoints import Endpoint, ModelTarget
from turnout.types import Usage

#: the balance key of a request that gives none (load decides alone)
NO_KEY = BalanceKey((), 0)


@dataclass(slots=True)
class Attempt:
    """One try of one model (or one model skipped): a call of the request, as the log shows it.

    ``error`` is None on success. ``endpoint`` is the endpoint tried; ``role`` what the call was for
    (``answer``, ``step`` of a cascade, ``member`` or ``aggregator`` of a fan-out); ``step`` its plan step;
    ``accepted`` (cascades) whether its answer was kept; ``usage``/``cost_usd`` what it generated and
    cost (a failed or rejected call is paid for too); ``ttft_s`` its time to first token when streamed.
    """

    model: str
    backend: str
    elapsed_s: float
    error: BackendError | None = None
    endpoint: str = ""
    role: str = "answer"
    step: int = 0
    accepted: bool | None = None
    usage: Usage | None = None
    cost_usd: float = 0.0
    ttft_s: float | None = None
    confidence: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def status(self) -> str:
        """``ok``, ``rejected`` (a cascade answer not kept), ``skipped`` (never sent) or ``error``."""
        if self.error is None:
            return "rejected" if self.accepted is False else "ok"
        return "skipped" if isinstance(self.error, (BackendUnavailableError, ModelNotAllowedError)) else "error"

    def to_dict(self) -> dict[str, Any]:
        """The call as a request-log child row."""
        u = self.usage
        return {
            "model": self.model,
            "backend": self.backend,
            "endpoint": self.endpoint,
            "role": self.role,
            "step": self.step,
            "status": self.status,
            "error_kind": self.error.kind if self.error else None,
            "error": str(self.error)[:500] if self.error else None,
            "accepted": self.accepted,
            "prompt_tokens": u.prompt_tokens if u else 0,
            "completion_tokens": u.completion_tokens if u else 0,
            "cost_usd": self.cost_usd,
            "latency_s": self.elapsed_s,
            "ttft_s": self.ttft_s,
            "confidence": self.confidence,
        }


class Chain:
    """An async iterator of the model targets to try for one model call, in order.

    ``models`` is the chain (``[model] + fallbacks``, each model tried once, in order). After
    ``__anext__`` returns a target, :attr:`endpoint` is the endpoint chosen for that try (its breaker's
    permission taken, its in-flight count raised until the try is reported). ``attempts`` (the request's
    list) receives one :class:`Attempt` per try or skip, tagged with ``role`` and ``step``. ``usable`` is
    the set of models the request's API key may use (None: every model); ``key_name`` names the key in
    the skip message; ``balance_key`` is the request's prefix key for the balancers.
    """

    def __init__(
        self,
        targets: Mapping[str, ModelTarget],
        models: Sequence[str],
        attempts: list[Attempt],
        *,
        metrics: Any | None = None,
        usable: Collection[str] | None = None,
        key_name: str | None = None,
        route: str | None = None,
        balance_key: BalanceKey = NO_KEY,
        role: str = "answer",
        step: int = 0,
    ) -> None:
        self._targets = targets
        self._route = route or "-"
        self._models = list(dict.fromkeys(models))
        self._attempts = attempts
        self._metrics = metrics
        self._usable = usable
        self._key_name = key_name
        self._key = balance_key
        self._role = role
        self._step = step
        self.errors: list[BackendError] = []
        self._i = 0  # the model being tried
        self._n = 0  # tries of that model so far
        self._done_with_model = False
        self._current: ModelTarget | None = None
        #: the endpoint of the current try
        self.endpoint: Endpoint | None = None
        self._failed: list[Endpoint] = []  # endpoints of the current model that failed this call
        self._t0 = 0.0
        self._found_slot = False

    def __aiter__(self) -> Chain:
        return self

    async def __anext__(self) -> ModelTarget:
        while self._i < len(self._models):
            t = self._targets[self._models[self._i]]
            if self._done_with_model or self._n >= t.attempts:
                self._next_model()
                continue
            if not self._allowed(t.name):
                self._skip(
                    t,
                    ModelNotAllowedError(
                        f"skipped: key {self._key_name!r} may not use {t.name!r} (not in its allowed list)",
                        backend=t.backend.name,
                        model=t.name,
                    ),
                )
                continue
            if self._n:
                await asyncio.sleep(t.backoff.delay(self._n - 1))
            ep = t.pick(self._key, self._failed)
            if ep is None:
                what = (
                    "circuit breaker open"
                    if len(t.endpoints) == 1
                    else f"circuit breakers of all {len(t.endpoints)} endpoints open"
                )
                self._skip(t, BackendUnavailableError(f"{what}; skipped", backend=t.backend.name, model=t.name, retryable=False))
                continue
            self._n += 1
            self._current = t
            self.endpoint = ep
            self._found_slot = ep.in_flight < ep.slots
            ep.in_flight += 1
            self._t0 = time.perf_counter()
            return t
        raise StopAsyncIteration

    def _skip(self, t: ModelTarget, err: BackendError) -> None:
        self._attempts.append(Attempt(t.name, t.backend.name, 0.0, err, role=self._role, step=self._step))
        self.errors.append(err)
        self._done_with_model = True

    def _allowed(self, model: str) -> bool:
        return self._usable is None or model in self._usable

    def _next_model(self) -> None:
        # a fallback is counted between models the key may use: a skipped one was never a step of the chain
        if self._metrics is not None and self._allowed(self._models[self._i]):
            following = next((m for m in self._models[self._i + 1 :] if self._allowed(m)), None)
            if following is not None:
                self._metrics.inc_fallback(self._route, self._models[self._i], following)
        self._i += 1
        self._n = 0
        self._done_with_model = False
        self._failed = []

    @property
    def elapsed_s(self) -> float:
        """Seconds since the current try started."""
        return time.perf_counter() - self._t0

    def _done(self, ttft_s: float | None = None) -> None:
        """The current try's endpoint is free again; fold its timings into the endpoint's averages."""
        ep = self.endpoint
        if ep is not None:
            ep.in_flight = max(0, ep.in_flight - 1)
            ep.observe(ttft_s=ttft_s, service_s=self.elapsed_s, found_slot=self._found_slot)

    def _record(self, err: BackendError | None, *, ttft_s: float | None = None) -> Attempt:
        t = self._current
        assert t is not None, "a try must be running"
        a = Attempt(
            t.name,
            t.backend.name,
            self.elapsed_s,
            err,
            endpoint=self.endpoint.name if self.endpoint else "",
            role=self._role,
            step=self._step,
            ttft_s=ttft_s,
        )
        self._attempts.append(a)
        return a

    def succeeded(self, *, ttft_s: float | None = None, release: bool = True) -> Attempt:
        """The current try answered: its :class:`Attempt` (the caller fills in usage and cost).

        Recording breaker success is the caller's: a stream only counts as a success once it has ended
        well. ``release=False`` keeps the endpoint's in-flight count up (a committed stream still runs;
        :meth:`stream_ended` releases it).
        """
        if release:
            self._done(ttft_s)
        return self._record(None, ttft_s=ttft_s)

    def stream_ended(self, ttft_s: float | None) -> None:
        """A committed stream of the current try has ended (well or not): the endpoint is free again."""
        self._done(ttft_s)

    def failed(self, err: BackendError) -> Attempt:
        """The current try failed with ``err``: counted, breaker updated; the next ``__anext__`` decides what follows."""
        t = self._current
        assert t is not None, "failed() before a try"
        ep = self.endpoint
        # Only provider trouble opens the breaker; a 400 is the request's fault.
        if ep is not None:
            if err.retryable:
                ep.breaker.record_failure()
                self._failed.append(ep)
            else:
                ep.breaker.release()
        if not err.retryable:
            self._done_with_model = True
        self._done()
        a = self._record(err)
        self.errors.append(err)
        if self._metrics is not None:
            self._metrics.inc_error(err.kind)
        return a

    def abandoned(self) -> None:
        """The current try was cut short from outside (client gone): free its breaker probe slot and its endpoint."""
        if self.endpoint is not None:
            self.endpoint.breaker.release()
            self._done()
            self.endpoint = None

    def exhausted(self) -> AllBackendsFailedError | UpstreamRejectedError:
        """The error to raise when iteration ended without success: every attempt's error, in order.

        When every attempt was refused for the request itself (a provider's 400 or validation
        error, or a request its protocol cannot express), the request is at fault, not the
        fleet: an :class:`UpstreamRejectedError` (400).
        """
        if self.errors and all(
            (isinstance(e, BackendStatusError) and e.request_fault) or isinstance(e, UnsupportedRequestError) for e in self.errors
        ):
            return UpstreamRejectedError(self.errors)
        return AllBackendsFailedError(self.errors, route=self._route)


__all__ = ["NO_KEY", "Attempt", "Chain", "ModelTarget"]
