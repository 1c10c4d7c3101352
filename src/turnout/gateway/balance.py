"""Load balancing over the endpoints (replicas) of one model, following the engines' prefix caches.

Per request the gateway computes a :class:`BalanceKey` once (:func:`prefix_key`) and asks a
:class:`Balancer`'s ``choose`` which endpoint to send it to, among live views of the endpoints
(:class:`EndpointView`, or any object with its attributes). Balancers are pure (no I/O, no clock, no
asyncio), are called on the event loop only (no locking), and allocate little per call.

Strategies, by name (:func:`create_balancer`): ``least_loaded`` (default; fewest in flight per unit
of weight, ties rotate), ``round_robin`` (smooth, weighted), ``p2c`` (power of two choices),
``random``, ``consistent_hash`` (one ring, one hash of the prompt: affinity blind to load) and
``dualmap``: prefix-cache affinity as DualMap (Yuan et al., ICLR 2026) does it, two candidates from
two independent hash rings, the one holding more of the prompt's prefix unless its estimated TTFT
breaks the SLO, then the other, then pure load balancing; ``x-session-id`` sticks a session.

**Which hash the rings use.** :func:`prefix_key` cuts each message into blocks of ``block_chars``
characters (no block straddles two messages) and hashes them cumulatively, so two prompts share
block ``i``'s hash exactly when they share the first ``i + 1`` blocks. The rings use the hash at the
end of the *conversation root*: the leading system messages plus the first user message, the
longest prefix every turn of a conversation repeats unchanged. All turns of a conversation map to
the same endpoints, while conversations that share a system prompt but open differently spread
(a popular system prompt gets cached on many endpoints instead of making two hot). The cached
"system prompt + earlier turns" grows each turn: hashing it would remap every turn.

**Health.** ``choose`` returns a healthy endpoint whenever one exists; with none healthy, the least
loaded one anyway (check ``.healthy`` to probe it or fail fast). An empty list is a
:class:`~turnout.errors.RoutingError`.

Example::

    balancer = create_balancer("dualmap", slo_s=2.0)
    endpoints = [EndpointView("vllm-a"), EndpointView("vllm-b"), EndpointView("vllm-c")]
    balancer.on_change(endpoints)
    key = prefix_key(request_messages, session_id=headers.get("x-session-id"))
    target = balancer.choose(endpoints, key)
    target.in_flight += 1          # the gateway's bookkeeping, on the same loop
"""

from __future__ import annotations

import bisect
import hashlib
import inspect
import math
import random
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from turnout.errors import ConfigError, RoutingError
from turnout.gateway.prefix import BalanceKey, prefix_key

#: virtual nodes per unit of weight on a hash ring: enough for ~10% spread in ring shares at 8 endpoints
DEFAULT_VNODES = 160
_MASK64 = (1 << 64) - 1


@dataclass(slots=True)
class EndpointView:
    """What a balancer may look at for one endpoint; the gateway keeps one per endpoint, updated live.

    ``ewma_service_s`` feeds :func:`estimate_ttft`: the gateway measures it exactly from requests sent
    while the endpoint had a free slot (``in_flight < slots``): they queued nowhere, so their whole
    latency is service. ``slots``: requests the server runs at once (llama.cpp's server: 1).
    """

    name: str  #: unique within a model, e.g. "vllm-a" or the base URL
    weight: float = 1.0
    in_flight: int = 0  #: requests sent and not finished
    healthy: bool = True  #: breaker closed (or half-open probe allowed) and not out of rotation
    ewma_ttft_s: float | None = None  #: recent time to first token (passive health)
    ewma_prefill_tok_s: float | None = None  #: measured prefill speed, for the TTFT estimate
    ewma_service_s: float | None = None  #: recent service time of a request that found a free slot
    slots: int = 1  #: requests the server runs concurrently


class EndpointLike(Protocol):
    """Any object with :class:`EndpointView`'s attributes (read only here), e.g. the gateway's own endpoint."""

    @property
    def name(self) -> str: ...
    @property
    def weight(self) -> float: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def healthy(self) -> bool: ...
    @property
    def ewma_ttft_s(self) -> float | None: ...
    @property
    def ewma_prefill_tok_s(self) -> float | None: ...
    @property
    def ewma_service_s(self) -> float | None: ...
    @property
    def slots(self) -> int: ...


E = TypeVar("E", bound=EndpointLike)


class Balancer(Protocol):
    """Chooses one endpoint of a model per request; ``choose`` returns one of the objects it was given."""

    name: str

    def choose(self, endpoints: Sequence[E], key: BalanceKey) -> E:
        """The endpoint to send this request to (healthy whenever one is; ``endpoints`` non-empty)."""

    def on_change(self, endpoints: Sequence[EndpointLike]) -> None:
        """Endpoints were added or removed (or reweighted): rebuild rings, forget the departed."""


def _load(e: EndpointLike) -> float:
    return e.in_flight / e.weight if e.weight > 0 else math.inf


def _least_loaded(endpoints: Sequence[E], start: int = 0) -> E:
    """The healthy endpoint with the least in-flight per weight (ties: the first from ``start``); else the least bad."""
    if not endpoints:
        raise RoutingError("no endpoints to balance over (the model has no endpoint configured)")
    n = len(endpoints)
    best: E | None = None
    best_load = math.inf
    fallback = endpoints[start % n]
    for i in range(n):
        e = endpoints[(start + i) % n]
        load = _load(e)
        if e.healthy and (best is None or load < best_load):
            best, best_load = e, load
        if load < _load(fallback):
            fallback = e
    return best if best is not None else fallback


def estimate_ttft(e: EndpointLike, uncached_tokens: float, *, prefill_tok_s: float, service_s: float) -> float:
    """Estimated time to first token of a new request on ``e``: queue wait plus its own prefill.

    Wait: the requests beyond the free slots, each holding a slot ``e.ewma_service_s`` (else
    ``e.ewma_ttft_s``, else ``service_s``) over ``e.slots`` slots, the one in service counted whole
    (conservative). Prefill: ``uncached_tokens / (e.ewma_prefill_tok_s or prefill_tok_s)``.
    """
    speed = e.ewma_prefill_tok_s or prefill_tok_s
    service = e.ewma_service_s if e.ewma_service_s is not None else (e.ewma_ttft_s or service_s)
    slots = max(e.slots, 1)
    ahead = e.in_flight - slots + 1
    wait = ahead * service / slots if ahead > 0 else 0.0
    return wait + uncached_tokens / speed


def _mix(x: int, salt: int) -> int:
    """splitmix64 finaliser: an independent 64-bit hash of ``x`` per ``salt`` (the two rings' key hashes)."""
    z = (x ^ salt) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _find(endpoints: Sequence[E], name: str) -> E | None:
    for e in endpoints:  # a linear scan: a model has a handful of endpoints, and a dict per call would allocate
        if e.name == name:
            return e
    return None


class HashRing:
    """A consistent-hash ring over endpoint *names*, ``vnodes`` points per unit of weight.

    ``salt`` picks an independent hash function: two rings with different salts map a key to two
    independent endpoints (DualMap's dual mapping). Adding or removing one of N endpoints moves
    about 1/N of the keys, only those of the endpoint that came or went. Lookups take whatever list
    of views the caller has (a subset, say the healthy ones): owners absent from it or unhealthy
    are passed over clockwise, so the ring needs no rebuild when the list is filtered.
    """

    def __init__(self, members: Sequence[EndpointLike] | Mapping[str, float], *, salt: int, vnodes: int = DEFAULT_VNODES) -> None:
        weights = dict(members) if isinstance(members, Mapping) else {e.name: e.weight for e in members}
        self.salt = salt
        self.names = frozenset(weights)
        points: list[tuple[int, str]] = []
        person = f"turnout-ring{salt}"[:16].encode()
        for name, weight in weights.items():
            for v in range(max(1, round(vnodes * max(weight, 0.0)))):
                d = hashlib.blake2b(f"{name}#{v}".encode(), digest_size=8, person=person).digest()
                points.append((int.from_bytes(d, "little"), name))
        points.sort()
        self.points = [p for p, _ in points]
        self.owners = [o for _, o in points]

    def covers(self, endpoints: Sequence[EndpointLike]) -> bool:
        """Whether every endpoint in the list has points on this ring."""
        return all(e.name in self.names for e in endpoints)

    def lookup(self, key_hash: int, endpoints: Sequence[E], *, skip: E | None = None) -> E | None:
        """The first endpoint clockwise from the key that is in ``endpoints``, healthy and not ``skip``; else None."""
        n = len(self.points)
        if n == 0:
            return None
        i = bisect.bisect_left(self.points, _mix(key_hash, self.salt))
        last = ""
        for step in range(n):
            name = self.owners[(i + step) % n]
            if name == last:
                continue  # neighbouring points of one owner: already rejected
            last = name
            e = _find(endpoints, name)
            if e is not None and e.healthy and e is not skip:
                return e
        return None


class _Stateless:
    """A strategy that keeps nothing per endpoint: a changed list needs no rebuild."""

    def on_change(self, endpoints: Sequence[EndpointLike]) -> None:
        pass


class LeastLoaded(_Stateless):
    """The healthy endpoint with the fewest requests in flight per unit of weight; ties rotate."""

    name = "least_loaded"

    def __init__(self) -> None:
        self._turn = 0

    def choose(self, endpoints: Sequence[E], key: BalanceKey) -> E:
        self._turn += 1
        # rotating the scan start breaks ties round-robin: at low load every endpoint gets its share
        return _least_loaded(endpoints, self._turn)


class RoundRobin:
    """Smooth weighted round robin over the healthy endpoints (weights 2:1 give a, b, a, a, b, a...)."""

    name = "round_robin"

    def __init__(self) -> None:
        self._current: dict[str, float] = {}

    def choose(self, endpoints: Sequence[E], key: BalanceKey) -> E:
        best: E | None = None
        total = 0.0
        cur = self._current
        for e in endpoints:
            if not e.healthy or e.weight <= 0:
                continue
            c = cur.get(e.name, 0.0) + e.weight
            cur[e.name] = c
            total += e.weight
            if best is None or c > cur[best.name]:
                best = e
        if best is None:
            return _least_loaded(endpoints)
        cur[best.name] -= total
        return best

    def on_change(self, endpoints: Sequence[EndpointLike]) -> None:
        live = {e.name for e in endpoints}
        self._current = {n: c for n, c in self._current.items() if n in live}


class PowerOfTwo(_Stateless):
    """Power of two choices: two distinct random healthy endpoints, the less loaded of them (seeded)."""

    name = "p2c"

    def __init__(self, *, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def choose(self, endpoints: Sequence[E], key: BalanceKey) -> E:
        healthy = sum(1 for e in endpoints if e.healthy)
        if healthy < 2:
            return _least_loaded(endpoints)
        a = self._rng.randrange(healthy)
        b = self._rng.randrange(healthy - 1)
        b += b >= a
        first = second = None  # the a-th and b-th healthy endpoints, found without building a list
        k = 0
        for e in endpoints:
            if e.healthy:
                if k == a:
                    first = e
                elif k == b:
                    second = e
                k += 1
        assert first is not None and second is not None
        return second if _load(second) < _load(first) else first


class RandomChoice(_Stateless):
    """Uniformly random healthy endpoint (seeded): the baseline with no information."""

    name = "random"

    def __init__(self, *, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def choose(self, endpoints: Sequence[E], key: BalanceKey) -> E:
        healthy = sum(1 for e in endpoints if e.healthy)
        if healthy == 0:
            return _least_loaded(endpoints)
        k = self._rng.randrange(healthy)
        for e in endpoints:
            if e.healthy:
                if k == 0:
                    return e
                k -= 1
        raise AssertionError("unreachable")


class ConsistentHash:
    """One hash ring, one hash of the conversation root: pure affinity, blind to load (a baseline).

    A request with an empty prompt goes to the least loaded endpoint. An unhealthy (or absent)
    owner passes its keys to the next healthy endpoint clockwise, and gets them back when it recovers.
    """

    name = "consistent_hash"

    def __init__(self, *, vnodes: int = DEFAULT_VNODES) -> None:
        self.vnodes = vnodes
        self._weights: dict[str, float] = {}  # the members of the ring: name -> weight
        self._ring: HashRing | None = None

    def on_change(self, endpoints: Sequence[EndpointLike]) -> None:
        self._weights = {e.name: e.weight for e in endpoints}
        self._ring = HashRing(self._weights, salt=1, vnodes=self.vnodes)

    def choose(self, endpoints: Sequence[E], key: BalanceKey) -> E:
        # a subset of the members (the healthy, the untried) needs no rebuild: the ring skips absent owners
        if self._ring is None or not self._ring.covers(endpoints):
            self._weights.update((e.name, e.weight) for e in endpoints if e.name not in self._weights)
            self._ring = HashRing(self._weights, salt=1, vnodes=self.vnodes)
        h = key.affinity_hash
        e = self._ring.lookup(h, endpoints) if h is not None else None
        return e if e is not None else _least_loaded(endpoints)


class DualMap:
    """Prefix-cache affinity with load balancing, after DualMap (two hash rings, SLO-aware choice).

    Per request: (1) a known ``session_id`` whose endpoint is healthy and within the SLO goes there;
    (2) two candidates: the conversation root's hash on two independent rings; (3) affinity first:
    the candidate holding more of the prompt's leading blocks, by this balancer's record of what it
    sent where (``index_blocks`` per endpoint, least recently used forgotten first: an image of the
    engines' caches); on a tie the lower estimated TTFT, i.e. the less loaded (two choices);
    (4) SLO guard: if that one's :func:`estimate_ttft` (its held prefix counted as cached) exceeds
    ``slo_s``, the other candidate if within; else pure load balancing, the lowest estimate overall.

    Not done: DualMap's hotspot rebalancing migrates requests from its own global queue; a gateway
    sends each request at once and has no queue to migrate from. ``prefill_tok_s`` and ``service_s``
    stand in for an endpoint with no measured figures yet; ``index_blocks`` should approximate an
    engine's KV cache in prefix blocks (its capacity in tokens / (``block_chars`` / 4)).
    """

    name = "dualmap"

    def __init__(
        self,
        *,
        slo_s: float = 2.0,
        prefill_tok_s: float = 260.0,
        service_s: float = 1.0,
        index_blocks: int = 4096,
        max_sessions: int = 65536,
        vnodes: int = DEFAULT_VNODES,
    ) -> None:
        if slo_s <= 0 or prefill_tok_s <= 0 or service_s < 0 or index_blocks < 1 or max_sessions < 1:
            raise ConfigError(
                f"dualmap needs slo_s, prefill_tok_s, index_blocks, max_sessions > 0 and service_s >= 0 "
                f"(got {slo_s}, {prefill_tok_s}, {index_blocks}, {max_sessions}, {service_s})",
                fix="give positive values",
            )
        self.slo_s = slo_s
        self.prefill_tok_s = prefill_tok_s
        self.service_s = service_s
        self.index_blocks = index_blocks
        self.max_sessions = max_sessions
        self.vnodes = vnodes
        self._weights: dict[str, float] = {}  # the members of the rings: name -> weight
        self._rings: tuple[HashRing, HashRing] | None = None
        self._index: dict[str, OrderedDict[int, None]] = {}
        self._sessions: OrderedDict[str, str] = OrderedDict()
        #: why the last choice was made: "session", "affinity", "other", "fallback", "no-key" (for metrics)
        self.last_reason = ""

    def on_change(self, endpoints: Sequence[EndpointLike]) -> None:
        self._weights = {e.name: e.weight for e in endpoints}
        self._build()
        # forget what was sent to departed endpoints, and the sessions that lived there
        self._index = {n: self._index.get(n) or OrderedDict() for n in self._weights}
        for s in [s for s, n in self._sessions.items() if n not in self._weights]:
            del self._sessions[s]

    def _build(self) -> None:
        w = self._weights
        self._rings = (HashRing(w, salt=1, vnodes=self.vnodes), HashRing(w, salt=2, vnodes=self.vnodes))

    def cached_blocks(self, e: EndpointLike, key: BalanceKey) -> int:
        """How many leading blocks of the key this balancer has sent to ``e`` and not yet forgotten."""
        index = self._index.get(e.name)
        if not index:
            return 0
        n = 0
        for b in key.prefix_blocks:
            if b not in index:
                break
            n += 1
        return n

    def _ttft(self, e: EndpointLike, key: BalanceKey, cached: int) -> float:
        blocks = len(key.prefix_blocks)
        uncached = key.prompt_tokens * (blocks - cached) / blocks if blocks else key.prompt_tokens
        return estimate_ttft(e, uncached, prefill_tok_s=self.prefill_tok_s, service_s=self.service_s)

    def _record(self, e: E, key: BalanceKey) -> E:
        index = self._index.get(e.name)
        if index is None:
            index = self._index[e.name] = OrderedDict()
        # deepest block first, root last: the least recently used end then holds the deep blocks, so
        # forgetting keeps the record prefix-closed, as engines evict leaves before their ancestors
        for b in reversed(key.prefix_blocks):
            if b in index:
                index.move_to_end(b)
            else:
                index[b] = None
        while len(index) > self.index_blocks:
            index.popitem(last=False)
        if key.session_id is not None:
            self._sessions[key.session_id] = e.name
            self._sessions.move_to_end(key.session_id)
            if len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return e

    def choose(self, endpoints: Sequence[E], key: BalanceKey) -> E:
        if self._rings is None or not self._rings[0].covers(endpoints):  # a subset needs no rebuild
            self._weights.update((e.name, e.weight) for e in endpoints if e.name not in self._weights)
            self._build()
        assert self._rings is not None
        h = key.affinity_hash
        if h is None:
            self.last_reason = "no-key"
            return _least_loaded(endpoints)
        if key.session_id is not None:
            name = self._sessions.get(key.session_id)
            home = _find(endpoints, name) if name is not None else None
            if home is not None and home.healthy and self._ttft(home, key, self.cached_blocks(home, key)) <= self.slo_s:
                self.last_reason = "session"
                return self._record(home, key)
        ring1, ring2 = self._rings
        a = ring1.lookup(h, endpoints)
        if a is None:  # nothing healthy
            self.last_reason = "fallback"
            return _least_loaded(endpoints)
        b = ring2.lookup(h, endpoints, skip=a)
        ca = self.cached_blocks(a, key)
        ta = self._ttft(a, key, ca)
        if b is None:  # a single healthy endpoint
            self.last_reason = "affinity"
            return self._record(a, key)
        cb = self.cached_blocks(b, key)
        tb = self._ttft(b, key, cb)
        if cb > ca or (cb == ca and tb < ta):
            a, b, ta, tb = b, a, tb, ta
        if ta <= self.slo_s:
            self.last_reason = "affinity"
            return self._record(a, key)
        if tb <= self.slo_s:
            self.last_reason = "other"
            return self._record(b, key)
        self.last_reason = "fallback"
        best, best_t = a, ta
        for e in endpoints:
            if e.healthy:
                t = self._ttft(e, key, self.cached_blocks(e, key))
                if t < best_t:
                    best, best_t = e, t
        return self._record(best, key)


_STRATEGIES: dict[str, Callable[..., Balancer]] = {
    "least_loaded": LeastLoaded,
    "round_robin": RoundRobin,
    "p2c": PowerOfTwo,
    "consistent_hash": ConsistentHash,
    "dualmap": DualMap,
    "random": RandomChoice,
}


def balancer_names() -> list[str]:
    """The strategy names :func:`create_balancer` knows."""
    return list(_STRATEGIES)


def create_balancer(name: str = "least_loaded", **params: Any) -> Balancer:
    """A new balancer by strategy name, with its keyword parameters (checked against the strategy's).

    Example::

        create_balancer("dualmap", slo_s=1.5, index_blocks=8192)

    Raises :class:`~turnout.errors.ConfigError` naming the known strategies or the accepted parameters
    (without a file or key: the caller, who knows where the settings came from, adds them).
    """
    factory = _STRATEGIES.get(name)
    if factory is None:
        raise ConfigError(f"unknown load-balancing strategy '{name}'", fix=f"use one of: {', '.join(_STRATEGIES)}")
    accepted = [p for p in inspect.signature(factory).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(
            f"strategy '{name}' has no parameter {', '.join(repr(u) for u in unknown)}",
            fix=f"its parameters are: {', '.join(accepted)}" if accepted else f"'{name}' takes no parameters",
        )
    try:
        return factory(**params)
    except TypeError as e:  # a value of the wrong type (a string for a number, say)
        raise ConfigError(f"strategy '{name}': {e}", fix=f"give numbers to: {', '.join(accepted)}") from e


__all__ = [
    "BalanceKey",
    "Balancer",
    "ConsistentHash",
    "DualMap",
    "EndpointLike",
    "EndpointView",
    "HashRing",
    "LeastLoaded",
    "PowerOfTwo",
    "RandomChoice",
    "RoundRobin",
    "balancer_names",
    "create_balancer",
    "estimate_ttft",
    "prefix_key",
]
