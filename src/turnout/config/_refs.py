"""Helpers shared by the config's reference checks: did-you-mean fixes, model references, paths."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path

from turnout.config.schema import TurnoutConfig
from turnout.errors import ConfigError


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The closest of ``choices`` to ``word``, or None when nothing is close."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return match[0] if match else None


def fix_for(word: str, choices: Iterable[str], what: str) -> str:
    choices = sorted(choices)
    guess = did_you_mean(word, choices)
    listing = ", ".join(choices) if choices else "none defined"
    if guess:
        return f"did you mean '{guess}'? ({what}: {listing})"
    return f"use one of the {what}: {listing}"


def model_ref(cfg: TurnoutConfig, name: str, key: str) -> None:
    if name not in cfg.models:
        raise ConfigError(f"unknown model '{name}'", file=cfg.source, key=key, fix=fix_for(name, cfg.models, "models"))


def absolute(path: str, base: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base / p


__all__ = ["absolute", "did_you_mean", "fix_for", "model_ref"]
