"""Backends: one module per provider protocol, provider errors translated at this boundary.

The public surface is the :class:`Backend` seam, the protocol registry and the
built-in backends; ``turnout.backends.llamacpp`` runs the embedded local fleet.
"""

from turnout.backends.anthropic import AnthropicBackend
from turnout.backends.base import Backend, Timeouts
from turnout.backends.openai import OpenAIBackend
from turnout.backends.registry import backend_protocols, create_backend, register_backend

__all__ = [
    "AnthropicBackend",
    "Backend",
    "OpenAIBackend",
    "Timeouts",
    "backend_protocols",
    "create_backend",
    "register_backend",
]
