"""Helpers shared by the config's reference checks: did-you-mean fixes, model references, paths."""

from __future__ import annotations

from pathlib import Path

from turnout._suggest import did_you_mean, fix_for
from turnout.config.schema import TurnoutConfig
from turnout.errors import ConfigError

#: the fix of a path that names no file (:func:`existing_file`'s default)
FIX_THE_PATH = "fix the path (relative paths are relative to the config file)"


def model_ref(cfg: TurnoutConfig, name: str, key: str) -> None:
    if name not in cfg.models:
        raise ConfigError(f"unknown model '{name}'", file=cfg.source, key=key, fix=fix_for(name, cfg.models, "models"))


def absolute(path: str, base: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base / p


def existing_file(
    value: str, base: Path, *, file: str | None, key: str, what: str | None = None, fix: str = FIX_THE_PATH
) -> Path:
    """``value`` made absolute (relative to ``base``, the config file's folder); a ConfigError when no file is there.

    The message reads ``"{what} 'value' does not exist (looked at PATH)"`` (``what`` None: without it).
    """
    path = absolute(value, base)
    if not path.is_file():
        named = f"{what} '{value}'" if what else f"'{value}'"
        raise ConfigError(f"{named} does not exist (looked at {path})", file=file, key=key, fix=fix)
    return path


__all__ = ["FIX_THE_PATH", "absolute", "did_you_mean", "existing_file", "fix_for", "model_ref"]
