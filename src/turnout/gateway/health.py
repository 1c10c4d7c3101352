"""Endpoint health: passive (circuit breakers), active probes with backoff, and out-of-rotation marks shared by replicas.

An endpoint leaves rotation for one of three reasons:

* **passive**: its circuit breaker opened (consecutive upstream failures, :mod:`turnout.gateway.reliability`);
* **a failed probe**: a ``GET`` of the engine's health path (``models`` under the base URL by default, i.e.
  ``/v1/models``; ``/health`` for an absolute path on the host) timed out, could not connect, or was
  answered ``5xx``. Any other answer (``200``, and also ``401``/``404``: a server that answers is up)
  counts as alive;
* **another replica's mark**: a replica that took the endpoint out wrote a mark to the shared state
  (:mod:`turnout.state.marks`), and this replica read it.

:class:`HealthMonitor` runs one task per gateway (started by ``Gateway.start``, stopped by
``Gateway.aclose``) that wakes every ``interval_s`` and, in order:

1. probes the endpoints that are due: those out of rotation here (breaker not closed, or the last probe
   failed), with exponential backoff (``interval_s``, then 2x, 4x... up to ``max_backoff_s``) while
   the probes fail; and, with ``active: true``, every endpoint once per interval, so a dead engine is
   found before a request is sent to it. A failed probe keeps the endpoint out even after its breaker's
   cooldown (no real request is spent on a dead engine); a probe that succeeds lets it back in (for a
   breaker that opened, once its cooldown ends and its half-open request succeeds);
2. writes this replica's marks: one per endpoint it holds out, renewed every tick with a TTL of three
   intervals (a replica that died stops holding endpoints out within that), and clears the ones it no
   longer holds. A breaker that opens is marked *at once* (:class:`WatchedBreaker` tells the monitor), not
   at the next tick;
3. reads every live mark (one round trip) and holds out the endpoints that *other* replicas marked.

So an endpoint taken out by one replica is skipped by every other one within one ``interval_s`` (the
interval of the readers), and no request pays a state round trip for it: the request path only reads
:attr:`Endpoint.out_of_rotation <turnout.gateway.endpoints.Endpoint.out_of_rotation>`. A replica that
holds an endpoint out because of another's mark does not probe it: the marking replica does, and clears
its mark when the endpoint is back. With in-process state the marks stay in the process (one gateway:
nothing to share), and probing works the same.

A state store that fails (Redis down) leaves every replica on its own verdicts: marks read before stay
until their expiry, new ones are not seen; a warning is logged (at most once per ``quiet_s``).

Example::

    monitor = HealthMonitor(gateway.targets, marks_for(state), interval_s=2.0, active=True)
    monitor.attach()                 # breakers built as WatchedBreaker report their opening at once
    await monitor.start()
    ...
    await monitor.aclose()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from turnout.errors import StateError
from turnout.gateway.endpoints import Endpoint, ModelTarget
from turnout.gateway.reliability import CircuitBreaker
from turnout.state.marks import Mark, Marks

log = logging.getLogger(__name__)

#: how many probe intervals a mark outlives its last renewal
MARK_TTL_INTERVALS = 3.0


class WatchedBreaker(CircuitBreaker):
    """A :class:`~turnout.gateway.reliability.CircuitBreaker` that calls ``on_open`` when it opens.

    The health monitor sets ``on_open`` so that a breaker that opens is marked out of rotation for the other
    replicas at once, not at the monitor's next tick. Otherwise it behaves exactly as its base.
    """

    def __init__(
        self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic, *, probe_timeout_s: float = 300.0
    ) -> None:
        super().__init__(failures, cooldown_s, clock, probe_timeout_s=probe_timeout_s)
        self.on_open: Callable[[], None] | None = None

    def record_failure(self) -> None:
        before = self.state
        super().record_failure()
        if self.on_open is not None and before != "open" and self.state == "open":
            self.on_open()


@dataclass
class _Watch:
    """What the monitor knows about one endpoint."""

    model: str
    endpoint: Endpoint
    id: str
    probe_failures: int = 0  # consecutive failed probes: the backoff's exponent
    probe_down: bool = False  # the last probe failed
    next_probe: float = 0.0  # monotonic time the next probe is due
    last_probe: str | None = None  # what the last probe found, for describe()
    published: bool = False  # this replica's mark is set in the shared store
    remote: list[Mark] = field(default_factory=list)  # other replicas' live marks, as last read
    remote_until: float = 0.0  # monotonic time the longest of them expires
    pool: Any = None  # the probe's HTTP connection (turnout's own client), made on first use


def endpoint_id(model: str, endpoint: Endpoint) -> str:
    """The name replicas share an endpoint's marks under: ``<model>/<endpoint name>`` (the same config gives the
    same names on every replica)."""
    return f"{model}/{endpoint.name}"


class HealthMonitor:
    """Probes endpoints, keeps them out of rotation while they fail, and shares marks with other replicas.

    ``targets`` are the gateway's models; ``marks`` the shared marks (None: no sharing, probes only);
    ``replica`` names this process in the marks it writes (default: a random id). ``clock`` (monotonic
    seconds) is injectable for tests; :meth:`tick` runs one round without the background task.
    """

    def __init__(
        self,
        targets: Mapping[str, ModelTarget],
        marks: Marks | None = None,
        *,
        replica: str | None = None,
        interval_s: float = 5.0,
        active: bool = False,
        path: str = "models",
        timeout_s: float = 2.0,
        max_backoff_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        quiet_s: float = 30.0,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.marks = marks
        self.replica = replica or uuid.uuid4().hex[:12]
        self.interval_s = interval_s
        self.active = active
        self.path = path
        self.timeout_s = timeout_s
        self.max_backoff_s = max(max_backoff_s, interval_s)
        self.quiet_s = quiet_s
        self._clock = clock
        self._watches = [_Watch(m, e, endpoint_id(m, e)) for m, t in targets.items() for e in t.endpoints]
        self._task: asyncio.Task[None] | None = None
        self._spawned: set[asyncio.Task[Any]] = set()
        self._last_warned = -math.inf
        #: state-store failures met (marks not written or read), since start
        self.state_failures = 0

    # -- lifecycle ------------------------------------------------------------------------------
    def attach(self) -> None:
        """Let every :class:`WatchedBreaker` report its opening at once (others are seen at the next tick)."""
        for w in self._watches:
            br = w.endpoint.breaker
            if isinstance(br, WatchedBreaker):
                br.on_open = self._opened_callback(w)

    def _opened_callback(self, w: _Watch) -> Callable[[], None]:
        def opened() -> None:
            w.next_probe = self._clock()  # probe it at the next tick
            if self.marks is not None:
                self._spawn(self._publish(w, "circuit breaker open"))

        return opened

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:  # no loop (a breaker driven from a synchronous test): the next tick publishes
            coro.close()
            return
        self._spawned.add(task)  # a reference, or the task may be collected before it runs
        task.add_done_callback(self._spawned.discard)

    async def start(self) -> None:
        """Start the background task (idempotent)."""
        self.attach()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="turnout-health")

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in one round must not end health checking for the life of the server
                log.exception("health monitor: a round failed")
            await asyncio.sleep(self.interval_s)

    async def aclose(self) -> None:
        """Stop the task, clear this replica's marks (best effort) and close the probe connections. Idempotent."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for t in list(self._spawned):
            t.cancel()
        if self.marks is not None:
            for w in self._watches:
                if w.published:
                    await self._state(self.marks.clear(w.id, self.replica), "clear a mark")
                    w.published = False
        for w in self._watches:
            if w.pool is not None:
                await w.pool.aclose()
                w.pool = None

    # -- one round --------------------------------------------------------------------------------
    def _local_reason(self, w: _Watch) -> str | None:
        """Why this replica holds ``w`` out and marks it for the others (None: it does not)."""
        if w.probe_down:
            return f"health probe failed: {w.last_probe}"
        if w.endpoint.breaker.state == "open":
            # not half-open: a half-open endpoint awaits a real request, which this replica may never get for
            # that model; the others may send it one
            return "circuit breaker open"
        return None

    def _due(self, w: _Watch, now: float) -> bool:
        """Whether to probe ``w`` now: every endpoint each interval when active, else those out of rotation here."""
        wanted = self.active or w.probe_down or w.endpoint.breaker.state != "closed"
        return wanted and now >= w.next_probe

    def _backoff(self, failures: int) -> float:
        return min(self.max_backoff_s, self.interval_s * 2.0 ** max(0, failures - 1))

    async def tick(self) -> None:
        """One round: probe what is due, write and clear this replica's marks, read the others', apply them."""
        now = self._clock()
        due = [w for w in self._watches if self._due(w, now)]
        if due:
            for w, (ok, detail) in zip(due, await asyncio.gather(*(self._probe(w) for w in due))):
                w.last_probe = detail
                if ok:
                    w.probe_failures, w.probe_down = 0, False
                    w.next_probe = now + self.interval_s
                else:
                    w.probe_failures += 1
                    w.probe_down = True
                    w.next_probe = now + self._backoff(w.probe_failures)
        if self.marks is not None:
            for w in self._watches:
                reason = self._local_reason(w)
                if reason is not None:
                    await self._publish(w, reason)
                elif w.published and await self._state(self.marks.clear(w.id, self.replica), "clear a mark"):
                    w.published = False
            live = await self._read_marks()
            if live is not None:
                now = self._clock()
                others: dict[str, list[Mark]] = {}
                for m in live:
                    if m.replica != self.replica:
                        others.setdefault(m.endpoint, []).append(m)
                for w in self._watches:
                    w.remote = others.get(w.id, [])
                    w.remote_until = now + max((m.remaining_s for m in w.remote), default=0.0)
        self._apply()

    def _apply(self) -> None:
        now = self._clock()
        for w in self._watches:
            w.endpoint.out_of_rotation = w.probe_down or now < w.remote_until

    async def _publish(self, w: _Watch, reason: str) -> None:
        assert self.marks is not None
        if await self._state(
            self.marks.mark(w.id, self.replica, ttl_s=MARK_TTL_INTERVALS * self.interval_s, reason=reason),
            f"mark {w.id} out of rotation",
        ):
            w.published = True

    async def _read_marks(self) -> list[Mark] | None:
        assert self.marks is not None
        try:
            return await self.marks.live()
        except StateError as exc:
            self._state_failed("read the out-of-rotation marks", exc)
            return None

    async def _state(self, call: Coroutine[Any, Any, None], what: str) -> bool:
        try:
            await call
        except StateError as exc:
            self._state_failed(what, exc)
            return False
        return True

    def _state_failed(self, what: str, exc: StateError) -> None:
        self.state_failures += 1
        now = time.monotonic()
        if now - self._last_warned >= self.quiet_s:
            self._last_warned = now
            log.warning("health monitor could not %s (replicas do not share endpoint health meanwhile): %s", what, exc)

    # -- probes -----------------------------------------------------------------------------------
    def probe_url(self, endpoint: Endpoint) -> str | None:
        """The URL probed for ``endpoint`` (None when its backend has no HTTP base URL, e.g. an in-process fake)."""
        base = getattr(endpoint.backend, "base_url", None)
        if not isinstance(base, str) or not base.startswith(("http://", "https://")):
            return None
        if self.path.startswith("/"):
            parts = urlsplit(base)
            return f"{parts.scheme}://{parts.netloc}{self.path}"
        return base.rstrip("/") + "/" + self.path

    async def _probe(self, w: _Watch) -> tuple[bool, str]:
        url = self.probe_url(w.endpoint)
        if url is None:
            return True, "not probed (no HTTP base URL)"
        from turnout.backends._client import HTTPClientError, HTTPPool

        parts = urlsplit(url)
        if w.pool is None:
            w.pool = HTTPPool(f"{parts.scheme}://{parts.netloc}", max_connections=1)
        try:
            async with asyncio.timeout(self.timeout_s):
                resp = await w.pool.request("GET", parts.path or "/", b"", b"", connect_timeout=self.timeout_s)
                await resp.read()
        except TimeoutError:
            return False, f"GET {url}: no answer within {self.timeout_s:g} s"
        except (HTTPClientError, OSError) as exc:
            return False, f"GET {url}: {exc}"
        if resp.status >= 500:
            return False, f"GET {url}: HTTP {resp.status}"
        return True, f"GET {url}: HTTP {resp.status}"

    # -- what it knows ----------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Each endpoint's health as this replica sees it (for ``/readyz`` and the dry run)."""
        now = self._clock()
        out: dict[str, Any] = {}
        for w in self._watches:
            out[w.id] = {
                "in_rotation": w.endpoint.healthy,
                "breaker": w.endpoint.breaker.state,
                "last_probe": w.last_probe,
                "probe_failures": w.probe_failures,
                "marked_by": sorted({m.replica for m in w.remote}) if now < w.remote_until else [],
                "marked_here": w.published,
            }
        return out

    def __repr__(self) -> str:
        return (
            f"HealthMonitor({len(self._watches)} endpoints, interval_s={self.interval_s:g}, active={self.active}, "
            f"replica={self.replica!r})"
        )


__all__ = ["MARK_TTL_INTERVALS", "HealthMonitor", "WatchedBreaker", "endpoint_id"]
