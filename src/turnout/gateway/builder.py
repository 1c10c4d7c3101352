"""Build a :class:`~turnout.gateway.pipeline.Gateway` from a resolved config.

Every heavy part (backends, routers, embedders, metrics, request log, keys) is
imported here, lazily, so that importing the gateway stays cheap. Errors that
only show when a part is built (a router parameter it does not accept, an
unreadable artifact) are re-raised as :class:`ConfigError` naming the key.
``protocol: llamacpp`` backends are *described* here and started by
:meth:`Gateway.start` (the server's lifespan), never at build time; likewise
the shared counters (``state``) are built here and first reached (a PING) by
:meth:`Gateway.start`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from turnout.backends.base import Timeouts
from turnout.config.schema import BackendSettings, TurnoutConfig
from turnout.errors import ConfigError, RoutingError, StateError, TurnoutError
from turnout.gateway.offload import Offloader
from turnout.gateway.pipeline import Gateway, ModelTarget
from turnout.gateway.reliability import Backoff, CircuitBreaker
from turnout.gateway.routes import Price, RouteRuntime

log = logging.getLogger(__name__)


def _local_model_path(model: str) -> str:
    if model in ("smollm2", "gemma3-270m"):
        from turnout.backends.llamacpp import default_fleet_models

        return str(default_fleet_models()[model])
    return model


def _backend(name: str, b: BackendSettings, children: list[Any]) -> Any:
    from turnout.backends.registry import create_backend

    api_key = os.environ[b.api_key_env] if b.api_key_env else None
    if b.protocol == "llamacpp":
        from turnout.backends.llamacpp import LlamaCppServer, free_port

        # The port is fixed now so the backend knows its URL before the child starts (in the lifespan).
        server = LlamaCppServer(_local_model_path(b.model or ""), port=free_port(), n_ctx=b.n_ctx or 2048, n_threads=b.n_threads or 1)
        children.append(server)
        return create_backend("openai", name, base_url=server.base_url, api_key=None, completion_template=b.completion_template)
    if b.protocol == "openai":
        return create_backend("openai", name, base_url=b.base_url, api_key=api_key, completion_template=b.completion_template)
    return create_backend("anthropic", name, base_url=b.base_url, api_key=api_key)


def _serving_embedder(name: str) -> Any:
    """A route's embedder as the gateway serves it: one thread, a bounded in-memory cache, no disk.

    Not the on-disk cache that ``turnout train`` and ``turnout eval`` share: on
    the request path it cost a SQLite read and write transaction per new prompt
    (plus an fsync at each WAL checkpoint), grew by every prompt ever served,
    and kept their vectors in the user's home folder.
    """
    from turnout.embed import builtin_registry, create_embedder
    from turnout.embed.cache import MemoryCachedEmbedder

    inner = create_embedder(name, cache=False, progress=False, threads=1)
    return MemoryCachedEmbedder(inner) if builtin_registry().get(name).worth_caching else inner


def _counters(cfg: TurnoutConfig) -> Any:
    """The shared counters of ``cfg.state``: in-process, or a RedisCounters (not connected yet)."""
    st = cfg.state
    if st.redis_url is None and st.redis_url_env is None:
        from turnout.state.counters import InMemoryCounters

        return InMemoryCounters()
    from turnout.state.redis import RedisCounters

    key = "state.redis_url" if st.redis_url is not None else "state.redis_url_env"
    try:
        return RedisCounters(st.redis_url or os.environ[st.redis_url_env or ""], prefix=st.prefix)
    except StateError as exc:  # a malformed URL
        raise ConfigError(str(exc), file=cfg.source, key=key, fix="use redis://HOST:PORT/DB, rediss://... or unix://PATH") from exc


def build_gateway(cfg: TurnoutConfig) -> Gateway:
    """Every backend, model target, route, metrics, request log, key store and shared counters of ``cfg``."""
    counters = _counters(cfg)
    children: list[Any] = []
    backends = {}
    for name, b in cfg.backends.items():
        try:
            backends[name] = _backend(name, b, children)
        except TurnoutError as exc:
            raise ConfigError(str(exc), file=cfg.source, key=f"backends.{name}", fix="check this backend's settings") from exc
    targets = {}
    for name, m in cfg.models.items():
        b = cfg.backends[m.backend]
        targets[name] = ModelTarget(
            name=name, backend=backends[m.backend], upstream=m.upstream_model or name,
            price=Price(m.price.input_per_mtok, m.price.output_per_mtok), context_window=m.context_window,
            fallbacks=list(m.fallbacks), timeouts=Timeouts(b.timeouts.connect, b.timeouts.first_token, b.timeouts.total),
            attempts=b.retries.attempts, backoff=Backoff(b.retries.backoff_s, b.retries.max_backoff_s),
            breaker=CircuitBreaker(b.cooldown.failures, b.cooldown.seconds),
        )
    routes = {name: _route(cfg, name, targets, counters) for name in cfg.routes}

    metrics = None
    if cfg.server.metrics:
        from turnout.gateway.metrics import Metrics

        metrics = Metrics()
    request_log = None
    on_close: list[Any] = [counters.close] if hasattr(counters, "close") else []
    if cfg.server.request_log is not None:
        from turnout.gateway.requestlog import RequestLog

        request_log = RequestLog(cfg.server.request_log)
        on_close.append(request_log.close)
    keys = None
    if cfg.keys is not None:
        from turnout.gateway.keys import KeySpec, KeyStore, hash_key

        keys = KeyStore([
            KeySpec(k.name, k.key_sha256 or hash_key(os.environ[k.key_env or ""]), k.budget_usd, k.allowed) for k in cfg.keys
        ], counters)
    gw = Gateway(targets, routes, metrics=metrics, request_log=request_log, keys=keys, offloader=Offloader(),
                 state=counters, on_close=on_close)
    gw.children = children
    return gw


def _route(cfg: TurnoutConfig, name: str, targets: dict[str, ModelTarget], counters: Any) -> RouteRuntime:
    from turnout.routing.policy import Policy
    from turnout.routing.registry import create_router

    r = cfg.routes[name]
    where = f"routes.{name}.router"
    lam = r.lam
    meta: dict[str, Any] = {}
    try:
        if r.router.artifact is not None:
            from turnout.routing.artifact import load_router

            router, meta = load_router(r.router.artifact)
            if r.budget is None:
                lam = lam if lam is not None else meta.get("lambda")
        else:
            router = create_router(r.router.type, **r.router.params)
    except TurnoutError as exc:
        own_fix = getattr(exc, "fix", None)  # an artifact's DataError says its own fix: keep it, do not add a second
        text = str(exc).removesuffix(f" (fix: {own_fix})") if own_fix else str(exc)
        raise ConfigError(text, file=cfg.source, key=where,
                          fix=own_fix or "see docs/config.md for this router's parameters") from exc
    except (TypeError, ValueError, AttributeError) as exc:  # a parameter of the wrong shape the router did not check
        raise ConfigError(f"invalid parameters {r.router.params}: {exc}", file=cfg.source, key=f"{where}.params",
                          fix="see docs/routers.md for this router's parameters and their types") from exc
    cmap = r.candidate_map
    scored = getattr(router, "models", None)
    if scored is not None:
        unscored = [c for c in cmap if c not in set(scored)]
        if len(unscored) == len(cmap):  # every request to the route would fail: refuse to start
            raise ConfigError(f"the router has no prediction for any candidate ({', '.join(unscored)}; it scores: "
                              f"{', '.join(scored) or 'nothing'})", file=cfg.source, key=f"routes.{name}.candidates",
                              fix="name candidates the router scores, map them to its names ({router_name: "
                                  "fleet_model}), or give the router their quality")
        if unscored:  # allowed (never chosen by the router), but rarely meant
            log.warning("route %s: the router has no prediction for candidate(s) %s; they are never chosen",
                        name, ", ".join(unscored))
    windows = {m: targets[m].context_window for m in cmap.values() if targets[m].context_window}
    prices = {m: targets[m].price for m in cmap.values()}
    budget = _budget(cfg, name, meta, cmap, prices, windows, counters) if r.budget is not None else None
    embedder = _serving_embedder(r.embedder) if r.embedder is not None else None
    policy = Policy(lam=budget.base_lambda if budget is not None else (lam or 0.0), context_windows=windows)
    return RouteRuntime(name=name, router=router, router_name=r.router.type, candidates=cmap, prices=prices,
                        policy=policy, embedder=embedder, fallbacks=list(r.fallbacks), budget=budget)


def _budget(cfg: TurnoutConfig, name: str, meta: dict[str, Any], cmap: dict[str, str], prices: dict[str, Price],
            windows: dict[str, int | None], counters: Any) -> Any:
    """The route's budget calibrated on its artifact's sample at the fleet's prices, its running figures in ``counters``
    (see gateway/budget.py)."""
    from turnout.gateway.budget import CalibrationSample, RouteBudget

    r = cfg.routes[name]
    assert r.budget is not None
    key = f"routes.{name}.budget"
    try:
        sample = CalibrationSample.from_meta(meta)
        if sample is None:
            raise ConfigError(
                "a budget is calibrated on the router artifact's calibration sample, and this route has none"
                + (" (its artifact predates it)" if r.router.artifact else " (no router artifact)"),
                file=cfg.source, key=key,
                fix="train the artifact with 'turnout train' (it stores the sample) and set router.artifact, "
                    "or give 'lambda:' instead of 'budget:'",
            )
        return RouteBudget.calibrate(sample.priced(cmap, prices, windows), target_cost=r.budget.target_cost_per_request,
                                     target_share=r.budget.target_share, counters=counters, route=name)
    except RoutingError as exc:
        raise ConfigError(f"the budget cannot be met: {exc}", file=cfg.source, key=key,
                          fix="raise the target, or add cheaper candidates") from exc


__all__ = ["build_gateway"]
