"""The semantic cache stage through the real gateway pipeline (scripted backends, real MiniLM).

Correctness first: a hit is the stored answer exactly (whole or streamed), never another key's, never an
answer to a look-alike question; it calls no model and costs nothing; what may not be cached is not.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("onnxruntime", reason="the cache reads MiniLM vectors (pip install 'turnout[embed]')")

from turnout.backends.base import Timeouts
from turnout.config import parse_config, resolve
from turnout.embed.base import Embedder
from turnout.errors import ConfigError
from turnout.gateway import Backoff, CircuitBreaker, Gateway, ModelTarget, Price
from turnout.gateway.builder import build_gateway
from turnout.gateway.cache_stage import CacheStage
from turnout.gateway.embeddings import EmbeddingService, serving_embedder
from turnout.gateway.keys import KeySpec, KeyStore, hash_key
from turnout.gateway.offload import Offloader
from turnout.gateway.pii_stage import PiiStage
from turnout.gateway.stages import Stages
from turnout.state.memory import InMemoryCounters
from turnout.testing.scripted import ScriptedBackend, Step
from turnout.types import ChatRequest

ANSWER = "Water boils at 100 degrees Celsius at sea level, and lower at altitude."
QUESTION = "What is the boiling point of water?"
PARAPHRASE = "what's the boiling point of water"
LOOKALIKE_5 = "Is 5 mg of melatonin safe for a child?"
LOOKALIKE_50 = "Is 50 mg of melatonin safe for a child?"


@pytest.fixture(scope="module")
def minilm() -> Embedder:
    emb = serving_embedder("minilm")
    emb.embed_one("load the model once for the module")
    return emb


class Fleet:
    def __init__(self, minilm: Embedder) -> None:
        self.offloader = Offloader()
        self.embeddings = EmbeddingService(self.offloader)
        self.embeddings.add("minilm", minilm)
        self.backend = ScriptedBackend("b1", Step(text=ANSWER, prompt_tokens=12, completion_tokens=14))

    def gateway(self, *stages: Any, keys: KeyStore | None = None) -> Gateway:
        t = ModelTarget(
            name="m1",
            backend=self.backend,
            upstream="m1",
            price=Price(1.0, 2.0),
            fallbacks=[],
            timeouts=Timeouts(1.0, 2.0, 5.0),
            attempts=1,
            backoff=Backoff(0.001, 0.002),
            breaker=CircuitBreaker(3, 60.0),
        )
        return Gateway({"m1": t}, stages=Stages(stages), embeddings=self.embeddings, offloader=self.offloader, keys=keys)

    def cache(self, **params: Any) -> CacheStage:
        return CacheStage(embeddings=self.embeddings, **params)


@pytest.fixture
def fleet(minilm: Embedder) -> Iterator[Fleet]:
    yield Fleet(minilm)


def req(text: str, stream: bool = False, **params: Any) -> ChatRequest:
    return ChatRequest("m1", [{"role": "user", "content": text}], stream=stream, params=params)


async def test_miss_then_exact_and_semantic_hits_call_no_model(fleet: Fleet) -> None:
    gw = fleet.gateway(fleet.cache())
    resp, ctx = await gw.serve_chat(req(QUESTION))
    assert resp.content == ANSWER and ctx.response_headers["x-turnout-cache"] == "miss" and fleet.backend.count == 1
    resp, ctx = await gw.serve_chat(req(QUESTION))
    h = ctx.response_headers
    assert resp.content == ANSWER and h["x-turnout-cache"] == "hit" and h["x-turnout-cache-match"] == "exact"
    assert ctx.answered_by == "cache" and ctx.attempts == [] and ctx.cost_usd == 0.0 and fleet.backend.count == 1
    assert resp.body["id"] == f"chatcmpl-{ctx.request_id}"  # a fresh id, not the stored answer's
    resp, ctx = await gw.serve_chat(req(PARAPHRASE))
    assert resp.content == ANSWER and ctx.response_headers["x-turnout-cache-match"] == "semantic"
    assert float(ctx.response_headers["x-turnout-cache-similarity"]) >= 0.86 and fleet.backend.count == 1
    assert ctx.decision is not None and ctx.decision.router == "cache"
    assert any(r.kind == "cache" and r.data.get("cache") == "hit-semantic" for r in ctx.notes)
    await gw.aclose()


async def test_a_look_alike_question_is_refused_and_answered_by_the_model(fleet: Fleet) -> None:
    gw = fleet.gateway(fleet.cache())
    await gw.chat(req(LOOKALIKE_5))
    _, ctx = await gw.serve_chat(req(LOOKALIKE_50))
    assert ctx.response_headers["x-turnout-cache"] == "blocked" and ctx.answered_by == "model"
    assert fleet.backend.count == 2 and any("numbers differ" in r.detail for r in ctx.notes)
    await gw.aclose()


async def test_streamed_answers_are_stored_and_replayed_exactly(fleet: Fleet) -> None:
    gw = fleet.gateway(fleet.cache())
    live = await gw.chat_stream(req(QUESTION, stream=True))
    live_chunks = [c async for c in live]
    assert live.headers["x-turnout-cache"] == "miss" and "".join(c.text for c in live_chunks) == ANSWER
    resp, ctx = await gw.serve_chat(req(QUESTION))  # stored from the stream, answered whole
    assert resp.content == ANSWER and ctx.answered_by == "cache" and fleet.backend.count == 1
    replay = await gw.chat_stream(req(PARAPHRASE, stream=True))
    chunks = [c async for c in replay]
    assert replay.headers["x-turnout-cache"] == "hit" and replay.model == "m1"
    assert "".join(c.text for c in chunks) == ANSWER and len(chunks) > 3
    assert chunks[0].body["choices"][0]["delta"].get("role") == "assistant"
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"] and chunks[-1].finish_reason == "stop"
    assert {c.body["id"] for c in chunks} == {f"chatcmpl-{replay.request_id}"} and fleet.backend.count == 1
    await gw.aclose()


async def test_entries_are_kept_apart_per_api_key_and_hits_cost_nothing(fleet: Fleet) -> None:
    counters = InMemoryCounters()
    keys = KeyStore(
        [KeySpec("alice", hash_key("sk-alice"), budget_usd=1.0), KeySpec("bob", hash_key("sk-bob"), budget_usd=1.0)], counters
    )
    gw = fleet.gateway(fleet.cache(), keys=keys)
    await gw.chat(req(QUESTION), api_key="sk-alice")
    alice = keys.specs[0] if keys.specs[0].name == "alice" else keys.specs[1]
    spent = await keys.spent(alice)
    assert spent > 0
    _, ctx = await gw.serve_chat(req(QUESTION), api_key="sk-bob")  # same question, other key: the model answers
    assert ctx.response_headers["x-turnout-cache"] == "miss" and fleet.backend.count == 2
    _, ctx = await gw.serve_chat(req(QUESTION), api_key="sk-alice")
    assert ctx.answered_by == "cache" and fleet.backend.count == 2
    assert await keys.spent(alice) == pytest.approx(spent)  # the hit cost alice nothing
    await gw.aclose()


async def test_what_may_not_be_cached_is_not(fleet: Fleet) -> None:
    gw = fleet.gateway(PiiStage(), fleet.cache())
    # a hot temperature asks for variety: bypassed both ways
    _, ctx = await gw.serve_chat(req(QUESTION, temperature=1.5))
    assert ctx.response_headers["x-turnout-cache"] == "bypass"
    # the client's own opt-outs
    await gw.chat(req(QUESTION), headers={"x-turnout-cache": "no-store"})
    _, ctx = await gw.serve_chat(req(QUESTION))
    assert ctx.response_headers["x-turnout-cache"] == "miss"  # the no-store answer was not kept; this one is
    _, ctx = await gw.serve_chat(req(QUESTION), headers={"x-turnout-cache": "no-cache"})
    assert ctx.answered_by == "model" and ctx.response_headers["x-turnout-cache"] == "bypass"
    _, ctx = await gw.serve_chat(req(QUESTION))
    assert ctx.answered_by == "cache"
    # personal data restored into the answer: never stored, never looked up
    before = fleet.backend.count
    for _ in range(2):
        _, ctx = await gw.serve_chat(req("Send the boiling point to ann@example.org"))
        assert ctx.response_headers["x-turnout-cache"] == "bypass" and ctx.answered_by == "model"
    assert fleet.backend.count == before + 2
    await gw.aclose()


async def test_a_cut_stream_is_not_stored(fleet: Fleet) -> None:
    fleet.backend.script.default = Step(text="one two three four five six", fault="cut")
    gw = fleet.gateway(fleet.cache())
    session = await gw.chat_stream(req(QUESTION, stream=True))
    with pytest.raises(Exception):  # noqa: B017 - the stream's own error type is the pipeline's business
        async for _ in session:
            pass
    fleet.backend.script.default = Step(text=ANSWER)
    _, ctx = await gw.serve_chat(req(QUESTION))
    assert ctx.answered_by == "model" and ctx.response_headers["x-turnout-cache"] == "miss"
    await gw.aclose()


async def test_dry_run_says_it_would_answer_and_stores_nothing(fleet: Fleet) -> None:
    gw = fleet.gateway(fleet.cache())
    await gw.chat(req(QUESTION))
    decision = await gw.route(req(PARAPHRASE))
    assert any("would answer" in r.detail for r in decision.reasons) and fleet.backend.count == 1
    await gw.aclose()


@pytest.mark.parametrize(
    ("params", "key", "needle"),
    [
        ({"ttl": 60}, "stages[0].params", "the cache takes: threshold"),
        ({"ttl_s": -1}, "stages[0].params", "ttl_s must be > 0"),
        ({"threshold": "high"}, "stages[0].params.threshold", "a cosine similarity"),
        ({"embedder": "hashing"}, "stages[0].params.threshold", "turnout guards eval cache"),
        ({"embedder": "word2vec", "threshold": 0.9}, "stages[0].params.embedder", "known embedders"),
        ({"guard": ["numbers", "vibes"]}, "stages[0].params", "unknown look-alike check"),
        ({"routes": "nowhere"}, "stages[0].params.routes[0]", "m1"),
    ],
)
def test_bad_cache_params_fail_at_build_with_file_key_and_fix(params: dict[str, Any], key: str, needle: str) -> None:
    data = {
        "backends": {"b": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {"m1": {"backend": "b"}},
        "stages": [{"type": "cache", "params": params}],
    }
    with pytest.raises(ConfigError) as info:
        build_gateway(resolve(parse_config(data, source="cache.yaml")))
    err = info.value
    assert err.key == key and err.file == "cache.yaml" and needle in str(err), str(err)
