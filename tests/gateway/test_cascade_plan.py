"""Cascade plans in the gateway: escalation on low confidence only, every call paid and logged, log-probabilities
asked only when needed, the streamed answer identical to the accepted one, calibration, config checks."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from turnout.backends.base import Timeouts
from turnout.config import parse_config, resolve
from turnout.errors import ConfigError
from turnout.gateway import Backoff, CircuitBreaker, Gateway, ModelTarget, Price, RouteRuntime
from turnout.gateway.builder import build_gateway
from turnout.gateway.cascade import read_logprobs, step_request, strip_logprobs
from turnout.gateway.planners import CalibrationSample, CascadePlanner, StepSpec, build_planner, calibrate_thresholds
from turnout.gateway.requestlog import RequestLog
from turnout.routing.policy import Policy
from turnout.routing.registry import create_router
from turnout.testing.scripted import ScriptedBackend, Step
from turnout.types import ChatRequest, ChatResponse, Decision

MSG = [{"role": "user", "content": "What is the capital of France?"}]


class LogprobBackend(ScriptedBackend):
    """A scripted model that returns token log-probabilities (as llama.cpp and OpenAI do) when asked.

    Every token of its answer gets ``logprob``; the runner-up token ``logprob - margin``.
    """

    def __init__(self, name: str, script: Any = None, *, logprob: float = -0.1, margin: float = 2.0) -> None:
        super().__init__(name, script)
        self.logprob = logprob
        self.margin = margin

    async def complete(self, request: ChatRequest, *, model: str, timeouts: Timeouts | None = None) -> ChatResponse:
        resp = await super().complete(request, model=model, timeouts=timeouts)
        if request.params.get("logprobs") is True:
            top = int(request.params.get("top_logprobs") or 0)
            tokens = (resp.content or "").split()
            resp.body["choices"][0]["logprobs"] = {
                "content": [
                    {
                        "token": t,
                        "logprob": self.logprob,
                        "bytes": None,
                        "top_logprobs": [
                            {"token": t, "logprob": self.logprob, "bytes": None},
                            {"token": "x", "logprob": self.logprob - self.margin, "bytes": None},
                        ][:top],
                    }
                    for t in tokens
                ]
            }
        else:
            resp.body["choices"][0]["logprobs"] = None
        return resp


def target(name: str, backend: ScriptedBackend, price: float = 1.0, fallbacks: list[str] | None = None) -> ModelTarget:
    return ModelTarget(
        name=name,
        backend=backend,
        upstream=name,
        price=Price(price, 2 * price),
        fallbacks=fallbacks or [],
        timeouts=Timeouts(1.0, 0.5, 2.0),
        attempts=1,
        backoff=Backoff(0.001, 0.002),
        breaker=CircuitBreaker(3, 60.0),
    )


def route(planner: Any, quality: dict[str, float] | None = None, lam: float = 0.0) -> RouteRuntime:
    quality = quality or {"small": 0.5, "big": 0.9}
    return RouteRuntime(
        name="cascade",
        router=create_router("prior", quality=quality),
        router_name="prior",
        candidates={m: m for m in quality},
        prices={m: Price(1.0, 2.0) for m in quality},
        policy=Policy(lam=lam),
        plan=planner,
    )


def two_step(threshold: float = 0.6, accept: str = "logprob_mean", **first: Any) -> CascadePlanner:
    return CascadePlanner(
        "cascade", [StepSpec(model="small", accept=accept, threshold=threshold, **first), StepSpec(model="big")]
    )


def gateway(small: ScriptedBackend, big: ScriptedBackend, planner: Any, **kw: Any) -> Gateway:
    return Gateway({"small": target("small", small, 0.1), "big": target("big", big, 10.0)}, {"cascade": route(planner)}, **kw)


async def test_a_confident_cheap_answer_is_kept_and_the_strong_model_never_called() -> None:
    small = LogprobBackend("s", Step(text="Paris is the capital."), logprob=-0.05)
    big = LogprobBackend("b", Step(text="Paris."))
    gw = gateway(small, big, two_step(0.6))
    resp, decision, attempts = await gw.chat(ChatRequest("cascade", MSG))
    assert resp.content == "Paris is the capital." and big.count == 0
    assert [(a.model, a.role, a.accepted) for a in attempts] == [("small", "step", True)]
    assert attempts[0].confidence == pytest.approx(math.exp(-0.05))
    assert decision.plan is not None and decision.plan.kind == "cascade" and decision.model == "small"


async def test_a_doubtful_cheap_answer_escalates_and_is_paid_for() -> None:
    small = LogprobBackend("s", Step(text="Lyon maybe", prompt_tokens=10, completion_tokens=2), logprob=-2.0)
    big = LogprobBackend("b", Step(text="Paris.", prompt_tokens=10, completion_tokens=3))
    gw = gateway(small, big, two_step(0.6))
    resp, _, attempts = await gw.chat(ChatRequest("cascade", MSG))
    assert resp.content == "Paris." and small.count == 1 and big.count == 1
    assert [(a.model, a.status, a.accepted) for a in attempts] == [("small", "rejected", False), ("big", "ok", True)]
    assert attempts[0].confidence == pytest.approx(math.exp(-2.0))
    # the rejected answer is priced like any other: 10 in x 0.1 + 2 out x 0.2 per Mtok, plus the accepted one
    assert attempts[0].cost_usd == pytest.approx((10 * 0.1 + 2 * 0.2) / 1e6)
    assert attempts[1].cost_usd == pytest.approx((10 * 10 + 3 * 20) / 1e6)


async def test_the_escalation_path_is_in_the_log_the_headers_and_the_child_rows(tmp_path: Path) -> None:
    small = LogprobBackend("s", Step(text="Lyon maybe", prompt_tokens=10, completion_tokens=2), logprob=-2.0)
    big = LogprobBackend("b", Step(text="Paris.", prompt_tokens=10, completion_tokens=3))
    log = RequestLog(tmp_path / "log.sqlite", linger_s=0.0)
    gw = gateway(small, big, two_step(0.6), request_log=log)
    _, ctx = await gw.serve_chat(ChatRequest("cascade", MSG), request_id="r1")
    assert ctx.response_headers["x-turnout-cascade"] == "small:0.135<0.6:rejected,big:none:kept"
    steps = [n.data for n in ctx.notes if n.kind == "plan" and "step" in n.data]
    assert [(s["model"], s["accepted"]) for s in steps] == [("small", False), ("big", True)]
    assert steps[0]["value"] == pytest.approx(math.exp(-2.0)) and steps[0]["threshold"] == 0.6
    assert steps[0]["cost"] == pytest.approx((10 * 0.1 + 2 * 0.2) / 1e6)
    log.flush()
    entry = log.get("r1")
    assert entry is not None and entry.model == "big"
    assert [(c["model"], c["status"], bool(c["accepted"])) for c in entry.calls] == [
        ("small", "rejected", False),
        ("big", "ok", True),
    ]
    assert entry.calls[0]["confidence"] == pytest.approx(math.exp(-2.0))
    assert entry.cost_usd == pytest.approx(sum(c["cost_usd"] for c in entry.calls)) and entry.cost_usd > 0
    plan_reasons = [r for r in entry.decision["reasons"] if r["kind"] == "plan"]
    assert any("rejected" in r["detail"] for r in plan_reasons)
    await gw.aclose()
    log.close()


async def test_logprobs_are_asked_only_by_judged_steps_and_stripped_unless_the_client_asked() -> None:
    small = LogprobBackend("s", Step(text="Lyon maybe"), logprob=-2.0)
    big = LogprobBackend("b", Step(text="Paris."))
    gw = gateway(small, big, two_step(0.6))
    await gw.chat(ChatRequest("cascade", MSG, params={"max_tokens": 8, "stream_options": {"include_usage": True}}))
    sent_small, sent_big = small.requests[0].body, big.requests[0].body
    assert sent_small["logprobs"] is True and sent_small["top_logprobs"] == 2 and "stream_options" not in sent_small
    assert "logprobs" not in sent_big and sent_small["max_tokens"] == 8

    small2 = LogprobBackend("s", Step(text="Paris"), logprob=-0.01)
    gw2 = gateway(small2, LogprobBackend("b"), two_step(0.6))
    kept, _, _ = await gw2.chat(ChatRequest("cascade", MSG))
    assert kept.body["choices"][0]["logprobs"] is None  # measured for the cascade, not shown to the client
    asked, _, _ = await gw2.chat(ChatRequest("cascade", MSG, params={"logprobs": True, "top_logprobs": 1}))
    content = asked.body["choices"][0]["logprobs"]["content"]
    assert content and all(len(t["top_logprobs"]) == 1 for t in content)


async def test_a_signal_that_cannot_judge_escalates() -> None:
    # a backend that returns no log-probabilities: logprob_mean cannot judge, so the cascade escalates
    small = ScriptedBackend("s", Step(text="Paris"))
    big = ScriptedBackend("b", Step(text="Paris, France."))
    gw = gateway(small, big, two_step(0.01))
    resp, _, attempts = await gw.chat(ChatRequest("cascade", MSG))
    assert resp.content == "Paris, France." and attempts[0].confidence is None and attempts[0].accepted is False


@pytest.mark.parametrize("mode", ["buffer", "live_last"])
@pytest.mark.parametrize("escalate", [False, True])
async def test_the_streamed_answer_is_byte_identical_to_the_accepted_step(mode: str, escalate: bool) -> None:
    text_small = "Paris  is\tthe capital,\nwith «unicode» and   odd  spacing "
    text_big = "The capital of France is Paris. " * 5
    small = LogprobBackend("s", Step(text=text_small), logprob=-3.0 if escalate else -0.01)
    big = LogprobBackend("b", Step(text=text_big))
    planner = CascadePlanner(
        "cascade", [StepSpec(model="small", accept="logprob_mean", threshold=0.6), StepSpec(model="big")], stream=mode
    )
    gw = gateway(small, big, planner)
    whole, _, _ = await gw.chat(ChatRequest("cascade", MSG))
    session = await gw.chat_stream(ChatRequest("cascade", MSG, stream=True))
    streamed = "".join([c.text async for c in session])
    assert streamed == whole.content == (text_big if escalate else text_small)
    assert session.model == ("big" if escalate else "small")
    live = [a for a in session.attempts if a.ttft_s is not None]
    assert bool(live) == (escalate and mode == "live_last")  # only the last step may stream live


async def test_a_failed_step_escalates_and_a_failed_last_step_keeps_the_answer_in_hand() -> None:
    small = LogprobBackend("s", Step(fault="status", status=503))
    big = LogprobBackend("b", Step(text="Paris."))
    resp, _, attempts = await gateway(small, big, two_step(0.6)).chat(ChatRequest("cascade", MSG))
    assert resp.content == "Paris." and [a.status for a in attempts] == ["error", "ok"]

    small = LogprobBackend("s", Step(text="Lyon maybe"), logprob=-2.0)
    big = LogprobBackend("b", Step(fault="status", status=503))
    gw = gateway(small, big, two_step(0.6))
    resp, ctx = await gw.serve_chat(ChatRequest("cascade", MSG))
    assert resp.content == "Lyon maybe" and ctx.model == "small"
    assert [(a.model, a.status) for a in ctx.attempts] == [("small", "ok"), ("big", "error")]
    assert any("after the last step failed" in n.detail for n in ctx.notes)


async def test_max_calls_keeps_the_answer_in_hand() -> None:
    small = LogprobBackend("s", Step(text="Lyon maybe"), logprob=-2.0)
    big = LogprobBackend("b", Step(text="Paris."))
    planner = CascadePlanner(
        "cascade", [StepSpec(model="small", accept="logprob_mean", threshold=0.6, samples=1), StepSpec(model="big")], max_calls=2
    )
    resp, _, attempts = await gateway(small, big, planner).chat(ChatRequest("cascade", MSG))
    assert resp.content == "Lyon maybe" and big.count == 0
    assert sorted(a.role for a in attempts) == ["probe", "step"]


async def test_agreement_of_samples_and_of_a_probe_model() -> None:
    # self-consistency: two more samples of the same model; they agree, so the answer is kept
    small = ScriptedBackend("s", Step(text="42"))
    big = ScriptedBackend("b", Step(text="41"))
    planner = two_step(0.99, accept="agreement", samples=2)
    resp, _, attempts = await gateway(small, big, planner).chat(
        ChatRequest("cascade", [{"role": "user", "content": "6 times 7?"}])
    )
    assert resp.content == "42" and big.count == 0 and small.count == 3
    probes = [r.body for r in small.requests if r.body.get("temperature") == 0.8]
    assert len(probes) == 2 and [a.role for a in attempts].count("probe") == 2

    # ACAR's probe: a second cheap model disagrees, so the answer escalates
    small = ScriptedBackend("s", Step(text="42"))
    other = ScriptedBackend("o", Step(text="48"))
    big = ScriptedBackend("b", Step(text="42 it is"))
    planner = CascadePlanner(
        "cascade", [StepSpec(model="small", accept="agreement", threshold=0.5, probe=("other",)), StepSpec(model="big")]
    )
    gw = Gateway(
        {"small": target("small", small), "other": target("other", other), "big": target("big", big)},
        {"cascade": route(planner, {"small": 0.5, "other": 0.5, "big": 0.9})},
    )
    resp, ctx = await gw.serve_chat(ChatRequest("cascade", [{"role": "user", "content": "6 times 7?"}]))
    assert resp.content == "42 it is"
    by_model = {a.model: a for a in ctx.attempts}
    assert {m: a.role for m, a in by_model.items()} == {"small": "step", "other": "probe", "big": "step"}
    assert by_model["small"].confidence == 0.0 and by_model["small"].accepted is False
    assert by_model["other"].cost_usd > 0 and ctx.cost_usd == pytest.approx(sum(a.cost_usd for a in ctx.attempts))


def test_router_pick_chooses_the_best_utility_and_excluded_steps_are_left_out() -> None:
    planner = CascadePlanner(
        "cascade", [StepSpec(router_pick=("a", "b"), accept="logprob_mean", threshold=0.5), StepSpec(model="big")]
    )
    rt = route(planner, {"a": 0.4, "b": 0.6, "big": 0.9})
    d = rt.decide(ChatRequest("cascade", MSG))
    assert d.plan is not None and [s.model for s in d.plan.steps] == ["b", "big"] and d.model == "b"
    assert any(r.kind == "plan" and "cascade: b" in r.detail for r in d.reasons)
    d = rt.decide(ChatRequest("cascade", MSG), allowed={"a", "b"})  # a guard allowed only the cheap ones
    assert d.plan is not None and d.plan.kind == "single" and d.model == "b"
    d = rt.decide(ChatRequest("cascade", MSG), allowed={"a", "big"})
    assert d.plan is not None and [s.model for s in d.plan.steps] == ["a", "big"]


async def test_the_dry_run_shows_the_plan_and_calls_nothing() -> None:
    small, big = LogprobBackend("s"), LogprobBackend("b")
    gw = gateway(small, big, two_step(0.6))
    d = await gw.route(ChatRequest("cascade", MSG))
    body = d.to_dict()
    assert body["plan"]["kind"] == "cascade" and body["plan"]["steps"][0]["threshold"] == 0.6
    assert any(r["kind"] == "plan" for r in body["reasons"]) and small.count == big.count == 0
    json.dumps(body)  # /v1/route serialises it


def write_sample(path: Path, conf: list[float | None], *, test_rows: int = 0) -> Path:
    rows = []
    for i, c in enumerate(conf):
        rows.append({"prompt_id": f"p{i}", "model": "small", "signal": "logprob_mean", "confidence": c, "cost_usd": 1.0})
        rows.append({"prompt_id": f"p{i}", "model": "big", "signal": "logprob_mean", "confidence": 0.9, "cost_usd": 9.0})
    for i in range(test_rows):  # test rows never move a threshold
        rows.append(
            {
                "prompt_id": f"t{i}",
                "model": "small",
                "signal": "logprob_mean",
                "confidence": 0.0,
                "cost_usd": 1.0,
                "split": "test",
            }
        )
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_calibration_to_a_share_or_a_cost_on_training_rows_only(tmp_path: Path) -> None:
    conf = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, None, 0.95]
    sample = CalibrationSample.read(write_sample(tmp_path / "s.jsonl", conf, test_rows=50))
    assert len(sample.prompts) == 10
    steps = [StepSpec(model="small", accept="logprob_mean"), StepSpec(model="big")]
    (th,), report = calibrate_thresholds(steps, sample, target_escalation=0.3, target_cost=None)
    assert 0.2 < th <= 0.2 + 1e-9  # the unjudged one and the two lowest escalate: 30%
    assert report["train_share_reaching"] == [pytest.approx(0.3)]
    # cost: 1 + 9 x share <= 4.6 -> at most 40% escalate
    (th,), report = calibrate_thresholds(steps, sample, target_escalation=None, target_cost=4.6)
    assert report["train_mean_cost"] == pytest.approx(4.6) and report["train_share_reaching"] == [pytest.approx(0.4)]
    (th,), report = calibrate_thresholds(steps, sample, target_escalation=None, target_cost=0.5)
    assert th == 0.0 and report["train_share_reaching"] == [pytest.approx(0.1)]  # only the unjudged one


def config(plan: dict[str, Any], **route: Any) -> dict[str, Any]:
    return {
        "server": {"request_log": None},
        "backends": {"b": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {m: {"backend": "b"} for m in ("small", "big", "other")},
        "routes": {
            "cascade": {
                "router": {"type": "prior", "params": {"quality": {"small": 0.5, "big": 0.9}}},
                "candidates": ["small", "big"],
                "lambda": 0.0,
                "plan": plan,
                **route,
            }
        },
    }


CASCADE = {"kind": "cascade", "steps": [{"model": "small", "accept": "logprob_mean", "threshold": 0.6}, {"model": "big"}]}


@pytest.mark.parametrize(
    "plan, key, needle",
    [
        (
            {**CASCADE, "steps": [{"model": "small", "accept": "logprob_maen", "threshold": 0.6}, {"model": "big"}]},
            "routes.cascade.plan.steps[0].accept",
            "did you mean 'logprob_mean'",
        ),
        (
            {**CASCADE, "steps": [{"model": "other", "accept": "logprob_mean", "threshold": 0.6}, {"model": "big"}]},
            "routes.cascade.plan.steps[0].model",
            "add 'other' to routes.cascade.candidates",
        ),
        (
            {**CASCADE, "steps": [{"model": "small", "accept": "logprob_mean"}, {"model": "big"}]},
            "routes.cascade.plan.steps[0].threshold",
            "calibrate",
        ),
        (
            {**CASCADE, "steps": [{"model": "small", "threshold": 0.5}, {"model": "big"}]},
            "routes.cascade.plan.steps[0].accept",
            "add accept",
        ),
        (
            {**CASCADE, "steps": [{"model": "small", "accept": "margin", "threshold": 0.5}, {"model": "big", "threshold": 0.5}]},
            "routes.cascade.plan.steps[1].threshold",
            "remove it",
        ),
        (
            {
                "kind": "cascade",
                "steps": [{"model": "small", "accept": "logprob_mean"}, {"model": "big"}],
                "calibrate": {"sample": "nowhere.jsonl", "target_escalation": 0.3},
            },
            "routes.cascade.plan.calibrate.sample",
            "bench/cascade_calibrate.py",
        ),
        (
            {"kind": "fanout", "models": ["small", "big"], "aggregator": "bigg"},
            "routes.cascade.plan.aggregator",
            "did you mean 'big'",
        ),
    ],
)
def test_config_mistakes_name_the_key_and_the_fix(plan: dict[str, Any], key: str, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        resolve(parse_config(config(plan), source="t.yaml"))
    assert exc.value.key == key and needle in str(exc.value) and "t.yaml" in str(exc.value)


@pytest.mark.parametrize(
    "plan, needle",
    [
        ({**CASCADE, "models": ["small", "big"]}, "models do(es) not apply to a cascade plan"),
        ({"kind": "cascade", "steps": [{"model": "small"}]}, "at least two steps"),
        ({"kind": "cascade", "steps": [{"model": "small", "router_pick": ["big"]}, {"model": "big"}]}, "either model"),
        ({"kind": "fanout", "models": ["small", "big"]}, "needs an aggregator"),
        ({**CASCADE, "stream": "later"}, "'later' is not allowed"),
    ],
)
def test_plan_shape_mistakes_are_refused_at_parse_time(plan: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match="routes.cascade.plan") as exc:
        parse_config(config(plan), source="t.yaml")
    assert needle in str(exc.value)


def test_a_calibrated_cascade_is_built_from_config(tmp_path: Path) -> None:
    write_sample(tmp_path / "sample.jsonl", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    plan = {
        "kind": "cascade",
        "steps": [{"model": "small", "accept": "logprob_mean"}, {"model": "big"}],
        "calibrate": {"sample": "sample.jsonl", "target_escalation": 0.2},
    }
    cfg_path = tmp_path / "turnout.yaml"
    cfg_path.write_text(json.dumps(config(plan)))  # JSON is YAML
    from turnout.config import load_config

    cfg = load_config(cfg_path)
    planner = build_planner("cascade", cfg.routes["cascade"].plan)
    assert planner.steps[0].threshold == pytest.approx(0.2 + 1e-12)  # type: ignore[union-attr]
    gw = build_gateway(cfg)
    d = gw.routes["cascade"].decide(ChatRequest("cascade", MSG))
    plan_reason = next(r for r in d.reasons if r.kind == "plan")
    assert plan_reason.data["calibration"]["target_escalation"] == 0.2
    assert plan_reason.data["calibration"]["train_share_reaching"] == [pytest.approx(0.2)]


def test_read_and_strip_logprobs_in_openai_form() -> None:
    body = {
        "choices": [
            {
                "message": {"content": "a b"},
                "logprobs": {
                    "content": [
                        {
                            "token": "a",
                            "logprob": -0.5,
                            "top_logprobs": [{"token": "a", "logprob": -0.5}, {"token": "c", "logprob": -1.5}],
                        },
                        {"token": "b", "logprob": float("-inf"), "top_logprobs": []},
                    ]
                },
            }
        ]
    }
    lps, margins = read_logprobs(body)
    assert lps == [-0.5, -100.0] and margins == [pytest.approx(1.0)]
    assert read_logprobs({"choices": [{"message": {}}]}) == (None, None)
    resp = ChatResponse(body=json.loads(json.dumps(body).replace("-Infinity", "-1")))
    strip_logprobs(resp, None)
    assert resp.body["choices"][0]["logprobs"] is None
    req = step_request(ChatRequest("x", MSG, params={"logprobs": True, "top_logprobs": 5}), logprobs=True)
    assert req.params["top_logprobs"] == 5  # the client's wider ask is kept


def test_fixed_steps_need_no_router_prediction_and_the_decision_names_the_first_model() -> None:
    d = Decision(route="cascade", model="big", candidates=[], lam=0.0, router="prior")
    plan = two_step()(d)
    assert plan.kind == "cascade" and d.model == "small" and plan.steps[-1].threshold is None


def test_the_budget_hold_counts_every_step_and_every_probe() -> None:
    from turnout.gateway.context import RequestContext

    small, big = LogprobBackend("s"), LogprobBackend("b")
    planner = CascadePlanner(
        "cascade", [StepSpec(model="small", accept="agreement", threshold=0.5, samples=2), StepSpec(model="big")]
    )
    gw = gateway(small, big, planner)
    req = ChatRequest("cascade", MSG, params={"max_tokens": 100})
    plan = gw.routes["cascade"].decide(req).plan
    assert plan is not None and plan.params["extra_calls"] == ["small", "small"]
    from turnout.tokens import estimate_prompt_tokens

    pt = estimate_prompt_tokens(MSG)
    # three calls of small (the step and its two samples) and one of big, each up to max_tokens
    expected = 3 * gw.targets["small"].price.cost(pt, 100) + gw.targets["big"].price.cost(pt, 100)
    assert gw.ledger.worst_case_usd(RequestContext(req, "r"), plan) == pytest.approx(expected)


async def test_a_completion_only_backend_asks_for_and_returns_logprobs_in_chat_form() -> None:
    import httpx

    from turnout.backends.openai import OpenAIBackend

    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(
            200,
            json={
                "id": "cmpl-1",
                "object": "text_completion",
                "choices": [
                    {
                        "text": " Paris",
                        "index": 0,
                        "finish_reason": "stop",
                        "logprobs": {
                            "tokens": [" Par", "is"],
                            "token_logprobs": [-0.2, -0.01],
                            "text_offset": [0, 4],
                            "top_logprobs": [{" Par": -0.2, " Lyon": -2.0, " Rome": -3.0}, {"is": -0.01, "ish": -5.0}],
                        },
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
            },
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        backend = OpenAIBackend("g", "http://gemma/v1", client=client, completion_template="Q: {prompt}\nA:")
        resp = await backend.complete(step_request(ChatRequest("x", MSG), logprobs=True), model="gemma")
        plain = await backend.complete(ChatRequest("x", MSG), model="gemma")
    assert sent[0]["logprobs"] == 2 and "top_logprobs" not in sent[0]  # the completions API's one count
    assert "logprobs" not in sent[1]
    lps, margins = read_logprobs(resp.body)
    assert lps == [-0.2, -0.01] and margins == [pytest.approx(1.8), pytest.approx(4.99)]
    assert [t["token"] for t in resp.body["choices"][0]["logprobs"]["content"][0]["top_logprobs"]] == [" Par", " Lyon"]
    assert "logprobs" not in plain.body["choices"][0]
