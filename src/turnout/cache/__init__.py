"""turnout.cache: a semantic cache that does not lie.

Answers are cached per API key and per *context* (route, system prompt,
sampling parameters, tools, every earlier turn: :mod:`~turnout.cache.fingerprint`),
found again by the exact last message or by its embedding above a threshold
(:mod:`~turnout.cache.semantic`), and refused when the two questions differ in
a number, a negation, a unit or a name (:mod:`~turnout.cache.lookalike`). What
may be cached is decided by one :mod:`~turnout.cache.policy`; where entries
live by a :mod:`~turnout.cache.store` (in-process by default); a cached answer
streams like a live one (:mod:`~turnout.cache.replay`).

Importing this package does no I/O and loads no embedder: the caller embeds
the last message (the gateway with its route's embedder) and passes the vector.

Example::

    from turnout.cache import CacheSettings, ContextFingerprint, build_cache
    cache = build_cache(CacheSettings())
    fp = ContextFingerprint.of(request, tenant="alice")
    result = await cache.lookup(fp, vec)
    if result.hit is None:
        body = ...                       # the model's answer
        await cache.store(fp, vec, body)
"""

from turnout.cache.fingerprint import HARMLESS_PARAMS, ContextFingerprint, normalise
from turnout.cache.lookalike import CHECKS, GuardVerdict, LookalikeGuard
from turnout.cache.policy import CachePolicy
from turnout.cache.replay import assemble_body, replay_chunks
from turnout.cache.semantic import Blocked, CacheHit, LookupResult, SemanticCache, StoreOutcome
from turnout.cache.settings import DEFAULT_THRESHOLD, CacheSettings, build_cache
from turnout.cache.store import CacheEntry, CacheStore, InMemoryCacheStore

__all__ = [
    "CHECKS",
    "DEFAULT_THRESHOLD",
    "HARMLESS_PARAMS",
    "Blocked",
    "CacheEntry",
    "CacheHit",
    "CachePolicy",
    "CacheSettings",
    "CacheStore",
    "ContextFingerprint",
    "GuardVerdict",
    "InMemoryCacheStore",
    "LookalikeGuard",
    "LookupResult",
    "SemanticCache",
    "StoreOutcome",
    "assemble_body",
    "build_cache",
    "normalise",
    "replay_chunks",
]
