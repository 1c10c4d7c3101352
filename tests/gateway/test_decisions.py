"""Decision rules in the gateway: signals -> the matched decision -> route, candidates, router, lambda, cost cap,
params and plugins; explanations; start-up errors with file, key and fix; hot reload of the decisions file."""

from __future__ import annotations

import asyncio
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest

from turnout.config import load_config
from turnout.errors import ConfigError
from turnout.gateway import Gateway
from turnout.gateway.builder import build_gateway
from turnout.gateway.signal_stage import DecisionStage
from turnout.testing.scripted import ScriptedServer, Step
from turnout.types import ChatRequest


@pytest.fixture(scope="module")
def ups():
    a = ScriptedServer(Step(text="from alpha")).start()
    b = ScriptedServer(Step(text="from beta")).start()
    yield a, b
    a.stop()
    b.stop()


def config(tmp_path: Path, ups, body: str, *, name: str = "turnout.yaml") -> Path:
    a, b = ups
    path = tmp_path / name
    path.write_text(
        textwrap.dedent(f"""\
        server: {{request_log: null, metrics: false}}
        backends:
          ba: {{protocol: openai, base_url: "{a.base_url}"}}
          bb: {{protocol: openai, base_url: "{b.base_url}"}}
        models:
          alpha: {{backend: ba, upstream_model: scripted, price: {{input_per_mtok: 10, output_per_mtok: 30}}}}
          beta: {{backend: bb, upstream_model: scripted, price: {{input_per_mtok: 0.1, output_per_mtok: 0.2}}}}
        routes:
          auto:
            router: {{type: prior, params: {{quality: {{alpha: 0.9, beta: 0.5}}}}}}
            candidates: [alpha, beta]
            lambda: 0
        signals:
          kw: {{type: keywords, params: {{sets: {{code: [python, "stack trace"], legal: [contract]}}}}}}
          rx: {{type: regex, params: {{patterns: {{ticket: 'TCK-\\d+'}}}}}}
          tok: {{type: tokens}}
          key: {{type: key}}
        """)
        + textwrap.dedent(body)
    )
    return path


def gateway(path: Path) -> Gateway:
    return build_gateway(load_config(path))


def ask(text: str, model: str = "auto", **params: Any) -> ChatRequest:
    return ChatRequest(model, [{"role": "user", "content": text}], params=dict(params))


async def test_keyword_decision_sends_the_request_elsewhere_with_its_plugins(tmp_path, ups) -> None:
    _, b = ups
    gw = gateway(
        config(
            tmp_path,
            ups,
            """\
        decisions:
          - name: code
            priority: 10
            when: {signal: kw.code, is: true}
            use: {route: beta, params: {max_tokens: 77, reasoning_effort: low}}
            plugins:
              - {type: system_prompt, params: {text: "Answer with code only.", mode: replace}}
              - {type: add_headers, params: {headers: {x-why: "code:{kw}"}}}
          - name: tickets
            priority: 5
            when: {signal: rx.ticket, is: true}
            use: {candidates: [beta]}
        """,
        )
    )
    before = b.count
    resp, ctx = await gw.serve_chat(
        ChatRequest(
            "auto",
            [{"role": "system", "content": "be chatty"}, {"role": "user", "content": "my python loop hangs"}],
            params={"max_tokens": 5},
        )
    )
    assert resp.content == "from beta" and ctx.model == "beta" and ctx.rule == "code"
    sent = b.requests[before].body
    assert sent["max_tokens"] == 77 and sent["reasoning_effort"] == "low"
    assert sent["messages"] == [
        {"role": "system", "content": "Answer with code only."},
        {"role": "user", "content": "my python loop hangs"},
    ]
    assert ctx.response_headers["x-why"] == "code:code"
    rule = next(r for r in ctx.decision.reasons if r.kind == "rule")
    assert rule.data["matched"] == "code"
    assert rule.data["evaluated"][0]["why"] == "kw.code is true (kw.code = true): yes"
    assert rule.data["evaluated"][1]["evaluated"] is False  # tried in order; the first match wins
    assert ctx.decision.signals["kw"] == ["code"] and "rx.ticket" in ctx.decision.signals
    assert "tok" not in ctx.decision.signals  # no rule reads it: not computed
    # the second decision restricts the route's candidates instead
    resp, ctx = await gw.serve_chat(ask("see TCK-1234"))
    assert ctx.model == "beta" and ctx.rule == "tickets" and ctx.decision.route == "auto"
    # no match: the route decides as configured; every decision tried is explained
    resp, ctx = await gw.serve_chat(ask("hello"))
    assert ctx.model == "alpha" and ctx.rule is None
    rule = next(r for r in ctx.decision.reasons if r.kind == "rule")
    assert rule.data["matched"] is None and [e["matched"] for e in rule.data["evaluated"]] == [False, False]
    await gw.aclose()


async def test_router_lambda_and_cost_cap_overrides(tmp_path, ups) -> None:
    gw = gateway(
        config(
            tmp_path,
            ups,
            """\
        decisions:
          - {name: cheap, priority: 3, when: {signal: kw.legal, is: true}, use: {lambda: 1000000}}
          - {name: capped, priority: 2, when: {signal: rx.ticket, is: true},
             use: {budget: {max_cost_per_request: 0.0001}}}
          - {name: other-router, priority: 1, when: {signal: tok.last, gt: 50},
             use: {router: {type: prior, params: {quality: {alpha: 0.1, beta: 0.8}}}}}
        """,
        )
    )
    d = await gw.route(ask("review this contract"))
    assert d.model == "beta" and d.lam == 1_000_000 and d.rule == "cheap"
    d = await gw.route(ask("TCK-9 please"))
    alpha = next(c for c in d.candidates if c.model == "alpha")
    assert d.model == "beta" and "max_cost" in (alpha.excluded or "")
    d = await gw.route(ask("word " * 60))
    assert d.model == "beta" and d.rule == "other-router"
    assert next(c for c in d.candidates if c.model == "beta").quality == 0.8
    d = await gw.route(ask("hello"))
    assert d.model == "alpha" and d.lam == 0  # the route's own, unchanged by earlier requests
    await gw.aclose()


async def test_scope_dry_run_and_models_asked_by_name(tmp_path, ups) -> None:
    gw = gateway(
        config(
            tmp_path,
            ups,
            """\
        decisions:
          - {name: code, priority: 1, when: {signal: kw.code, is: true}, use: {route: beta}}
          - {name: for-alpha, priority: 0, applies_to: [alpha], when: {signal: kw.legal, is: true},
             use: {route: beta}}
        """,
        )
    )
    # a model asked for by name is not in the default scope (every route)
    d = await gw.route(ask("python", model="alpha"))
    assert d.model == "alpha" and d.rule is None
    why = next(r for r in d.reasons if r.kind == "rule").data["evaluated"][0]["why"]
    assert "applies to every route, not to 'alpha'" in why
    d = await gw.route(ask("contract", model="alpha"))
    assert d.model == "beta" and d.rule == "for-alpha"
    # the dry run explains exactly what a real request does
    dry = await gw.route(ask("python"))
    _, ctx = await gw.serve_chat(ask("python"))
    assert dry.rule == ctx.rule == "code" and dry.model == ctx.model == "beta"
    assert [r.detail for r in dry.reasons if r.kind == "rule"] == [r.detail for r in ctx.decision.reasons if r.kind == "rule"]
    await gw.aclose()


async def test_key_team_signal(tmp_path, ups) -> None:
    os.environ["TURNOUT_TEST_KEY_A"] = "sk-a"
    os.environ["TURNOUT_TEST_KEY_B"] = "sk-b"
    gw = gateway(
        config(
            tmp_path,
            ups,
            """\
        keys:
          - {name: ana, key_env: TURNOUT_TEST_KEY_A, team: research, tags: [beta-tester]}
          - {name: bo, key_env: TURNOUT_TEST_KEY_B}
        decisions:
          - {name: research, when: {signal: key.team, eq: research}, use: {route: beta}}
        """,
        )
    )
    _, ctx = await gw.serve_chat(ask("hi"), api_key="sk-a")
    assert ctx.model == "beta" and ctx.signals["key.team"] == "research"
    _, ctx = await gw.serve_chat(ask("hi"), api_key="sk-b")
    assert ctx.model == "alpha" and ctx.signals["key.team"] is None
    await gw.aclose()


# ------------------------------------------------------------------------------------------ start-up errors
@pytest.mark.parametrize(
    ("body", "key", "words"),
    [
        (
            "decisions:\n  - {name: x, when: {signal: kwd.code, is: true}, use: {route: beta}}\n",
            "decisions[0].when.signal",
            "'kw'",
        ),
        (
            "decisions:\n  - {name: x, when: {signal: kw.cod, is: true}, use: {route: beta}}\n",
            "decisions[0].when.signal",
            "kw.code",
        ),
        (
            "decisions:\n  - {name: x, when: {signal: kw.code, is: true}, use: {route: betta}}\n",
            "decisions[0].use.route",
            "'beta'",
        ),
        ("decisions:\n  - {name: x, when: {signal: kw.code, is: true}, use: {rout: beta}}\n", "decisions[0].use.rout", "'route'"),
        ("decisions:\n  - {name: x, when: {signal: tok, gt: lots}, use: {route: beta}}\n", "decisions[0].when", "number"),
        (
            (
                "decisions:\n  - {name: x, when: {signal: kw.code, is: true}, use: {route: beta},"
                " plugins: [{type: system_prompt, params: {text: hi, mode: shout}}]}\n"
            ),
            "decisions[0].plugins[0].params.mode",
            "add, append or replace",
        ),
        (
            (
                "decisions:\n  - {name: x, when: {signal: kw.code, is: true}, use: {route: beta}}\n"
                "  - {name: y, when: {signal: kw.legal, is: true}, use: {route: beta}}\n"
            ),
            "decisions[1]",
            "same priority",
        ),
    ],
)
def test_bad_decisions_fail_at_start_up_with_file_key_and_fix(tmp_path, ups, body: str, key: str, words: str) -> None:
    path = config(tmp_path, ups, body)
    with pytest.raises(ConfigError) as info:
        gateway(path)
    err = info.value
    assert err.file == str(path) and err.key == key, str(err)
    assert words in str(err) or words in (err.fix or ""), (str(err), err.fix)
    assert err.fix


def test_a_regex_that_does_not_compile_fails_at_start_up(tmp_path, ups) -> None:
    path = config(tmp_path, ups, "")
    path.write_text(path.read_text().replace("'TCK-\\d+'", "'TCK-(\\d+'"))
    with pytest.raises(ConfigError) as info:
        gateway(path)
    assert info.value.key == "signals.rx.params.patterns.ticket" and "does not compile" in str(info.value)


def test_an_unparsable_rule_file_fails_at_start_up(tmp_path, ups) -> None:
    (tmp_path / "rules.yaml").write_text("- name: x\n  when: {signal: kw.code, is: true\n")
    path = config(tmp_path, ups, "decisions_file: rules.yaml\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == str(tmp_path / "rules.yaml") and "not valid YAML at line" in str(info.value)
    (tmp_path / "rules.yaml").write_text("- {name: x, when: {signal: nope, is: true}, use: {route: beta}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "decisions[0].when.signal" and info.value.file == str(tmp_path / "rules.yaml")
    both = config(tmp_path, ups, "decisions_file: rules.yaml\ndecisions: [{name: y, use: {route: beta}}]\n")
    with pytest.raises(ConfigError, match="both inline and in decisions_file"):
        load_config(both)


def test_conflicts_as_warnings_start_the_gateway(tmp_path, ups, caplog) -> None:
    path = config(
        tmp_path,
        ups,
        """\
        decision_conflicts: warn
        decisions:
          - {name: x, when: {signal: kw.code, is: true}, use: {route: beta}}
          - {name: y, when: {signal: kw.legal, is: true}, use: {route: beta}}
        """,
    )
    gw = gateway(path)
    stage = next(s for s in gw.stages.all if isinstance(s, DecisionStage))
    assert [c["kind"] for c in stage.describe()["conflicts"]] == ["overlap"]
    assert "same priority" in caplog.text


# ------------------------------------------------------------------------------------------------ hot reload
def write_rules(path: Path, text: str, bump: int) -> None:
    path.write_text(textwrap.dedent(text))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump * 1_000_000_000))  # a new stamp, whatever the clock


RULES_V1 = "- {name: v1, when: {signal: kw.code, is: true}, use: {route: beta}}\n"
RULES_V2 = "- {name: v2, when: {signal: kw.legal, is: true}, use: {route: beta}}\n"


async def test_reload_validates_before_it_swaps(tmp_path, ups, caplog) -> None:
    rules = tmp_path / "rules.yaml"
    write_rules(rules, RULES_V1, 0)
    gw = gateway(config(tmp_path, ups, "decisions_file: rules.yaml\n"))
    stage = next(s for s in gw.stages.all if isinstance(s, DecisionStage))
    assert (await gw.route(ask("python"))).rule == "v1"
    write_rules(rules, RULES_V2, 1)
    assert await stage.reload() is True and stage.reloads == 1
    assert (await gw.route(ask("python"))).rule is None and (await gw.route(ask("contract"))).rule == "v2"
    for bad, words in [
        ("- {name: v3, when: {signal: kw.legal, is: tru", "not valid YAML"),
        ("- {name: v3, when: {signal: nope, is: true}, use: {route: beta}}\n", "'nope' is not defined"),
        ("- {name: v3, when: {signal: kw.x, matches: '(a'}, use: {route: beta}}\n", "does not compile"),
        ("- {name: v3, use: {route: gamma}}\n", "neither a route nor a model"),
    ]:
        write_rules(rules, bad, 2)
        assert await stage.reload() is False
        assert words in stage.last_reload.message and "previous rules stay in force" in caplog.text
        assert (await gw.route(ask("contract"))).rule == "v2"  # the old rules still serve
    await gw.aclose()


async def test_the_file_is_watched_once_started_and_polled_lazily_before(tmp_path, ups) -> None:
    rules = tmp_path / "rules.yaml"
    write_rules(rules, RULES_V1, 0)
    gw = gateway(config(tmp_path, ups, "decisions_file: rules.yaml\n"))
    stage = next(s for s in gw.stages.all if isinstance(s, DecisionStage))
    stage.poll_s = 0.05
    # not started (no lifespan): a request looks at the file at most once per poll_s, reloads in the background
    write_rules(rules, RULES_V2, 1)
    await asyncio.sleep(0.06)
    assert (await gw.route(ask("python"))).rule == "v1"  # this request keeps the rules in force
    for _ in range(100):
        if stage.reloads:
            break
        await asyncio.sleep(0.02)
    assert (await gw.route(ask("contract"))).rule == "v2"
    # started: a task watches the file with no request at all; reload_soon (SIGHUP) reloads at once
    await stage.start()
    write_rules(rules, RULES_V1, 2)
    for _ in range(100):
        if stage.reloads == 2:
            break
        await asyncio.sleep(0.02)
    assert stage.reloads == 2 and (await gw.route(ask("python"))).rule == "v1"
    stage.poll_s = 3600.0
    await asyncio.sleep(0.1)  # the watch task sleeps out its current wait
    rules.write_text(RULES_V2)
    stage.reload_soon()
    for _ in range(100):
        if stage.reloads == 3:
            break
        await asyncio.sleep(0.02)
    assert stage.reloads == 3 and (await gw.route(ask("contract"))).rule == "v2"
    await gw.aclose()
    assert stage._task is None


# --------------------------------------------------------------------------------------------------- plugins
async def test_plugins_as_configured_stages_and_their_errors(tmp_path, ups) -> None:
    from turnout.gateway.stages import build_stage

    _, b = ups
    gw = gateway(
        config(
            tmp_path,
            ups,
            """\
        stages:
          - {type: set_params, params: {params: {max_tokens: 9, temperature: 0.1}, mode: default}}
          - {type: system_prompt, params: {text: "house rules", mode: append}}
        decisions:
          - {name: code, when: {signal: kw.code, is: true}, use: {route: beta}}
        """,
        )
    )
    before = b.count
    _, ctx = await gw.serve_chat(
        ChatRequest(
            "auto", [{"role": "system", "content": "theirs"}, {"role": "user", "content": "python?"}], params={"max_tokens": 3}
        )
    )
    sent = b.requests[before].body
    assert sent["max_tokens"] == 3 and sent["temperature"] == 0.1  # default mode: the client's value kept
    assert [m["content"] for m in sent["messages"]] == ["theirs", "house rules", "python?"]
    assert ctx.system_text == "theirs\n\nhouse rules"  # the view follows the change
    await gw.aclose()
    with pytest.raises(ConfigError) as info:
        build_stage("add_headers", {"headers": {"x-turnout-rule": "mine"}}, where="stages[0]")
    assert info.value.key == "stages[0].params.headers.x-turnout-rule"
    with pytest.raises(ConfigError) as info:
        build_stage("set_params", {"params": {"model": "gpt-4"}}, where="stages[0]")
    assert "cannot be set" in str(info.value)
    path = config(
        tmp_path,
        ups,
        """\
        decisions:
          - {name: code, when: {signal: kw.code, is: true}, plugins: [{type: "test_decisions:SignalsPhase"}]}
        """,
    )
    with pytest.raises(ConfigError) as info:
        gateway(path)
    assert info.value.key == "decisions[0].plugins[0].type" and "signals phase" in (info.value.fix or "")


class SignalsPhase:
    """A signals-phase stage: a decision cannot add one (that phase is under way when it matches)."""

    phase = "signals"
    name = "late"

    async def on_request(self, ctx: Any) -> None:
        return None
