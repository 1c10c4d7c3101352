"""What the built-in guard, PII and cache stages share: checked parameters, their scope, canned answers.

A built-in stage is a plain class built from keyword parameters (``stages: [{type, params}]`` in the YAML,
or a decision's ``plugins:``, both through :func:`~turnout.gateway.stages.build_stage`). Every parameter is
checked when the stage is built, and a mistake is a :class:`~turnout.errors.ConfigError` whose key is the
parameter relative to the stage (``params.action``); ``build_stage`` puts it under the stage's own path
(``stages[2].params.action``) and the builder adds the config file, so the message names the file, the key
and the fix before any port is bound.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from turnout.errors import ConfigError
from turnout.gateway.context import RequestContext
from turnout.gateway.stages import Answer
from turnout.types import ChatResponse, Usage

if TYPE_CHECKING:
    from turnout.embed.base import Embedder
    from turnout.gateway.embeddings import EmbeddingService

#: the response header listing what flagged a request without refusing it (comma-separated stage names)
FLAGS_HEADER = "x-turnout-flags"


def bad(param: str, message: str, fix: str) -> ConfigError:
    """The error for one parameter of a stage (its key is relative: ``params.<param>``)."""
    return ConfigError(message, key=f"params.{param}", fix=fix)


def choice(param: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` when it is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise bad(param, f"{value!r} is not one of {', '.join(choices)}", f"set {param} to one of: {', '.join(choices)}")
    return value


def number(param: str, value: Any, *, lo: float | None = None, hi: float | None = None) -> float:
    """``value`` as a float within ``[lo, hi]`` (a YAML ``true`` is no number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(param, f"{value!r} is not a number", f"give {param} a number" + _range(lo, hi))
    v = float(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi) or math.isnan(v):
        raise bad(param, f"{v:g} is out of range", f"give {param} a number" + _range(lo, hi))
    return v


def _range(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" within [{lo:g}, {hi:g}]"
    if lo is not None:
        return f" >= {lo:g}"
    return f" <= {hi:g}" if hi is not None else ""


def text(param: str, value: Any, *, empty: bool = False) -> str:
    """``value`` when it is a string (non-blank unless ``empty``)."""
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise bad(param, f"{value!r} is not a non-empty string", f"give {param} as a string")
    return value


def names(param: str, value: Any) -> list[str]:
    """``value`` as a non-empty list of distinct, non-blank strings (a single string is a list of one)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise bad(param, f"{value!r} is not a list of names", f"give {param} as a list, e.g. [a, b]")
    return list(dict.fromkeys(value))


def target(param: str, value: Any, cfg: Any | None) -> str:
    """A route or model name, checked against the gateway's config when there is one."""
    name = text(param, value)
    if cfg is not None and name not in cfg.routes and name not in cfg.models:
        known = ", ".join([*cfg.routes, *cfg.models])
        raise bad(param, f"{name!r} is neither a route nor a model of this config", f"name one of: {known}")
    return name


def routes(param: str, value: Any, cfg: Any | None) -> frozenset[str] | None:
    """The routes/models a stage applies to (None: every request), each checked like :func:`target`."""
    if value is None:
        return None
    return frozenset(target(f"{param}[{i}]", v, cfg) for i, v in enumerate(names(param, value)))


def existing_file(param: str, value: Any, cfg: Any | None, hint: str) -> Path:
    """A path that exists; a relative one is read from the config file's folder (like router artifacts)."""
    raw = Path(text(param, value)).expanduser()
    source = getattr(cfg, "source", None)
    if not raw.is_absolute() and isinstance(source, str) and Path(source).is_file():
        raw = Path(source).resolve().parent / raw
    if not raw.is_file():
        raise bad(
            param,
            f"{value!r} does not exist (looked at {raw})",
            f"{hint}, or fix the path (relative paths are read from the config file's folder)",
        )
    return raw


def embedder(name: str, embeddings: EmbeddingService | None) -> Embedder:
    """The serving embedder ``name`` (the gateway's own instance when built inside one; built lazily either way)."""
    from turnout.gateway.embeddings import serving_embedder

    try:
        return embeddings.ensure(name) if embeddings is not None else serving_embedder(name)
    except KeyError as exc:
        raise bad("embedder", f"unknown embedder {name!r}", str(exc).strip("'\"")) from exc


def check_known(param: str, given: Collection[str], known: Collection[str], what: str) -> None:
    """Every name in ``given`` is one of ``known``."""
    unknown = [g for g in given if g not in known]
    if unknown:
        raise bad(param, f"unknown {what} {', '.join(map(repr, unknown))}", f"use some of: {', '.join(sorted(known))}")


def applies(scope: frozenset[str] | None, ctx: RequestContext) -> bool:
    """Whether a stage scoped to ``scope`` (routes or models; None: all) sees this request."""
    return scope is None or ctx.target in scope


def flag(ctx: RequestContext, what: str) -> None:
    """Add ``what`` to the request's :data:`FLAGS_HEADER` (a stage noticed something and let it through)."""
    have = ctx.response_headers.get(FLAGS_HEADER)
    if have is None:
        ctx.response_headers[FLAGS_HEADER] = what
    elif what not in have.split(","):
        ctx.response_headers[FLAGS_HEADER] = f"{have},{what}"


def canned_answer(ctx: RequestContext, reply: str, *, source: str, reason: str) -> Answer:
    """A fixed reply as a whole ``chat.completion`` (streamed like any answer when the client asked to stream).

    It costs nothing and no model wrote it: the usage is zero and ``x-turnout-model`` says ``-``.
    """
    body = {
        "id": f"chatcmpl-{ctx.request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": ctx.request.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }
    return Answer(ChatResponse(body, Usage(0, 0)), source=source, reason=reason)


__all__ = [
    "FLAGS_HEADER",
    "applies",
    "bad",
    "canned_answer",
    "check_known",
    "choice",
    "embedder",
    "existing_file",
    "flag",
    "names",
    "number",
    "routes",
    "target",
    "text",
]
