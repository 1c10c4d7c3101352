"""API keys: who may call the gateway, which models they may use, and their budget.

Keys are hashed at rest: the config and every store hold only the SHA-256 hex
digest of a key (``turnout keys hash`` / :func:`hash_key` computes it), and a
presented key is hashed and compared in constant time against every known
digest, so neither the config file nor a timing side channel gives a key away.

Spend is kept in a :class:`turnout.state.StateStore` under ``spend:<key name>``:
in the request log's SQLite file by default (it survives a restart), in memory
when nothing is persisted, or in Redis when several gateway replicas must share
one budget. (Renaming a key in the config therefore starts its spend at zero.)

**Holds.** Before any model is called, the gateway *holds* the request's
worst-case cost against its key (:meth:`KeyStore.hold`, atomic in the store) and
*settles* it when the request ends, at what was really generated
(:meth:`KeyStore.settle`): concurrent requests cannot all pass a check and then
all spend, as a check-then-act would let them. See :mod:`turnout.state.base`.

A :class:`KeyStore` with no specs is an *open* server: :meth:`KeyStore.authenticate`
accepts any key, or none, and returns :data:`ANONYMOUS` (no budget, every model).

Example::

    store = KeyStore([KeySpec("alice", hash_key("sk-alice"), budget_usd=5.0, allowed=["auto"])])
    spec = store.authenticate("sk-alice")       # from "Authorization: Bearer sk-alice"
    store.authorize(spec, "auto")
    await store.check_budget(spec)
    await store.hold(spec, request_id, 0.03)    # the worst case, once the plan is known
    ...                                         # call the backend
    await store.settle(spec, request_id, 0.0012)
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

from turnout.errors import AuthenticationError, BudgetExceededError, ConfigError, PermissionDeniedError
from turnout.state.base import StateStore, spend_key
from turnout.state.memory import InMemoryCounters

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def hash_key(raw: str) -> str:
    """The SHA-256 hex digest of a raw API key: the only form a key is stored in.

    >>> hash_key("sk-test")[:12]
    'f3abf2a6cc4f'
    """
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def shown_name(name: str, limit: int = 80) -> str:
    """A client-supplied name cut for an error message (a 500 KB model name is not echoed back).

    >>> shown_name("x" * 100)[-22:]
    'xx... (100 characters)'
    """
    return name if len(name) <= limit else name[:limit] + f"... ({len(name)} characters)"


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One API key as configured: a name, the key's SHA-256 digest, a USD budget, allowed models.

    ``budget_usd`` None means unlimited; ``allowed`` None means every model and
    route, otherwise the names (routes such as ``auto`` or concrete models) the
    key may ask for. ``rpm`` / ``tpm`` bound the requests / tokens the key may use
    in any 60-second window (None: no bound; see :mod:`turnout.gateway.ratelimit`).
    """

    name: str
    sha256: str
    budget_usd: float | None = None
    allowed: list[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    #: the key's team and tags (decision rules read them through a ``key`` signal)
    team: str | None = None
    tags: tuple[str, ...] = ()


#: what an open server (a KeyStore with no specs) authenticates every caller as
ANONYMOUS = KeySpec(name="anonymous", sha256="", budget_usd=None, allowed=None)


class KeyStore:
    """Authenticates raw keys, authorises models and enforces per-key USD budgets.

    ``counters`` holds the spend (default: a fresh in-memory one).
    :meth:`authenticate` and :meth:`authorize` do no I/O; the budget calls are
    coroutines on the store (a network round trip with Redis).
    """

    #: seconds a hold outlives its request's start at most (a process that died with it in flight)
    HOLD_TTL_S = 900.0

    def __init__(self, specs: Iterable[KeySpec], counters: StateStore | None = None) -> None:
        self.specs: list[KeySpec] = list(specs)
        self.counters: StateStore = counters if counters is not None else InMemoryCounters()
        self._validate()
        # digest bytes, compared with hmac.compare_digest; order kept for a fixed scan time
        self._digests = [(spec.sha256.encode("ascii"), spec) for spec in self.specs]

    def _validate(self) -> None:
        names: set[str] = set()
        digests: set[str] = set()
        for i, spec in enumerate(self.specs):
            where = f"keys[{i}]"
            if not spec.name:
                raise ConfigError("a key needs a name", key=f"{where}.name", fix="give every key a unique name")
            if spec.name in names:
                raise ConfigError(f"duplicate key name {spec.name!r}", key=f"{where}.name", fix="key names must be unique")
            if not _HEX64.match(spec.sha256):
                raise ConfigError(
                    f"key {spec.name!r}: sha256 must be 64 lowercase hex characters, not the raw key",
                    key=f"{where}.sha256",
                    fix="store hash_key(raw_key) (python -c \"import hashlib;print(hashlib.sha256(b'KEY').hexdigest())\")",
                )
            if spec.sha256 in digests:
                raise ConfigError(
                    f"key {spec.name!r} has the same hash as another key",
                    key=f"{where}.sha256",
                    fix="give every key its own secret",
                )
            if spec.budget_usd is not None and not spec.budget_usd >= 0:
                raise ConfigError(
                    f"key {spec.name!r}: budget_usd must be >= 0",
                    key=f"{where}.budget_usd",
                    fix="set a non-negative USD amount, or leave it out for no budget",
                )
            for limit in ("rpm", "tpm"):
                value = getattr(spec, limit)
                if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                    raise ConfigError(
                        f"key {spec.name!r}: {limit} must be a whole number >= 1, got {value!r}",
                        key=f"{where}.{limit}",
                        fix=f"set {limit} to a positive integer, or leave it out for no limit",
                    )
            if spec.allowed is not None and not spec.allowed:
                raise ConfigError(
                    f"key {spec.name!r}: allowed is an empty list, so the key could use nothing",
                    key=f"{where}.allowed",
                    fix="list the routes/models it may use, or leave it out for all",
                )
            names.add(spec.name)
            digests.add(spec.sha256)

    @property
    def open(self) -> bool:
        """True when no keys are configured: every caller is :data:`ANONYMOUS`."""
        return not self.specs

    def authenticate(self, raw_key: str | None) -> KeySpec:
        """The spec of ``raw_key``; raise AuthenticationError if it is missing or unknown.

        On an open store (no specs), return :data:`ANONYMOUS` whatever the key.
        """
        if not self._digests:
            return ANONYMOUS
        if not raw_key:
            raise AuthenticationError(
                "no API key given: pass it in the 'Authorization: Bearer <key>' header "
                "(the openai client sends its api_key that way)"
            )
        digest = hash_key(raw_key).encode("ascii")
        found: KeySpec | None = None
        # scan every digest without stopping early so the time does not say which one matched
        for known, spec in self._digests:
            if hmac.compare_digest(known, digest):
                found = spec
        if found is None:
            raise AuthenticationError(
                "unknown API key: check the key sent in 'Authorization: Bearer <key>' "
                "(only configured keys are accepted; their SHA-256 is in the config)"
            )
        return found

    def authorize(self, spec: KeySpec, name: str) -> None:
        """Raise PermissionDeniedError unless ``spec`` may use the route or model ``name``."""
        if spec.allowed is None or name in spec.allowed:
            return
        shown = shown_name(name)  # never echo a payload
        raise PermissionDeniedError(f"key {spec.name!r} may not use {shown!r}; it may use: {', '.join(spec.allowed)}")

    async def spent(self, spec: KeySpec) -> float:
        """USD recorded against ``spec`` so far (across every process sharing the counters)."""
        return await self.counters.get(spend_key(spec.name))

    def _exceeded(self, spec: KeySpec, spent: float) -> BudgetExceededError:
        return BudgetExceededError(
            f"key {spec.name!r} has spent ${spent:.6g} of its ${spec.budget_usd:.6g} budget "
            "(raise budget_usd for this key in the config, or use another key)"
        )

    async def check_budget(self, spec: KeySpec) -> None:
        """Raise BudgetExceededError if ``spec`` has spent its whole budget (no hold is placed)."""
        if spec.budget_usd is None:
            return
        spent = await self.spent(spec)
        if spent >= spec.budget_usd:
            raise self._exceeded(spec, spent)

    async def hold(self, spec: KeySpec, hold_id: str, amount: float) -> None:
        """Hold ``amount`` USD (the request's worst case) against ``spec``'s budget, or raise BudgetExceededError.

        Placed only while the key's spend plus what requests in flight hold is under its budget, atomically in
        the store; a key without a budget holds nothing. Every hold must be settled (:meth:`settle`).
        """
        if spec.budget_usd is None:
            return
        r = await self.counters.reserve(spec.name, hold_id, max(0.0, amount), limit=spec.budget_usd, ttl_s=self.HOLD_TTL_S)
        if not r.ok:
            if r.spent >= spec.budget_usd:
                raise self._exceeded(spec, r.spent)
            raise BudgetExceededError(
                f"key {spec.name!r} has spent ${r.spent:.6g} of its ${spec.budget_usd:.6g} budget and requests in "
                f"flight hold the other ${r.held:.6g} (retry when they finish, or raise budget_usd for this key)"
            )

    async def settle(self, spec: KeySpec, hold_id: str, actual: float) -> float:
        """Drop ``spec``'s hold ``hold_id`` and record ``actual`` USD spent; the new total."""
        if actual < 0:
            raise ValueError(f"spend must be >= 0, got {actual}")  # a caller bug, not a user error
        if spec.budget_usd is None:
            return await self.counters.incr(spend_key(spec.name), actual) if actual else await self.spent(spec)
        return await self.counters.settle(spec.name, hold_id, actual)

    async def record_spend(self, spec: KeySpec, usd: float) -> float:
        """Add ``usd`` to ``spec``'s spend and return the new total (no hold involved)."""
        if usd < 0:
            raise ValueError(f"spend must be >= 0, got {usd}")  # a caller bug, not a user error
        return await self.counters.incr(spend_key(spec.name), usd)

    def __repr__(self) -> str:
        return f"KeyStore({len(self.specs)} keys, counters={self.counters!r})"


__all__ = ["ANONYMOUS", "KeySpec", "KeyStore", "hash_key", "shown_name"]
