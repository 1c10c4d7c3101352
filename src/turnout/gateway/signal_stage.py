"""The decision stage: compute a request's signals, find the decision rule that matches, apply what it says.

It is the gateway's glue to :mod:`turnout.signals`: built by the gateway builder from the config's
``signals:`` and ``decisions:`` (or ``decisions_file:``), it runs in the ``signals`` phase, after any
configured signals stage, before the guards::

    signals   extract the signals some rule reads (inline ones on the loop, learned ones through the shared
              embedding and the offloader) -> ctx.signals
              evaluate the decisions by priority -> ctx.rule, a "rule" reason listing every decision tried
              and why it matched or not
              apply the first match: use.route -> ctx.target; use.candidates -> ctx.restrict;
              use.router / lambda / budget -> ctx.overrides (RouteRuntime.overridden); use.params -> the
              request; plugins -> ctx.plugins (they run in their own phase: guard, cache, response)

A dry run (``/v1/route``) does exactly the same, so its explanation is the one a real request gets.

**Hot reload.** With ``decisions_file:``, the file is watched (its modification time and size, every
``poll_s``; a task started with the gateway) and re-read on SIGHUP (``turnout serve`` installs the handler,
which calls :meth:`DecisionStage.reload_soon`). A new file is parsed, checked against the signals, routes
and models, analysed for conflicts and its plugins built — on the offload pool — and only then swapped in
whole; a file that fails any of it leaves the rules in force and logs why. Without a started gateway (a
test, a script), the file is checked on the request path at most once per ``poll_s``.

Example::

    stage = build_decision_stage(cfg, embeddings=svc, offloader=off, routes=routes, models=targets)
    stages = Stages([*configured, stage])
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turnout.errors import ConfigError, TurnoutError
from turnout.gateway.context import RequestContext
from turnout.gateway.embeddings import EmbeddingService
from turnout.gateway.offload import Offloader
from turnout.gateway.routes import RouteOverrides
from turnout.gateway.stages import PHASES, REQUEST_PHASES, Outcome, build_stage
from turnout.signals.base import BuildContext
from turnout.signals.decisions import DecisionSet, DecisionSpec, file_stamp, parse_decisions, read_decisions_file
from turnout.signals.registry import SignalSet, build_signals

log = logging.getLogger(__name__)

#: seconds between two looks at the decisions file
POLL_S = 1.0


@dataclass
class CompiledDecisions:
    """A :class:`DecisionSet` with what its matches apply, built once: plugin stages and route overrides."""

    decisions: DecisionSet
    plugins: dict[str, list[Any]] = field(default_factory=dict)
    overrides: dict[str, RouteOverrides] = field(default_factory=dict)
    source: str = "<memory>"


@dataclass
class ReloadOutcome:
    """What the last reload of the decisions file did."""

    ok: bool
    message: str
    at: float = field(default_factory=time.time)


class DecisionCompiler:
    """Turns parsed decisions into :class:`CompiledDecisions` (the same way at start-up and on every reload)."""

    def __init__(
        self,
        signals: SignalSet,
        *,
        routes: Collection[str],
        models: Collection[str],
        conflicts: str,
        context: Mapping[str, Any] | None = None,
        base_dir: Path | None = None,
    ) -> None:
        self.signals = signals
        self.routes = list(routes)
        self.models = list(models)
        self.conflicts = conflicts
        #: the shared parts plugin stages may ask for (the builder's stage_context: embeddings, offloader, config)
        self.context = dict(context or {})
        self.base_dir = base_dir

    def compile(self, specs: Sequence[DecisionSpec], *, source: str, base_dir: Path | None = None) -> CompiledDecisions:
        """Bind, check and analyse ``specs``; build their plugins and routers. Raises ConfigError on any mistake."""
        ds = DecisionSet(specs, self.signals, routes=self.routes, models=self.models, conflicts=self.conflicts, source=source)
        out = CompiledDecisions(ds, source=source)
        for d in specs:
            if d.plugins:
                out.plugins[d.name] = [self._plugin(p.type, p.params, p.name, p.where, source) for p in d.plugins]
            u = d.use
            if u.router is not None or u.lam is not None or u.max_cost is not None:
                router = None
                if u.router is not None:
                    router = self._router(
                        u.router.type,
                        u.router.artifact,
                        u.router.params,
                        f"{d.where}.use.router",
                        source,
                        base_dir or self.base_dir,
                    )
                out.overrides[d.name] = RouteOverrides(
                    router=router, router_name=u.router.type if u.router else None, lam=u.lam, max_cost=u.max_cost
                )
        return out

    def _plugin(self, type_name: str, params: Mapping[str, Any], name: str | None, where: str, source: str) -> Any:
        try:
            stage = build_stage(type_name, params, name=name or type_name, where=where, context=self.context)
        except ConfigError as exc:
            if exc.file is not None:
                raise
            raise ConfigError(getattr(exc, "message", None) or str(exc), file=source, key=exc.key, fix=exc.fix) from exc
        phase = getattr(stage, "phase", None)
        if phase not in PHASES or phase == "signals":
            raise ConfigError(
                f"plugin {type_name!r} runs in phase {phase!r}, which a decision cannot add to",
                file=source,
                key=f"{where}.type",
                fix="a decision's plugins run in the guard, cache or "
                "response phase (the signals phase is under way when the decision matches)",
            )
        hooks = ("on_request",) if phase in REQUEST_PHASES else ("on_response", "stream_filter")
        if not any(callable(getattr(stage, h, None)) for h in hooks):
            raise ConfigError(
                f"plugin {type_name!r} implements no hook of its phase ({phase})",
                file=source,
                key=f"{where}.type",
                fix=f"a {phase} stage defines {' or '.join(hooks)}",
            )
        return stage

    @staticmethod
    def _router(
        type_name: str, artifact: str | None, params: Mapping[str, Any], where: str, source: str, base_dir: Path | None
    ) -> Any:
        from turnout.gateway.builder import _build_router

        try:
            path = None
            if artifact is not None:
                path = Path(artifact).expanduser()
                if not path.is_absolute() and base_dir is not None:
                    path = base_dir / path
            router, _ = _build_router(type_name, path, params)
        except TurnoutError as exc:
            raise ConfigError(
                f"the router cannot be built: {exc}",
                file=source,
                key=where,
                fix=getattr(exc, "fix", None) or "see docs/routers.md for its parameters",
            ) from exc
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"invalid router parameters {dict(params)}: {exc}",
                file=source,
                key=f"{where}.params",
                fix="see docs/routers.md for this router's parameters",
            ) from exc
        return router


class DecisionStage:
    """The ``signals``-phase stage that computes signals and applies the matched decision (module docstring)."""

    phase = "signals"

    def __init__(
        self,
        signals: SignalSet,
        compiled: CompiledDecisions,
        compiler: DecisionCompiler,
        *,
        routes: Collection[str],
        file: Path | None = None,
        poll_s: float = POLL_S,
        offloader: Offloader | None = None,
        name: str = "decisions",
    ) -> None:
        self.name = name
        self.signals = signals
        #: the rules in force; a reload replaces the whole object (a request keeps the one it started with)
        self.compiled = compiled
        self.compiler = compiler
        self.route_names = frozenset(routes)
        self.file = file
        self.poll_s = poll_s
        self._offloader = offloader
        self._stamp = file_stamp(file) if file is not None else None
        self._checked = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._reloading: asyncio.Task[bool] | None = None
        self._lock = asyncio.Lock()
        #: the last reload's outcome (None: never reloaded); reloads that swapped new rules in
        self.last_reload: ReloadOutcome | None = None
        self.reloads = 0

    # -- per request --------------------------------------------------------------------------------
    async def on_request(self, ctx: RequestContext) -> Outcome | None:
        if self.file is not None and self._task is None:
            self._poll_lazily()
        c = self.compiled
        found = await self.signals.extract(ctx, c.decisions.plan)
        for k, v in found.values.items():
            ctx.signals[k] = sorted(v) if isinstance(v, frozenset) else v
        t0 = time.perf_counter()
        ev = c.decisions.evaluate(found.values, ctx.target)
        ev.elapsed_ms = (time.perf_counter() - t0) * 1000.0
        data: dict[str, Any] = {
            "stage": self.name,
            "matched": ev.matched.name if ev.matched else None,
            "evaluated": ev.trace,
            "signals_ms": round(found.elapsed_ms, 3),
            "rules_ms": round(ev.elapsed_ms, 3),
        }
        if found.failed:
            data["failed_signals"] = found.failed
        ctx.note("rule", ev.summary(), **data)
        if ev.matched is not None:
            self._apply(ctx, ev.matched, c)
        return None

    def _apply(self, ctx: RequestContext, d: DecisionSpec, c: CompiledDecisions) -> None:
        from turnout.gateway.plugins import apply_params

        u = d.use
        ctx.rule = d.name
        if u.route is not None and u.route != ctx.target:
            ctx.note(
                "redirect",
                f"decision rule {d.name!r} sent the request from {ctx.target!r} to {u.route!r}",
                stage=self.name,
                rule=d.name,
                to=u.route,
            )
            ctx.target = u.route
        if u.candidates is not None:
            ctx.restrict = frozenset(u.candidates) if ctx.restrict is None else ctx.restrict & frozenset(u.candidates)
            ctx.note(
                "redirect",
                f"decision rule {d.name!r} restricted the request to {', '.join(sorted(ctx.restrict)) or 'no model'}",
                stage=self.name,
                rule=d.name,
                models=sorted(ctx.restrict),
            )
        ov = c.overrides.get(d.name)
        if ov is not None:
            what = ", ".join(
                f"{k} {v}"
                for k, v in (("router", ov.router_name), ("lambda", ov.lam), ("max_cost_per_request", ov.max_cost))
                if v is not None
            )
            if ctx.target in self.route_names:
                ctx.overrides = ov
                ctx.note(
                    "rule",
                    f"decision rule {d.name!r} sets {what} for route {ctx.target!r}",
                    stage=self.name,
                    rule=d.name,
                    router=ov.router_name,
                    lam=ov.lam,
                    max_cost=ov.max_cost,
                )
            else:
                ctx.note(
                    "rule",
                    f"decision rule {d.name!r} sets {what}, which only a route uses: {ctx.target!r} is "
                    "a model asked for by name, so they are ignored",
                    stage=self.name,
                    rule=d.name,
                )
        if u.params:
            apply_params(ctx, u.params, override=True)
            ctx.note(
                "rule",
                f"decision rule {d.name!r} set {', '.join(sorted(u.params))}",
                stage=self.name,
                rule=d.name,
                params=dict(u.params),
            )
        plugins = c.plugins.get(d.name)
        if plugins:
            ctx.plugins.extend(plugins)

    # -- hot reload ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start watching the decisions file (called by :meth:`Gateway.start`)."""
        self._loop = asyncio.get_running_loop()
        if self.file is not None and self._task is None:
            self._task = self._loop.create_task(self._watch(), name="turnout-decisions-watch")

    async def aclose(self) -> None:
        """Stop watching (called when the gateway closes)."""
        for task in (self._task, self._reloading):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):  # shutting down: nothing to report
                    await task
        self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            if self.file is not None and file_stamp(self.file) != self._stamp:
                await self.reload()

    def _poll_lazily(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.poll_s:
            return
        self._checked = now
        if self.file is not None and file_stamp(self.file) != self._stamp and self._reloading is None:
            self._spawn_reload()  # this request keeps the rules in force; the next ones get the new file's

    def _spawn_reload(self) -> None:
        if self._reloading is not None and not self._reloading.done():
            return
        self._reloading = asyncio.get_running_loop().create_task(self.reload(), name="turnout-decisions-reload")
        self._reloading.add_done_callback(self._reload_done)

    def _reload_done(self, task: asyncio.Task[bool]) -> None:
        if self._reloading is task:
            self._reloading = None

    def reload_soon(self) -> None:
        """Reload the decisions file as soon as the event loop can (safe from a signal handler or another thread)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._spawn_reload)
        else:
            self._stamp = None  # no loop known yet: the next look at the file reloads it

    async def reload(self) -> bool:
        """Re-read, check and swap in the decisions file; False (old rules kept, reason logged) when it fails."""
        if self.file is None:
            return False
        async with self._lock:
            stamp = file_stamp(self.file)
            file = self.file
            try:
                if self._offloader is not None:
                    compiled = await self._offloader.run(self._load, file)
                else:
                    compiled = self._load(file)
            except ConfigError as exc:
                self._stamp = stamp  # not retried until the file changes again
                self.last_reload = ReloadOutcome(False, str(exc))
                log.error("decisions file %s was not loaded; the previous rules stay in force: %s", file, exc)
                return False
            self.compiled = compiled
            self._stamp = stamp
            self.reloads += 1
            n = len(compiled.decisions.decisions)
            warned = len(compiled.decisions.conflicts)
            msg = f"decisions reloaded from {file}: {n} decision(s)" + (f", {warned} warning(s)" if warned else "")
            self.last_reload = ReloadOutcome(True, msg)
            log.info("%s", msg)
            return True

    def _load(self, file: Path) -> CompiledDecisions:
        specs = read_decisions_file(file)
        return self.compiler.compile(specs, source=str(file), base_dir=file.parent)

    def describe(self) -> dict[str, Any]:
        """Signals, decisions in evaluation order, conflicts found, the file and its last reload (JSON)."""
        ds = self.compiled.decisions
        return {
            "signals": self.signals.describe(),
            "decisions": ds.describe(),
            "computed": self.compiled.decisions.plan.names,
            "conflicts": [
                {"kind": c.kind, "decisions": list(c.decisions), "message": c.message, "certain": c.certain} for c in ds.conflicts
            ],
            "file": str(self.file) if self.file else None,
            "last_reload": None if self.last_reload is None else vars(self.last_reload),
        }


def build_decision_stage(
    cfg: Any,
    *,
    embeddings: EmbeddingService,
    offloader: Offloader,
    routes: Collection[str],
    models: Collection[str],
    context: Mapping[str, Any] | None = None,
    poll_s: float = POLL_S,
) -> DecisionStage:
    """The decision stage of a resolved config: its signals built, its decisions compiled (ConfigError on any
    mistake, naming the file and the key), the file watched when there is one. ``context``: what plugin stages
    may ask for (the builder's ``stage_context``)."""
    source = cfg.source
    base_dir = Path(source).resolve().parent if Path(source).is_file() else None
    build = BuildContext(source=source, base_dir=base_dir, embedder=embeddings.ensure, offload=offloader.run)
    signals = build_signals(cfg.signals, build=build)
    compiler = DecisionCompiler(
        signals,
        routes=routes,
        models=models,
        conflicts=cfg.decision_conflicts,
        context=context if context is not None else {"embeddings": embeddings},
        base_dir=base_dir,
    )
    file = Path(cfg.decisions_file) if cfg.decisions_file else None
    if file is not None:
        compiled = compiler.compile(read_decisions_file(file), source=str(file), base_dir=file.parent)
    else:
        compiled = compiler.compile(parse_decisions(list(cfg.decisions), source=source), source=source)
    return DecisionStage(signals, compiled, compiler, routes=routes, file=file, poll_s=poll_s, offloader=offloader)


__all__ = ["POLL_S", "CompiledDecisions", "DecisionCompiler", "DecisionStage", "ReloadOutcome", "build_decision_stage"]
