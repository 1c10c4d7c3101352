"""The semantic cache: exact lookup, then nearest question above a threshold, refused on look-alikes.

One :class:`SemanticCache` serves every route that opted in. For one request
the gateway calls, in order (the wiring note in docs/guards.md has the
whole stage)::

    fp = ContextFingerprint.of(request, tenant=key.name)          # cheap: hashes the context
    result = await cache.lookup(fp)                               # exact only: no embedding needed
    if result.hit is None and fp.text:
        vec = await offloader.run(embedder.embed_one, fp.text)    # the route's embedder, off the loop
        result = await cache.lookup(fp, vec, exact=False)         # semantic only: the exact one just missed
    if result.hit: serve result.hit.response_body(id=...) or replay_chunks(...)
    else: call the model; then await cache.store(fp, vec, body)

A lookup looks in the store under (tenant, context bucket): an exact hit needs
the same normalised last message (:func:`~turnout.cache.fingerprint.normalise`);
a semantic hit is the most similar cached question whose cosine similarity is
at least ``threshold`` and that the :class:`~turnout.cache.lookalike.LookalikeGuard`
lets through. Up to ``candidates`` neighbours above the threshold are tried in
order of similarity, so a look-alike that happens to be nearest does not hide
a true duplicate just behind it. Every refusal is kept in
:attr:`LookupResult.blocked` with the guard's reason, for the log.

The bucket is the context digest prefixed with ``space`` (the embedder's name):
vectors of two embedders are never compared, even in a shared Redis.

Example::

    cache = SemanticCache(InMemoryCacheStore(), threshold=0.9, space="minilm")
    await cache.store(fp, vec, body)
    hit = (await cache.lookup(fp2, vec2)).hit
    hit.kind, round(hit.similarity, 3), hit.question     # ('semantic', 0.947, 'How do I reset my password?')
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from turnout.cache.fingerprint import ContextFingerprint
from turnout.cache.lookalike import LookalikeGuard
from turnout.cache.policy import CachePolicy
from turnout.cache.store import CacheEntry, CacheStore

#: the guard a cache runs unless told otherwise (a frozen, stateless value: safe to share)
DEFAULT_GUARD = LookalikeGuard()


@dataclass(frozen=True, slots=True)
class CacheHit:
    """A cached answer for a request: the stored ``answer`` body, how it matched, and how old it is.

    ``similarity`` is 1.0 for an exact hit. ``answer`` is the stored body
    itself: use :meth:`response_body` for a private copy to send.
    """

    answer: dict[str, Any]
    kind: Literal["exact", "semantic"]
    similarity: float
    age_s: float
    question: str
    model: str

    @property
    def usage(self) -> dict[str, Any] | None:
        """The usage the answer cost when it was made (the hit itself costs nothing)."""
        usage = self.answer.get("usage")
        return usage if isinstance(usage, dict) else None

    def response_body(self, *, id: str | None = None, created: int | None = None) -> dict[str, Any]:
        """A deep copy of the answer with a fresh ``id`` and ``created`` (defaults: the stored ones and now)."""
        body = copy.deepcopy(self.answer)
        if id is not None:
            body["id"] = id
        body["created"] = created if created is not None else int(time.time())
        return body

    def headers(self) -> dict[str, str]:
        """Response headers that make the hit visible: kind, similarity, age in seconds."""
        return {
            "x-turnout-cache": f"hit-{self.kind}",
            "x-turnout-cache-similarity": f"{self.similarity:.4f}",
            "x-turnout-cache-age": str(int(self.age_s)),
        }


@dataclass(frozen=True, slots=True)
class Blocked:
    """A neighbour above the threshold that the look-alike guard refused."""

    question: str
    similarity: float
    check: str
    reason: str


@dataclass(frozen=True, slots=True)
class LookupResult:
    """What a lookup found: the ``hit`` (or None), the guard's refusals, and the best similarity seen."""

    hit: CacheHit | None
    blocked: tuple[Blocked, ...] = ()
    #: similarity of the nearest cached question above the threshold (None: none was)
    best_similarity: float | None = None

    def log_fields(self) -> dict[str, Any]:
        """A flat dict for the request log: ``cache`` is ``hit-exact``, ``hit-semantic``, ``blocked`` or ``miss``."""
        if self.hit is not None:
            status = f"hit-{self.hit.kind}"
        else:
            status = "blocked" if self.blocked else "miss"
        fields: dict[str, Any] = {"cache": status}
        if self.hit is not None:
            fields |= {"cache_similarity": round(self.hit.similarity, 4), "cache_age_s": round(self.hit.age_s, 1)}
        if self.blocked:
            fields["cache_blocked"] = [f"{b.similarity:.3f} {b.reason}" for b in self.blocked]
        return fields


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    """Whether :meth:`SemanticCache.store` stored the answer, and if not, why."""

    stored: bool
    reason: str | None = None


class SemanticCache:
    """Exact and semantic lookup over a :class:`~turnout.cache.store.CacheStore` (``storage``), guarded against
    look-alikes.

    ``threshold`` is the least cosine similarity of a semantic hit (the default
    one, chosen on dev data, is in docs/guards.md); ``guard`` None turns the
    look-alike guard off; ``candidates`` is how many neighbours above the
    threshold the guard may examine; ``space`` names the embedding space (the
    embedder's name) so vectors of different embedders never meet. Its
    coroutines await only the store (no I/O at all with the in-memory one).
    """

    def __init__(
        self,
        storage: CacheStore,
        *,
        threshold: float,
        guard: LookalikeGuard | None = DEFAULT_GUARD,
        candidates: int = 4,
        space: str = "default",
        policy: CachePolicy | None = None,
    ) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        self.storage = storage
        self.threshold = threshold
        self.guard = guard
        self.candidates = candidates
        self.space = space
        self.policy = policy or CachePolicy()

    def _bucket(self, fp: ContextFingerprint) -> str:
        return f"{self.space}:{fp.digest}"

    def _hit(self, entry: CacheEntry, kind: Literal["exact", "semantic"], similarity: float) -> CacheHit:
        model = entry.answer.get("model")
        return CacheHit(
            answer=entry.answer,
            kind=kind,
            similarity=similarity,
            age_s=max(0.0, self.storage.now() - entry.stored_at),
            question=entry.text,
            model=model if isinstance(model, str) else "",
        )

    async def lookup(
        self,
        fp: ContextFingerprint,
        vector: np.ndarray | None = None,
        *,
        threshold: float | None = None,
        exact: bool = True,
    ) -> LookupResult:
        """Look ``fp`` up: exactly, then (with ``vector``, the embedding of ``fp.text``) semantically.

        ``threshold`` overrides the cache's for this call (a route's own). An
        empty ``fp.text`` (the conversation does not end with a user message)
        only ever hits exactly. ``exact=False`` skips the exact lookup: for the
        second call of a request whose first (``lookup(fp)``) already missed.
        """
        bucket = self._bucket(fp)
        if exact:
            entry = await self.storage.get(fp.tenant, bucket, fp.exact_key)
            if entry is not None:
                return LookupResult(self._hit(entry, "exact", 1.0), best_similarity=1.0)
        if vector is None or not fp.text:
            return LookupResult(None)
        unit = _unit(vector)
        if unit is None:  # a zero or NaN vector matches nothing
            return LookupResult(None)
        limit = self.threshold if threshold is None else threshold
        found = await self.storage.nearest(fp.tenant, bucket, unit, k=self.candidates, min_similarity=limit)
        blocked: list[Blocked] = []
        guard = self.guard
        new = guard.features(fp.text) if guard is not None else fp.text  # its details extracted once, for every candidate
        for cached, sim in found:
            verdict = guard.check(cached.text, new) if guard is not None else None
            if verdict is None or verdict.ok:
                await self.storage.touch(fp.tenant, bucket, cached.key)
                return LookupResult(self._hit(cached, "semantic", sim), tuple(blocked), found[0][1])
            blocked.append(Blocked(cached.text, sim, verdict.check or "", verdict.reason or ""))
        return LookupResult(None, tuple(blocked), found[0][1] if found else None)

    async def store(
        self, fp: ContextFingerprint, vector: np.ndarray | None, answer: dict[str, Any], *, ttl_s: float | None = None
    ) -> StoreOutcome:
        """Store ``answer`` (a ``chat.completion`` body) for ``fp`` unless the policy refuses it.

        ``vector`` is the embedding of ``fp.text`` (None: the entry only ever
        hits exactly). The request-side rules (:meth:`CachePolicy.request_reason`)
        are the caller's to check before the lookup; the answer-side ones are
        checked here. The body is deep-copied: the caller may go on using it.
        """
        reason = self.policy.answer_reason(answer)
        if reason is not None:
            return StoreOutcome(False, reason)
        vec = _unit(vector) if vector is not None and fp.text else None
        await self.storage.put(fp.tenant, self._bucket(fp), fp.exact_key, fp.text, vec, copy.deepcopy(answer), ttl_s=ttl_s)
        return StoreOutcome(True)


def _unit(vector: np.ndarray) -> np.ndarray | None:
    """``vector`` flattened to float32 and scaled to unit length; None for a zero or NaN vector."""
    vec = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm > 0 else None


__all__ = ["DEFAULT_GUARD", "Blocked", "CacheHit", "LookupResult", "SemanticCache", "StoreOutcome"]
