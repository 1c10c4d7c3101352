"""Reading a YAML file the way turnout's files are read: safely, refusing repeated keys, errors as ConfigError."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from turnout.errors import ConfigError


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""


def _mapping_without_repeats(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key '{key}' appears twice in one mapping (first at line {seen[key].line + 1}); "
                "the second would silently replace the first",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_repeats)


def read_yaml(path: str | Path, *, fix: str, what: str = "the file") -> Any:
    """The YAML document in ``path``; a :class:`ConfigError` naming the file when it cannot be read or parsed.

    ``fix`` is the fix a syntax error (or a repeated key) states, with its line and column in the message;
    ``what`` names the file in a read error ("cannot read the file: ...").
    """
    p = Path(path)
    try:
        return yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"not valid YAML{where}: {getattr(exc, 'problem', None) or exc}", file=str(p), fix=fix) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what}: {exc}", file=str(p), fix="check the path and its permissions") from None


__all__ = ["read_yaml"]
