"""Config errors name the file, the key path and the fix; a good config resolves."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from turnout.config import default_config, load_config
from turnout.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

BASE: dict[str, Any] = {
    "backends": {"openai": {"protocol": "openai", "base_url": "https://api.openai.com/v1", "api_key_env": "OPENAI_API_KEY"}},
    "models": {
        "gpt-4o-mini": {"backend": "openai", "price": {"input_per_mtok": 0.15, "output_per_mtok": 0.6}},
        "gpt-4o": {"backend": "openai", "price": {"input_per_mtok": 2.5, "output_per_mtok": 10}},
    },
    "routes": {
        "auto": {
            "router": {"type": "prior", "params": {"quality": {"gpt-4o-mini": 0.7, "gpt-4o": 0.9}}},
            "candidates": ["gpt-4o-mini", "gpt-4o"],
            "fallbacks": ["gpt-4o-mini", "gpt-4o"],
        }
    },
    "keys": [{"name": "team-a", "key_env": "TEAM_A_KEY", "budget_usd": 5, "allowed": ["auto"]}],
}
ENV = {"OPENAI_API_KEY": "sk-test", "TEAM_A_KEY": "tk-test"}


def write(tmp_path: Path, data: Any) -> Path:
    p = tmp_path / "turnout.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def error_of(tmp_path: Path, mutate: Any, env: dict[str, str] | None = None) -> ConfigError:
    data = copy.deepcopy(BASE)
    mutate(data)
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data), env=ENV if env is None else env)
    return info.value


def test_valid_config_resolves(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE), env=ENV)
    assert cfg.routes["auto"].candidate_map == {"gpt-4o-mini": "gpt-4o-mini", "gpt-4o": "gpt-4o"}
    assert cfg.source.endswith("turnout.yaml") and cfg.keys is not None and cfg.keys[0].budget_usd == 5


@pytest.mark.parametrize(
    ("mutate", "key", "fix"),
    [
        (lambda d: d["routes"]["auto"].update(fallbaks=[]), "routes.auto.fallbaks", "did you mean 'fallbacks'"),
        (
            lambda d: d["routes"]["auto"].update(fallbacks=["gpt-4o-mini", "gpt4o"]),
            "routes.auto.fallbacks[1]",
            "did you mean 'gpt-4o'",
        ),
        (lambda d: d["models"]["gpt-4o"].update(backend="opnai"), "models.gpt-4o.backend", "did you mean 'openai'"),
        (lambda d: d["backends"]["openai"].update(protocol="openia"), "backends.openai.protocol", "did you mean 'openai'"),
        (lambda d: d["keys"][0].update(allowed=["autoo"]), "keys[0].allowed[0]", "did you mean 'auto'"),
        (lambda d: d["routes"]["auto"]["router"].update(type="knnn"), "routes.auto.router.type", "did you mean 'knn'"),
        (lambda d: d["routes"]["auto"]["router"].update(artifact="missing.npz"), "routes.auto.router.artifact", "turnout train"),
        (lambda d: d["backends"]["openai"].update(api_key="sk-live-123"), "backends.openai.api_key", "api_key_env"),
        (lambda d: d["keys"][0].update(key="raw-secret"), "keys[0].key", "key_env"),
        (
            lambda d: d["backends"]["openai"]["timeouts"] if False else d["backends"]["openai"].update(timeouts={"conect": 1}),
            "backends.openai.timeouts.conect",
            "did you mean 'connect'",
        ),
        (
            lambda d: d["models"]["gpt-4o"].update(context_window="big"),
            "models.gpt-4o.context_window",
            "give a value of that type",
        ),
        (
            lambda d: d["routes"]["auto"].update({"lambda": 1.0, "budget": {"target_cost_per_request": 0.01}}),
            "routes.auto",
            "docs/config.md",
        ),
    ],
)
def test_mistakes_name_file_key_and_fix(tmp_path: Path, mutate: Any, key: str, fix: str) -> None:
    err = error_of(tmp_path, mutate)
    assert err.file is not None and err.file.endswith("turnout.yaml")
    assert err.key == key and err.fix is not None and fix in err.fix
    assert key in str(err) and "turnout.yaml" in str(err)


def test_missing_env_var_is_named(tmp_path: Path) -> None:
    err = error_of(tmp_path, lambda d: None, env={"TEAM_A_KEY": "x"})
    assert err.key == "backends.openai.api_key_env" and "export OPENAI_API_KEY" in (err.fix or "")
    err = error_of(tmp_path, lambda d: None, env={"OPENAI_API_KEY": "x"})
    assert err.key == "keys[0].key_env" and "TEAM_A_KEY" in str(err)


def test_state_names_redis_without_writing_its_password(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, BASE), env=ENV).state.redis_url is None  # default: in-process counters
    ok = load_config(write(tmp_path, {**BASE, "state": {"redis_url": "redis://cache:6379/2", "prefix": "gw:"}}), env=ENV)
    assert ok.state.redis_url == "redis://cache:6379/2" and ok.state.prefix == "gw:"
    err = error_of(tmp_path, lambda d: d.update(state={"redis_url": "redis://app:hunter2@cache:6379/0"}))
    assert err.key == "state.redis_url" and "redis_url_env" in (err.fix or "") and "hunter2" not in str(err)
    err = error_of(tmp_path, lambda d: d.update(state={"redis_url": "http://cache:6379"}))
    assert err.key == "state.redis_url" and "redis://" in (err.fix or "")
    err = error_of(tmp_path, lambda d: d.update(state={"redis_url_env": "TURNOUT_REDIS"}))
    assert err.key == "state.redis_url_env" and "export TURNOUT_REDIS" in (err.fix or "")
    assert (
        load_config(
            write(tmp_path, {**BASE, "state": {"redis_url_env": "TURNOUT_REDIS"}}),
            env={**ENV, "TURNOUT_REDIS": "redis://:pw@cache/0"},
        ).state.redis_url_env
        == "TURNOUT_REDIS"
    )
    err = error_of(tmp_path, lambda d: d.update(state={"redis_url": "redis://a/0", "redis_url_env": "R"}))
    assert err.key == "state" and "not both" in str(err)
    err = error_of(tmp_path, lambda d: d.update(state={"redis": "redis://a/0"}))
    assert err.key == "state.redis"


def test_yaml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("backends:\n  a: [unclosed\n")
    with pytest.raises(ConfigError, match="line"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found") as info:
        load_config(tmp_path / "nope.yaml")
    assert "embedded default" in (info.value.fix or "")


def test_embedded_default_is_two_local_models_with_mutual_fallbacks() -> None:
    cfg = default_config()
    assert {b.protocol for b in cfg.backends.values()} == {"llamacpp"}
    assert cfg.models["smollm2-135m"].fallbacks == ["gemma3-270m"] and cfg.models["gemma3-270m"].fallbacks == ["smollm2-135m"]
    assert cfg.routes["auto"].router.type == "prior"
    assert all(m.price.input_per_mtok > 0 for m in cfg.models.values())
    assert cfg.backends["local-gemma"].completion_template  # base model: completion only


def test_example_configs_parse(tmp_path: Path) -> None:
    examples = sorted((REPO / "examples").glob("*.yaml"))
    assert examples, "examples/ should hold at least one config"
    env = {"OPENAI_API_KEY": "x", "ANTHROPIC_API_KEY": "x", "TURNOUT_KEY_TEAM_A": "x", "TURNOUT_KEY_CI": "x"}
    for path in examples:
        data = yaml.safe_load(path.read_text())
        data.setdefault("server", {})["request_log"] = str(tmp_path / "log.sqlite")
        (tmp_path / path.name).write_text(yaml.safe_dump(data))
        load_config(tmp_path / path.name, env=env)


def test_serve_exits_2_on_config_error_before_binding(tmp_path: Path) -> None:
    data = copy.deepcopy(BASE)
    data["routes"]["auto"]["fallbacks"] = ["gtp-4o"]
    p = write(tmp_path, data)
    proc = subprocess.run(
        [sys.executable, "-m", "turnout.cli.main", "serve", "--config", str(p), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OPENAI_API_KEY": "x", "TEAM_A_KEY": "y"},
        cwd=REPO,
    )
    assert proc.returncode == 2, proc.stderr
    assert "routes.auto.fallbacks[0]" in proc.stderr and "did you mean 'gpt-4o'" in proc.stderr


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path: Path) -> None:
    p = tmp_path / "twice.yaml"
    p.write_text(
        "backends:\n  a: {protocol: openai, base_url: 'http://127.0.0.1:9/v1'}\n"
        "models:\n  ma: {backend: a}\nmodels:\n  mb: {backend: a}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(p, env={})
    assert "key 'models' appears twice" in str(info.value) and "line 5" in str(info.value) and "line 3" in str(info.value)


def test_a_llamacpp_model_that_is_not_gguf_fails_before_any_child_starts(tmp_path: Path) -> None:
    junk = tmp_path / "model.gguf"
    junk.write_bytes(b"PK\x03\x04 not a model")
    p = tmp_path / "local.yaml"
    p.write_text(f"backends:\n  a: {{protocol: llamacpp, model: '{junk}'}}\nmodels:\n  ma: {{backend: a}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(p, env={})
    assert info.value.key == "backends.a.model" and "GGUF" in str(info.value)


def test_type_errors_do_not_repeat_the_message_as_the_fix(tmp_path: Path) -> None:
    err = error_of(tmp_path, lambda d: d["models"]["gpt-4o"].update(context_window="big"))
    assert "valid integer" in str(err) and "valid integer" not in (err.fix or "")
