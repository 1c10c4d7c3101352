"""API keys: who may call the gateway, which models they may use, and their budget.

Keys are hashed at rest: the config and every store hold only the SHA-256 hex
digest of a key (``turnout keys hash`` / :func:`hash_key` computes it), and a
presented key is hashed and compared in constant time against every known
digest, so neither the config file nor a timing side channel gives a key away.

Spend is kept in a :class:`turnout.state.Counters` under ``spend:<key name>``:
:class:`~turnout.state.InMemoryCounters` for one process, a shared
:class:`~turnout.state.RedisCounters` when several gateway replicas must share
one budget. (Renaming a key in the config therefore starts its spend at zero.)

A :class:`KeyStore` with no specs is an *open* server: :meth:`KeyStore.authenticate`
accepts any key, or none, and returns :data:`ANONYMOUS` (no budget, every model).

Example::

    store = KeyStore([KeySpec("alice", hash_key("sk-alice"), budget_usd=5.0, allowed=["auto"])])
    spec = store.authenticate("sk-alice")       # from "Authorization: Bearer sk-alice"
    store.authorize(spec, "auto")
    store.check_budget(spec)
    ...                                         # route, call the backend
    store.record_spend(spec, 0.0012)
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

from turnout.errors import AuthenticationError, BudgetExceededError, ConfigError, PermissionDeniedError
from turnout.state.counters import Counters, InMemoryCounters

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def hash_key(raw: str) -> str:
    """The SHA-256 hex digest of a raw API key: the only form a key is stored in.

    >>> hash_key("sk-test")[:12]
    'f3abf2a6cc4f'
    """
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One API key as configured: a name, the key's SHA-256 digest, a USD budget, allowed models.

    ``budget_usd`` None means unlimited; ``allowed`` None means every model and
    route, otherwise the names (routes such as ``auto`` or concrete models) the
    key may ask for.
    """

    name: str
    sha256: str
    budget_usd: float | None = None
    allowed: list[str] | None = None


#: what an open server (a KeyStore with no specs) authenticates every caller as
ANONYMOUS = KeySpec(name="anonymous", sha256="", budget_usd=None, allowed=None)


class KeyStore:
    """Authenticates raw keys, authorises models and enforces per-key USD budgets.

    ``counters`` holds the spend (default: a fresh in-memory one). All methods
    are synchronous; with :class:`~turnout.state.RedisCounters` the budget calls
    do a network round trip, so async callers should offload them.
    """

    def __init__(self, specs: Iterable[KeySpec], counters: Counters | None = None) -> None:
        self.specs: list[KeySpec] = list(specs)
        self.counters: Counters = counters if counters is not None else InMemoryCounters()
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
                raise ConfigError(f"key {spec.name!r} has the same hash as another key", key=f"{where}.sha256",
                                  fix="give every key its own secret")
            if spec.budget_usd is not None and not spec.budget_usd >= 0:
                raise ConfigError(f"key {spec.name!r}: budget_usd must be >= 0", key=f"{where}.budget_usd",
                                  fix="set a non-negative USD amount, or leave it out for no budget")
            if spec.allowed is not None and not spec.allowed:
                raise ConfigError(f"key {spec.name!r}: allowed is an empty list, so the key could use nothing",
                                  key=f"{where}.allowed", fix="list the routes/models it may use, or leave it out for all")
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
        raise PermissionDeniedError(
            f"key {spec.name!r} may not use {name!r}; it may use: {', '.join(spec.allowed)}"
        )

    def spent(self, spec: KeySpec) -> float:
        """USD recorded against ``spec`` so far (across every process sharing the counters)."""
        return self.counters.get(self._spend_key(spec))

    def check_budget(self, spec: KeySpec) -> None:
        """Raise BudgetExceededError if ``spec`` has spent its whole budget.

        Checked before a request: the request that crosses the budget is
        allowed to finish, the next one is refused.
        """
        if spec.budget_usd is None:
            return
        spent = self.spent(spec)
        if spent >= spec.budget_usd:
            raise BudgetExceededError(
                f"key {spec.name!r} has spent ${spent:.6g} of its ${spec.budget_usd:.6g} budget "
                "(raise budget_usd for this key in the config, or use another key)"
            )

    def record_spend(self, spec: KeySpec, usd: float) -> float:
        """Add ``usd`` to ``spec``'s spend and return the new total."""
        if usd < 0:
            raise ValueError(f"spend must be >= 0, got {usd}")  # a caller bug, not a user error
        return self.counters.incr(self._spend_key(spec), usd)

    @staticmethod
    def _spend_key(spec: KeySpec) -> str:
        return f"spend:{spec.name}"

    def __repr__(self) -> str:
        return f"KeyStore({len(self.specs)} keys, counters={self.counters!r})"


__all__ = ["ANONYMOUS", "KeySpec", "KeyStore", "hash_key"]
