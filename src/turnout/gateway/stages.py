"""Pipeline stages: small objects that look at a request (and its answer) and may change what happens.

The gateway runs a request through a fixed order of phases::

    authenticate -> signals -> guards -> cache -> decide -> execute the plan -> response -> account and log

``authenticate``, ``decide``, ``execute`` and ``account`` are the gateway's own; the four others are made
of stages built from config (built-in ones, or any class named by an entry point or a dotted path).
A stage declares its ``phase`` and implements the hooks it needs; the gateway sorts stages into per-hook
lists once, at build time, so a hook nobody implements costs nothing per request:

* :class:`RequestStage` ``on_request(ctx)`` (phases ``signals``, ``guard``, ``cache``): returns ``None`` to
  go on, or an outcome — :class:`Block` (refuse with a typed error), :class:`Redirect` (another route, or a
  restricted model set) or :class:`Answer` (answer without calling a model, as a cache hit does);
* :class:`ResponseStage` ``on_response(ctx, response)`` (phase ``response``): transform (or refuse, by
  raising) a whole answer, and ``stream_filter(ctx)`` to transform a streamed one piece by piece;
* :class:`CompletionHook` ``on_complete(ctx, response)``: told of every answer the client received (a
  cache stores it there). Its failures are logged, never the client's.

Within a phase, stages run in config order, and the first outcome ends the phase (and, for a block or an
answer, the request's way to the models). A ``signals`` stage normally only writes ``ctx.signals``.

Adding a stage from outside the package (YAML)::

    stages:
      - type: mypkg.guards:ProfanityGuard      # or an entry point name (group "turnout.stages")
        params: {words: [...]}

A stage class is called with its ``params`` as keyword arguments (plus ``name``, when it accepts one).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from turnout.errors import ConfigError, TurnoutError
from turnout.plugins import STAGES, plugin_entry_points
from turnout.types import ChatResponse

if TYPE_CHECKING:
    from turnout.gateway.context import RequestContext

#: the configurable phases, in the order they run
REQUEST_PHASES = ("signals", "guard", "cache")
RESPONSE_PHASE = "response"
PHASES = (*REQUEST_PHASES, RESPONSE_PHASE)
#: entry-point group third-party stages register under
ENTRY_POINT_GROUP = STAGES


# ---------------------------------------------------------------------------------------------------- outcomes
@dataclass(frozen=True, slots=True)
class Block:
    """Refuse the request with ``error`` (a TurnoutError: its class picks the HTTP status)."""

    error: TurnoutError


@dataclass(frozen=True, slots=True)
class Redirect:
    """Serve the request by another ``route`` (or model), and/or only by ``models``; ``reason`` is explained."""

    route: str | None = None
    models: tuple[str, ...] | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Answer:
    """Answer without calling a model: ``response`` is what the client gets (streamed like a live answer).

    ``source`` names what answered (``cache``, a guard's canned reply); ``model`` is what the
    ``x-turnout-model`` header and the log show; ``headers`` go on the response.
    """

    response: ChatResponse
    source: str
    model: str = "-"
    reason: str = ""
    headers: Mapping[str, str] | None = None


Outcome = Block | Redirect | Answer


# --------------------------------------------------------------------------------------------------- protocols
class StreamFilter(Protocol):
    """Transforms a streamed answer's text piece by piece; the pieces it returns, joined, are the answer."""

    def feed(self, text: str) -> str:
        """The text that may go out now, given the next piece (it may hold some back)."""
        ...

    def flush(self) -> str:
        """Whatever was held back, at the end of the answer."""
        ...


@runtime_checkable
class RequestStage(Protocol):
    """A ``signals``, ``guard`` or ``cache`` stage."""

    name: str
    phase: str

    async def on_request(self, ctx: RequestContext) -> Outcome | None: ...


@runtime_checkable
class ResponseStage(Protocol):
    """A ``response`` stage: sees (and may transform or refuse) every answer before the client does."""

    name: str
    phase: str

    def on_response(self, ctx: RequestContext, response: ChatResponse) -> ChatResponse: ...

    def stream_filter(self, ctx: RequestContext) -> StreamFilter | None: ...


@runtime_checkable
class CompletionHook(Protocol):
    """Told of every answer a client received (``response`` is the whole answer, streamed ones assembled)."""

    name: str

    async def on_complete(self, ctx: RequestContext, response: ChatResponse) -> None: ...


# ------------------------------------------------------------------------------------------------ the lists
class Stages:
    """The configured stages, sorted once into per-hook lists (an empty list costs one falsy check)."""

    def __init__(self, stages: Iterable[Any] = ()) -> None:
        self.all: list[Any] = list(stages)
        self.request: dict[str, list[RequestStage]] = {p: [] for p in REQUEST_PHASES}
        self.response: list[ResponseStage] = []
        self.filters: list[ResponseStage] = []
        self.complete: list[CompletionHook] = []
        for st in self.all:
            phase = getattr(st, "phase", None)
            name = getattr(st, "name", type(st).__name__)
            if phase not in PHASES:
                raise ConfigError(
                    f"stage {name!r} has phase {phase!r}", key="stages", fix=f"a stage's phase is one of: {', '.join(PHASES)}"
                )
            hooks = 0
            if phase in REQUEST_PHASES and callable(getattr(st, "on_request", None)):
                self.request[phase].append(st)
                hooks += 1
            if phase == RESPONSE_PHASE and callable(getattr(st, "on_response", None)):
                self.response.append(st)
                hooks += 1
            if phase == RESPONSE_PHASE and callable(getattr(st, "stream_filter", None)):
                self.filters.append(st)
                hooks += 1
            if callable(getattr(st, "on_complete", None)):
                self.complete.append(st)
                hooks += 1
            if not hooks:
                raise ConfigError(
                    f"stage {name!r} ({type(st).__name__}, phase {phase}) implements no hook of its phase",
                    key="stages",
                    fix="a request stage defines on_request(ctx); a response stage "
                    "on_response(ctx, response) and/or stream_filter(ctx)",
                )

    def __bool__(self) -> bool:
        return bool(self.all)

    def names(self) -> list[str]:
        return [getattr(s, "name", type(s).__name__) for s in self.all]


# ------------------------------------------------------------------------------------------------- registry
#: built-in stage types, "module:attribute", imported on first use (like the backends' registry)
BUILTIN_STAGES: dict[str, str] = {
    "domain_guard": "turnout.gateway.guard_stages:DomainGuardStage",
    "jailbreak": "turnout.gateway.guard_stages:JailbreakStage",
    "pii": "turnout.gateway.pii_stage:PiiStage",
    "cache": "turnout.gateway.cache_stage:CacheStage",
    "system_prompt": "turnout.gateway.plugins:SystemPromptStage",
    "set_params": "turnout.gateway.plugins:SetParamsStage",
    "add_headers": "turnout.gateway.plugins:AddHeadersStage",
}


def register_stage(name: str, target: str | Callable[..., Any]) -> None:
    """Make ``name`` usable as a stage ``type`` (``"module:Class"`` or the class/factory itself)."""
    _REGISTERED[name] = target


_REGISTERED: dict[str, str | Callable[..., Any]] = {}


def stage_types() -> list[str]:
    """Every stage type name known now: built-ins, registered ones and entry points."""
    names = set(BUILTIN_STAGES) | set(_REGISTERED)
    names.update(plugin_entry_points(ENTRY_POINT_GROUP))
    return sorted(names)


def _import(path: str, where: str) -> Callable[..., Any]:
    module, sep, attr = path.partition(":")
    if not sep:  # "pkg.mod.Class"
        module, _, attr = path.rpartition(".")
    if not module or not attr:
        raise ConfigError(
            f"stage type {path!r} is not a known stage name nor a dotted path",
            key=where,
            fix=f"use one of: {', '.join(stage_types()) or '(none registered)'}, or 'package.module:Class'",
        )
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"cannot import stage {path!r}: {exc}", key=where, fix="check the module path and that its package is installed"
        ) from exc
    if not callable(obj):
        raise ConfigError(f"stage {path!r} is not a class or factory", key=where, fix="point at a class")
    factory: Callable[..., Any] = obj
    return factory


def resolve_stage_type(type_name: str, where: str = "stages") -> Callable[..., Any]:
    """The factory of a stage type: a registered/built-in name, an entry point, or a dotted path."""
    target = _REGISTERED.get(type_name) or BUILTIN_STAGES.get(type_name)
    if target is None:
        ep = plugin_entry_points(ENTRY_POINT_GROUP).get(type_name)
        if ep is not None:
            try:
                loaded: Callable[..., Any] = ep.load()
            except Exception as exc:  # a third party's import failure: say which entry point
                raise ConfigError(
                    f"the entry point for stage {type_name!r} ({ep.value}) failed to load: {exc}",
                    key=where,
                    fix="fix or reinstall the package that provides it",
                ) from exc
            return loaded
        target = type_name
    return _import(target, where) if isinstance(target, str) else target


def build_stage(
    type_name: str,
    params: Mapping[str, Any],
    *,
    name: str | None = None,
    where: str = "stages",
    context: Mapping[str, Any] | None = None,
) -> Any:
    """Build one stage from its ``type`` and ``params`` (the YAML), failing with the key and the fix.

    ``context`` offers shared parts (``gateway_config``, ``embedders``...) to factories that declare a
    parameter of that name.
    """
    factory = resolve_stage_type(type_name, where)
    kwargs = dict(params)
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without a signature
        sig = None
    if sig is not None:
        accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        if name is not None and ("name" in sig.parameters or accepts_any) and "name" not in kwargs:
            kwargs["name"] = name
        for k, v in (context or {}).items():
            if k in sig.parameters and k not in kwargs:
                kwargs[k] = v
        accepted = [p for p in sig.parameters if p not in ("self",)]
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown and not accepts_any:
            raise ConfigError(
                f"stage {type_name!r} has no parameter {', '.join(unknown)}",
                key=f"{where}.params",
                fix=f"its parameters are: {', '.join(accepted) or '(none)'}",
            )
    try:
        stage = factory(**kwargs)
    except ConfigError as exc:
        # a stage names the parameter at fault relative to itself ("params.threshold"): put it under this stage
        key = f"{where}.{exc.key}" if exc.key else where
        raise ConfigError(exc.message, file=exc.file, key=key, fix=exc.fix or "check the stage's params") from exc
    except TurnoutError as exc:
        raise ConfigError(str(exc), key=where, fix=getattr(exc, "fix", None) or "check the stage's params") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"stage {type_name!r}: {exc}", key=f"{where}.params", fix="check the stage's parameters and their types"
        ) from exc
    if name is not None and not getattr(stage, "name", None):
        with contextlib.suppress(AttributeError):
            stage.name = name
    try:
        Stages([stage])  # its phase and hooks checked here, where the error can name the stage's own key
    except ConfigError as exc:
        raise ConfigError(exc.message, key=where, fix=exc.fix) from exc
    return stage


__all__ = [
    "BUILTIN_STAGES",
    "ENTRY_POINT_GROUP",
    "PHASES",
    "REQUEST_PHASES",
    "RESPONSE_PHASE",
    "Answer",
    "Block",
    "CompletionHook",
    "Outcome",
    "Redirect",
    "RequestStage",
    "ResponseStage",
    "Stages",
    "StreamFilter",
    "build_stage",
    "register_stage",
    "resolve_stage_type",
    "stage_types",
]
