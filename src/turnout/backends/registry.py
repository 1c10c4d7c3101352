"""One registry of backend protocols; built-ins register like plugins.

A protocol name maps to a factory ``(name, **settings) -> Backend``. Built-ins
are listed by ``"module:attribute"`` only and imported on first use, so
importing :mod:`turnout.backends` imports neither ``anthropic``'s module nor
the scripted fake (which lives in :mod:`turnout.testing`, a room the backends
may not import statically). Third parties add theirs with
:func:`register_backend`.

Example::

    backend = create_backend("openai", "vllm", base_url="http://127.0.0.1:8000/v1")
    backend = create_backend("scripted", "fake", script={"default": {"text": "hi"}})
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from turnout.backends.base import Backend
from turnout.errors import ConfigError

Factory = Callable[..., Backend]

#: built-in protocol -> "module:attribute" of its Backend class
BUILTIN_BACKENDS: dict[str, str] = {
    "openai": "turnout.backends.openai:OpenAIBackend",
    "anthropic": "turnout.backends.anthropic:AnthropicBackend",
    "scripted": "turnout.testing.scripted:ScriptedBackend",
}


class BackendRegistry:
    """Maps protocol names to backend factories, resolving built-ins lazily."""

    def __init__(self, lazy: dict[str, str] | None = None) -> None:
        self._factories: dict[str, Factory] = {}
        self._lazy = dict(lazy or {})

    def register(self, protocol: str, factory: Factory) -> None:
        """Make ``factory`` creatable as ``protocol`` (replaces an earlier one of that name)."""
        self._factories[protocol] = factory

    def names(self) -> list[str]:
        return sorted(set(self._factories) | set(self._lazy))

    def get(self, protocol: str) -> Factory:
        if protocol not in self._factories and protocol in self._lazy:
            module, _, attr = self._lazy[protocol].partition(":")
            self._factories[protocol] = getattr(importlib.import_module(module), attr)
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


DEFAULT_REGISTRY = BackendRegistry(BUILTIN_BACKENDS)


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
