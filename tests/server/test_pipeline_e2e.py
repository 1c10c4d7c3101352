"""The request pipeline end to end: the official ``openai`` client against ``create_app`` on a real uvicorn,
streamed and not, over :class:`ScriptedServer` upstreams reached by the real ``openai`` protocol backend.

* stages defined in this module block, redirect, answer (cache-like) and transform requests; they are
  configured both ways a user can: from a YAML file's ``stages:`` (a dotted path ``test_pipeline_e2e:Class``,
  importable because pytest puts this folder on ``sys.path``, and a name given to :func:`register_stage`), and
  in code through ``Gateway(..., stages=Stages([...]))``;
* a two-step plan (an executor registered here) whose first answer is rejected charges and logs both calls;
* a stream cut after its commit, or left by its client, is charged what was generated everywhere;
* a stage's bug is an OpenAI 500 (or an in-band error once the stream is committed) and logged; a completion
  hook's failure never reaches the client; a client hanging up on a held request leaves no hold.
"""

from __future__ import annotations

import json
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from turnout.backends.registry import create_backend
from turnout.config import load_config
from turnout.errors import PermissionDeniedError
from turnout.gateway import Gateway, ModelTarget
from turnout.gateway.budget import RouteBudget
from turnout.gateway.builder import build_gateway
from turnout.gateway.context import RequestContext
from turnout.gateway.metrics import Metrics
from turnout.gateway.plans import register_plan
from turnout.gateway.requestlog import RequestLog
from turnout.gateway.stages import Answer, Block, Redirect, Stages, register_stage
from turnout.routing.base import Prediction
from turnout.testing import Rule, Script, ScriptedServer, Step
from turnout.types import ChatResponse, Plan, PlanStep, Price, Usage

from server_helpers import Served, fleet_config

#: the answer alpha gives to "tell": a phrase to redact split over two stream chunks, and a prefix of it at the end
SECRET_ANSWER = "Our plan is top secret and we stay on top"
REDACTED = "Our plan is [redacted] and we stay on top"
MSG_HI = [{"role": "user", "content": "hi"}]
CANNED_Q = "what is turnout?"
CANNED_A = "turnout routes every LLM request to the right model."


# ------------------------------------------------------------------------------------------- the test's stages
class KeywordGuard:
    """A guard: refuses prompts that contain ``word``, sends prompts that contain ``divert`` to ``to``."""

    phase = "guard"

    def __init__(self, word: str, divert: str, to: str, name: str = "keyword-guard") -> None:
        self.word = word
        self.divert = divert
        self.to = to
        self.name = name

    async def on_request(self, ctx: RequestContext) -> Block | Redirect | None:
        text = ctx.last_user_text
        if self.word in text:
            return Block(PermissionDeniedError(f"the prompt mentions {self.word!r}"))
        if self.divert in text:
            return Redirect(route=self.to, reason=f"the prompt mentions {self.divert!r}")
        return None


class CannedCache:
    """A cache-like stage: answers one question itself; is told of every model answer a client received."""

    phase = "cache"

    def __init__(self, question: str, answer: str, name: str = "canned") -> None:
        self.question = question
        self.answer = answer
        self.name = name
        self.completed: list[str | None] = []

    async def on_request(self, ctx: RequestContext) -> Answer | None:
        if ctx.last_user_text != self.question:
            return None
        body = {
            "id": "chatcmpl-canned",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "canned",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.answer}, "finish_reason": "stop"}],
        }
        return Answer(
            ChatResponse(body=body, usage=Usage(0, 0)),
            source="cache",
            model="canned",
            reason="a canned answer",
            headers={"x-test-cache": "hit"},
        )

    async def on_complete(self, ctx: RequestContext, response: ChatResponse) -> None:
        self.completed.append(response.content)


class _PhraseFilter:
    """Masks ``phrase`` in a stream, holding back the end of the text while it could be the phrase's start."""

    def __init__(self, phrase: str, mask: str) -> None:
        self.phrase = phrase
        self.mask = mask
        self.buf = ""
        self.held_back = 0  # how many times text was held back (the test asserts it happened)

    def feed(self, text: str) -> str:
        self.buf = (self.buf + text).replace(self.phrase, self.mask)
        keep = next(
            (k for k in range(min(len(self.buf), len(self.phrase) - 1), 0, -1) if self.phrase.startswith(self.buf[-k:])), 0
        )
        if keep:
            self.held_back += 1
        out, self.buf = (self.buf[:-keep], self.buf[-keep:]) if keep else (self.buf, "")
        return out

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


class Redact:
    """A response stage: masks ``phrase`` in whole answers and, holding text back, in streamed ones."""

    phase = "response"

    def __init__(self, phrase: str, mask: str = "[redacted]", name: str = "redact") -> None:
        self.phrase = phrase
        self.mask = mask
        self.name = name
        self.filters: list[_PhraseFilter] = []

    def on_response(self, ctx: RequestContext, response: ChatResponse) -> ChatResponse:
        content = response.content
        if content and self.phrase in content:
            body = dict(response.body)
            choice = dict(body["choices"][0])
            choice["message"] = {**choice["message"], "content": content.replace(self.phrase, self.mask)}
            body["choices"] = [choice]
            ctx.response_headers["x-test-redacted"] = "yes"
            return ChatResponse(body=body, usage=response.usage)
        return response

    def stream_filter(self, ctx: RequestContext) -> _PhraseFilter:
        f = _PhraseFilter(self.phrase, self.mask)
        self.filters.append(f)
        return f


register_stage("test-keyword-guard", KeywordGuard)


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture
def upstreams() -> Iterator[tuple[ScriptedServer, ScriptedServer]]:
    a = ScriptedServer(
        Script(
            default=Step(text="alpha says hi", prompt_tokens=10, completion_tokens=4),
            rules=[Rule(match="tell", step=Step(text=SECRET_ANSWER, prompt_tokens=10, completion_tokens=10))],
        )
    ).start()
    b = ScriptedServer(Step(text="beta says hi", prompt_tokens=10, completion_tokens=3)).start()
    yield a, b
    a.stop()
    b.stop()


def _yaml(tmp_path: Path, a: ScriptedServer, b: ScriptedServer) -> Path:
    """A turnout.yaml whose stages are this module's classes, by dotted path and by registered name."""
    path = tmp_path / "turnout.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        server:
          request_log: {tmp_path / "log.sqlite"}
        backends:
          b-alpha: {{protocol: openai, base_url: "{a.base_url}", timeouts: {{connect: 1, first_token: 2, total: 5}}}}
          b-beta: {{protocol: openai, base_url: "{b.base_url}", timeouts: {{connect: 1, first_token: 2, total: 5}}}}
        models:
          alpha: {{backend: b-alpha, upstream_model: scripted, price: {{input_per_mtok: 1, output_per_mtok: 2}}}}
          beta: {{backend: b-beta, upstream_model: scripted, price: {{input_per_mtok: 1, output_per_mtok: 2}}}}
        routes:
          auto:
            router: {{type: prior, params: {{quality: {{alpha: 0.9, beta: 0.5}}}}}}
            candidates: [alpha, beta]
            lambda: 0.0
        stages:
          - type: test-keyword-guard
            name: keywords
            params: {{word: forbidden, divert: divert-me, to: beta}}
          - type: test_pipeline_e2e:CannedCache
            params: {{question: "{CANNED_Q}", answer: "{CANNED_A}"}}
          - type: test_pipeline_e2e:Redact
            params: {{phrase: top secret}}
        """)
    )
    return path


def _ask(client: openai.OpenAI, prompt: str, *, stream: bool, model: str = "auto") -> tuple[str, httpx.Headers]:
    """The answer's text and the response headers, streamed or not."""
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt}], stream=stream
    )
    if not stream:
        return raw.parse().choices[0].message.content or "", raw.headers
    return "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices), raw.headers


def _rows(gw: Gateway) -> list[Any]:
    log = gw.request_log
    assert isinstance(log, RequestLog)
    log.flush()
    return log.query(limit=None)


# ------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_yaml_stages_block_redirect_answer_and_transform_through_the_openai_client(
    upstreams: tuple[ScriptedServer, ScriptedServer], tmp_path: Path, stream: bool
) -> None:
    a, b = upstreams
    gw = build_gateway(load_config(_yaml(tmp_path, a, b)))
    assert gw.stages.names() == ["keywords", "test_pipeline_e2e:CannedCache", "test_pipeline_e2e:Redact"]
    cache, redact = gw.stages.all[1], gw.stages.all[2]
    assert isinstance(cache, CannedCache) and isinstance(redact, Redact)  # the very classes of this module
    with Served(gw) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)

        # block: a 403 before any model is called
        with pytest.raises(openai.PermissionDeniedError) as blocked:
            _ask(client, "something forbidden", stream=stream)
        assert "forbidden" in str(blocked.value)
        assert a.count == 0 and b.count == 0

        # redirect: auto would pick alpha; the guard sends the request to beta
        text, headers = _ask(client, "please divert-me", stream=stream)
        assert text == "beta says hi" and headers["x-turnout-model"] == "beta" and a.count == 0 and b.count == 1

        # answer without a model (cache-like), with the stage's header and the answer source
        text, headers = _ask(client, CANNED_Q, stream=stream)
        assert text == CANNED_A
        assert headers["x-turnout-answered-by"] == "cache" and headers["x-test-cache"] == "hit"
        assert headers["x-turnout-model"] == "canned" and a.count == 0 and b.count == 1

        # transform: the phrase is masked; streamed, across the chunk boundary between "top " and "secret "
        text, headers = _ask(client, "tell me the plan", stream=stream)
        assert text == REDACTED and headers["x-turnout-model"] == "alpha" and a.count == 1
        if stream:
            assert redact.filters and redact.filters[-1].held_back >= 2  # "top " mid-stream, then the final "top"
        else:
            assert headers["x-test-redacted"] == "yes"

        # the completion hook saw the model answers the clients got (redacted), not the stage's own answer
        assert cache.completed == ["beta says hi", REDACTED]
        metrics = httpx.get(srv.root + "/metrics").text

    rows = {r.prompt: r for r in _rows(gw)}
    assert (
        rows["something forbidden"].status,
        rows["something forbidden"].error_kind,
        rows["something forbidden"].http_status,
    ) == ("error", "permission_denied", 403)
    redirected = rows["please divert-me"]
    assert redirected.model == "beta" and redirected.status == "ok" and redirected.cost_usd > 0
    assert any(r["kind"] == "redirect" for r in redirected.decision["reasons"])
    canned = rows[CANNED_Q]
    assert (canned.answered_by, canned.model, canned.cost_usd, canned.calls) == ("cache", "canned", 0.0, [])
    assert rows["tell me the plan"].response_text == REDACTED  # the log keeps what the client got
    assert 'turnout_stage_outcomes_total{outcome="block",stage="keywords"} 1.0' in metrics
    assert 'turnout_stage_outcomes_total{outcome="redirect",stage="keywords"} 1.0' in metrics
    assert 'turnout_answered_by_total{route="auto",source="cache"} 1.0' in metrics


def test_stages_given_in_code_act_the_same_streamed_and_not(
    upstreams: tuple[ScriptedServer, ScriptedServer], tmp_path: Path
) -> None:
    a, b = upstreams
    price = Price(1.0, 2.0)
    targets = {
        name: ModelTarget(name, create_backend("openai", f"b-{name}", base_url=up.base_url), "scripted", price=price)
        for name, up in (("alpha", a), ("beta", b))
    }
    guard = KeywordGuard("forbidden", "divert-me", "beta", name="kw")
    cache = CannedCache(CANNED_Q, CANNED_A)
    redact = Redact("top secret")
    gw = Gateway(
        targets, metrics=Metrics(), request_log=RequestLog(tmp_path / "log.sqlite"), stages=Stages([guard, cache, redact])
    )
    with Served(gw) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)
        for stream in (False, True):
            with pytest.raises(openai.PermissionDeniedError):
                _ask(client, "forbidden", stream=stream, model="alpha")
            assert _ask(client, "divert-me", stream=stream, model="alpha")[1]["x-turnout-model"] == "beta"
            assert _ask(client, CANNED_Q, stream=stream, model="alpha")[0] == CANNED_A
            assert _ask(client, "tell", stream=stream, model="alpha")[0] == REDACTED
        assert (a.count, b.count) == (2, 2)
        # the dry run says what the stages would do, and calls nothing
        r = httpx.post(srv.base_url + "/route", json={"model": "alpha", "messages": [{"role": "user", "content": "forbidden"}]})
        assert r.status_code == 200 and "kw would refuse" in r.text and (a.count, b.count) == (2, 2)
    statuses = sorted((r.prompt, r.status) for r in _rows(gw))
    assert statuses == sorted([("forbidden", "error"), ("divert-me", "ok"), (CANNED_Q, "ok"), ("tell", "ok")] * 2)


def test_a_stages_own_answer_is_final_streamed_and_not(upstreams: tuple[ScriptedServer, ScriptedServer]) -> None:
    """A stage's answer (a cache hit, a canned reply) is not passed through the response stages again, whether the
    client streams or not: a cached answer was already transformed when it was stored, and a client must get the
    same text either way."""
    a, _ = upstreams
    targets = {"alpha": ModelTarget("alpha", create_backend("openai", "b-alpha", base_url=a.base_url), "scripted")}
    # the canned answer itself contains the phrase: were it transformed, one way would differ from the other
    gw = Gateway(targets, stages=Stages([CannedCache(CANNED_Q, "it is top secret"), Redact("top secret")]))
    with Served(gw) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)
        whole = _ask(client, CANNED_Q, stream=False, model="alpha")[0]
        streamed = _ask(client, CANNED_Q, stream=True, model="alpha")[0]
    assert whole == streamed == "it is top secret"


# ------------------------------------------------------------------------------- plans and their accounting
def metric(text: str, name: str, **labels: str) -> float:
    """The value of sample ``name`` with ``labels`` in a /metrics page (0.0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


class RejectFirst:
    """A two-step plan: both steps' models are called, the first answer is rejected, the second is kept."""

    kind = "test-reject-first"

    async def complete(self, caller: Any, plan: Plan) -> ChatResponse:
        first, second = plan.steps
        _, a1 = await caller.complete([first.model, *first.fallbacks], role="step", step=0)
        a1.accepted = False
        resp, a2 = await caller.complete([second.model, *second.fallbacks], role="step", step=1)
        a2.accepted = True
        caller.ctx.model = a2.model
        return resp

    async def open_stream(self, caller: Any, plan: Plan) -> ChatResponse:
        return await self.complete(caller, plan)  # whole answers are judged, then the kept one is streamed


register_plan(RejectFirst())


@pytest.fixture
def team_key(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    monkeypatch.setenv("TEAM_KEY", "sk-team")
    return [{"name": "team", "key_env": "TEAM_KEY", "budget_usd": 1.0}]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_two_step_plan_whose_first_answer_is_rejected_charges_both_calls_and_logs_both(
    upstreams: tuple[ScriptedServer, ScriptedServer], tmp_path: Path, team_key: list[dict[str, Any]], stream: bool
) -> None:
    a, b = upstreams
    gw = build_gateway(
        fleet_config({"alpha": a.base_url, "beta": b.base_url}, keys=team_key, request_log=str(tmp_path / "log.sqlite"))
    )
    gw.routes["auto"].plan = lambda d: Plan("test-reject-first", [PlanStep("alpha"), PlanStep("beta")])
    alpha_cost = 10 * 1e-6 + 4 * 2e-6  # the scripted usage at the fleet's prices (1 and 2 USD per Mtok)
    beta_cost = 10 * 1e-6 + 3 * 2e-6
    with Served(gw) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="sk-team", max_retries=0)
        text, headers = _ask(client, "hello", stream=stream)
        assert text == "beta says hi" and headers["x-turnout-model"] == "beta"
        assert headers["x-turnout-plan"] == "test-reject-first"
        assert headers["x-turnout-calls"] == "alpha:rejected,beta:ok"
        assert (a.count, b.count) == (1, 1)
        metrics = httpx.get(srv.root + "/metrics").text
    assert gw.state.get_now("spend:team") == pytest.approx(alpha_cost + beta_cost)
    assert gw.state.held("team") == 0.0
    assert metric(metrics, "turnout_cost_usd_total", route="auto") == pytest.approx(alpha_cost + beta_cost)
    # each call's spend is counted on the model that made it, not all on the one that answered
    assert metric(metrics, "turnout_cost_usd_total", route="auto", model="alpha") == pytest.approx(alpha_cost)
    assert metric(metrics, "turnout_cost_usd_total", route="auto", model="beta") == pytest.approx(beta_cost)
    (row,) = _rows(gw)
    assert row.cost_usd == pytest.approx(alpha_cost + beta_cost) and row.status == "ok" and row.model == "beta"
    assert [(c["model"], c["role"], c["step"], c["status"], c["accepted"]) for c in row.calls] == [
        ("alpha", "step", 0, "rejected", False),
        ("beta", "step", 1, "ok", True),
    ]
    assert [c["cost_usd"] for c in row.calls] == [pytest.approx(alpha_cost), pytest.approx(beta_cost)]
    assert (row.prompt_tokens, row.completion_tokens) == (20, 7)


def _budgeted(gw: Gateway) -> RouteBudget:
    """Give route auto a cost budget whose running figures live in the gateway's state (what observe() writes)."""
    pred = Prediction(models=["alpha", "beta"], quality=np.array([[0.9, 0.5]] * 4), cost=np.array([[1e-3, 1e-4]] * 4))
    budget = RouteBudget.calibrate(pred, target_cost=1.0, counters=gw.state, route="auto")
    gw.routes["auto"].budget = budget
    return budget


def _wait_for(check: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the request to be accounted")
        time.sleep(0.02)


@pytest.mark.parametrize("ending", ["cut-after-commit", "client-disconnect"])
def test_a_stream_cut_after_commit_or_left_by_its_client_charges_what_was_generated_everywhere(
    tmp_path: Path, team_key: list[dict[str, Any]], ending: str
) -> None:
    """The issue: such a stream was logged at cost 0 and charged the key nothing. Now the key, the route budget,
    the metrics and the log all get what was generated (no usage was sent: tokens estimated from the text)."""
    words = " ".join(f"w{i}" for i in range(200))
    step = Step(text="w1 w2 w3 w4 w5 w6", fault="cut") if ending == "cut-after-commit" else Step(text=words, slow=0.02)
    up = ScriptedServer(step).start()
    try:
        gw = build_gateway(fleet_config({"alpha": up.base_url}, keys=team_key, request_log=str(tmp_path / "log.sqlite")))
        budget = _budgeted(gw)
        with Served(gw) as srv:
            got: list[str] = []
            with httpx.stream(
                "POST",
                srv.base_url + "/chat/completions",
                timeout=10,
                headers={"authorization": "Bearer sk-team"},
                json={"model": "auto", "stream": True, "messages": [{"role": "user", "content": "go"}]},
            ) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        got.append(line[6:])
                        if ending == "client-disconnect" and len(got) == 3:
                            break  # hang up
            status = "error" if ending == "cut-after-commit" else "cancelled"
            _wait_for(lambda: f'status="{status}"' in httpx.get(srv.root + "/metrics").text)
            metrics = httpx.get(srv.root + "/metrics").text
        if ending == "cut-after-commit":
            assert got[-1] == "[DONE]" and "upstream_protocol" in got[-2]  # said in-band, not truncated
        (row,) = _rows(gw)
        assert row.status == status and row.model == "alpha"
        assert row.completion_tokens >= (3 if ending == "cut-after-commit" else 2)
        cost = row.cost_usd
        assert cost > 0 and cost == pytest.approx(row.calls[0]["cost_usd"])
        assert gw.state.get_now("spend:team") == pytest.approx(cost) and gw.state.held("team") == 0.0
        assert (budget.requests, budget.spend_usd) == (1, pytest.approx(cost))
        assert metric(metrics, "turnout_cost_usd_total", route="auto", model="alpha") == pytest.approx(cost)
        assert metric(metrics, "turnout_requests_total", route="auto", model="alpha", status=status) == 1.0
    finally:
        up.stop()


# ------------------------------------------------------------------------------ stages that fail, clients that leave
class BuggyGuard:
    """A guard with a bug: it raises something that is not a TurnoutError."""

    phase = "guard"
    name = "buggy-guard"

    async def on_request(self, ctx: RequestContext) -> None:
        if "bug" in ctx.last_user_text:
            raise KeyError("a guard's bug")


class BuggyResponse:
    """A response stage with a bug in its whole-answer check and in its stream filter."""

    phase = "response"
    name = "buggy-response"

    def on_response(self, ctx: RequestContext, response: ChatResponse) -> ChatResponse:
        if "bug" in ctx.last_user_text:
            raise ZeroDivisionError("a response stage's bug")
        return response

    def stream_filter(self, ctx: RequestContext) -> _PhraseFilter:
        class Exploding(_PhraseFilter):
            def feed(self, text: str) -> str:
                if "bug" in ctx.last_user_text and "three" in text:
                    raise ZeroDivisionError("a stream filter's bug")
                return text

        return Exploding("", "")


class FailingHook:
    """A completion hook (a cache's store, say) that fails."""

    phase = "response"
    name = "failing-hook"

    def on_response(self, ctx: RequestContext, response: ChatResponse) -> ChatResponse:
        return response

    async def on_complete(self, ctx: RequestContext, response: ChatResponse) -> None:
        raise OSError("the cache's disk is full")


def _plain(up: ScriptedServer, stages: list[Any], tmp_path: Path) -> Gateway:
    target = ModelTarget("alpha", create_backend("openai", "b-alpha", base_url=up.base_url), "scripted", price=Price(1.0, 2.0))
    return Gateway({"alpha": target}, metrics=Metrics(), request_log=RequestLog(tmp_path / "log.sqlite"), stages=Stages(stages))


@pytest.mark.parametrize("stage", ["guard", "response"])
def test_a_stage_that_raises_a_bug_gives_an_openai_500_or_an_in_band_error_and_is_logged(tmp_path: Path, stage: str) -> None:
    up = ScriptedServer(Step(text="one two three four", prompt_tokens=5, completion_tokens=4)).start()
    try:
        gw = _plain(up, [BuggyGuard() if stage == "guard" else BuggyResponse()], tmp_path)
        with Served(gw) as srv:
            client = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)
            with pytest.raises(openai.InternalServerError) as err:
                client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "a bug"}])
            assert err.value.body["type"] == "internal_error" and "'s bug" not in err.value.body["message"]  # not echoed
            assert len(err.value.response.headers["x-turnout-request-id"]) == 32
            r = httpx.post(
                srv.base_url + "/chat/completions",
                timeout=10,
                json={"model": "alpha", "stream": True, "messages": [{"role": "user", "content": "a bug"}]},
            )
            if stage == "guard":  # before the commit: a 500 like any other
                assert r.status_code == 500 and r.json()["error"]["type"] == "internal_error"
            else:  # the filter fails after the commit: the stream says so in-band and ends, never truncated
                events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
                assert r.status_code == 200 and events[-1] == "[DONE]"
                assert json.loads(events[-2])["error"]["type"] == "internal_error"
                assert "one" in events[0]
            # the stages' bugs do not hurt the next requests
            ok = client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "fine"}])
            assert ok.choices[0].message.content == "one two three four"
            metrics = httpx.get(srv.root + "/metrics").text
        logged = sorted(_rows(gw), key=lambda r: r.ts)
    finally:
        up.stop()
    assert metric(metrics, "turnout_errors_total", kind="internal_error") == 2.0
    assert metric(metrics, "turnout_requests_total", status="error") == 2.0
    bugs = [r for r in logged if r.prompt == "a bug"]
    assert [(r.status, r.error_kind) for r in bugs] == [("error", "internal_error")] * 2
    assert bugs[0].http_status == 500 and bugs[1].http_status == (500 if stage == "guard" else 200)
    if stage == "response":  # the model answered before the bug: both answers are paid for
        assert all(r.cost_usd > 0 for r in bugs)


def test_a_completion_hook_that_raises_never_reaches_the_client(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    up = ScriptedServer(Step(text="one two three")).start()
    try:
        gw = _plain(up, [FailingHook()], tmp_path)
        with Served(gw) as srv:
            client = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)
            for stream in (False, True):
                assert _ask(client, "hi", stream=stream, model="alpha")[0] == "one two three"
        logged = _rows(gw)
    finally:
        up.stop()
    assert [r.status for r in logged] == ["ok", "ok"]
    assert caplog.text.count("completion hook failing-hook failed") == 2 and "disk is full" in caplog.text


def test_a_client_that_hangs_up_on_a_whole_answer_while_its_budget_is_held_leaves_no_hold(
    tmp_path: Path, team_key: list[dict[str, Any]]
) -> None:
    up = ScriptedServer(Step(text="late", latency=1.5)).start()
    try:
        gw = build_gateway(
            fleet_config(
                {"alpha": up.base_url},
                keys=team_key,
                request_log=str(tmp_path / "log.sqlite"),
                backend_extra={"timeouts": {"connect": 1, "first_token": 5, "total": 5}},
            )
        )
        with Served(gw) as srv:
            client = openai.OpenAI(base_url=srv.base_url, api_key="sk-team", max_retries=0, timeout=0.4)
            seen: list[float] = []  # what the key holds while the request runs (the server's thread writes it)

            def watch() -> None:
                for _ in range(30):
                    seen.append(gw.state.held("team"))
                    time.sleep(0.01)

            watcher = threading.Thread(target=watch)
            watcher.start()
            with pytest.raises(openai.APITimeoutError):
                client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "hi"}])
            watcher.join()
            _wait_for(lambda: 'status="cancelled"' in httpx.get(srv.root + "/metrics").text)
            assert max(seen) > 0, "no hold was seen while the request ran"
            assert gw.state.held("team") == 0.0 and gw.state.get_now("spend:team") == 0.0
            # the key's budget is whole again: the next request is admitted
            patient = openai.OpenAI(base_url=srv.base_url, api_key="sk-team", max_retries=0)
            assert patient.chat.completions.create(model="alpha", messages=MSG_HI).choices[0].message.content == "late"
        (row, _) = sorted(_rows(gw), key=lambda r: r.ts)
    finally:
        up.stop()
    assert (row.status, row.error_kind, row.key_name, row.http_status) == ("cancelled", "client_disconnect", "team", None)
