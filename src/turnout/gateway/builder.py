"""Build a :class:`~turnout.gateway.pipeline.Gateway` from a resolved config.

Every heavy part (backends, routers, embedders, metrics, request log, keys, stages) is imported here,
lazily, so that importing the gateway stays cheap. Errors that only show when a part is built (a router
parameter it does not accept, an unreadable artifact, a stage class that cannot be imported, a balancing
strategy nobody registered) are re-raised as :class:`ConfigError` naming the key — all before a port is
bound. ``protocol: llamacpp`` backends are *described* here and started by :meth:`Gateway.start` (the
server's lifespan), never at build time; likewise the shared state is built here and first reached (a
PING) by :meth:`Gateway.start`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from turnout.backends.base import Backend, Timeouts
from turnout.config.schema import BackendSettings, EndpointSettings, ModelSettings, TurnoutConfig
from turnout.errors import ConfigError, RoutingError, StateError, TurnoutError
from turnout.gateway.balance import create_balancer
from turnout.gateway.embeddings import EmbeddingService
from turnout.gateway.endpoints import Endpoint, ModelTarget
from turnout.gateway.health import WatchedBreaker
from turnout.gateway.offload import Offloader
from turnout.gateway.pipeline import Gateway
from turnout.gateway.reliability import Backoff
from turnout.gateway.routes import RouteRuntime
from turnout.gateway.stages import Stages, build_stage
from turnout.types import Price

if TYPE_CHECKING:
    from turnout.state.shared_stats import SharedStats

log = logging.getLogger(__name__)


def _local_model_path(model: str) -> str:
    if model in ("smollm2", "gemma3-270m"):
        from turnout.backends.llamacpp import default_fleet_models

        return str(default_fleet_models()[model])
    return model


class _Backends:
    """One backend object (its own connection pool) per distinct (backend entry, base URL) of the config."""

    def __init__(self, cfg: TurnoutConfig) -> None:
        self.cfg = cfg
        self.children: list[Any] = []
        self._made: dict[tuple[str, str | None], Backend] = {}

    def get(self, name: str, base_url: str | None = None) -> Backend:
        key = (name, base_url)
        if key not in self._made:
            b = self.cfg.backends[name]
            shown = name if base_url is None else f"{name}@{base_url}"
            try:
                self._made[key] = self._create(shown, b, base_url)
            except TurnoutError as exc:
                raise ConfigError(
                    str(exc), file=self.cfg.source, key=f"backends.{name}", fix="check this backend's settings"
                ) from exc
        return self._made[key]

    def _create(self, name: str, b: BackendSettings, base_url: str | None) -> Backend:
        from turnout.backends.registry import create_backend

        api_key = os.environ[b.api_key_env] if b.api_key_env else None
        if b.protocol == "llamacpp":
            from turnout.backends.llamacpp import LlamaCppServer, free_port

            # the port is fixed now so the backend knows its URL before the child starts (in the lifespan)
            server = LlamaCppServer(
                _local_model_path(b.model or ""), port=free_port(), n_ctx=b.n_ctx or 2048, n_threads=b.n_threads or 1
            )
            self.children.append(server)
            return create_backend(
                "openai", name, base_url=server.base_url, api_key=None, completion_template=b.completion_template
            )
        url = base_url or b.base_url
        if b.protocol == "openai":
            return create_backend("openai", name, base_url=url, api_key=api_key, completion_template=b.completion_template)
        if b.protocol == "anthropic":
            return create_backend("anthropic", name, base_url=url, api_key=api_key)
        settings: dict[str, Any] = {"base_url": url} if url else {}
        if api_key is not None:
            settings["api_key"] = api_key
        return create_backend(b.protocol, name, **settings)  # a plugin's protocol


def _endpoint_name(ep: EndpointSettings, m: ModelSettings) -> str:
    if ep.name:
        return ep.name
    return ep.backend if ep.base_url is None else f"{ep.backend}@{ep.base_url}"


def _target(cfg: TurnoutConfig, name: str, m: ModelSettings, backends: _Backends) -> ModelTarget:
    first = cfg.backends[m.endpoint_list[0].backend]
    endpoints = []
    for ep in m.endpoint_list:
        b = cfg.backends[ep.backend]
        endpoints.append(
            Endpoint(
                _endpoint_name(ep, m),
                backends.get(ep.backend, ep.base_url),
                weight=ep.weight,
                slots=ep.slots,
                breaker=WatchedBreaker(b.cooldown.failures, b.cooldown.seconds, probe_timeout_s=b.timeouts.total + 5.0),
            )
        )
    try:
        balancer = create_balancer(m.balance.strategy, **m.balance.params)
    except ConfigError as exc:
        raise ConfigError(
            exc.message,
            file=cfg.source,
            key=f"models.{name}.balance",
            fix=exc.fix or "see docs/config.md for the strategies",
        ) from exc
    t = first.timeouts
    return ModelTarget(
        name,
        upstream=m.upstream_model or name,
        endpoints=endpoints,
        balancer=balancer,
        price=Price(m.price.input_per_mtok, m.price.output_per_mtok),
        context_window=m.context_window,
        fallbacks=list(m.fallbacks),
        timeouts=Timeouts(t.connect, t.first_token, t.total, t.idle or min(60.0, t.total)),
        attempts=first.retries.attempts,
        backoff=Backoff(first.retries.backoff_s, first.retries.max_backoff_s),
        private=m.private,
    )


def _state(cfg: TurnoutConfig) -> Any:
    """The state store of ``cfg.state``: Redis, a SQLite file (the request log's by default), or memory."""
    st = cfg.state
    if st.redis_url is not None or st.redis_url_env is not None:
        from turnout.state.redis import RedisCounters

        key = "state.redis_url" if st.redis_url is not None else "state.redis_url_env"
        try:
            return RedisCounters(st.redis_url or os.environ[st.redis_url_env or ""], prefix=st.prefix)
        except StateError as exc:  # a malformed URL
            raise ConfigError(
                str(exc), file=cfg.source, key=key, fix="use redis://HOST:PORT/DB, rediss://... or unix://PATH"
            ) from exc
    path = st.path or (cfg.server.request_log if st.persist else None)
    if path is None:
        from turnout.state.memory import InMemoryCounters

        return InMemoryCounters()
    from turnout.state.sqlite import SqliteCounters

    try:
        return SqliteCounters(Path(path).expanduser(), flush_s=st.flush_s)
    except StateError as exc:
        raise ConfigError(
            str(exc),
            file=cfg.source,
            key="state.path" if st.path else "server.request_log",
            fix="choose a writable path, or set state.persist: false",
        ) from exc


def build_gateway(cfg: TurnoutConfig, *, shared_stats: SharedStats | None = None) -> Gateway:
    """Every backend, model target, route, stage, metrics, request log, key store and the state of ``cfg``.

    ``shared_stats``: where bandit routes that share (``bandit.share``) pool their statistics; by default
    the state store's (:func:`~turnout.state.shared_stats.shared_stats_for`: Redis when the state is in
    Redis, else this gateway's own). Gateways of one process given one
    :class:`~turnout.state.shared_stats.InMemorySharedStats` share their bandits' learning (tests).
    """
    state = _state(cfg)
    backends = _Backends(cfg)
    targets = {name: _target(cfg, name, m, backends) for name, m in cfg.models.items()}
    offloader = Offloader()
    embeddings = EmbeddingService(offloader)
    routes = {name: _route(cfg, name, targets, state, embeddings, shared_stats) for name in cfg.routes}
    decision_stage = _decision_stage(cfg, embeddings, offloader, routes, targets)
    configured = _stages(cfg, embeddings, offloader, state)
    stages = Stages([*configured, decision_stage] if decision_stage is not None else configured)
    for st in stages.all:
        name = getattr(st, "embedder", None)
        if isinstance(name, str):
            try:
                embeddings.ensure(name)  # built (and warmed up) with the gateway, not on a request
            except KeyError as exc:
                raise ConfigError(
                    f"stage {getattr(st, 'name', st)!r} names an unknown embedder {name!r}",
                    file=cfg.source,
                    key="stages",
                    fix=str(exc),
                ) from exc

    metrics = None
    request_log = None
    on_close: list[Any] = []
    if cfg.server.request_log is not None:
        from turnout.gateway.requestlog import RequestLog

        request_log = RequestLog(cfg.server.request_log, linger_s=cfg.server.request_log_linger_s)
        on_close.append(request_log.close)
    if cfg.server.metrics:
        from turnout.gateway.metrics import Metrics

        metrics = Metrics()
        metrics.watch(request_log, embeddings)
    keys = None
    if cfg.keys is not None:
        from turnout.gateway.keys import KeySpec, KeyStore, hash_key

        keys = KeyStore(
            [
                KeySpec(
                    k.name,
                    k.key_sha256 or hash_key(os.environ[k.key_env or ""]),
                    k.budget_usd,
                    k.allowed,
                    rpm=k.rpm,
                    tpm=k.tpm,
                    team=k.team,
                    tags=tuple(k.tags),
                )
                for k in cfg.keys
            ],
            state,
        )
    limiter, health, feedback_index = _scale_out(cfg, targets, keys, state, metrics, request_log)
    gw = Gateway(
        targets,
        routes,
        metrics=metrics,
        request_log=request_log,
        keys=keys,
        offloader=offloader,
        state=state,
        on_close=on_close,
        stages=stages,
        embeddings=embeddings,
        limiter=limiter,
        health=health,
        feedback_index=feedback_index,
        budgets_on_failure=cfg.state.on_failure.budgets,
    )
    gw.children = backends.children
    return gw


def stage_context(cfg: TurnoutConfig, embeddings: EmbeddingService, offloader: Offloader) -> dict[str, Any]:
    """The shared parts a stage factory may ask for by parameter name (see ``stages.build_stage``).

    ``gateway_config`` lets a stage check the routes and models it names, find models marked
    ``private``, and resolve relative paths against the config file's folder; a decision's per-request
    plugins should be built with the same context.
    """
    return {"embeddings": embeddings, "offloader": offloader, "gateway_config": cfg}


def _decision_stage(
    cfg: TurnoutConfig,
    embeddings: EmbeddingService,
    offloader: Offloader,
    routes: dict[str, Any],
    targets: dict[str, ModelTarget],
) -> Any:
    """The stage of the config's signals and decision rules (gateway/signal_stage.py); None when it has neither."""
    if not (cfg.signals or cfg.decisions or cfg.decisions_file):
        return None
    from turnout.gateway.signal_stage import build_decision_stage

    return build_decision_stage(
        cfg,
        embeddings=embeddings,
        offloader=offloader,
        routes=list(routes),
        models=list(targets),
        context=stage_context(cfg, embeddings, offloader),
    )


def _stages(cfg: TurnoutConfig, embeddings: EmbeddingService, offloader: Offloader, state: Any = None) -> list[Any]:
    # ``state``: the gateway's state store, for a stage that shares data through it (the cache, in Redis)
    context = {**stage_context(cfg, embeddings, offloader), **({"state": state} if state is not None else {})}
    out = []
    for i, s in enumerate(cfg.stages):
        try:
            out.append(build_stage(s.type, s.params, name=s.name or s.type, where=f"stages[{i}]", context=context))
        except ConfigError as exc:
            if exc.file is not None:
                raise
            raise ConfigError(exc.message, file=cfg.source, key=exc.key, fix=exc.fix) from exc
    return out


def _scale_out(
    cfg: TurnoutConfig, targets: dict[str, ModelTarget], keys: Any, state: Any, metrics: Any, request_log: Any
) -> tuple[Any, Any, Any]:
    """The parts replicas share through ``state``: per-key rate limits, endpoint health with its out-of-rotation
    marks, and the feedback index (Redis only, and only with a request log to find the rows in)."""
    import socket
    import uuid

    from turnout.gateway.health import HealthMonitor
    from turnout.gateway.ratelimit import RateLimiter
    from turnout.state.feedback_index import feedback_index_for
    from turnout.state.marks import marks_for

    # names this gateway in the marks and index entries it writes (two gateways of one process are two replicas)
    replica = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    limiter = RateLimiter.for_keys(keys, on_failure=cfg.state.on_failure.rate_limits, metrics=metrics)
    h = cfg.health
    health = HealthMonitor(
        targets,
        marks_for(state),
        replica=replica,
        interval_s=h.interval_s,
        active=h.active,
        path=h.path,
        timeout_s=h.timeout_s,
        max_backoff_s=h.max_backoff_s,
    )
    index = feedback_index_for(state, replica=replica) if request_log is not None else None
    return limiter, health, index


def _route(
    cfg: TurnoutConfig,
    name: str,
    targets: dict[str, ModelTarget],
    state: Any,
    embeddings: EmbeddingService,
    shared_stats: SharedStats | None = None,
) -> RouteRuntime:
    from turnout.routing.policy import Policy

    r = cfg.routes[name]
    if r.router.type == "bandit":  # learns online from feedback (gateway/bandit_route.py), shared by replicas
        from turnout.gateway.bandit_route import build_bandit_route

        return build_bandit_route(cfg, name, targets, state, embeddings, budget=_budget, shared=shared_stats)
    if r.bandit is not None:
        raise ConfigError(
            "'bandit' settings apply only to a route whose router is the bandit",
            file=cfg.source,
            key=f"routes.{name}.bandit",
            fix="set router: {type: bandit}, or remove 'bandit:'",
        )
    where = f"routes.{name}.router"
    try:
        router, meta = _build_router(r.router.type, r.router.artifact, r.router.params)
    except TurnoutError as exc:
        own_fix = getattr(exc, "fix", None)  # an artifact's DataError says its own fix: keep it, do not add a second
        text = str(exc).removesuffix(f" (fix: {own_fix})") if own_fix else str(exc)
        raise ConfigError(
            text, file=cfg.source, key=where, fix=own_fix or "see docs/config.md for this router's parameters"
        ) from exc
    except (TypeError, ValueError, AttributeError) as exc:  # a parameter of the wrong shape the router did not check
        raise ConfigError(
            f"invalid parameters {r.router.params}: {exc}",
            file=cfg.source,
            key=f"{where}.params",
            fix="see docs/routers.md for this router's parameters and their types",
        ) from exc
    # an artifact's lambda, unless the route gives its own or a budget steers it
    lam = r.lam if r.lam is not None or r.budget is not None else meta.get("lambda")
    cmap = r.candidate_map
    scored = getattr(router, "models", None)
    if scored is not None:
        _check_scored(
            cfg,
            name,
            scored,
            what="the router has no prediction for",
            listing=f"it scores: {', '.join(scored) or 'nothing'}",
            fix="name candidates the router scores, map them to its names ({router_name: "
            "fleet_model}), or give the router their quality",
        )
    windows, prices = _windows_and_prices(cmap, targets)
    budget = _budget(cfg, name, meta, cmap, prices, windows, state) if r.budget is not None else None
    embedder = embeddings.ensure(r.embedder) if r.embedder is not None else None
    policy = Policy(lam=budget.base_lambda if budget is not None else (lam or 0.0), context_windows=windows)
    planner = None
    if r.plan is not None:  # a cascade, fan-out or rounds plan: built (signals loaded, thresholds calibrated) now
        from turnout.gateway.planners import build_planner

        planner = build_planner(name, r.plan, source=cfg.source)
    return RouteRuntime(
        name=name,
        router=router,
        router_name=r.router.type,
        candidates=cmap,
        prices=prices,
        policy=policy,
        embedder=embedder,
        fallbacks=list(r.fallbacks),
        budget=budget,
        embedder_name=r.embedder,
        plan=planner,
    )


def _build_router(type_name: str, artifact: str | Path | None, params: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A route's router (or a decision rule's) with its metadata: loaded from ``artifact``, else made by its type from
    ``params`` (no metadata). Raises what loading or making it raises: the caller names the key."""
    from turnout.routing.registry import create_router

    if artifact is not None:
        from turnout.routing.artifact import load_router

        return load_router(artifact)
    return create_router(type_name, **dict(params)), {}


def _check_scored(cfg: TurnoutConfig, name: str, scored: Collection[str], *, what: str, listing: str, fix: str) -> None:
    """Refuse route ``name`` when its router scores none of its candidates (every request to it would fail); warn
    when it scores only some (the others are allowed, never chosen, but rarely meant). ``what`` says what the
    router lacks for a candidate, ``listing`` what it does score."""
    cmap = cfg.routes[name].candidate_map
    known = set(scored)
    unscored = [c for c in cmap if c not in known]
    if len(unscored) == len(cmap):
        raise ConfigError(
            f"{what} any candidate ({', '.join(unscored)}; {listing})", file=cfg.source, key=f"routes.{name}.candidates", fix=fix
        )
    if unscored:
        log.warning("route %s: %s candidate(s) %s; they are never chosen", name, what, ", ".join(unscored))


def _windows_and_prices(
    cmap: Mapping[str, str], targets: Mapping[str, ModelTarget]
) -> tuple[dict[str, int | None], dict[str, Price]]:
    """The context windows (of the models that state one) and the prices of a route's fleet candidates."""
    windows: dict[str, int | None] = {m: targets[m].context_window for m in cmap.values() if targets[m].context_window}
    return windows, {m: targets[m].price for m in cmap.values()}


def _budget(
    cfg: TurnoutConfig,
    name: str,
    meta: dict[str, Any],
    cmap: dict[str, str],
    prices: dict[str, Price],
    windows: dict[str, int | None],
    state: Any,
) -> Any:
    """The route's budget calibrated on its artifact's sample at the fleet's prices, its running figures in
    ``state`` (see gateway/budget.py)."""
    from turnout.gateway.budget import PIGains, RouteBudget
    from turnout.routing.calibration import CalibrationSample

    r = cfg.routes[name]
    assert r.budget is not None
    key = f"routes.{name}.budget"
    try:
        sample = CalibrationSample.from_meta(meta)
        if sample is None:
            raise ConfigError(
                "a budget is calibrated on the router artifact's calibration sample, and this route has none"
                + (" (its artifact predates it)" if r.router.artifact else " (no router artifact)"),
                file=cfg.source,
                key=key,
                fix="train the artifact with 'turnout train' (it stores the sample) and set router.artifact, "
                "or give 'lambda:' instead of 'budget:'",
            )
        b = r.budget
        gains = PIGains.given(kp=b.kp, ki=b.ki, window=b.window, lambda_range=b.lambda_range)
        return RouteBudget.calibrate(
            sample.priced(cmap, prices, windows),
            target_cost=b.target_cost_per_request,
            target_share=b.target_share,
            counters=state,
            route=name,
            controller=b.controller,
            gains=gains,
        )
    except RoutingError as exc:
        raise ConfigError(
            f"the budget cannot be met: {exc}", file=cfg.source, key=key, fix="raise the target, or add cheaper candidates"
        ) from exc


__all__ = ["build_gateway"]
