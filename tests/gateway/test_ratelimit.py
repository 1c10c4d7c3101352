"""Per-key rpm / tpm in the pipeline (gateway/ratelimit.py): refused with retry_after, tokens settled, store failures."""

from __future__ import annotations

import pytest

from turnout.errors import ConfigError, RateLimitedError, StateError
from turnout.gateway import Gateway, ModelTarget
from turnout.gateway.keys import KeySpec, KeyStore, hash_key
from turnout.gateway.metrics import Metrics
from turnout.gateway.ratelimit import RateLimiter, held_tokens
from turnout.state import InMemoryCounters, Reservation
from turnout.state.ratelimit import InMemoryRateWindows, RateDecision
from turnout.testing.scripted import ScriptedBackend, Step
from turnout.types import ChatRequest, Price

MSG = [{"role": "user", "content": "hello there"}]


def gateway(
    *specs: KeySpec,
    windows: object | None = None,
    on_failure: str = "closed",
    counters: object | None = None,
    budgets_on_failure: str = "closed",
) -> tuple[Gateway, ScriptedBackend]:
    backend = ScriptedBackend("up", Step(text="hi", prompt_tokens=40, completion_tokens=10))
    keys = KeyStore(list(specs), counters if counters is not None else InMemoryCounters())  # type: ignore[arg-type]
    metrics = Metrics()
    limiter = RateLimiter(windows, on_failure=on_failure, metrics=metrics) if windows is not None else None  # type: ignore[arg-type]
    gw = Gateway(
        {"alpha": ModelTarget(name="alpha", backend=backend, upstream="alpha", price=Price(1.0, 1.0))},
        keys=keys,
        metrics=metrics,
        limiter=limiter,
        budgets_on_failure=budgets_on_failure,
    )
    return gw, backend


async def test_a_key_over_its_rpm_is_refused_with_when_to_retry() -> None:
    gw, backend = gateway(KeySpec("team", hash_key("sk-team"), rpm=3), KeySpec("free", hash_key("sk-free")))
    assert isinstance(gw.limiter, RateLimiter)  # built from the keys: one of them has a limit
    for _ in range(3):
        await gw.chat(ChatRequest("alpha", MSG), api_key="sk-team")
    with pytest.raises(
        RateLimitedError,
        match=r"key 'team' has made 3 requests in the last 60 s, its limit \(rpm 3\)"
        r": retry after 60 s",
    ) as info:
        await gw.chat(ChatRequest("alpha", MSG), api_key="sk-team")
    assert 55 < info.value.retry_after <= 60 and info.value.limit == "rpm" and info.value.kind == "rate_limit_exceeded"
    assert backend.count == 3  # the refused request never reached a model
    for _ in range(5):  # a key without limits is not limited, and costs no window
        await gw.chat(ChatRequest("alpha", MSG), api_key="sk-free")
    assert backend.count == 8
    assert 'turnout_errors_total{kind="rate_limit_exceeded"} 1.0' in gw.metrics.render()[0].decode()  # type: ignore[union-attr]


async def test_streamed_requests_count_too() -> None:
    gw, _ = gateway(KeySpec("team", hash_key("sk-team"), rpm=1))
    session = await gw.chat_stream(ChatRequest("alpha", MSG), api_key="sk-team")
    async for _ in session:
        pass
    with pytest.raises(RateLimitedError):
        await gw.chat_stream(ChatRequest("alpha", MSG), api_key="sk-team")


async def test_tpm_holds_the_estimate_and_settles_what_was_used() -> None:
    windows = InMemoryRateWindows()
    gw, _ = gateway(KeySpec("team", hash_key("sk-team"), tpm=120), windows=windows)
    req = ChatRequest("alpha", MSG, params={"max_tokens": 20})
    await gw.chat(req, api_key="sk-team")
    assert windows.used("team") == (0, 50)  # settled at the scripted usage, 40 + 10, not the estimate
    await gw.chat(req, api_key="sk-team")  # 100 < 120: admitted
    await gw.chat(req, api_key="sk-team")  # 100 < 120 still: admitted (then 150)
    with pytest.raises(RateLimitedError, match=r"has used 150 tokens in the last 60 s, its limit \(tpm 120\)"):
        await gw.chat(req, api_key="sk-team")


def test_the_held_estimate_is_the_prompt_plus_the_answers_bound() -> None:
    from turnout.gateway.context import RequestContext

    plain = RequestContext(ChatRequest("alpha", MSG), "r1")
    bounded = RequestContext(ChatRequest("alpha", MSG, params={"max_completion_tokens": 64}), "r2")
    assert held_tokens(bounded) == held_tokens(plain) + 64 and held_tokens(plain) > 0


class _Down:
    """Rate windows whose store is unreachable (fault injection)."""

    in_process = False
    window_s = 60.0

    async def admit(self, name: str, request_id: str, *, rpm: int | None, tpm: int | None, tokens: int) -> RateDecision:
        raise StateError(
            "Redis at redis://example:6379/0 failed to check the rate limits: refused (is redis-server running and reachable?)"
        )

    async def settle(self, name: str, request_id: str, tokens: int) -> None:
        raise StateError("Redis at redis://example:6379/0 failed to record the tokens: refused")


async def test_rate_limits_fail_closed_by_default() -> None:
    gw, backend = gateway(KeySpec("team", hash_key("sk-team"), rpm=5), windows=_Down())
    with pytest.raises(StateError, match=r"rate limits of key 'team' cannot be checked.*on_failure.rate_limits: closed"):
        await gw.chat(ChatRequest("alpha", MSG), api_key="sk-team")
    assert backend.count == 0


async def test_rate_limits_fail_open_when_told_and_say_so() -> None:
    gw, backend = gateway(KeySpec("team", hash_key("sk-team"), rpm=5, tpm=100), windows=_Down(), on_failure="open")
    resp, decision, _ = await gw.chat(ChatRequest("alpha", MSG), api_key="sk-team")
    assert resp.content == "hi" and backend.count == 1
    assert any(r.kind == "rate_limit" and "not checked" in r.detail for r in decision.reasons)
    assert 'turnout_errors_total{kind="state_unavailable"} 1.0' in gw.metrics.render()[0].decode()  # type: ignore[union-attr]


class _HoldsFail(InMemoryCounters):
    """Counters whose budget holds fail (Redis went away before admission)."""

    async def reserve(self, name: str, hold_id: str, amount: float, *, limit: float, ttl_s: float) -> Reservation:
        raise StateError("Redis at redis://example:6379/0 failed to hold: refused")


async def test_budgets_fail_closed_or_open_as_configured() -> None:
    key = KeySpec("team", hash_key("sk-team"), budget_usd=1.0)
    closed, backend = gateway(key, counters=_HoldsFail())
    with pytest.raises(StateError, match=r"budget of key 'team' cannot be checked.*on_failure.budgets: closed"):
        await closed.chat(ChatRequest("alpha", MSG), api_key="sk-team")
    assert backend.count == 0
    counters = _HoldsFail()
    opened, backend = gateway(key, counters=counters, budgets_on_failure="open")
    resp, decision, _ = await opened.chat(ChatRequest("alpha", MSG), api_key="sk-team")
    assert resp.content == "hi" and backend.count == 1
    assert any(r.kind == "budget" and "not checked" in r.detail for r in decision.reasons)
    assert counters.get_now("spend:team") == pytest.approx(50 / 1e6)  # what it spent is still recorded


def test_limits_must_be_positive_whole_numbers() -> None:
    with pytest.raises(ConfigError, match=r"key 'x': rpm must be a whole number >= 1, got 0") as info:
        KeyStore([KeySpec("x", hash_key("sk-x"), rpm=0)])
    assert info.value.key == "keys[0].rpm"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="tpm must be a whole number"):
        KeyStore([KeySpec("x", hash_key("sk-x"), tpm=1.5)])  # type: ignore[arg-type]
    assert RateLimiter.for_keys(KeyStore([KeySpec("x", hash_key("sk-x"))])) is None
    with pytest.raises(ValueError, match="on_failure"):
        RateLimiter(InMemoryRateWindows(), on_failure="sometimes")
