"""Rate limits and store failures over HTTP, with the official openai client: 429 + retry-after, 503 or served."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import openai
import pytest

from turnout.config import parse_config, resolve
from turnout.errors import ConfigError
from turnout.gateway.builder import build_gateway
from turnout.gateway.keys import hash_key
from turnout.testing.scripted import ScriptedServer, Step

from server_helpers import Served

MSG = [{"role": "user", "content": "hello"}]


def config(
    upstream: str, *, keys: list[dict[str, Any]], state: dict[str, Any] | None = None, request_log: str | None = None
) -> Any:
    data: dict[str, Any] = {
        "server": {"request_log": request_log, "metrics": True},
        "backends": {"up": {"protocol": "openai", "base_url": upstream, "retries": {"attempts": 1}}},
        "models": {
            "alpha": {"backend": "up", "upstream_model": "scripted", "price": {"input_per_mtok": 1, "output_per_mtok": 1}}
        },
        "keys": keys,
    }
    if state is not None:
        data["state"] = state
    return resolve(parse_config(data, source="test.yaml"))


@pytest.fixture
def upstream() -> Any:
    with ScriptedServer(Step(text="hi", prompt_tokens=5, completion_tokens=2)) as srv:
        yield srv


def test_a_key_over_its_rpm_gets_429_with_retry_after(serve: Any, upstream: ScriptedServer) -> None:
    srv = serve(config(upstream.base_url, keys=[{"name": "team", "key_sha256": hash_key("sk-team"), "rpm": 2}]))
    client = openai.OpenAI(base_url=srv.base_url, api_key="sk-team", max_retries=0)
    for _ in range(2):
        assert client.chat.completions.create(model="alpha", messages=MSG).choices[0].message.content == "hi"
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="alpha", messages=MSG)
    r = info.value.response
    assert r.status_code == 429 and 55 <= int(r.headers["retry-after"]) <= 60
    err = r.json()["error"]
    assert err["type"] == err["code"] == "rate_limit_exceeded" and "rpm 2" in err["message"]
    assert r.headers["x-turnout-route"] == "passthrough" and len(r.headers["x-turnout-request-id"]) == 32
    # streamed requests are refused the same way, before any event is sent
    s = httpx.post(
        srv.base_url + "/chat/completions",
        headers={"Authorization": "Bearer sk-team"},
        json={"model": "alpha", "messages": MSG, "stream": True},
    )
    assert s.status_code == 429 and "retry-after" in s.headers and s.json()["error"]["type"] == "rate_limit_exceeded"
    assert upstream.count == 2


def test_the_official_client_waits_retry_after_and_gets_through(serve: Any, upstream: ScriptedServer) -> None:
    """With a 1-request window of one second, the client's own retry (it honours retry-after) succeeds."""
    cfg = config(upstream.base_url, keys=[{"name": "team", "key_sha256": hash_key("sk-team"), "rpm": 1}])
    gw = build_gateway(cfg)
    assert gw.limiter is not None
    gw.limiter.windows.window_s = 1.0  # type: ignore[misc]  # a short window keeps the test fast
    srv = Served(gw).__enter__()
    try:
        client = openai.OpenAI(base_url=srv.base_url, api_key="sk-team", max_retries=2)
        for _ in range(2):
            assert client.chat.completions.create(model="alpha", messages=MSG).choices[0].message.content == "hi"
    finally:
        srv.__exit__()


@pytest.mark.parametrize("policy", ["closed", "open"])
def test_redis_down_mid_serve_fails_closed_or_open_as_configured(
    serve: Any, upstream: ScriptedServer, private_redis: Any, policy: str, tmp_path: Any
) -> None:
    redis = private_redis()
    state = {
        "redis_url": redis.url,
        "prefix": f"t-{uuid.uuid4().hex[:6]}:",
        "on_failure": {"budgets": policy, "rate_limits": policy},
    }
    log_path = str(tmp_path / "requests.sqlite")
    srv = serve(
        config(
            upstream.base_url,
            state=state,
            request_log=log_path,
            keys=[
                {"name": "limited", "key_sha256": hash_key("sk-limited"), "rpm": 100},
                {"name": "budgeted", "key_sha256": hash_key("sk-budgeted"), "budget_usd": 1.0},
            ],
        )
    )
    for key in ("sk-limited", "sk-budgeted"):
        ok = httpx.post(
            srv.base_url + "/chat/completions",
            json={"model": "alpha", "messages": MSG},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert ok.status_code == 200, ok.text
    redis.stop()
    for key, what in (("sk-limited", "rate limits"), ("sk-budgeted", "budget")):
        r = httpx.post(
            srv.base_url + "/chat/completions",
            json={"model": "alpha", "messages": MSG},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        if policy == "closed":
            assert r.status_code == 503, r.text
            err = r.json()["error"]
            assert err["type"] == "state_unavailable" and redis.url in err["message"]
            assert f"on_failure.{'rate_limits' if what == 'rate limits' else 'budgets'}: closed" in err["message"]
        else:
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] == "hi"
    assert upstream.count == (2 if policy == "closed" else 4)
    assert 'turnout_errors_total{kind="state_unavailable"}' in httpx.get(srv.root + "/metrics").text
    # no lost log rows: every request, refused or served, is in the request log with the status its client got
    srv.gateway.request_log.flush()
    import sqlite3

    with sqlite3.connect(log_path) as conn:
        rows = conn.execute("SELECT key_name, http_status FROM requests ORDER BY seq").fetchall()
    after = [s for _, s in rows[2:]]
    assert len(rows) == 4 and after == ([503, 503] if policy == "closed" else [200, 200])


def test_config_takes_limits_failure_policies_and_health() -> None:
    cfg = config(
        "http://127.0.0.1:9/v1",
        keys=[{"name": "a", "key_sha256": hash_key("a"), "rpm": 5, "tpm": 900}],
        state={"on_failure": {"budgets": "open"}},
    )
    assert (cfg.keys[0].rpm, cfg.keys[0].tpm) == (5, 900)
    assert (cfg.state.on_failure.budgets, cfg.state.on_failure.rate_limits) == ("open", "closed")
    assert (cfg.health.interval_s, cfg.health.active, cfg.health.path) == (5.0, False, "models")
    with pytest.raises(ConfigError, match=r"state\.on_failure\.cache") as info:
        config("http://127.0.0.1:9/v1", keys=[], state={"on_failure": {"cache": "closed"}})
    assert "budgets" in str(info.value) and "rate_limits" in str(info.value)  # the allowed keys are named
    with pytest.raises(ConfigError, match=r"keys\[0\]\.rpm"):
        config("http://127.0.0.1:9/v1", keys=[{"name": "a", "key_sha256": hash_key("a"), "rpm": 0}])
    with pytest.raises(ConfigError, match=r"state\.on_failure\.budgets"):
        config("http://127.0.0.1:9/v1", keys=[], state={"on_failure": {"budgets": "sometimes"}})
