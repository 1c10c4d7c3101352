"""The gateway pipeline against in-process scripted backends: fallbacks, retries, breaker, streaming."""

from __future__ import annotations

import asyncio

import pytest

from turnout.backends.base import Timeouts
from turnout.errors import AllBackendsFailedError, BackendTimeoutError, UnknownModelError
from turnout.gateway import Backoff, CircuitBreaker, Gateway, ModelTarget, Price, RouteRuntime
from turnout.gateway.builder import build_gateway
from turnout.routing.policy import Policy
from turnout.routing.registry import create_router
from turnout.testing.scripted import ScriptedBackend, Step
from turnout.types import ChatRequest

MSG = [{"role": "user", "content": "say hello"}]


def target(
    name: str,
    backend: ScriptedBackend,
    *,
    attempts: int = 2,
    fallbacks: list[str] | None = None,
    failures: int = 3,
    cooldown: float = 60.0,
    timeouts: Timeouts | None = None,
) -> ModelTarget:
    return ModelTarget(
        name=name,
        backend=backend,
        upstream=name,
        price=Price(1.0, 2.0),
        fallbacks=fallbacks or [],
        timeouts=timeouts or Timeouts(1.0, 0.5, 2.0),
        attempts=attempts,
        backoff=Backoff(0.001, 0.002),
        breaker=CircuitBreaker(failures, cooldown),
    )


def auto_route(cands: list[str], fallbacks: list[str] | None = None) -> RouteRuntime:
    quality = {m: 0.9 - 0.1 * i for i, m in enumerate(cands)}
    return RouteRuntime(
        name="auto",
        router=create_router("prior", quality=quality),
        router_name="prior",
        candidates={m: m for m in cands},
        prices={m: Price(1.0, 2.0) for m in cands},
        policy=Policy(lam=0.0),
        fallbacks=fallbacks or [],
    )


async def test_route_picks_best_prior_and_passthrough_keeps_fallbacks() -> None:
    a, b = ScriptedBackend("a"), ScriptedBackend("b")
    gw = Gateway({"m1": target("m1", a, fallbacks=["m2"]), "m2": target("m2", b)}, {"auto": auto_route(["m2", "m1"])})
    d = await gw.route(ChatRequest("auto", MSG))
    assert d.model == "m2" and d.router == "prior" and [c.model for c in d.candidates] == ["m2", "m1"]
    p = await gw.route(ChatRequest("m1", MSG))
    assert p.router == "passthrough" and p.fallbacks == ["m2"]
    with pytest.raises(UnknownModelError, match="m1"):
        await gw.route(ChatRequest("nope", MSG))
    await gw.aclose()
    assert a.closed and b.closed


async def test_retry_then_success_counts_attempts_and_cost() -> None:
    a = ScriptedBackend("a", [Step(fault="status", status=503), Step(text="ok now", prompt_tokens=10, completion_tokens=5)])
    gw = Gateway({"m1": target("m1", a)})
    resp, decision, attempts = await gw.chat(ChatRequest("m1", MSG))
    assert resp.content == "ok now" and a.count == 2
    assert [x.ok for x in attempts] == [False, True]
    assert attempts[0].error is not None and attempts[0].error.retryable


async def test_non_retryable_status_goes_straight_to_fallback() -> None:
    a = ScriptedBackend("a", Step(fault="status", status=400))
    b = ScriptedBackend("b", Step(text="from b"))
    gw = Gateway({"m1": target("m1", a, attempts=3, fallbacks=["m2"]), "m2": target("m2", b)})
    resp, _, attempts = await gw.chat(ChatRequest("m1", MSG))
    assert resp.content == "from b" and a.count == 1 and [x.model for x in attempts] == ["m1", "m2"]


async def test_timeout_falls_back_and_exhausted_chain_lists_every_error() -> None:
    slow = ScriptedBackend("slow", Step(latency=5.0))
    reset = ScriptedBackend("reset", Step(fault="reset"))
    gw = Gateway({"m1": target("m1", slow, attempts=1, fallbacks=["m2"]), "m2": target("m2", reset, attempts=2)})
    with pytest.raises(AllBackendsFailedError) as info:
        await gw.chat(ChatRequest("m1", MSG))
    errs = info.value.errors
    assert isinstance(errs[0], BackendTimeoutError) and len(errs) == 3 and reset.count == 2
    assert "slow" in str(info.value) and "reset" in str(info.value)


async def test_breaker_opens_skips_then_half_open_probe() -> None:
    now = [0.0]
    a = ScriptedBackend("a", Step(fault="status", status=500))
    t = target("m1", a, attempts=1, fallbacks=["m2"])
    t.breaker = CircuitBreaker(2, 10.0, clock=lambda: now[0])
    gw = Gateway({"m1": t, "m2": target("m2", ScriptedBackend("b"))})
    for _ in range(2):
        await gw.chat(ChatRequest("m1", MSG))
    assert a.count == 2 and t.breaker.state == "open"
    _, _, attempts = await gw.chat(ChatRequest("m1", MSG))
    assert a.count == 2 and attempts[0].error is not None and attempts[0].error.kind == "backend_unavailable"
    dry = await gw.route(ChatRequest("m1", MSG))  # the dry run says what the chain would meet
    assert any("m1 would be skipped now: its circuit breaker is open" in r.detail for r in dry.reasons)
    now[0] = 11.0  # cooldown over: exactly one probe goes through
    a.script.default = Step(text="healed")
    resp, _, _ = await gw.chat(ChatRequest("m1", MSG))
    assert a.count == 3 and resp.content == "healed" and t.breaker.state == "closed"


async def test_stream_falls_back_before_first_chunk() -> None:
    a = ScriptedBackend("a", Step(fault="reset"))
    b = ScriptedBackend("b", Step(text="one two three"))
    gw = Gateway({"m1": target("m1", a, attempts=1, fallbacks=["m2"]), "m2": target("m2", b)})
    session = await gw.chat_stream(ChatRequest("m1", MSG, stream=True))
    assert session.model == "m2"
    text = "".join([c.text async for c in session])
    assert text.split() == ["one", "two", "three"] and session.usage is not None


async def test_stream_cut_after_first_chunk_raises_from_iterator() -> None:
    a = ScriptedBackend("a", Step(text="a b c d e f", fault="cut"))
    b = ScriptedBackend("b")
    gw = Gateway({"m1": target("m1", a, attempts=1, fallbacks=["m2"]), "m2": target("m2", b)})
    session = await gw.chat_stream(ChatRequest("m1", MSG, stream=True))
    got = []
    with pytest.raises(Exception) as info:
        async for c in session:
            got.append(c.text)
    assert got and info.value.kind == "upstream_protocol" and b.count == 0  # committed: no silent switch


async def test_stream_first_token_timeout_falls_back() -> None:
    a = ScriptedBackend("a", Step(latency=3.0))
    gw = Gateway(
        {"m1": target("m1", a, attempts=1, fallbacks=["m2"]), "m2": target("m2", ScriptedBackend("b", Step(text="fast")))}
    )
    session = await asyncio.wait_for(gw.chat_stream(ChatRequest("m1", MSG, stream=True)), 2.0)
    assert session.model == "m2" and session.attempts[0].error.kind == "timeout"
    await session.aclose()


def test_from_config_builds_parts_and_refuses_uncalibrated_budget() -> None:
    from turnout.config import parse_config, resolve
    from turnout.errors import ConfigError

    data = {
        "server": {"request_log": None},
        "backends": {"up": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {"a": {"backend": "up", "price": {"input_per_mtok": 1}}, "b": {"backend": "up"}},
        "routes": {"auto": {"router": {"type": "prior", "params": {"quality": {"a": 0.5, "b": 0.4}}}, "candidates": ["a", "b"]}},
    }
    gw = build_gateway(resolve(parse_config(data)))
    assert set(gw.targets) == {"a", "b"} and gw.metrics is not None and gw.request_log is None and gw.keys is None
    assert [m["id"] for m in gw.models()] == ["auto", "a", "b"]
    asyncio.run(gw.aclose())
    data["routes"]["auto"]["budget"] = {"target_cost_per_request": 0.01}
    with pytest.raises(ConfigError) as info:
        build_gateway(resolve(parse_config(data)))
    assert info.value.key == "routes.auto.budget" and "lambda" in (info.value.fix or "")


def test_from_config_gives_the_key_store_and_the_budgets_one_store_of_counters() -> None:
    pytest.importorskip("redis")
    from turnout.config import parse_config, resolve
    from turnout.gateway.keys import hash_key
    from turnout.state import InMemoryCounters, RedisCounters

    data = {
        "server": {"request_log": None},
        "backends": {"up": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {"a": {"backend": "up"}},
        "keys": [{"name": "k", "key_sha256": hash_key("sk-k"), "budget_usd": 1.0}],
    }
    local = build_gateway(resolve(parse_config(data)))
    assert isinstance(local.state, InMemoryCounters) and local.keys.counters is local.state
    asyncio.run(local.aclose())
    shared = build_gateway(resolve(parse_config({**data, "state": {"redis_url": "redis://127.0.0.1:1/0", "prefix": "x:"}})))
    assert isinstance(shared.state, RedisCounters) and shared.keys.counters is shared.state and shared.state.prefix == "x:"
    asyncio.run(shared.aclose())  # nothing connected yet: building reaches no Redis


async def test_when_every_backend_rejects_the_request_itself_the_client_gets_a_400_and_no_breaker_moves() -> None:
    from turnout.errors import UpstreamRejectedError
    from turnout.server.errors import status_for

    a = ScriptedBackend("a", Step(fault="status", status=400))
    b = ScriptedBackend("b", Step(fault="status", status=422))
    ta, tb = target("m1", a, attempts=3, fallbacks=["m2"], failures=1), target("m2", b, failures=1)
    gw = Gateway({"m1": ta, "m2": tb})
    with pytest.raises(UpstreamRejectedError) as info:
        await gw.chat(ChatRequest("m1", MSG))
    assert a.count == 1 and b.count == 1  # a refusal is not retried
    assert status_for(info.value) == 400 and "can take the request" in str(info.value)
    assert ta.breaker.state == tb.breaker.state == "closed"  # the request's fault, not the provider's
    # one provider refusing and another failing is still the fleet's failure (a 502)
    c = ScriptedBackend("c", Step(fault="status", status=503))
    gw2 = Gateway(
        {
            "m1": target("m1", ScriptedBackend("a2", Step(fault="status", status=400)), fallbacks=["m2"]),
            "m2": target("m2", c, attempts=1),
        }
    )
    with pytest.raises(AllBackendsFailedError):
        await gw2.chat(ChatRequest("m1", MSG))


@pytest.mark.parametrize(
    "params, key, needle",
    [
        ({"quality": "high"}, "routes.auto.router", "quality={model: score"),
        ({"quality": {"mx": 0.9}}, "routes.auto.candidates", "no prediction for any candidate (a, b; it scores: mx)"),
    ],
)
def test_route_mistakes_only_a_request_would_show_fail_at_start_up(params, key, needle) -> None:
    from turnout.config import parse_config, resolve
    from turnout.errors import ConfigError

    data = {
        "server": {"request_log": None},
        "backends": {"up": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {"a": {"backend": "up"}, "b": {"backend": "up"}},
        "routes": {"auto": {"router": {"type": "prior", "params": params}, "candidates": ["a", "b"]}},
    }
    with pytest.raises(ConfigError) as info:
        build_gateway(resolve(parse_config(data)))
    assert info.value.key == key and needle in str(info.value) and str(info.value).count("(fix:") == 1


async def test_start_warns_about_a_backend_that_refuses_connections(caplog) -> None:
    import logging
    import socket

    from turnout.config import parse_config, resolve

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = {
        "server": {"request_log": None},
        "backends": {"down": {"protocol": "openai", "base_url": f"http://127.0.0.1:{port}/v1"}},
        "models": {"a": {"backend": "down"}},
    }
    gw = build_gateway(resolve(parse_config(data)))
    with caplog.at_level(logging.WARNING, logger="turnout.gateway.pipeline"):
        await gw.start()
    assert gw.ready and list(gw.unreachable) == ["down"]
    assert any("backend down is not reachable now" in r.getMessage() for r in caplog.records)
    await gw.aclose()
