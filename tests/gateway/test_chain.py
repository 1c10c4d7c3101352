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
        return ModelTarget(name=name, backend=backend, upstream=name, price=Price(1, 1), fallbacks=fallbacks,
                           timeouts=Timeouts(1.0, 0.3, 2.0), attempts=attempts, backoff=Backoff(0.001, 0.002),
                           breaker=CircuitBreaker(10, 60.0))

    metrics = Metrics()
    gw = Gateway({"a": target("a", ScriptedBackend("ba", script_a), 3, ["b", "c"]),
                  "b": target("b", ScriptedBackend("bb", script_b), 2, []),
                  "c": target("c", ScriptedBackend("bc", script_c), 1, [])}, metrics=metrics)
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
        ("a", "upstream_status"), ("a", "connection_error"), ("a", "upstream_status"),
        ("b", "upstream_status"), ("c", None)]
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
    assert [(e.model, e.kind) for e in info.value.errors] == [
        ("a", "upstream_status")] * 3 + [("b", "upstream_protocol")] * 2 + [("c", "connection_error")]
