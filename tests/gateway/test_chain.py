"""The one fallback chain behind both chat() and chat_stream(): same tries, same errors, same counts."""

from __future__ import annotations

import pytest

from turnout.backends.base import Timeouts
from turnout.errors import AllBackendsFailedError
from turnout.gateway import Backoff, CircuitBreaker, Gateway, ModelTarget, Price
from turnout.gateway.metrics import Metrics
from turnout.testing.scripted import ScriptedBackend, Step
from turnout.types import ChatRequest

MSG = [{"role": "user", "content": "hello"}]


def gateway(script_a: list[Step], script_b: list[Step], script_c: Step) -> tuple[Gateway, Metrics]:
    def target(name: str, backend: ScriptedBackend, attempts: int, fallbacks: list[str]) -> ModelTarget:
        return ModelTarget(
            name=name,
            backend=backend,
            upstream=name,
            price=Price(1, 1),
            fallbacks=fallbacks,
            timeouts=Timeouts(1.0, 0.3, 2.0),
            attempts=attempts,
            backoff=Backoff(0.001, 0.002),
            breaker=CircuitBreaker(10, 60.0),
        )

    metrics = Metrics()
    gw = Gateway(
        {
            "a": target("a", ScriptedBackend("ba", script_a), 3, ["b", "c"]),
            "b": target("b", ScriptedBackend("bb", script_b), 2, []),
            "c": target("c", ScriptedBackend("bc", script_c), 1, []),
        },
        metrics=metrics,
    )
    return gw, metrics


def fallbacks(metrics: Metrics) -> dict[tuple[str, str], float]:
    out = {}
    for family in metrics.registry.collect():
        for s in family.samples:
            if s.name == "turnout_fallbacks_total":
                out[(s.labels["from_model"], s.labels["to_model"])] = s.value
    return out


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_both_modes_walk_the_same_chain(stream: bool) -> None:
    # a: a 503 and a reset (retried), then a 400 (not retried: on to b)
    a = [Step(fault="status", status=503), Step(fault="reset"), Step(fault="status", status=400)]
    b = [Step(fault="status", status=400)]  # non-retryable: b gets one try, not two
    gw, metrics = gateway(a, b, Step(text="from c"))
    req = ChatRequest("a", MSG, stream=stream)
    if stream:
        session = await gw.chat_stream(req)
        text = "".join([c.text async for c in session])
        attempts, model = session.attempts, session.model
    else:
        resp, _, attempts = await gw.chat(req)
        text, model = resp.content, attempts[-1].model
    assert text.replace(" ", "") == "fromc" and model == "c"
    assert [(x.model, x.error.kind if x.error else None) for x in attempts] == [
        ("a", "upstream_status"),
        ("a", "connection_error"),
        ("a", "upstream_status"),
        ("b", "upstream_status"),
        ("c", None),
    ]
    assert fallbacks(metrics) == {("a", "b"): 1.0, ("b", "c"): 1.0}


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_exhausted_chain_lists_every_error_in_order_in_both_modes(stream: bool) -> None:
    gw, _ = gateway([Step(fault="status", status=500)] * 3, [Step(fault="malformed")] * 2, Step(fault="reset"))
    req = ChatRequest("a", MSG, stream=stream)
    with pytest.raises(AllBackendsFailedError) as info:
        if stream:
            await gw.chat_stream(req)
        else:
            await gw.chat(req)
    assert [(e.model, e.kind) for e in info.value.errors] == [("a", "upstream_status")] * 3 + [("b", "upstream_protocol")] * 2 + [
        ("c", "connection_error")
    ]


def keyed(allowed: list[str]) -> tuple[object, str]:
    from turnout.gateway.keys import KeySpec, KeyStore, hash_key

    return KeyStore([KeySpec("alice", hash_key("sk-alice"), None, allowed)]), "sk-alice"


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_a_fallback_the_key_may_not_use_is_skipped_and_named_in_the_error(stream: bool) -> None:
    gw, metrics = gateway([Step(fault="status", status=503)] * 3, [Step(text="from b")], Step(text="from c"))
    gw.keys, raw = keyed(["a"])  # 'a' only: its fallbacks b and c are someone else's to pay for
    req = ChatRequest("a", MSG, stream=stream)
    with pytest.raises(AllBackendsFailedError) as info:
        await (gw.chat_stream(req, api_key=raw) if stream else gw.chat(req, api_key=raw))
    kinds = [(e.model, e.kind) for e in info.value.errors]
    assert kinds == [("a", "upstream_status")] * 3 + [("b", "model_not_allowed"), ("c", "model_not_allowed")]
    assert "key 'alice' may not use 'b'" in str(info.value)
    assert gw.targets["b"].backend.count == 0 and gw.targets["c"].backend.count == 0
    assert fallbacks(metrics) == {}  # nothing was fallen back to


async def test_a_skipped_fallback_is_stepped_over_to_the_next_usable_one() -> None:
    gw, metrics = gateway([Step(fault="status", status=503)] * 3, [Step(text="from b")], Step(text="from c"))
    gw.keys, raw = keyed(["a", "c"])
    resp, _, attempts = await gw.chat(ChatRequest("a", MSG), api_key=raw)
    assert resp.content == "from c" and [x.model for x in attempts] == ["a", "a", "a", "b", "c"]
    assert attempts[3].error is not None and attempts[3].error.kind == "model_not_allowed"
    assert gw.targets["b"].backend.count == 0
    assert fallbacks(metrics) == {("a", "c"): 1.0}
    d = await gw.route(ChatRequest("a", MSG), key=gw.keys.authenticate(raw))
    assert "fallback b will be skipped: key 'alice' may not use it" in [r.detail for r in d.reasons]


async def test_asking_for_an_allowed_route_accepts_its_candidates_but_not_other_fallbacks() -> None:
    from turnout.gateway import RouteRuntime
    from turnout.routing.policy import Policy
    from turnout.routing.registry import create_router

    gw, _ = gateway([Step(fault="status", status=503)] * 3, [Step(fault="status", status=503)] * 2, Step(text="c"))
    gw.routes["auto"] = RouteRuntime(
        name="auto",
        router=create_router("prior", quality={"a": 0.9, "b": 0.8}),
        router_name="prior",
        candidates={"a": "a", "b": "b"},
        prices={"a": Price(1, 1), "b": Price(1, 1)},
        policy=Policy(lam=0.0),
        fallbacks=["b", "c"],
    )
    gw.keys, raw = keyed(["auto"])
    assert gw.usable_models(gw.keys.authenticate(raw)) == {"a", "b"}
    with pytest.raises(AllBackendsFailedError) as info:
        await gw.chat(ChatRequest("auto", MSG), api_key=raw)
    assert [(e.model, e.kind) for e in info.value.errors][-1] == ("c", "model_not_allowed")
    assert {e.model for e in info.value.errors if e.kind == "upstream_status"} == {"a", "b"}
    assert gw.targets["c"].backend.count == 0
