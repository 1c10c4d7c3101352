"""Per-key rate limits: requests (``rpm``) and tokens (``tpm``) per minute, checked when a request is authenticated.

A key configured with ``rpm: 60`` may *start* at most 60 requests in any 60-second window, and one with
``tpm: 100000`` use at most about 100,000 tokens (prompt + completion) in any 60-second window, across
every replica sharing the state (Redis) or in the one process. The windows, exact sliding logs, live in
:mod:`turnout.state.ratelimit`; this module decides what a request holds and what a refusal says.

* **Admission** (:meth:`RateLimiter.admit`, in the pipeline's authenticate phase, before any routing
  work): one atomic call to the windows; a refusal is :class:`~turnout.errors.RateLimitedError` (the
  server's ``429`` with ``retry-after``, in whole seconds). The request holds its estimated tokens: the
  prompt's estimate plus ``max_tokens``/``max_completion_tokens`` when the request gives one.
* **Settlement** (:meth:`RateLimiter.settle`, when the request is accounted): the estimate is replaced
  by the tokens every model call of the request really used (0 for an answer no model made).

A key without ``rpm`` or ``tpm`` costs nothing: no call is made for it. A key with a limit costs one
round trip per request with Redis (two with ``tpm``: the settlement).

**When the store fails** (Redis down): ``on_failure: closed`` (the default) refuses the request with
:class:`~turnout.errors.StateError` (a ``503`` naming the store); ``open`` serves it unchecked, with a
warning in the log (at most one per ``quiet_s``), ``turnout_errors_total{kind="state_unavailable"}``
counted and a reason on the request. Config: ``state.on_failure.rate_limits``.

Example::

    limiter = RateLimiter(InMemoryRateWindows())
    await limiter.admit(ctx)      # RateLimitedError when the key's window is full
    ...                           # serve it
    await limiter.settle(ctx)     # the tokens it really used
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from turnout.errors import RateLimitedError, StateError
from turnout.gateway.context import RequestContext
from turnout.state.ratelimit import RateWindows, rate_windows_for
from turnout.tokens import estimate_prompt_tokens

log = logging.getLogger(__name__)

#: what a request's failure to reach the state store does: refuse it (closed) or serve it unchecked (open)
FAIL_CLOSED = "closed"
FAIL_OPEN = "open"


def held_tokens(ctx: RequestContext) -> int:
    """The tokens a request holds at admission: its prompt's estimate, plus the answer's bound when it gives one."""
    return estimate_prompt_tokens(ctx.request.messages) + (ctx.request.asked_max_tokens() or 0)


def used_tokens(ctx: RequestContext) -> int:
    """The tokens every model call of the request used (prompt + completion; 0 when no model answered)."""
    return sum(a.usage.prompt_tokens + a.usage.completion_tokens for a in ctx.attempts if a.usage is not None)


class RateLimiter:
    """Checks and records the ``rpm`` / ``tpm`` of API keys (see the module docstring).

    ``metrics`` (optional) counts a store failure served open as ``state_unavailable``.
    """

    def __init__(
        self, windows: RateWindows, *, on_failure: str = FAIL_CLOSED, metrics: Any | None = None, quiet_s: float = 10.0
    ) -> None:
        if on_failure not in (FAIL_CLOSED, FAIL_OPEN):
            raise ValueError(f"on_failure must be {FAIL_CLOSED!r} or {FAIL_OPEN!r}, not {on_failure!r}")
        self.windows = windows
        self.on_failure = on_failure
        self.metrics = metrics
        self.quiet_s = quiet_s
        self._last_warned = -math.inf
        self._holding: dict[str, str] = {}  # request id -> key name, for requests that hold tokens

    @classmethod
    def for_keys(cls, keys: Any, *, on_failure: str = FAIL_CLOSED, metrics: Any | None = None) -> RateLimiter | None:
        """A limiter over ``keys``' state store (Redis when shared), or None when no key has ``rpm`` or ``tpm``."""
        specs = getattr(keys, "specs", None) or []
        if not any(getattr(s, "rpm", None) or getattr(s, "tpm", None) for s in specs):
            return None
        return cls(rate_windows_for(keys.counters), on_failure=on_failure, metrics=metrics)

    @staticmethod
    def limited(key: Any) -> bool:
        """Whether ``key`` has a limit this limiter checks."""
        return bool(getattr(key, "rpm", None) or getattr(key, "tpm", None))

    async def admit(self, ctx: RequestContext) -> None:
        """Record the request in its key's windows, or raise RateLimitedError (StateError when failing closed)."""
        key = ctx.key
        if key is None or not self.limited(key):
            return
        tokens = held_tokens(ctx) if key.tpm else 0
        try:
            d = await self.windows.admit(key.name, ctx.request_id, rpm=key.rpm, tpm=key.tpm, tokens=tokens)
        except StateError as exc:
            if self.on_failure == FAIL_CLOSED:
                raise StateError(
                    f"{exc}; the rate limits of key {key.name!r} cannot be checked, so the request is "
                    "refused (state.on_failure.rate_limits: closed)"
                ) from exc
            self._served_unchecked(ctx, exc)
            return
        if not d.ok:
            wait = max(1, math.ceil(d.retry_after_s))
            if d.limit == "tpm":
                what = f"has used {d.used:.0f} tokens in the last {self.windows.window_s:g} s, its limit (tpm {key.tpm})"
            else:
                what = f"has made {d.used:.0f} requests in the last {self.windows.window_s:g} s, its limit (rpm {key.rpm})"
            raise RateLimitedError(
                f"key {key.name!r} {what}: retry after {wait} s, or raise {d.limit} for this key in the config",
                retry_after=d.retry_after_s,
                limit=d.limit or "rpm",
            )
        if key.tpm:
            self._holding[ctx.request_id] = key.name

    def _served_unchecked(self, ctx: RequestContext, exc: StateError) -> None:
        ctx.note("rate_limit", f"rate limits not checked (the state store failed; state.on_failure.rate_limits: open): {exc}")
        if self.metrics is not None:
            self.metrics.inc_error(exc.kind)
        now = time.monotonic()
        if now - self._last_warned >= self.quiet_s:
            self._last_warned = now
            log.warning("serving requests without checking rate limits (state.on_failure.rate_limits: open): %s", exc)

    def holding(self, ctx: RequestContext) -> bool:
        """Whether the request holds tokens that :meth:`settle` must replace (its key has ``tpm``)."""
        return ctx.request_id in self._holding

    async def settle(self, ctx: RequestContext) -> None:
        """Replace the request's held tokens by what it used (no-op for a request that held none)."""
        name = self._holding.pop(ctx.request_id, None)
        if name is not None:
            await self.windows.settle(name, ctx.request_id, used_tokens(ctx))

    def __repr__(self) -> str:
        return f"RateLimiter({self.windows!r}, on_failure={self.on_failure})"


__all__ = ["FAIL_CLOSED", "FAIL_OPEN", "RateLimiter", "held_tokens", "used_tokens"]
