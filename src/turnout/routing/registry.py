"""One registry of routers, keyed by name; built-ins register like plugins.

Built-in routers are listed here by module path only, so that importing
:mod:`turnout.routing` never imports their modules (and never imports torch
for the ``random`` router). A router module registers its class with
:func:`register_router` when it is first imported; :func:`create_router`
imports it on demand.

Example::

    from turnout.routing import create_router, register_router, Router

    @register_router
    class MyRouter(Router):
        name = "mine"
        ...

    router = create_router("knn", k=40)
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, TypeVar

from turnout.errors import RoutingError
from turnout.plugins import ROUTERS, plugin_entry_points
from turnout.routing.base import Router

#: built-in router name -> module that defines (and registers) it
BUILTIN_MODULES: dict[str, str] = {
    "random": "turnout.routing.baselines",
    "best-single": "turnout.routing.baselines",
    "cheapest": "turnout.routing.baselines",
    "prior": "turnout.routing.prior",
    "knn": "turnout.routing.knn",
    "mlp": "turnout.routing.mlp",
    "mf": "turnout.routing.mf",
    "bt": "turnout.routing.bt",
    "graph": "turnout.routing.graph",
    "profile": "turnout.routing.profile",
    "ensemble": "turnout.routing.ensemble",
    "bandit": "turnout.routing.bandit",
}

R = TypeVar("R", bound=type[Router])


class RouterRegistry:
    """Maps router names to classes, importing built-in modules lazily.

    turnout keeps one default registry (:data:`DEFAULT_REGISTRY`); tests or
    applications that want isolation can build their own.
    """

    def __init__(self, lazy_modules: dict[str, str] | None = None, *, entry_points: bool = False) -> None:
        self._classes: dict[str, type[Router]] = {}
        self._lazy = dict(lazy_modules or {})
        self._entry_points = entry_points  # also offer the routers installed under the "turnout.routers" group

    def register(self, cls: R) -> R:
        """Class decorator: make ``cls`` creatable under ``cls.name``."""
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise RoutingError(f"{cls.__qualname__} needs a class attribute 'name' (a non-empty str) to be registered")
        existing = self._classes.get(name)
        if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
            raise RoutingError(f"router name '{name}' is already taken by {existing.__module__}.{existing.__qualname__}")
        self._classes[name] = cls
        return cls

    def names(self) -> list[str]:
        """Every known router name (built-in, registered and installed plugins), sorted; imports nothing."""
        return sorted(set(self._lazy) | set(self._classes) | set(self._plugins()))

    def _plugins(self) -> dict[str, Any]:
        return plugin_entry_points(ROUTERS) if self._entry_points else {}

    def get(self, name: str) -> type[Router]:
        """The class registered under ``name`` (importing its built-in module, or its plugin, if needed)."""
        if name not in self._classes and name in self._lazy:
            importlib.import_module(self._lazy[name])
        if name not in self._classes and name in self._plugins():
            try:
                loaded = self._plugins()[name].load()
            except Exception as exc:  # a third party's import failure: name the plugin
                raise RoutingError(f"the plugin router '{name}' cannot be loaded: {exc}") from exc
            if isinstance(loaded, type) and issubclass(loaded, Router) and name not in self._classes:
                self._classes[name] = loaded  # a class; a module registers its own on import
        try:
            return self._classes[name]
        except KeyError:
            raise RoutingError(f"unknown router '{name}'; choose one of: {', '.join(self.names())}") from None

    def create(self, name: str, params: dict[str, Any]) -> Router:
        """Build an unfitted router; unknown parameters fail with the accepted ones listed."""
        cls = self.get(name)
        accepted = [
            p.name
            for p in inspect.signature(cls.__init__).parameters.values()
            if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            raise RoutingError(
                f"router '{name}' has no parameter(s) {', '.join(unknown)}; accepted: {', '.join(accepted) or '(none)'}"
            )
        try:
            return cls(**params)
        except (TypeError, ValueError) as exc:
            raise RoutingError(f"router '{name}': invalid parameters {params}: {exc}") from exc


DEFAULT_REGISTRY = RouterRegistry(BUILTIN_MODULES, entry_points=True)


def register_router(cls: R) -> R:
    """Class decorator registering a :class:`Router` subclass in the default registry."""
    return DEFAULT_REGISTRY.register(cls)


def create_router(name: str, **params: Any) -> Router:
    """An unfitted router by name, e.g. ``create_router("knn", k=40)``."""
    return DEFAULT_REGISTRY.create(name, params)


def router_names() -> list[str]:
    """Names accepted by :func:`create_router`."""
    return DEFAULT_REGISTRY.names()


def missing_packages(name: str) -> dict[str, str]:
    """The optional packages router ``name`` needs that are not installed, each with its extra ({} = none)."""
    import importlib.util

    def installed(pkg: str) -> bool:
        try:
            return importlib.util.find_spec(pkg) is not None
        except (ImportError, ValueError):
            return False

    return {pkg: extra for pkg, extra in router_class(name).requires.items() if not installed(pkg)}


def available(names: list[str] | tuple[str, ...]) -> tuple[list[str], dict[str, dict[str, str]]]:
    """``names`` split into the routers that can run here and, for the others, their missing packages."""
    missing = {n: missing_packages(n) for n in names}
    return [n for n in names if not missing[n]], {n: m for n, m in missing.items() if m}


def router_class(name: str) -> type[Router]:
    """The class behind a router name (used by :mod:`turnout.routing.artifact` to reload)."""
    return DEFAULT_REGISTRY.get(name)
