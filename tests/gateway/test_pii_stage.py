"""The PII stage through the real gateway pipeline: what the model receives, what the client gets back (whole
and streamed), what the log keeps, and the start-up errors of a bad policy."""

from __future__ import annotations

import json
from typing import Any

import pytest

from turnout.backends.base import Timeouts
from turnout.config import parse_config, resolve
from turnout.errors import ConfigError, PiiBlockedError
from turnout.gateway import (
    Backoff,
    CircuitBreaker,
    Gateway,
    ModelTarget,
    Price,
    RouteRuntime,
)
from turnout.gateway.builder import build_gateway
from turnout.gateway.offload import Offloader
from turnout.gateway.pii_stage import INLINE_CHARS, PiiStage, restores_pii
from turnout.gateway.stages import Stages
from turnout.routing.policy import Policy
from turnout.routing.registry import create_router
from turnout.signals.pii import PiiDetector
from turnout.signals.redact import redact
from turnout.testing.scripted import Rule, Script, ScriptedBackend, Step
from turnout.types import ChatRequest

EMAIL = "ann.lee@example.org"
CARD = "4111 1111 1111 1111"
SECRET = "sk-proj-Ab3dE5gH7jK9mN1pQ3rS5tU7"
#: the scripted model echoes the placeholder it receives, and leaks a secret of its own
ECHO = Step(text=f"I will write to [EMAIL_1] today. My own key is {SECRET} and that is all.")


def backend(name: str = "b1", default: str = "plain answer") -> ScriptedBackend:
    return ScriptedBackend(name, Script(Step(text=default), rules=[Rule(match=r"\[EMAIL_1\]", step=ECHO)]))


def fleet_config(private: str | None = None) -> Any:
    """The config the stages check names against (the gateway itself is built from scripted parts)."""
    data = {
        "backends": {"b": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {m: {"backend": "b", "private": m == private} for m in ("m1", "m2")},
        "routes": {
            "auto": {
                "router": {"type": "prior", "params": {"quality": {"m1": 0.9, "m2": 0.5}}},
                "candidates": ["m1", "m2"],
                "lambda": 0.0,
            }
        },
    }
    return resolve(parse_config(data, source="fleet.yaml"))


def gateway(*stages: Any, m1: ScriptedBackend | None = None, m2: ScriptedBackend | None = None, route: bool = False) -> Gateway:
    def target(name: str, b: ScriptedBackend) -> ModelTarget:
        return ModelTarget(
            name=name,
            backend=b,
            upstream=name,
            price=Price(1.0, 2.0),
            fallbacks=[],
            timeouts=Timeouts(1.0, 2.0, 5.0),
            attempts=1,
            backoff=Backoff(0.001, 0.002),
            breaker=CircuitBreaker(3, 60.0),
        )

    routes = {}
    if route:
        routes["auto"] = RouteRuntime(
            name="auto",
            router=create_router("prior", quality={"m1": 0.9, "m2": 0.5}),
            router_name="prior",
            candidates={"m1": "m1", "m2": "m2"},
            prices={"m1": Price(1.0, 2.0), "m2": Price(1.0, 2.0)},
            policy=Policy(lam=0.0),
        )
    return Gateway(
        {"m1": target("m1", m1 or backend("b1")), "m2": target("m2", m2 or backend("b2", "from m2"))},
        routes,
        stages=Stages(stages),
    )


def req(text: str, model: str = "m1", stream: bool = False, **extra: Any) -> ChatRequest:
    return ChatRequest(model, [*extra.pop("history", []), {"role": "user", "content": text}], stream=stream, params=extra)


def sent(b: ScriptedBackend) -> str:
    """Everything the model received, as text."""
    return json.dumps(b.requests[-1].body["messages"])


def whole_answer_result(text: str) -> str:
    """What the answer side must produce from the echo: the secret redacted, the e-mail restored."""
    return text.replace(SECRET, "[SECRET]").replace("[EMAIL_1]", EMAIL)


async def test_redacts_before_the_model_and_restores_in_the_answer() -> None:
    m1 = backend()
    gw = gateway(PiiStage(), m1=m1)
    resp, ctx = await gw.serve_chat(req(f"Please e-mail {EMAIL} the invoice"))
    assert EMAIL not in sent(m1) and "[EMAIL_1]" in sent(m1)
    assert resp.content == whole_answer_result(ECHO.text) and EMAIL in resp.content and SECRET not in resp.content
    # the client learns what was done (types and counts); the log's prompt and reasons never hold the value
    assert ctx.response_headers["x-turnout-pii"] == "redact (EMAIL x1)" and ctx.signals["pii"] == {"EMAIL": 1}
    assert EMAIL not in ctx.prompt_text and all(EMAIL not in r.detail + json.dumps(r.data) for r in ctx.notes)
    assert any(r.kind == "response" and "SECRET x1" in r.detail for r in ctx.notes)
    assert restores_pii(ctx)
    await gw.aclose()


async def test_streamed_answer_is_redacted_and_restored_exactly_like_a_whole_one() -> None:
    m1 = backend()
    gw = gateway(PiiStage(), m1=m1)
    session = await gw.chat_stream(req(f"Please e-mail {EMAIL} the invoice", stream=True))
    pieces = [c.text async for c in session]
    assert "".join(pieces) == whole_answer_result(ECHO.text)
    # no piece ever carries part of the secret: it was held back until it could be judged whole
    assert not any(SECRET[:8] in p for p in pieces) and len([p for p in pieces if p]) > 3
    await gw.aclose()


async def test_every_text_of_the_request_is_redacted_with_one_numbering() -> None:
    m1 = backend()
    history = [
        {"role": "system", "content": f"Support desk. Escalations go to {EMAIL}."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": json.dumps({"card": CARD})}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": f"card {CARD} is blocked"}]},
    ]
    gw = gateway(PiiStage(), m1=m1)
    await gw.chat(req(f"Write to {EMAIL} about it", history=history))
    body = sent(m1)
    assert EMAIL not in body and "4111" not in body
    msgs = m1.requests[-1].body["messages"]
    assert msgs[0]["content"].endswith("[EMAIL_1].") and msgs[-1]["content"] == "Write to [EMAIL_1] about it"
    assert json.loads(msgs[1]["tool_calls"][0]["function"]["arguments"]) == {"card": "[CREDIT_CARD_1]"}
    assert msgs[2]["content"][0]["text"] == "card [CREDIT_CARD_1] is blocked"
    await gw.aclose()


async def test_roles_limit_what_is_scanned() -> None:
    m1 = backend()
    gw = gateway(PiiStage(roles=["user"]), m1=m1)
    await gw.chat(req(f"Reply to {EMAIL}", history=[{"role": "system", "content": f"Sign as {EMAIL}"}]))
    msgs = m1.requests[-1].body["messages"]
    assert msgs[0]["content"] == f"Sign as {EMAIL}" and msgs[1]["content"] == "Reply to [EMAIL_1]"
    await gw.aclose()


async def test_block_names_types_and_counts_never_values() -> None:
    m1 = backend()
    gw = gateway(PiiStage(per_type={"SECRET": "block"}), m1=m1)
    with pytest.raises(PiiBlockedError) as info:
        await gw.chat(req(f"my key is {SECRET}, and mail {EMAIL}"))
    msg = str(info.value)
    assert info.value.kind == "pii_blocked" and "block (SECRET x1)" in msg and "redact (EMAIL x1)" in msg
    assert SECRET not in msg and EMAIL not in msg and m1.count == 0
    with pytest.raises(PiiBlockedError):
        await gw.chat_stream(req(f"my key is {SECRET}", stream=True))
    await gw.aclose()


async def test_private_only_restricts_a_route_and_replaces_a_model_asked_by_name() -> None:
    m1, m2 = backend("b1"), backend("b2", "from the private model")
    cfg = fleet_config(private="m2")
    gw = gateway(PiiStage(action="private_only", gateway_config=cfg), m1=m1, m2=m2, route=True)
    resp, ctx = await gw.serve_chat(req(f"call me at {EMAIL}", model="auto"))  # the router prefers m1
    assert resp.content == "from the private model" and ctx.model == "m2" and m1.count == 0
    assert EMAIL in sent(m2)  # a private model may see it as written
    resp, ctx = await gw.serve_chat(req(f"call me at {EMAIL}", model="m1"))
    assert ctx.model == "m2" and m1.count == 0 and any("m1 is not marked private" in r.detail for r in ctx.notes)
    resp, _, _ = await gw.chat(req("no personal data here", model="auto"))
    assert resp.content == "plain answer" and m1.count == 1  # nothing found: no restriction
    await gw.aclose()


async def test_restore_off_keeps_placeholders_and_allow_passes_values() -> None:
    m1 = backend()
    gw = gateway(PiiStage(restore=False, response={"redact": False}), m1=m1)
    resp, ctx = await gw.serve_chat(req(f"Please e-mail {EMAIL} the invoice"))
    assert resp.content == ECHO.text and not restores_pii(ctx)
    await gw.aclose()
    m1 = backend()
    gw = gateway(PiiStage(action="allow", response={"redact": False}), m1=m1)
    _, ctx = await gw.serve_chat(req(f"Please e-mail {EMAIL} the invoice"))
    assert EMAIL in sent(m1) and ctx.response_headers["x-turnout-pii"] == "allow (EMAIL x1)" and ctx.plugins == []
    await gw.aclose()


async def test_a_long_request_is_scanned_off_the_loop_with_the_same_result() -> None:
    filler = "The quick brown fox jumps over the lazy dog. " * (INLINE_CHARS // 45 + 10)
    text = f"{filler} Contact {EMAIL} or card {CARD}."
    m1 = backend()
    off = Offloader()
    gw = gateway(PiiStage(offloader=off), m1=m1)
    await gw.chat(req(text))
    expected, _ = redact(text, PiiDetector().find(text))
    assert m1.requests[-1].body["messages"][-1]["content"] == expected and "[CREDIT_CARD_1]" in expected
    await gw.aclose()
    off.close()


@pytest.mark.parametrize(
    ("params", "key", "needle"),
    [
        ({"action": "scrub"}, "stages[0].params.action", "allow, redact, private_only, block"),
        ({"types": ["EMAIL", "SHOE_SIZE"]}, "stages[0].params.types", "use one of"),
        ({"per_type": {"SECRET": "shout"}}, "stages[0].params.per_type.SECRET", "use one of"),
        ({"per_type": ["SECRET"]}, "stages[0].params.per_type", "SECRET: block"),
        ({"response": {"style": "fancy"}}, "stages[0].params.response.style", "placeholder, type or mask"),
        ({"roles": ["user", "robot"]}, "stages[0].params.roles", "assistant"),
        ({"action": "private_only"}, "stages[0].params.action", "private: true"),
        ({"private_models": ["gpt-9"]}, "stages[0].params.private_models[0]", "m1, m2"),
        ({"min_score": 3}, "stages[0].params.min_score", "within [0, 1]"),
    ],
)
def test_bad_policy_fails_at_build_with_file_key_and_fix(params: dict[str, Any], key: str, needle: str) -> None:
    data = {
        "backends": {"b": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {"m1": {"backend": "b"}, "m2": {"backend": "b"}},
        "stages": [{"type": "pii", "params": params}],
    }
    with pytest.raises(ConfigError) as info:
        build_gateway(resolve(parse_config(data, source="fleet.yaml")))
    err = info.value
    assert err.key == key and err.file == "fleet.yaml" and needle in str(err), str(err)


def test_private_models_come_from_the_config() -> None:
    data = {
        "backends": {"b": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {"m1": {"backend": "b"}, "local": {"backend": "b", "private": True}},
        "stages": [{"type": "pii", "params": {"per_type": {"PHONE": "private_only"}}}],
    }
    gw = build_gateway(resolve(parse_config(data, source="fleet.yaml")))
    assert gw.stages.all[0].private_models == ("local",)
