"""One registry of backend protocols; built-ins register like plugins.

A protocol name maps to a factory ``(name, **settings) -> Backend``. Built-ins
are listed by ``"module:attribute"`` only and imported on first use, so
importing :mod:`turnout.backends` imports neither ``anthropic``'s module nor
anything else it does not need. Other packages declare theirs as entry points
in the ``turnout.backends`` group, read the first time a name is looked up::

    [project.entry-points."turnout.backends"]
    mine = "my_package.backend:MyBackend"

turnout's own scripted fake is declared that way too, in turnout's
``pyproject.toml`` (it lives in :mod:`turnout.testing`, a room the backends may
not import, so this module never names it). Code registers a
factory directly with :func:`register_backend`. When a name is declared twice,
a registered factory wins over a built-in, a built-in over an entry point.

Example::

    backend = create_backend("openai", "vllm", base_url="http://127.0.0.1:8000/v1")
    backend = create_backend("scripted", "fake", script={"default": {"text": "hi"}})
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from importlib.metadata import EntryPoint
from typing import Any

from turnout.backends.base import Backend
from turnout.errors import ConfigError
from turnout.plugins import BACKENDS, plugin_entry_points

Factory = Callable[..., Backend]

#: built-in protocol -> "module:attribute" of its Backend class
BUILTIN_BACKENDS: dict[str, str] = {
    "openai": "turnout.backends.openai:OpenAIBackend",
    "anthropic": "turnout.backends.anthropic:AnthropicBackend",
}


class BackendRegistry:
    """Maps protocol names to backend factories, resolving built-ins and entry points lazily.

    ``lazy`` maps names to ``"module:attribute"`` targets imported on first
    use; ``entry_point_group`` (None: none) adds the installed entry points of
    that group (:func:`turnout.plugins.plugin_entry_points`), when a name is first looked up.
    """

    def __init__(self, lazy: dict[str, str] | None = None, *, entry_point_group: str | None = None) -> None:
        self._factories: dict[str, Factory] = {}
        self._lazy = dict(lazy or {})
        self._group = entry_point_group
        self._discovered = False

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        if self._group is not None:
            for name, ep in plugin_entry_points(self._group).items():
                self._lazy.setdefault(name, ep.value)  # a built-in keeps its name

    def register(self, protocol: str, factory: Factory) -> None:
        """Make ``factory`` creatable as ``protocol`` (replaces an earlier one of that name)."""
        self._factories[protocol] = factory

    def names(self) -> list[str]:
        """Every protocol name this registry can create, sorted."""
        self._discover()
        return sorted(set(self._factories) | set(self._lazy))

    def get(self, protocol: str) -> Factory:
        """The factory of ``protocol``, imported on first use; ConfigError names the choices or the import failure."""
        if protocol not in self._factories:
            self._discover()
            if protocol in self._lazy:
                target = self._lazy[protocol]
                try:
                    self._factories[protocol] = EntryPoint(protocol, target, self._group or "").load()
                except (ImportError, AttributeError) as e:
                    raise ConfigError(
                        f"backend protocol '{protocol}' ({target}) cannot be loaded: {e}",
                        key="protocol",
                        fix="install the package that provides it",
                    ) from e
        try:
            return self._factories[protocol]
        except KeyError:
            raise ConfigError(
                f"unknown backend protocol '{protocol}'",
                key="protocol",
                fix=f"use one of: {', '.join(self.names())}",
            ) from None

    def create(self, protocol: str, name: str, settings: dict[str, Any]) -> Backend:
        """Build a backend; unknown settings fail naming the accepted ones."""
        factory = self.get(protocol)
        sig = inspect.signature(factory)
        accepted = [p for p in sig.parameters if p not in ("self", "name")]
        takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        unknown = sorted(set(settings) - set(accepted))
        if unknown and not takes_any:
            raise ConfigError(
                f"backend '{name}' (protocol {protocol}) has no setting(s) {', '.join(unknown)}",
                key=f"backends.{name}",
                fix=f"accepted settings: {', '.join(accepted)}",
            )
        try:
            return factory(name, **settings)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"backend '{name}' (protocol {protocol}): {e}", key=f"backends.{name}") from e


DEFAULT_REGISTRY = BackendRegistry(BUILTIN_BACKENDS, entry_point_group=BACKENDS)


def register_backend(protocol: str, factory: Factory) -> None:
    """Register a backend factory under ``protocol`` in the default registry."""
    DEFAULT_REGISTRY.register(protocol, factory)


def create_backend(protocol: str, name: str, **settings: Any) -> Backend:
    """A backend for ``protocol`` named ``name``, e.g. ``create_backend("openai", "x", base_url=...)``."""
    return DEFAULT_REGISTRY.create(protocol, name, settings)


def backend_protocols() -> list[str]:
    """Protocol names accepted by :func:`create_backend`."""
    return DEFAULT_REGISTRY.names()


__all__ = ["BUILTIN_BACKENDS", "BackendRegistry", "backend_protocols", "create_backend", "register_backend"]
