"""Load ``turnout.yaml`` in two phases: parse the shape, then resolve every reference.

Phase 1 (:func:`parse_config`) turns YAML into :class:`TurnoutConfig`; pydantic
rejects unknown keys and wrong types. Phase 2 (:func:`resolve`) checks what
pydantic cannot see: that routes name existing models, models name existing
backends, keys name existing routes or models, environment variables are set,
router artifacts exist and a Redis URL carries no password. Both phases raise only
:class:`turnout.errors.ConfigError`, naming the file, the key path
(``routes.auto.fallbacks[1]``) and the fix, with a did-you-mean for typos.
Nothing here binds a port or starts a process: the server calls this first.

Example::

    cfg = load_config("turnout.yaml")          # raises ConfigError on any mistake
    cfg.routes["auto"].candidate_map
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ValidationError

from turnout._suggest import did_you_mean
from turnout._suggest import fix_for as _fix_for
from turnout._yamlio import read_yaml
from turnout.backends.registry import backend_protocols
from turnout.config._refs import absolute as _abs
from turnout.config._refs import model_ref as _model_ref
from turnout.config.features import resolve_plan, resolve_signals
from turnout.config.schema import TurnoutConfig
from turnout.embed.registry import default_registry
from turnout.errors import ConfigError
from turnout.routing.registry import router_names

#: names a ``protocol: llamacpp`` backend may give as ``model`` instead of a GGUF path
BUILTIN_LOCAL_MODELS = ("smollm2", "gemma3-270m")
#: what ``state.redis_url`` may start with (redis-py's URL schemes)
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")

# Keys whose value would be a secret written in clear. Checked before pydantic so
# the message says *why* and how to fix it, rather than "extra field".
_LITERAL_SECRETS = {"api_key": "api_key_env", "key": "key_env", "token": "api_key_env", "password": "api_key_env"}


def key_path(loc: Iterable[Any]) -> str:
    """``('routes', 'auto', 'fallbacks', 1)`` -> ``routes.auto.fallbacks[1]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _is_gguf(path: Path) -> bool:
    """True when ``path`` starts with GGUF's magic bytes (caught here, a wrong file fails before any child starts)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"GGUF"
    except OSError:
        return False


def load_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> TurnoutConfig:
    """Read, parse and resolve the YAML file at ``path``; raises :class:`ConfigError`."""
    p = Path(path)
    source = str(p)
    if not p.is_file():
        raise ConfigError(
            "config file not found", file=source, fix="pass an existing file to --config, or omit it to use the embedded default"
        )
    data = read_yaml(p, fix="fix the YAML syntax")
    cfg = parse_config(data, source=source)
    return resolve(cfg, env=env, base_dir=p.resolve().parent)


def parse_config(data: Any, *, source: str = "<memory>") -> TurnoutConfig:
    """Phase 1: check the shape of ``data`` (a YAML document) and build the models."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"the top level must be a mapping, got {type(data).__name__}",
            file=source,
            fix="start the file with 'backends:', 'models:' and 'routes:' sections",
        )
    _reject_literal_secrets(data, (), source)
    try:
        cfg = TurnoutConfig.model_validate(data)
    except ValidationError as exc:
        raise _translate(exc, source) from None
    cfg._source = source
    return cfg


def _reject_literal_secrets(node: Any, loc: tuple[Any, ...], source: str) -> None:
    # Only backends.* and keys[*] may carry credentials; look exactly there.
    if isinstance(node, dict):
        for k, v in node.items():
            here = (*loc, k)
            in_backend = len(loc) == 2 and loc[0] == "backends"
            in_key = len(loc) == 2 and loc[0] == "keys"
            if (in_backend or in_key) and k in _LITERAL_SECRETS and isinstance(v, str):
                env_key = "key_env" if in_key else _LITERAL_SECRETS[k]
                raise ConfigError(
                    "secrets may not be written in the config file",
                    file=source,
                    key=key_path(here),
                    fix=f"put the secret in an environment variable and write '{env_key}: MY_VAR' instead"
                    + (" (or give its SHA-256 as key_sha256)" if in_key else ""),
                )
            _reject_literal_secrets(v, here, source)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _reject_literal_secrets(v, (*loc, i), source)


def _translate(exc: ValidationError, source: str) -> ConfigError:
    errors = exc.errors()
    first = errors[0]
    # Union branches show up in loc as type tags ('list[str]'); they mean nothing to a user.
    loc = tuple(p for p in first["loc"] if isinstance(p, int) or "[" not in p)
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    kind = first["type"]
    if kind == "extra_forbidden":
        parent, unknown = loc[:-1], str(loc[-1])
        allowed = _fields_at(parent)
        return ConfigError(
            f"unknown key '{unknown}'{more}", file=source, key=key_path(loc), fix=_fix_for(unknown, allowed, "allowed keys")
        )
    if kind == "missing":
        return ConfigError(f"required key is missing{more}", file=source, key=key_path(loc), fix=f"add '{loc[-1]}:'")
    if kind == "literal_error":
        expected = first.get("ctx", {}).get("expected", "")
        got = str(first.get("input"))
        choices = [c.strip(" '") for c in expected.replace(" or ", ",").split(",") if c.strip()]
        return ConfigError(f"'{got}' is not allowed{more}", file=source, key=key_path(loc), fix=_fix_for(got, choices, "choices"))
    msg = first["msg"].removeprefix("Value error, ")
    return ConfigError(f"{msg}{more}", file=source, key=key_path(loc) or None, fix=_generic_fix(kind, msg))


def _generic_fix(kind: str, msg: str) -> str:
    if kind.endswith("_type") or kind.endswith("_parsing"):  # the message already says which type: do not repeat it
        return "give a value of that type (see docs/config.md for this key)"
    return "see docs/config.md for this key"


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """The allowed keys of the model found by following ``loc`` from the top."""
    tp: Any = TurnoutConfig
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = next((f for n, f in tp.model_fields.items() if n == part or f.alias == part), None)
            if field is None:
                return []
            tp = field.annotation
        else:
            args = typing.get_args(tp)
            tp = args[-1] if args else Any
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [f.alias or n for n, f in tp.model_fields.items()]
    return []


def _unwrap(tp: Any) -> Any:
    # X | None -> X; the first model branch of a union.
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is not type(None):
                return arg
    return tp


def resolve(cfg: TurnoutConfig, *, env: Mapping[str, str] | None = None, base_dir: Path | None = None) -> TurnoutConfig:
    """Phase 2: check every cross-reference; returns the config with artifact paths made absolute."""
    env = os.environ if env is None else env
    base = base_dir or Path.cwd()
    src = cfg.source

    def err(message: str, key: str, fix: str) -> ConfigError:
        return ConfigError(message, file=src, key=key, fix=fix)

    if not cfg.models:
        raise err("no models are defined", "models", "add at least one model under 'models:'")

    protocols = [*backend_protocols(), "llamacpp"]
    for name, b in cfg.backends.items():
        where = f"backends.{name}"
        if b.protocol not in protocols:
            raise err(
                f"unknown backend protocol '{b.protocol}'",
                f"{where}.protocol",
                _fix_for(b.protocol, protocols, "protocols (plugins register theirs)"),
            )
        if b.api_key_env is not None and b.api_key_env not in env:
            raise err(
                f"environment variable '{b.api_key_env}' is not set",
                f"{where}.api_key_env",
                f"export {b.api_key_env}=... before starting turnout",
            )
        if b.protocol == "llamacpp":
            if b.base_url is not None:
                raise err(
                    "a llamacpp backend is started by turnout and has no base_url",
                    f"{where}.base_url",
                    "remove base_url, or use protocol: openai for a server you run yourself",
                )
            if b.model is None:
                raise err(
                    "a llamacpp backend needs a model",
                    f"{where}.model",
                    f"give one of {', '.join(BUILTIN_LOCAL_MODELS)} or a .gguf path",
                )
            if b.model not in BUILTIN_LOCAL_MODELS and not _abs(b.model, base).is_file():
                guess = did_you_mean(b.model, BUILTIN_LOCAL_MODELS)
                raise err(
                    f"'{b.model}' is neither a built-in model nor an existing GGUF file",
                    f"{where}.model",
                    f"did you mean '{guess}'?"
                    if guess
                    else f"use {' or '.join(BUILTIN_LOCAL_MODELS)}, or the path of a .gguf file",
                )
            if b.model not in BUILTIN_LOCAL_MODELS and not _is_gguf(_abs(b.model, base)):
                raise err(
                    f"'{b.model}' is not a GGUF model file (it does not start with the GGUF magic bytes)",
                    f"{where}.model",
                    "point at a .gguf file (llama.cpp's model format), or a built-in model",
                )
        else:
            if b.model is not None or b.n_ctx is not None or b.n_threads is not None:
                raise err(
                    "model, n_ctx and n_threads only apply to protocol: llamacpp", where, "remove them, or set protocol: llamacpp"
                )
            if b.protocol == "openai" and not b.base_url and not _every_endpoint_has_url(cfg, name):
                raise err(
                    "an openai backend needs a base_url",
                    f"{where}.base_url",
                    "add e.g. base_url: https://api.openai.com/v1 (or give each endpoint using it a base_url)",
                )
            if b.protocol == "anthropic" and b.api_key_env is None:
                raise err("an anthropic backend needs an API key", f"{where}.api_key_env", "add api_key_env: ANTHROPIC_API_KEY")

    for name, m in cfg.models.items():
        if name in cfg.routes:
            raise err(
                f"'{name}' is both a route and a model", f"models.{name}", "rename one of them: clients pick either by that name"
            )
        if m.backend is not None and m.backend not in cfg.backends:
            raise err(f"unknown backend '{m.backend}'", f"models.{name}.backend", _fix_for(m.backend, cfg.backends, "backends"))
        seen_endpoints: dict[tuple[str, str | None], int] = {}
        for i, ep in enumerate(m.endpoints or []):
            where = f"models.{name}.endpoints[{i}]"
            if ep.backend not in cfg.backends:
                raise err(f"unknown backend '{ep.backend}'", f"{where}.backend", _fix_for(ep.backend, cfg.backends, "backends"))
            if ep.base_url is not None and cfg.backends[ep.backend].protocol == "llamacpp":
                raise err(
                    "a llamacpp backend is started by turnout; its endpoint has no base_url",
                    f"{where}.base_url",
                    "remove base_url (each llamacpp backend is one replica: list several backends)",
                )
            if ep.base_url is not None and not ep.base_url.startswith(("http://", "https://")):
                raise err(f"'{ep.base_url}' is not an http(s) URL", f"{where}.base_url", "write e.g. http://10.0.0.2:8000/v1")
            pair = (ep.backend, ep.base_url)
            if pair in seen_endpoints:
                raise err(
                    f"this endpoint repeats endpoints[{seen_endpoints[pair]}] (same backend and base_url)",
                    where,
                    "list each replica once; give replicas different base_urls",
                )
            seen_endpoints[pair] = i

        for i, fb in enumerate(m.fallbacks):
            _model_ref(cfg, fb, f"models.{name}.fallbacks[{i}]")

    routes = {}
    for name, r in cfg.routes.items():
        where = f"routes.{name}"
        if isinstance(r.candidates, dict):
            for k, v in r.candidates.items():
                _model_ref(cfg, v, f"{where}.candidates.{k}")
        else:
            for i, c in enumerate(r.candidates):
                _model_ref(cfg, c, f"{where}.candidates[{i}]")
        for i, fb in enumerate(r.fallbacks):
            _model_ref(cfg, fb, f"{where}.fallbacks[{i}]")
        if r.budget is not None and r.budget.target_share is not None:
            for share_model in r.budget.target_share:
                if share_model not in r.candidate_map.values():
                    raise err(
                        f"'{share_model}' is not a candidate of this route",
                        f"{where}.budget.target_share.{share_model}",
                        _fix_for(share_model, r.candidate_map.values(), "candidates"),
                    )
        if r.embedder is not None:
            embedders = default_registry().names()
            if r.embedder not in embedders:
                raise err(
                    f"unknown embedder '{r.embedder}'",
                    f"{where}.embedder",
                    _fix_for(r.embedder, embedders, "embedders (plugins register theirs)"),
                )
        if r.plan is not None:
            r = resolve_plan(cfg, name, r, base)
        router = r.router
        known = router_names()
        if router.type not in known:
            raise err(
                f"unknown router type '{router.type}'", f"{where}.router.type", _fix_for(router.type, known, "router types")
            )
        if router.artifact is not None:
            art = _abs(router.artifact, base)
            if not art.exists():
                raise err(
                    f"router artifact '{router.artifact}' does not exist (looked at {art})",
                    f"{where}.router.artifact",
                    f"train one with 'turnout train ... --out {router.artifact}', or fix the path "
                    "(relative paths are relative to the config file)",
                )
            router = router.model_copy(update={"artifact": str(art)})
            r = r.model_copy(update={"router": router})
        routes[name] = r

    names = [k.name for k in cfg.keys or []]
    for i, key in enumerate(cfg.keys or []):
        where = f"keys[{i}]"
        if names.count(key.name) > 1:
            raise err(
                f"key name '{key.name}' is used twice", f"{where}.name", "give every key a unique name (it labels logs and spend)"
            )
        if key.key_env is not None and key.key_env not in env:
            raise err(
                f"environment variable '{key.key_env}' is not set",
                f"{where}.key_env",
                f"export {key.key_env}=... before starting turnout",
            )
        for j, a in enumerate(key.allowed or []):
            if a not in cfg.routes and a not in cfg.models:
                raise err(
                    f"'{a}' is neither a route nor a model",
                    f"{where}.allowed[{j}]",
                    _fix_for(a, [*cfg.routes, *cfg.models], "routes and models"),
                )

    st = cfg.state
    if st.redis_url_env is not None and st.redis_url_env not in env:
        raise err(
            f"environment variable '{st.redis_url_env}' is not set",
            "state.redis_url_env",
            f"export {st.redis_url_env}=redis://HOST:6379/0 before starting turnout",
        )
    if st.redis_url is not None:
        if urlsplit(st.redis_url).password:  # checked first: no message may repeat the password
            raise err(
                "secrets may not be written in the config file (this URL carries a password)",
                "state.redis_url",
                "put the URL in an environment variable and write 'redis_url_env: MY_VAR' instead",
            )
        if not st.redis_url.startswith(_REDIS_SCHEMES):
            raise err(
                f"'{st.redis_url}' is not a Redis URL", "state.redis_url", "write redis://HOST:6379/0 (or rediss://, unix://)"
            )

    for i, stage in enumerate(cfg.stages):
        if not stage.type.strip():
            raise err(
                "a stage needs a type",
                f"stages[{i}].type",
                "name a registered stage type, an entry point, or 'package.module:Class'",
            )

    if cfg.state.path is not None:
        parent = Path(cfg.state.path).expanduser().resolve().parent
        if not parent.is_dir():
            raise err(
                f"the folder of the state file ({parent}) does not exist",
                "state.path",
                "create the folder, or leave state.path out to keep the state in the request log's file",
            )

    if cfg.server.request_log is not None:
        parent = Path(cfg.server.request_log).expanduser().resolve().parent
        if not parent.is_dir():
            raise err(
                f"the folder of the request log ({parent}) does not exist",
                "server.request_log",
                "create the folder, or set request_log: null to turn the log off",
            )

    out = cfg.model_copy(update={"routes": routes, **resolve_signals(cfg, routes, base)})
    out._source = src
    return out


def _every_endpoint_has_url(cfg: TurnoutConfig, backend: str) -> bool:
    """Whether every endpoint that uses ``backend`` gives its own base_url (and at least one does)."""
    uses = [ep for m in cfg.models.values() for ep in m.endpoint_list if ep.backend == backend]
    return bool(uses) and all(ep.base_url for ep in uses)


__all__ = ["BUILTIN_LOCAL_MODELS", "did_you_mean", "key_path", "load_config", "parse_config", "resolve"]
