"""Redis down: a request that needs the shared counters is a 503 in OpenAI form naming the URL, never a 500."""

from __future__ import annotations

import httpx
import openai
import pytest

from turnout.errors import StateError
from turnout.gateway import Gateway, ModelTarget
from turnout.gateway.keys import KeySpec, KeyStore, hash_key
from turnout.gateway.metrics import Metrics
from turnout.gateway.routes import Price
from turnout.server.errors import status_for
from turnout.state import RedisCounters, Reservation
from turnout.testing.scripted import ScriptedBackend, Step

from server_helpers import Served

MSG = [{"role": "user", "content": "hello"}]
AUTH = {"Authorization": "Bearer sk-team"}


def served_with_budget_in(url: str) -> tuple[Served, ScriptedBackend]:
    backend = ScriptedBackend("up", Step(text="hi", prompt_tokens=5, completion_tokens=2))
    keys = KeyStore(
        [KeySpec("team", hash_key("sk-team"), budget_usd=1.0)], RedisCounters(url, prefix="t-state:", socket_timeout=0.5)
    )
    gw = Gateway({"alpha": ModelTarget(name="alpha", backend=backend, upstream="alpha")}, keys=keys, metrics=Metrics())
    return Served(gw).__enter__(), backend


def test_redis_going_down_mid_serve_turns_budgeted_requests_into_503s(private_redis) -> None:
    redis = private_redis()
    srv, backend = served_with_budget_in(redis.url)
    try:
        ok = httpx.post(srv.base_url + "/chat/completions", json={"model": "alpha", "messages": MSG}, headers=AUTH)
        assert ok.status_code == 200, ok.text  # the key's spend went to Redis
        redis.stop()

        r = httpx.post(srv.base_url + "/chat/completions", json={"model": "alpha", "messages": MSG}, headers=AUTH)
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["type"] == err["code"] == "state_unavailable" and err["param"] is None
        assert redis.url in err["message"] and "is redis-server running" in err["message"]
        assert len(r.headers["x-turnout-request-id"]) == 32 and r.headers["x-turnout-route"] == "passthrough"
        assert backend.count == 1  # the budget could not be checked, so no model was called
        # the official client sees a server-side error it may retry, not a bug
        client = openai.OpenAI(base_url=srv.base_url, api_key="sk-team", max_retries=0)
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model="alpha", messages=MSG)
        assert info.value.status_code == 503
        assert 'turnout_errors_total{kind="state_unavailable"} 2.0' in httpx.get(srv.root + "/metrics").text
    finally:
        srv.__exit__()


def test_an_unreachable_redis_from_the_start_is_a_503_and_the_table_says_so() -> None:
    pytest.importorskip("redis")
    srv, backend = served_with_budget_in("redis://127.0.0.1:1/0")
    try:
        r = httpx.post(srv.base_url + "/chat/completions", json={"model": "alpha", "messages": MSG}, headers=AUTH)
        assert r.status_code == 503 and "redis://127.0.0.1:1/0" in r.json()["error"]["message"]
        assert backend.count == 0
    finally:
        srv.__exit__()
    assert status_for(StateError("x")) == 503


class _SpendNotRecorded:
    """A state store whose reads (and the admission hold) work but whose spend writes fail: it went away after the
    budget check."""

    in_process = True

    async def get(self, key: str) -> float:
        return 0.0

    async def reserve(self, name: str, hold_id: str, amount: float, *, limit: float, ttl_s: float) -> Reservation:
        return Reservation(True, 0.0, amount)

    async def incr(self, key: str, amount: float) -> float:
        raise StateError("redis://example:6379/0: connection refused (is redis-server running?)")

    async def settle(self, name: str, hold_id: str, actual: float) -> float:
        raise StateError("redis://example:6379/0: connection refused (is redis-server running?)")


def test_an_answer_whose_spend_cannot_be_recorded_is_still_served() -> None:
    """The model has answered and been paid: losing the answer would lose the user's money and work."""
    backend = ScriptedBackend("up", Step(text="kept", prompt_tokens=5, completion_tokens=2))
    keys = KeyStore([KeySpec("team", hash_key("sk-team"), budget_usd=1.0)], _SpendNotRecorded())
    gw = Gateway(
        {"alpha": ModelTarget(name="alpha", backend=backend, upstream="alpha", price=Price(1.0, 1.0))},
        keys=keys,
        metrics=Metrics(),
    )
    srv = Served(gw).__enter__()
    try:
        r = httpx.post(srv.base_url + "/chat/completions", json={"model": "alpha", "messages": MSG}, headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "kept" and backend.count == 1
        assert 'turnout_errors_total{kind="state_unavailable"} 1.0' in httpx.get(srv.root + "/metrics").text
    finally:
        srv.__exit__()
