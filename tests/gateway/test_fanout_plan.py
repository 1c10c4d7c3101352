"""Fan-out and multi-round plans: parallel members, a vote or an aggregator model, the switch, Router-R1 rounds;
the cost of a request is the sum of its calls."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from turnout.backends.base import Timeouts
from turnout.errors import AllBackendsFailedError, ConfigError
from turnout.gateway import Backoff, CircuitBreaker, Gateway, ModelTarget, Price, RouteRuntime
from turnout.gateway.fanout import aggregate_request, parse_turn
from turnout.gateway.planners import FanoutPlanner, RoundsPlanner, vote_quality
from turnout.gateway.plans import plan_executor, plan_kinds
from turnout.routing.policy import Policy
from turnout.routing.registry import create_router
from turnout.testing.scripted import Rule, Script, ScriptedBackend, Step
from turnout.types import ChatRequest

QUESTION = [{"role": "user", "content": "Which is a metal?\nA) wood\nB) iron\nC) glass"}]
PRICES = {"a": 1.0, "b": 2.0, "c": 3.0, "agg": 5.0}


def target(name: str, backend: ScriptedBackend) -> ModelTarget:
    p = PRICES.get(name, 1.0)
    return ModelTarget(
        name=name,
        backend=backend,
        upstream=name,
        price=Price(p, 2 * p),
        timeouts=Timeouts(1.0, 0.5, 2.0),
        attempts=1,
        backoff=Backoff(0.001, 0.002),
        breaker=CircuitBreaker(3, 60.0),
    )


def gateway(
    backends: dict[str, ScriptedBackend], planner: Any, quality: dict[str, float] | None = None, lam: float = 0.0
) -> Gateway:
    quality = quality or {m: 0.5 for m in backends}
    rt = RouteRuntime(
        name="multi",
        router=create_router("prior", quality=quality),
        router_name="prior",
        candidates={m: m for m in quality},
        prices={m: Price(PRICES.get(m, 1.0), 2 * PRICES.get(m, 1.0)) for m in quality},
        policy=Policy(lam=lam),
        plan=planner,
    )
    return Gateway({m: target(m, b) for m, b in backends.items()}, {"multi": rt})


def answering(text: str, **kw: Any) -> ScriptedBackend:
    return ScriptedBackend(text, Step(text=text, prompt_tokens=20, completion_tokens=4, **kw))


async def test_a_vote_keeps_the_plurality_and_the_cost_is_the_sum_of_the_calls() -> None:
    backends = {"a": answering("A) wood"), "b": answering("B"), "c": answering("The answer is B) iron.")}
    gw = gateway(backends, FanoutPlanner("multi", ["a", "b", "c"], "vote"))
    resp, ctx = await gw.serve_chat(ChatRequest("multi", QUESTION))
    assert resp.content == "B" and ctx.model == "b"  # b and c agree on B; b comes first among them
    assert all(b.count == 1 for b in backends.values())
    assert [(a.model, a.role, a.accepted) for a in ctx.attempts if a.model == "b"] == [("b", "member", True)]
    # every member is paid for: 20 in + 4 out at each one's price
    assert ctx.cost_usd == pytest.approx(sum((20 * p + 4 * 2 * p) / 1e6 for p in (1.0, 2.0, 3.0)))
    assert ctx.response_headers["x-turnout-fanout"] == "a:outvoted,b:kept,c:agreed"
    vote = next(n for n in ctx.notes if n.kind == "plan" and "votes" in n.data)
    assert vote.data["votes"] == {"choice:A": ["a"], "choice:B": ["b", "c"]}


async def test_a_tie_goes_to_the_first_member_and_answers_run_in_parallel() -> None:
    backends = {"a": answering("A", latency=0.2), "b": answering("B", latency=0.2)}
    gw = gateway(backends, FanoutPlanner("multi", ["a", "b"], "vote"))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    resp, _, _ = await gw.chat(ChatRequest("multi", QUESTION))
    assert resp.content == "A" and loop.time() - t0 < 0.38  # two 0.2 s members took one 0.2 s, not two


async def test_a_failed_member_is_tolerated_while_enough_remain() -> None:
    backends = {"a": ScriptedBackend("a", Step(fault="status", status=503)), "b": answering("B"), "c": answering("B")}
    gw = gateway(backends, FanoutPlanner("multi", ["a", "b", "c"], "vote", min_answers=2))
    resp, ctx = await gw.serve_chat(ChatRequest("multi", QUESTION))
    assert resp.content == "B" and [a.status for a in ctx.attempts if a.model == "a"] == ["error"]
    assert ctx.response_headers["x-turnout-fanout"].endswith(",1 failed")

    backends = {
        "a": ScriptedBackend("a", Step(fault="status", status=503)),
        "b": ScriptedBackend("b", Step(fault="reset")),
        "c": answering("B"),
    }
    gw = gateway(backends, FanoutPlanner("multi", ["a", "b", "c"], "vote", min_answers=2))
    with pytest.raises(AllBackendsFailedError) as exc:
        await gw.chat(ChatRequest("multi", QUESTION))
    assert len(exc.value.errors) == 2  # each failed member's error, in one 502


async def test_an_aggregator_model_reads_every_answer_and_streams_live() -> None:
    backends = {"a": answering("wood"), "b": answering("iron"), "agg": answering("Iron is the metal.")}
    planner = FanoutPlanner("multi", ["a", "b"], "agg")
    gw = gateway(backends, planner)
    resp, ctx = await gw.serve_chat(ChatRequest("multi", QUESTION, params={"max_tokens": 30}))
    assert resp.content == "Iron is the metal." and ctx.model == "agg"
    sent = backends["agg"].requests[0].body["messages"]
    assert sent[:-1] == QUESTION and "Answer 1:\nwood" in sent[-1]["content"] and "Answer 2:\niron" in sent[-1]["content"]
    assert [a.role for a in ctx.attempts] == ["member", "member", "aggregator"]
    assert ctx.cost_usd == pytest.approx(sum(a.cost_usd for a in ctx.attempts)) and ctx.attempts[-1].cost_usd > 0

    session = await gw.chat_stream(ChatRequest("multi", QUESTION, stream=True))
    text = "".join([c.text async for c in session])
    assert text == "Iron is the metal." and session.attempts[-1].ttft_s is not None  # the aggregator streamed live


def test_vote_quality_and_the_switch() -> None:
    assert vote_quality([0.6, 0.6, 0.6]) == pytest.approx(0.6**3 + 3 * 0.6**2 * 0.4 + 0.6 * 0.4**2)
    assert vote_quality([1.0, 0.0]) == 1.0 and vote_quality([0.0, 1.0]) == 0.0  # one right: the first member wins

    planner = FanoutPlanner("multi", ["a", "b", "c"], "vote", min_gain=0.0)
    gw = gateway({m: answering("B") for m in ("a", "b", "c")}, planner, quality={"a": 0.6, "b": 0.6, "c": 0.6})
    d = gw.routes["multi"].decide(ChatRequest("multi", QUESTION))
    assert d.plan is not None and d.plan.kind == "fanout"  # λ = 0: 0.648 > 0.6, fan out
    gain = next(r for r in d.reasons if r.kind == "plan" and "gain" in r.data).data["gain"]
    assert gain == pytest.approx(vote_quality([0.6] * 3) - 0.6)

    # two weak members first: their vote (0.489) is worse than the strong one alone (0.9)
    gw = gateway(
        {m: answering("B") for m in ("a", "b", "c")},
        FanoutPlanner("multi", ["b", "c", "a"], "vote", min_gain=0.0),
        quality={"a": 0.9, "b": 0.3, "c": 0.3},
    )
    d = gw.routes["multi"].decide(ChatRequest("multi", QUESTION))
    assert d.plan is not None and d.plan.kind == "single" and d.model == "a"
    # a cost weight that makes three calls dearer than the quality they add: single again
    gw = gateway({m: answering("B") for m in ("a", "b", "c")}, planner, quality={"a": 0.6, "b": 0.6, "c": 0.6}, lam=100.0)
    d = gw.routes["multi"].decide(ChatRequest("multi", QUESTION))
    assert d.plan is not None and d.plan.kind == "single"


async def test_rounds_consult_a_model_then_answer_capped_in_rounds() -> None:
    router = ScriptedBackend(
        "r",
        Script(
            Step(text="<search>b: What is iron?</search>"),
            rules=[Rule(match="information", step=Step(text="<answer>B) iron</answer>"))],
        ),
    )
    b = answering("Iron is a metal.")
    gw = gateway({"r": router, "b": b}, RoundsPlanner("multi", "r", ["b"], max_rounds=2))
    resp, ctx = await gw.serve_chat(ChatRequest("multi", QUESTION))
    assert resp.content == "B) iron" and ctx.model == "r"
    assert [(a.model, a.role) for a in ctx.attempts] == [("r", "router"), ("b", "member"), ("r", "router")]
    assert b.requests[0].body["messages"] == [{"role": "user", "content": "What is iron?"}]
    assert "<information>Iron is a metal.</information>" in router.requests[1].body["messages"][-1]["content"]
    assert ctx.response_headers["x-turnout-rounds"] == "b:consulted,r:answered"

    # a router that never answers is stopped at the cap and told to answer; its text is the answer
    stubborn = ScriptedBackend("r", Step(text="<search>b: again?</search>"))
    b2 = answering("still iron")
    gw = gateway({"r": stubborn, "b": b2}, RoundsPlanner("multi", "r", ["b"], max_rounds=2))
    resp, ctx = await gw.serve_chat(ChatRequest("multi", QUESTION))
    assert b2.count == 2 and stubborn.count == 3 and resp.content == ""
    assert "No more models can be consulted" in stubborn.requests[-1].body["messages"][-1]["content"]


async def test_rounds_stop_consulting_at_the_cost_cap() -> None:
    router = ScriptedBackend("r", Step(text="<search>b: What is iron?</search>", prompt_tokens=100, completion_tokens=10))
    b = answering("Iron is a metal.")
    gw = gateway({"r": router, "b": b}, RoundsPlanner("multi", "r", ["b"], max_rounds=5, max_cost_usd=1e-6))
    _, ctx = await gw.serve_chat(ChatRequest("multi", QUESTION))
    # the first router turn already cost 120e-6 > 1e-6: no model is consulted, the router is told to answer
    assert b.count == 0 and router.count == 2
    assert "the cost cap" in router.requests[-1].body["messages"][-1]["content"]
    assert ctx.response_headers["x-turnout-rounds"] == "r:answered"


def test_parse_turn_and_the_aggregate_request() -> None:
    assert parse_turn("thinking... <search> gpt : what is 2+2? </search>") == (None, ("gpt", "what is 2+2?"))
    assert parse_turn("<answer>4</answer>") == ("4", None)
    assert parse_turn("no tags") == (None, None)
    req = aggregate_request(
        ChatRequest("m", QUESTION, params={"stream_options": {"include_usage": True}, "logprobs": True}), ["x", "y"], stream=False
    )
    assert "stream_options" not in req.params and "logprobs" not in req.params and len(req.messages) == 2


def test_the_builtin_executors_are_found_by_kind() -> None:
    assert {"single", "cascade", "fanout", "rounds"} <= set(plan_kinds())
    assert plan_executor("fanout").kind == "fanout" and plan_executor("rounds").kind == "rounds"
    with pytest.raises(ConfigError, match="cascade, fanout, rounds, single"):
        plan_executor("nope")


def test_excluded_members_shrink_the_fanout_and_two_are_needed() -> None:
    gw = gateway({m: answering("B") for m in ("a", "b", "c")}, FanoutPlanner("multi", ["a", "b", "c"], "vote"))
    d = gw.routes["multi"].decide(ChatRequest("multi", QUESTION), allowed={"a", "c"})
    assert d.plan is not None and [s.model for s in d.plan.steps] == ["a", "c"] and d.plan.params["min_answers"] == 1
    d = gw.routes["multi"].decide(ChatRequest("multi", QUESTION), allowed={"c"})
    assert d.plan is not None and d.plan.kind == "single"
