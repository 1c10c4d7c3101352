"""The embedded default config: a two-model local fleet that needs no file, no key and no data.

``turnout serve`` without ``--config`` uses it. Two llama.cpp servers are
started as children on loopback, one per model (one server per model: a
shared server reloads weights on every switch). SmolLM2-135M-Instruct answers
chat; Gemma 3 270M is a *base* model with no chat template, so it is driven
through ``/v1/completions`` with a prompt template. Route ``auto`` uses the
``prior`` router (quality per model given here, no training data), and each
model is the other's fallback. Prices are nominal, so that cost, budgets and
the cost term of the policy are exercised with non-zero numbers.
"""

from __future__ import annotations

from typing import Any

from turnout.config.loader import parse_config, resolve
from turnout.config.schema import TurnoutConfig

#: completion prompt for the base Gemma model: a plain Q/A frame it continues sensibly
GEMMA_TEMPLATE = "Question: {prompt}\nAnswer:"

DEFAULT: dict[str, Any] = {
    "server": {"host": "127.0.0.1", "port": 8000},
    "backends": {
        "local-smollm2": {
            "protocol": "llamacpp",
            "model": "smollm2",
            "timeouts": {"connect": 5, "first_token": 30, "total": 120},
            "retries": {"attempts": 1},
            "cooldown": {"failures": 3, "seconds": 10},
        },
        "local-gemma": {
            "protocol": "llamacpp",
            "model": "gemma3-270m",
            "completion_template": GEMMA_TEMPLATE,
            "timeouts": {"connect": 5, "first_token": 30, "total": 120},
            "retries": {"attempts": 1},
            "cooldown": {"failures": 3, "seconds": 10},
        },
    },
    "models": {
        "smollm2-135m": {
            "backend": "local-smollm2",
            "price": {"input_per_mtok": 0.05, "output_per_mtok": 0.10},
            "context_window": 2048,
            "fallbacks": ["gemma3-270m"],
        },
        "gemma3-270m": {
            "backend": "local-gemma",
            "price": {"input_per_mtok": 0.10, "output_per_mtok": 0.20},
            "context_window": 2048,
            "fallbacks": ["smollm2-135m"],
        },
    },
    "routes": {
        "auto": {
            # Instruction-tuned SmolLM2 answers chat better than base Gemma; the prior says so.
            "router": {"type": "prior", "params": {"quality": {"smollm2-135m": 0.6, "gemma3-270m": 0.4}}},
            "candidates": ["smollm2-135m", "gemma3-270m"],
            "lambda": 1000.0,
            "fallbacks": ["gemma3-270m", "smollm2-135m"],
        }
    },
}


def default_config() -> TurnoutConfig:
    """The embedded default, parsed and resolved like any file."""
    return resolve(parse_config(DEFAULT, source="<embedded default>"))


__all__ = ["DEFAULT", "GEMMA_TEMPLATE", "default_config"]
