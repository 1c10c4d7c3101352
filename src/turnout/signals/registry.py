"""Signal types by name, building signals from config, and computing a request's signals.

Built-in types register like plugins: :data:`BUILTIN_SIGNALS` maps each ``type:`` name to
``"module:Class"``, imported on first use; a third party adds its own with :func:`register_signal` or an
entry point in the ``turnout.signals`` group. A signal class is called with ``name=`` and its config
``params`` as keyword arguments (plus ``build=``, a :class:`~turnout.signals.base.BuildContext`, when it
declares it); an unknown parameter is a :class:`ConfigError` naming the key and the accepted ones.

A :class:`SignalSet` holds the configured signals of one gateway. :meth:`SignalSet.plan` says which
must be computed for the outputs some rule reads (plus the ``always`` ones and the inputs of derived
ones); an unused signal costs nothing. :meth:`SignalSet.extract` computes them for one request: inline
ones first, on the loop; the awaited ones concurrently; derived ones last, in dependency order. A signal
that fails is logged and its outputs are missing: a broken signal degrades a rule, never a request.

Example::

    sigs = SignalSet({"kw": build_signal("kw", "keywords", {"sets": {"code": ["python"]}})})
    plan = sigs.plan(["kw.code"])
    found = await sigs.extract(StaticView.of("python help"), plan)
    found.values["kw.code"]          # True
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from turnout._suggest import fix_for as _fix_for
from turnout.errors import ConfigError
from turnout.signals.base import BuildContext, DerivedSignal, Output, RequestView, Signal, Value

log = logging.getLogger(__name__)

#: entry-point group third-party signal types register under
ENTRY_POINT_GROUP = "turnout.signals"
#: what a signal may be named: outputs are ``name`` and ``name.suffix``, so no dots
NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")

#: built-in signal types, "module:Class", imported on first use
BUILTIN_SIGNALS: dict[str, str] = {
    "keywords": "turnout.signals.heuristic:KeywordSignal",
    "regex": "turnout.signals.heuristic:RegexSignal",
    "tokens": "turnout.signals.heuristic:TokensSignal",
    "conversation": "turnout.signals.heuristic:ConversationSignal",
    "request": "turnout.signals.heuristic:RequestSignal",
    "key": "turnout.signals.heuristic:KeySignal",
    "metadata": "turnout.signals.heuristic:MetadataSignal",
    "structure": "turnout.signals.structure:StructureSignal",
    "language": "turnout.signals.language:LanguageSignal",
    "pii": "turnout.signals.learned:PiiSignal",
    "domain": "turnout.signals.learned:DomainSignal",
    "jailbreak": "turnout.signals.learned:JailbreakSignal",
    "similarity": "turnout.signals.learned:SimilaritySignal",
    "complexity": "turnout.signals.learned:ComplexitySignal",
    "score": "turnout.signals.derived:ScoreSignal",
}
_REGISTERED: dict[str, str | type[Signal]] = {}


def register_signal(type_name: str, target: str | type[Signal]) -> None:
    """Make ``type_name`` usable as a signal ``type`` (``"module:Class"`` or the class itself)."""
    _REGISTERED[type_name] = target


def signal_types() -> list[str]:
    """Every signal type known now: built-ins, registered ones and entry points (imports nothing)."""
    names = set(BUILTIN_SIGNALS) | set(_REGISTERED)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def signal_class(type_name: str, *, source: str = "<memory>", where: str = "signals") -> type[Signal]:
    """The class of a signal type; a :class:`ConfigError` (with a did-you-mean) when it is unknown."""
    target: str | type[Signal] | None = _REGISTERED.get(type_name) or BUILTIN_SIGNALS.get(type_name)
    if target is None:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == type_name:
                try:
                    loaded: type[Signal] = ep.load()
                except Exception as exc:  # a third party's import failure: say which entry point
                    raise ConfigError(
                        f"the entry point for signal type {type_name!r} ({ep.value}) failed to load: {exc}",
                        file=source,
                        key=f"{where}.type",
                        fix="fix or reinstall the package that provides it",
                    ) from exc
                return loaded
        raise ConfigError(
            f"unknown signal type {type_name!r}",
            file=source,
            key=f"{where}.type",
            fix=_fix_for(type_name, signal_types(), "signal types"),
        )
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    cls: type[Signal] = getattr(importlib.import_module(module), attr)
    return cls


def check_signal_name(name: str, *, source: str | None, where: str) -> None:
    """A :class:`ConfigError` at ``where`` when ``name`` is not a valid signal name (:data:`NAME_RE`)."""
    if not NAME_RE.fullmatch(name):
        raise ConfigError(
            f"{name!r} is not a valid signal name",
            file=source,
            key=where,
            fix="use lower-case letters, digits and '_' (outputs are named name.suffix)",
        )


def build_signal(
    name: str, type_name: str, params: Mapping[str, Any], *, build: BuildContext | None = None, where: str | None = None
) -> Signal:
    """Build one signal from its config entry (``name``, ``type``, ``params``); errors name the key and the fix."""
    build = build or BuildContext()
    where = where or f"signals.{name}"
    check_signal_name(name, source=build.source, where=where)
    cls = signal_class(type_name, source=build.source, where=where)
    kwargs: dict[str, Any] = dict(params)
    sig = inspect.signature(cls)
    accepted = [p for p in sig.parameters if p not in ("name", "build")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        raise ConfigError(
            f"signal type {type_name!r} has no parameter {', '.join(map(repr, unknown))}",
            file=build.source,
            key=f"{where}.params.{unknown[0]}",
            fix=_fix_for(unknown[0], accepted, "parameters"),
        )
    if "build" in sig.parameters:
        kwargs["build"] = build
    try:
        signal = cls(name=name, **kwargs)
    except ConfigError as exc:
        if exc.file is not None:
            raise
        key = f"{where}.{exc.key}" if exc.key else where
        raise ConfigError(exc.message, file=build.source, key=key, fix=exc.fix) from exc
    except TypeError as exc:  # a missing required parameter, or one of the wrong shape
        raise ConfigError(
            f"signal type {type_name!r}: {exc}",
            file=build.source,
            key=f"{where}.params",
            fix=f"its parameters are: {', '.join(accepted) or '(none)'}",
        ) from exc
    if not signal.outputs:
        raise ConfigError(
            f"signal {name!r} ({type_name}) declares no output",
            file=build.source,
            key=where,
            fix="a signal class fills self.outputs in its constructor",
        )
    return signal


def param_error(message: str, param: str, fix: str) -> ConfigError:
    """A signal constructor's error about one of its parameters (:func:`build_signal` adds the file and key)."""
    return ConfigError(message, key=f"params.{param}", fix=fix)


# ------------------------------------------------------------------------------------------- computing
@dataclass(frozen=True)
class ExtractionPlan:
    """Which signals one request computes, in order: inline, then awaited (concurrently), then derived."""

    inline: tuple[Signal, ...] = ()
    awaited: tuple[Signal, ...] = ()
    derived: tuple[DerivedSignal, ...] = ()

    @property
    def names(self) -> list[str]:
        return [s.name for s in (*self.inline, *self.awaited, *self.derived)]


@dataclass
class Extraction:
    """One request's signal values (by output name), the signals that failed and why, and the time taken."""

    values: dict[str, Value] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    elapsed_ms: float = 0.0


class SignalSet:
    """The configured signals of one gateway, their outputs, and per-request extraction."""

    def __init__(self, signals: Mapping[str, Signal], *, always: Iterable[str] = (), source: str = "<memory>") -> None:
        self.signals = dict(signals)
        self.source = source
        self.always = frozenset(always)
        #: full output name -> its type and what is known of its values
        self.outputs: dict[str, Output] = {}
        self._owner: dict[str, str] = {}
        for sig in self.signals.values():
            for out, spec in sig.outputs.items():
                self.outputs[out] = spec
                self._owner[out] = sig.name
        self._failures: dict[str, int] = {}
        for sig in self.signals.values():
            for inp in sig.inputs:
                if inp not in self.outputs:
                    raise ConfigError(
                        f"signal {sig.name!r} reads {inp!r}, which no signal defines",
                        file=source,
                        key=f"signals.{sig.name}.params",
                        fix=_fix_for(inp, self.outputs, "signal outputs"),
                    )
            check = getattr(sig, "check_inputs", None)
            if callable(check):
                try:
                    check(self.outputs)
                except ConfigError as exc:
                    raise ConfigError(exc.message, file=source, key=f"signals.{sig.name}.{exc.key}", fix=exc.fix) from exc
        self._order = self._derived_order()

    def owner(self, output: str) -> str | None:
        """The signal that computes ``output`` (None: no such output)."""
        return self._owner.get(output)

    def _derived_order(self) -> list[str]:
        """Derived signals in dependency order; a cycle is a ConfigError naming it."""
        order: list[str] = []
        state: dict[str, int] = {}  # 1: visiting, 2: done

        def visit(name: str, path: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = " -> ".join([*path[path.index(name) :], name])
                raise ConfigError(
                    f"derived signals read each other in a cycle: {cycle}",
                    file=self.source,
                    key=f"signals.{name}.params",
                    fix="break the cycle: a derived signal may only read signals computed before it",
                )
            state[name] = 1
            for inp in self.signals[name].inputs:
                visit(self._owner[inp], [*path, name])
            state[name] = 2
            if isinstance(self.signals[name], DerivedSignal):
                order.append(name)

        for n in self.signals:
            visit(n, [])
        return order

    def plan(self, outputs: Iterable[str]) -> ExtractionPlan:
        """What computing ``outputs`` (and the ``always`` signals) takes; unknown outputs are ignored."""
        wanted: set[str] = set()
        todo = [*self.always, *(self._owner[o] for o in outputs if o in self._owner)]
        while todo:
            name = todo.pop()
            if name in wanted:
                continue
            wanted.add(name)
            todo.extend(self._owner[i] for i in self.signals[name].inputs)
        inline = tuple(s for n, s in self.signals.items() if n in wanted and not isinstance(s, DerivedSignal) and s.inline)
        awaited = tuple(s for n, s in self.signals.items() if n in wanted and not isinstance(s, DerivedSignal) and not s.inline)
        derived = tuple(self.signals[n] for n in self._order if n in wanted)
        return ExtractionPlan(inline, awaited, derived)  # type: ignore[arg-type]

    async def extract(self, view: RequestView, plan: ExtractionPlan) -> Extraction:
        """Compute the planned signals for one request (a failing signal's outputs are missing, and named)."""
        t0 = time.perf_counter()
        found = Extraction()
        for sig in plan.inline:
            try:
                found.values.update(sig.extract(view))
            except Exception as exc:  # noqa: BLE001 - a signal's bug or bad input: logged, its outputs missing
                self._failed(sig.name, exc, found)
        if len(plan.awaited) == 1:
            sig = plan.awaited[0]
            try:
                found.values.update(await sig.extract_async(view))
            except Exception as exc:  # noqa: BLE001 - as above
                self._failed(sig.name, exc, found)
        elif plan.awaited:
            results = await asyncio.gather(*(s.extract_async(view) for s in plan.awaited), return_exceptions=True)
            for sig, res in zip(plan.awaited, results):
                if isinstance(res, Exception):
                    self._failed(sig.name, res, found)
                elif isinstance(res, BaseException):  # cancellation of the request: not a signal's failure
                    raise res
                else:
                    found.values.update(res)
        for d in plan.derived:
            try:
                found.values.update(d.derive(found.values))
            except Exception as exc:  # noqa: BLE001 - as above
                self._failed(d.name, exc, found)
        found.elapsed_ms = (time.perf_counter() - t0) * 1000.0
        return found

    def _failed(self, name: str, exc: BaseException, found: Extraction) -> None:
        found.failed[name] = f"{type(exc).__name__}: {exc}"
        n = self._failures[name] = self._failures.get(name, 0) + 1
        if n == 1 or n % 1000 == 0:  # the first failure with its traceback, then a count now and then
            log.warning(
                "signal %s failed (%d time(s) so far); its outputs are missing from the request's rules: %s",
                name,
                n,
                found.failed[name],
                exc_info=exc if n == 1 else None,
            )

    def describe(self) -> dict[str, Any]:
        """Every signal with its type and outputs (JSON)."""
        return {n: {**s.describe(), "always": n in self.always} for n, s in self.signals.items()}


def build_signals(settings: Mapping[str, Any], *, build: BuildContext | None = None) -> SignalSet:
    """A :class:`SignalSet` from the config's ``signals:`` mapping (entries with ``type``, ``always``, ``params``)."""
    build = build or BuildContext()
    signals = {name: build_signal(name, s.type, s.params, build=build) for name, s in settings.items()}
    return SignalSet(signals, always=[n for n, s in settings.items() if s.always], source=build.source)


__all__ = [
    "BUILTIN_SIGNALS",
    "ENTRY_POINT_GROUP",
    "Extraction",
    "ExtractionPlan",
    "SignalSet",
    "build_signal",
    "build_signals",
    "check_signal_name",
    "param_error",
    "register_signal",
    "signal_class",
    "signal_types",
]
