"""The cache's settings as plain data, and the one function that builds a cache from them.

The YAML ``cache:`` section (validated in ``turnout.config``) maps one to one
onto :class:`CacheSettings`; :func:`build_cache` turns it into a
:class:`~turnout.cache.semantic.SemanticCache` over an in-process store, or
over the store the caller passes (a shared Redis one when replicas exist).

Example::

    cache = build_cache(CacheSettings(threshold=0.9, ttl_s=600, max_entries=5000))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from turnout.cache.lookalike import CHECKS, LookalikeGuard
from turnout.cache.policy import CachePolicy
from turnout.cache.semantic import SemanticCache
from turnout.cache.store import CacheStore, InMemoryCacheStore
from turnout.errors import ConfigError

#: the similarity threshold measured for each shipped embedder: the lowest threshold at which the look-alike
#: false-hit rate on the dev half of guards/cache_pairs stays under 2% with 95% confidence (Wilson upper bound),
#: with the guard on. ``turnout guards eval cache`` chose them; docs/guards.md has the figures. Another embedder
#: needs its own: similarities are not comparable across embedders.
MEASURED_THRESHOLDS = {"minilm": 0.86, "minilm-int8": 0.85, "minilm-static": 0.90}
#: the default similarity threshold: all-MiniLM-L6-v2's (``embedder: minilm``, the default embedder)
DEFAULT_THRESHOLD = MEASURED_THRESHOLDS["minilm"]


@dataclass(frozen=True)
class CacheSettings:
    """Everything a deployment tunes about the cache (see docs/guards.md for the YAML form).

    ``scope`` is ``per_key``: entries are kept apart per API key (the only
    scope offered: sharing answers between keys would leak one key's prompts'
    answers to another). ``guard`` lists the look-alike checks to run (all by
    default; an empty tuple turns the guard off).
    """

    threshold: float = DEFAULT_THRESHOLD
    ttl_s: float | None = 3600.0
    max_entries: int = 10_000
    max_entries_per_key: int | None = None
    embedder: str = "minilm"
    scope: str = "per_key"
    guard: tuple[str, ...] = CHECKS
    candidates: int = 4
    max_temperature: float | None = 1.0
    finish_reasons: tuple[str, ...] = ("stop",)
    cache_tool_calls: bool = False
    max_answer_chars: int | None = 32_000

    def __post_init__(self) -> None:
        if self.scope != "per_key":
            raise ValueError(f"cache scope {self.scope!r} is not supported; use 'per_key'")
        unknown = set(self.guard) - set(CHECKS)
        if unknown:
            raise ValueError(f"unknown look-alike check(s) {sorted(unknown)}; known: {', '.join(CHECKS)}")
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {self.threshold}")
        if self.max_entries < 1 or (self.max_entries_per_key is not None and self.max_entries_per_key < 1):
            raise ValueError("max_entries and max_entries_per_key must be >= 1")
        if self.ttl_s is not None and not self.ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0, or null for no expiry; got {self.ttl_s}")
        if self.candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {self.candidates}")
        CachePolicy(max_temperature=self.max_temperature, max_answer_chars=self.max_answer_chars)  # checks them

    @classmethod
    def from_params(cls, params: Mapping[str, Any], *, where: str = "stages.cache.params") -> CacheSettings:
        """Settings from a YAML mapping (a stage's ``params``): lists become tuples; an unknown key or a bad
        value is a :class:`~turnout.errors.ConfigError` naming ``where``, the key and the fix."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown cache setting(s) {', '.join(unknown)}", key=where, fix=f"the cache takes: {', '.join(known)}"
            )
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
        for key, value in values.items():
            kind, what = _KINDS[key]
            if not _fits(kind, value):
                raise ConfigError(f"cache setting {key} has a wrong value {value!r}", key=f"{where}.{key}", fix=f"give {what}")
        try:
            return cls(**values)
        except ValueError as exc:
            raise ConfigError(str(exc), key=where, fix="see docs/guards.md for each setting") from None


#: each setting's kind ("?": may be null) and what to write, for the errors of :meth:`CacheSettings.from_params`
_KINDS: dict[str, tuple[str, str]] = {
    "threshold": ("number", "a cosine similarity in [-1, 1], e.g. 0.86"),
    "ttl_s": ("number?", "seconds (> 0), or null for no expiry"),
    "max_entries": ("int", "an integer >= 1"),
    "max_entries_per_key": ("int?", "an integer >= 1, or null"),
    "embedder": ("str", "an embedder name (minilm, minilm-int8, ...)"),
    "scope": ("str", "per_key"),
    "guard": ("strs", f"a list of checks among {', '.join(CHECKS)} ([] turns the guard off)"),
    "candidates": ("int", "an integer >= 1"),
    "max_temperature": ("number?", "a number >= 0, or null for no bound"),
    "finish_reasons": ("strs", "a list like [stop]"),
    "cache_tool_calls": ("bool", "true or false"),
    "max_answer_chars": ("int?", "an integer >= 1, or null"),
}


def _fits(kind: str, value: Any) -> bool:
    if value is None:
        return kind.endswith("?")
    kind = kind.rstrip("?")
    if kind == "bool" or isinstance(value, bool):  # YAML's true is no number
        return kind == "bool" and isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int)
    if kind == "number":
        return isinstance(value, (int, float))
    if kind == "str":
        return isinstance(value, str)
    return isinstance(value, tuple) and all(isinstance(x, str) for x in value)


def build_cache(settings: CacheSettings, *, storage: CacheStore | None = None) -> SemanticCache:
    """A :class:`SemanticCache` as ``settings`` describe, over ``storage`` (default: a new in-process store)."""
    store = (
        storage
        if storage is not None
        else InMemoryCacheStore(
            max_entries=settings.max_entries, ttl_s=settings.ttl_s, max_entries_per_tenant=settings.max_entries_per_key
        )
    )
    policy = CachePolicy(
        max_temperature=settings.max_temperature,
        finish_reasons=frozenset(settings.finish_reasons),
        cache_tool_calls=settings.cache_tool_calls,
        max_answer_chars=settings.max_answer_chars,
    )
    guard = LookalikeGuard.only(*settings.guard) if settings.guard else None
    return SemanticCache(
        store, threshold=settings.threshold, guard=guard, candidates=settings.candidates, space=settings.embedder, policy=policy
    )


__all__ = ["DEFAULT_THRESHOLD", "MEASURED_THRESHOLDS", "CacheSettings", "build_cache"]
