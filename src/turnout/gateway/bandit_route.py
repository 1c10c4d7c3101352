"""A route that learns online: ``router: {type: bandit}`` decides by the bandit and learns from feedback.

**Deciding.** The route scores its candidates like any route (the bandit's predicted quality, the
fleet's prices, the policy's exclusions: a key's allowed list, a stage's restriction, context windows),
then the bandit *draws* one of the candidates the policy left in
(:meth:`turnout.routing.bandit.BanditRouter.choose`): the greedy one (best ``quality − λ·cost``) most of
the time, another with at most ``max_explore`` of the probability in all. The decision carries that
draw's exact probability as ``decision.propensity`` (the request log and ``/v1/route`` show it, and
``turnout eval offpolicy`` reads it), the whole distribution in a ``bandit`` reason, and the greedy
choice in the ``policy`` reason. λ is the route's (``lambda:``), its budget's (``budget:``), or the
artifact's. Draws come from one generator per route (``bandit.seed``), under a lock, since decisions
run on the offload threads.

**Delayed feedback.** ``POST /v1/feedback`` may come minutes or days after the answer. What the update
needs is the decision's *context* (the reduced prompt features, ``d + 1`` floats) and the model that
answered. The gateway hands every decision of the route to :meth:`BanditRoute.remember`, which keeps
the context of the last ``bandit.remember`` requests (10,000 by default: about 2 MB at ``d = 24``) in
an LRU by request id; with replicas, :meth:`BanditRoute.feedback_context` hands it to the shared
feedback index, so a score sent to another replica still has it. Feedback for an older request, or one
made before a restart, recomputes the context from the prompt the request log kept, through the
gateway's embedder: the projection never
changes once the bandit has learned, so the recomputed context is the one the decision saw. The
model that answered comes from the log: a fallback's answer teaches that fallback's arm (each arm's
regression is valid whoever chose its prompts), an answer no candidate gave (a cache hit, a guard's,
an error) teaches nothing. Only the first score of a request teaches the bandit; a later one is stored
(the log keeps the latest) but not learned twice.

**Persistence.** With ``bandit.state_path`` the learned state is a router artifact written atomically
(a temp file in the same folder, fsync, rename) every ``save_every_s`` while something was learned
and at shutdown, and loaded at start-up in preference to ``router.artifact`` (the artifact is where
learning started; the state file is where it got to). The file keeps the artifact's metadata (its
calibration sample for a budget) and the embedder's name, which must still match.

**Replicas.** The bandit's statistics are sums, so replicas pool their learning exactly: with
``bandit.share`` on (by default whenever the state is shared, i.e. Redis) a
:class:`~turnout.gateway.bandit_sync.BanditSync` per route carries :meth:`BanditRoute.export_delta`'s
increments to one versioned blob of the shared state (:mod:`turnout.state.shared_stats`, compare-and-set)
every ``share_every_s`` and merges the other replicas' back (:meth:`BanditRoute.merge_delta`, which marks
the state file dirty), so every replica's bandit converges on the same statistics. The state file then
seeds an empty store, and a restarted replica takes the shared statistics over its file.

Example (``turnout.yaml``)::

    routes:
      learn:
        router: {type: bandit, params: {d: 8, max_explore: 0.1}}   # cold start: a seeded random projection
        embedder: minilm
        candidates: [small, big]
        lambda: 50
        bandit: {state_path: ./bandit-learn.npz, save_every_s: 30, seed: 0, share: auto, share_every_s: 1}
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from turnout.errors import ConfigError, RoutingError, TurnoutError
from turnout.gateway.routes import RouteRuntime
from turnout.routing.bandit import BanditRouter
from turnout.types import ChatRequest, Decision, Plan, Reason

if TYPE_CHECKING:
    from turnout.config.schema import TurnoutConfig
    from turnout.gateway.embeddings import EmbeddingService
    from turnout.gateway.endpoints import ModelTarget
    from turnout.gateway.logschema import LogEntry
    from turnout.state.shared_stats import SharedStats

log = logging.getLogger(__name__)

#: projections a cold bandit (no artifact, no state file) can use: they need no prompts to be fitted
COLD_PROJECTIONS = ("random", "none")
#: request ids whose score already taught the bandit, kept to refuse a second lesson without a log read
LEARNED_IDS = 100_000
#: the reason kind a bandit's decision carries (feedback looks for it in the logged decision)
REASON = "bandit"

#: embeds a text with a named embedder of the gateway (``EmbeddingService.embed``)
EmbedFn = Callable[[str, str], Awaitable[np.ndarray]]


@dataclass(frozen=True)
class Learned:
    """What one feedback score did to a bandit: whether it was learned, and why (not)."""

    learned: bool
    detail: str
    #: the fleet model whose arm learned
    model: str | None = None


@dataclass
class BanditRoute(RouteRuntime):
    """A route whose router is a :class:`~turnout.routing.bandit.BanditRouter`: draws, remembers, learns, saves.

    Built by :func:`build_bandit_route` from config. ``state_path``: the state file (None: in memory
    only); ``save_every_s``: the saver's period; ``keep_contexts``: decisions whose context stays in
    memory; ``seed``: the draws' generator; ``shared``: where replicas pool the statistics.

    Example::

        d = route.decide(request, vector=vec)           # d.propensity: the draw's probability
        route.remember(request_id, vec)                 # the gateway does this for every served decision
        await route.learn(entry, 0.9, embeddings.embed)  # the feedback path, with the logged request
        route.save()                                    # blocking: on the offload pool
    """

    state_path: Path | None = None
    save_every_s: float = 30.0
    keep_contexts: int = 10_000
    seed: int | None = None
    #: the metadata the state file carries (the artifact's, with the route and embedder)
    meta: dict[str, Any] | None = None
    #: where the replicas pool their statistics (None: this replica learns alone); see gateway/bandit_sync.py
    shared: SharedStats | None = None
    #: seconds between two exchanges with ``shared``
    share_every_s: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.router, BanditRouter):
            raise RoutingError(f"route {self.name!r}: a bandit route needs a BanditRouter, got {type(self.router).__name__}")
        self._rng = np.random.default_rng(self.seed)
        self._rng_lock = threading.Lock()
        self._save_lock = threading.Lock()
        arm = {m: i for i, m in enumerate(self.router.models)}
        #: candidate position -> bandit arm (None: the bandit has no arm for that candidate)
        self._arms = [arm.get(r) for r in self.candidates]
        self._arm_of_fleet: dict[str, int] = {}
        for r, fleet in self.candidates.items():
            if r in arm:
                self._arm_of_fleet.setdefault(fleet, arm[r])
        # both touched only on the event loop (remember, learn): no lock
        self._contexts: OrderedDict[str, np.ndarray] = OrderedDict()
        self._learned: OrderedDict[str, None] = OrderedDict()
        self._updates = 0
        self._saved = 0

    @property
    def bandit(self) -> BanditRouter:
        """The route's bandit (its statistics are what feedback updates)."""
        assert isinstance(self.router, BanditRouter)
        return self.router

    # -- deciding (offload threads) ---------------------------------------------------------------
    def decide(
        self, request: ChatRequest, allowed: Collection[str] | None = None, *, vector: np.ndarray | None = None
    ) -> Decision:
        """The policy's scores and exclusions, then the bandit's draw among the candidates left in (blocking)."""
        if vector is None:
            if self.embedder is None:
                raise RoutingError(f"route {self.name!r}: a bandit decides on the prompt's embedding; none was given")
            vector = self.embedder.embed_one(request.prompt_text())
        decision = super().decide(request, allowed, vector=vector)
        t0 = time.perf_counter()
        bandit = self.bandit
        K = len(bandit.models)
        costs, available = np.full(K, np.nan), np.zeros(K, dtype=bool)
        fleet_of: dict[int, str] = {}
        # decision.candidates follow self.candidates' order (RouteRuntime.decide builds them so)
        for arm, fleet, cand in zip(self._arms, self.candidates.values(), decision.candidates):
            if arm is None:
                continue
            costs[arm], available[arm] = cand.cost, cand.excluded is None
            fleet_of[arm] = fleet
        with self._rng_lock:
            rng = np.random.default_rng(int(self._rng.integers(2**63)))
        choice = bandit.choose(vector, costs, decision.lam, rng, available)
        chosen, greedy = fleet_of[choice.arm], fleet_of[choice.greedy]
        live = sorted((c for c in decision.candidates if c.excluded is None), key=lambda c: (-round(c.utility, 12), c.cost))
        decision.model = chosen
        if self.fallbacks:
            decision.fallbacks = [m for m in self.fallbacks if m != chosen]
        else:
            rest = [c.model for c in live if c.model != chosen]
            cap = self.policy.max_fallbacks
            decision.fallbacks = rest if cap is None else rest[:cap]
        decision.propensity = float(choice.propensity)
        self._explain(decision, choice, fleet_of, chosen, greedy)
        decision.plan = self.plan(decision) if self.plan is not None else Plan.single(decision.model, decision.fallbacks)
        decision.elapsed_ms += (time.perf_counter() - t0) * 1000.0
        return decision

    def _explain(self, decision: Decision, choice: Any, fleet_of: dict[int, str], chosen: str, greedy: str) -> None:
        """The policy reason names the greedy model; a ``bandit`` reason after it names the draw and its odds."""
        bandit, lam = self.bandit, decision.lam
        utility = float(choice.scores[choice.greedy])
        policy = Reason(
            "policy",
            f"utility = quality - {lam:g} * cost; greedy choice {greedy} (utility {utility:.4g})",
            {"model": greedy, "utility": utility, "lambda": lam},
        )
        n = bandit.observations
        odds = {fleet_of[a]: float(choice.probabilities[a]) for a in fleet_of}
        p = float(choice.propensity)
        detail = (
            f"bandit drew {chosen} with probability {p:.3g}"
            + (f", exploring (greedy: {greedy})" if choice.explored else "")
            + f"; at most {bandit.max_explore:.0%} of the probability leaves the greedy model"
        )
        drew = Reason(
            REASON,
            detail,
            {
                "model": chosen,
                "propensity": p,
                "greedy": greedy,
                "explored": bool(choice.explored),
                "probabilities": odds,
                "spread": {fleet_of[a]: float(choice.spread[a]) for a in fleet_of if np.isfinite(choice.spread[a])},
                "observations": {fleet_of[a]: float(n[a]) for a in fleet_of},
            },
        )
        i = next((k for k, r in enumerate(decision.reasons) if r.kind == "policy"), None)
        if i is None:
            decision.reasons[:0] = [policy, drew]
        else:
            decision.reasons[i : i + 1] = [policy, drew]

    # -- remembering and learning (event loop) ---------------------------------------------------
    def remember(self, request_id: str, vector: np.ndarray | None) -> None:
        """Keep this served decision's context for its feedback (the last ``keep_contexts`` requests)."""
        if vector is None or self.keep_contexts <= 0:
            return
        self._contexts[request_id] = self.bandit.features(vector)[0]
        while len(self._contexts) > self.keep_contexts:
            self._contexts.popitem(last=False)

    def feedback_context(self, request_id: str) -> list[float] | None:
        """The kept context of ``request_id`` as plain floats (None when not kept), without forgetting it.

        The shared feedback index (:mod:`turnout.state.feedback_index`) stores it with the request, so a
        score sent to another replica can teach that replica's bandit without the prompt (replicas built
        from one config share the projection, so a context means the same to each).
        """
        z = self._contexts.get(request_id)
        return None if z is None else [float(v) for v in z]

    @property
    def remembered(self) -> int:
        """How many decisions' contexts are in memory now."""
        return len(self._contexts)

    async def learn(self, entry: LogEntry, score: float, embed: EmbedFn) -> Learned:
        """Update the bandit with ``score`` for the logged request ``entry`` (when the bandit decided it)."""
        if _bandit_reason(entry.decision) is None:
            return Learned(
                False,
                f"route {self.name!r}'s bandit did not decide this request (it was not routed by "
                "it, or was answered before any decision); the score is stored only",
            )
        if entry.status != "ok" or (entry.answered_by or "model") != "model":
            what = entry.answered_by if entry.status == "ok" else f"a request that ended {entry.status}"
            return Learned(False, f"no model's answer to learn from ({what}); the score is stored only")
        arm = self._arm_of_fleet.get(entry.model or "")
        if arm is None:
            return Learned(
                False,
                f"it was answered by {entry.model!r}, which is not one of the bandit's arms "
                "(a fallback outside the candidates); the score is stored only",
            )
        if entry.id in self._learned or entry.score is not None:
            return Learned(
                False,
                "an earlier score of this request already taught the bandit; this one is stored "
                "(the latest wins in the log) but not learned twice",
            )
        self._learned[entry.id] = None  # before any await: a concurrent second score is refused above
        while len(self._learned) > LEARNED_IDS:
            self._learned.popitem(last=False)
        try:
            z = self._contexts.pop(entry.id, None)
            source = "kept in memory"
            shared = getattr(entry, "context", None)  # another replica's kept context, through the feedback index
            if z is None and isinstance(shared, list) and len(shared) == self.bandit.d1:
                z, source = np.asarray(shared, dtype=np.float64), "shared by the replica that served it"
            if z is None:
                if not entry.prompt or self.embedder_name is None:
                    del self._learned[entry.id]
                    return Learned(False, "the request log kept no prompt to recompute the decision's context from")
                z = self.bandit.features(await embed(self.embedder_name, entry.prompt))[0]
                source = "recomputed from the logged prompt"
            self.bandit.update_features(z, arm, float(score), entry.cost_usd)
        except BaseException:
            self._learned.pop(entry.id, None)
            raise
        self._updates += 1
        model = entry.model or ""
        return Learned(True, f"{model}'s arm learned the score (context {source})", model=model)

    # -- state: replicas and persistence ----------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """The bandit's settings and sufficient statistics (numpy arrays and JSON values)."""
        return self.bandit.get_state()

    def export_delta(self) -> dict[str, np.ndarray]:
        """What this replica learned since the last export (additive statistics), for the other replicas."""
        return self.bandit.export_delta()

    def merge_delta(self, delta: dict[str, np.ndarray]) -> None:
        """Add another replica's :meth:`export_delta` (exact: the statistics are sums)."""
        self.bandit.merge_delta(delta)
        self._updates += 1

    @property
    def dirty(self) -> bool:
        """Whether something was learned since the state file was last written (or it does not exist yet)."""
        return self.state_path is not None and (self._updates != self._saved or not self.state_path.exists())

    def save(self) -> bool:
        """Write the state file when :attr:`dirty` (atomically; blocking: call it off the event loop)."""
        if self.state_path is None:
            return False
        with self._save_lock:
            if not self.dirty:
                return False
            updates = self._updates
            meta = {
                **(self.meta or {}),
                "route": self.name,
                "embedder": self.embedder_name,
                "saved_at": time.time(),
                "observations": [float(v) for v in self.bandit.observations],
            }
            save_bandit(self.bandit, self.state_path, meta=meta)
            self._saved = updates
            return True


def save_bandit(bandit: BanditRouter, path: Path, *, meta: dict[str, Any]) -> Path:
    """Write ``bandit`` as a router artifact at ``path`` atomically: a temp file beside it, fsync, rename.

    A reader (a restart, a crash half-way) sees the old file or the new one, never a torn one.
    """
    from turnout.routing.artifact import save_router

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        save_router(bandit, tmp, meta=meta)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _bandit_reason(decision: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``bandit`` reason's data in a logged decision, or None when the bandit did not decide."""
    for r in (decision or {}).get("reasons") or []:
        if isinstance(r, dict) and r.get("kind") == REASON:
            data = r.get("data")
            return data if isinstance(data, dict) else {}
    return None


def build_bandit_route(
    cfg: TurnoutConfig,
    name: str,
    targets: dict[str, ModelTarget],
    state: Any,
    embeddings: EmbeddingService,
    *,
    budget: Callable[..., Any],
    shared: SharedStats | None = None,
) -> BanditRoute:
    """The bandit route ``name`` of ``cfg``: its state file, else its artifact, else a cold bandit.

    ``budget`` is the builder's route-budget factory (called as for any route). ``shared``: where the
    gateway's bandit routes pool their statistics (default: :func:`~turnout.state.shared_stats.shared_stats_for`
    ``state``), used when ``bandit.share`` is on (``auto``: when ``state`` is shared). Raises
    :class:`~turnout.errors.ConfigError` naming the key for every problem, before a port is bound.
    """
    from turnout.config.schema import BanditSettings
    from turnout.gateway.builder import _check_scored, _windows_and_prices
    from turnout.routing.policy import Policy

    r = cfg.routes[name]
    where = f"routes.{name}"
    if r.embedder is None:
        raise ConfigError(
            "a bandit route decides on the prompt's embedding, and this route names no embedder",
            file=cfg.source,
            key=f"{where}.embedder",
            fix="add e.g. 'embedder: minilm' to the route",
        )
    embedder = embeddings.ensure(r.embedder)
    settings = r.bandit or BanditSettings.model_validate({})
    cmap = r.candidate_map
    path = Path(settings.state_path).expanduser() if settings.state_path else None
    bandit, meta = _bandit_of(cfg, name, path, list(cmap), int(embedder.dim))
    if meta.get("embedder") not in (None, r.embedder):
        if path is not None and path.exists():  # written by this route: its contexts mean nothing under another embedder
            raise ConfigError(
                f"the state file {path} was learned on embedder {meta['embedder']!r}, the route embeds with {r.embedder!r}",
                file=cfg.source,
                key=f"{where}.embedder",
                fix=f"set embedder: {meta['embedder']}, or delete the state file to start learning afresh",
            )
        # an artifact trained on minilm served with minilm-int8 (same space, within the quality gate) is a choice
        log.warning(
            "route %s: the bandit artifact was trained on embedder %r, the route embeds with %r",
            name,
            meta["embedder"],
            r.embedder,
        )
    if bandit.dim != embedder.dim:
        raise ConfigError(
            f"the bandit takes {bandit.dim}-dimensional embeddings, embedder {r.embedder!r} gives {embedder.dim}",
            file=cfg.source,
            key=f"{where}.embedder",
            fix="use the embedder the bandit was trained with",
        )
    _check_scored(
        cfg,
        name,
        bandit.models,
        what="the bandit has no arm for",
        listing=f"its arms: {', '.join(bandit.models)}",
        fix="name candidates the bandit has arms for, or delete its state file to start afresh",
    )
    windows, prices = _windows_and_prices(cmap, targets)
    route_budget = budget(cfg, name, meta, cmap, prices, windows, state) if r.budget is not None else None
    lam = r.lam if r.lam is not None else (meta.get("lambda") if r.budget is None else None)
    policy = Policy(lam=route_budget.base_lambda if route_budget is not None else float(lam or 0.0), context_windows=windows)
    from turnout.routing.artifact import ARTIFACT_KEYS

    kept = {k: v for k, v in meta.items() if k not in (*ARTIFACT_KEYS, "models")}
    # auto: share when the state store is shared by replicas (Redis). A cold bandit's random projection is drawn
    # from router.params.seed (an int, 0 by default; PCG64 gives the same stream in every process), so replicas
    # built from one config agree on it; artifacts and state files carry theirs.
    sharing = settings.share == "on" or (settings.share == "auto" and not getattr(state, "in_process", True))
    if sharing and shared is None:
        from turnout.state.shared_stats import shared_stats_for

        shared = shared_stats_for(state)
    return BanditRoute(
        name=name,
        router=bandit,
        router_name="bandit",
        candidates=cmap,
        prices=prices,
        policy=policy,
        embedder=embedder,
        fallbacks=list(r.fallbacks),
        budget=route_budget,
        embedder_name=r.embedder,
        state_path=path,
        save_every_s=settings.save_every_s,
        keep_contexts=settings.remember,
        seed=settings.seed,
        meta=kept,
        shared=shared if sharing else None,
        share_every_s=settings.share_every_s,
    )


def _bandit_of(
    cfg: TurnoutConfig, name: str, path: Path | None, arms: list[str], dim: int
) -> tuple[BanditRouter, dict[str, Any]]:
    """The bandit to start from, with its metadata: the state file, else the artifact, else a cold one."""
    from turnout.routing.artifact import load_router

    r = cfg.routes[name]
    where = f"routes.{name}"
    if path is not None and path.exists():
        src, key = str(path), f"{where}.bandit.state_path"
        fix = "restore the file, or delete it to start learning afresh (what it learned is lost)"
    elif r.router.artifact is not None:
        src, key, fix = r.router.artifact, f"{where}.router.artifact", "train one with 'turnout train ... --router bandit'"
    else:
        params = dict(r.router.params)
        params.setdefault("projection", "random")
        if params["projection"] not in COLD_PROJECTIONS:
            raise ConfigError(
                f"projection {params['projection']!r} is learned from prompts, and a cold bandit has none",
                file=cfg.source,
                key=f"{where}.router.params.projection",
                fix="use projection: random (or none), or start from an artifact: 'turnout train TABLE "
                "--router bandit --out bandit.npz' and router.artifact",
            )
        try:
            return BanditRouter(**params, models=arms, dim=dim), {}  # type: ignore[arg-type]
        except (RoutingError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"invalid bandit parameters {r.router.params}: {exc}",
                file=cfg.source,
                key=f"{where}.router.params",
                fix="see docs/routers.md for the bandit's parameters",
            ) from exc
    try:
        router, meta = load_router(src)
    except TurnoutError as exc:
        raise ConfigError(f"cannot load the bandit: {exc}", file=cfg.source, key=key, fix=fix) from exc
    if not isinstance(router, BanditRouter):
        raise ConfigError(f"{src} holds a {meta.get('router')!r} router, not a bandit", file=cfg.source, key=key, fix=fix)
    return router, meta


__all__ = ["COLD_PROJECTIONS", "REASON", "BanditRoute", "Learned", "build_bandit_route", "save_bandit"]
