"""turnout.config: ``turnout.yaml`` as validated data (parse, then resolve references).

Every mistake raises :class:`turnout.errors.ConfigError` naming the file, the
key path and the fix, before any port is bound or process started.
"""

from turnout.config.default import default_config
from turnout.config.loader import load_config, parse_config, resolve
from turnout.config.schema import (
    BackendSettings,
    KeySettings,
    ModelSettings,
    RouteSettings,
    ServerSettings,
    TurnoutConfig,
)

__all__ = [
    "BackendSettings",
    "KeySettings",
    "ModelSettings",
    "RouteSettings",
    "ServerSettings",
    "TurnoutConfig",
    "default_config",
    "load_config",
    "parse_config",
    "resolve",
]
