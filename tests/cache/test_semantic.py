"""The semantic cache end to end: exact and semantic hits, the threshold, the guard, what is stored, the settings."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from turnout.cache import (
    DEFAULT_THRESHOLD,
    CachePolicy,
    CacheSettings,
    ContextFingerprint,
    InMemoryCacheStore,
    SemanticCache,
    build_cache,
    replay_chunks,
)
from turnout.errors import ConfigError
from turnout.testing import HashEmbedder
from turnout.types import ChatRequest

EMB = HashEmbedder(dim=256)


def fp(text: str, *, tenant: str = "alice", **params: Any) -> ContextFingerprint:
    req = ChatRequest(
        "auto", [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": text}], params=params
    )
    return ContextFingerprint.of(req, tenant=tenant)


def vec(text: str) -> np.ndarray:
    return EMB.embed_one(text)


def body(content: str, *, finish: str = "stop", **message: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "small-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, **message}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }


def sim(a: str, b: str) -> float:
    return float(vec(a) @ vec(b))


Q = "How do I reset my account password on the website?"
PARAPHRASE = "How do I reset the account password on my website?"


async def test_exact_hit_needs_no_vector_and_costs_nothing_to_find() -> None:
    cache = SemanticCache(InMemoryCacheStore(), threshold=0.9)
    assert (await cache.store(fp(Q), vec(Q), body("Use the link."))).stored
    result = await cache.lookup(fp("  How do I reset my account password on the website? "))
    assert result.hit is not None
    assert result.hit.kind == "exact" and result.hit.similarity == 1.0 and result.hit.question == Q
    assert result.hit.model == "small-model" and result.hit.usage == {
        "prompt_tokens": 12,
        "completion_tokens": 3,
        "total_tokens": 15,
    }
    assert result.log_fields() == {"cache": "hit-exact", "cache_similarity": 1.0, "cache_age_s": 0.0}


async def test_semantic_hit_above_the_threshold_and_miss_below() -> None:
    s = sim(Q, PARAPHRASE)
    assert 0.5 < s < 0.999
    store = InMemoryCacheStore()
    above = SemanticCache(store, threshold=s - 0.01)
    below = SemanticCache(store, threshold=s + 0.01)
    await above.store(fp(Q), vec(Q), body("Use the link."))
    assert (await above.lookup(fp(PARAPHRASE))).hit is None  # no vector: exact only
    hit = (await above.lookup(fp(PARAPHRASE), vec(PARAPHRASE))).hit
    assert hit is not None and hit.kind == "semantic" and hit.similarity == pytest.approx(s, abs=1e-5)
    assert hit.headers()["x-turnout-cache"] == "hit-semantic"
    result = await below.lookup(fp(PARAPHRASE), vec(PARAPHRASE))
    assert result.hit is None and result.log_fields() == {"cache": "miss"}
    # a route's own threshold for one call
    assert (await below.lookup(fp(PARAPHRASE), vec(PARAPHRASE), threshold=s - 0.01)).hit is not None


async def test_other_context_or_tenant_never_hits() -> None:
    cache = SemanticCache(InMemoryCacheStore(), threshold=0.0)
    await cache.store(fp(Q), vec(Q), body("Use the link."))
    assert (await cache.lookup(fp(Q, tenant="bob"), vec(Q))).hit is None
    assert (await cache.lookup(fp(Q, temperature=0.2), vec(Q))).hit is None
    other_space = SemanticCache(cache.storage, threshold=0.0, space="another-embedder")
    assert (await other_space.lookup(fp(Q), vec(Q))).hit is None


async def test_the_guard_blocks_a_lookalike_and_says_why() -> None:
    cached, new = "Can I take 5 mg of melatonin every night?", "Can I take 50 mg of melatonin every night?"
    guarded = SemanticCache(InMemoryCacheStore(), threshold=0.3)
    unguarded = SemanticCache(guarded.storage, threshold=0.3, guard=None)
    await guarded.store(fp(cached), vec(cached), body("Yes, 5 mg is a usual dose."))
    result = await guarded.lookup(fp(new), vec(new))
    assert result.hit is None
    assert [(b.check, b.reason) for b in result.blocked] == [("numbers", "numbers differ: cached {5} vs new {50}")]
    assert result.best_similarity == pytest.approx(sim(cached, new), abs=1e-5)
    fields = result.log_fields()
    assert fields["cache"] == "blocked" and "numbers differ" in fields["cache_blocked"][0]
    assert (await unguarded.lookup(fp(new), vec(new))).hit is not None  # what the guard prevents


async def test_a_blocked_nearest_does_not_hide_a_true_duplicate_behind_it() -> None:
    cache = SemanticCache(InMemoryCacheStore(), threshold=0.3, candidates=4)
    near = "Is 5 mg of melatonin every night safe for adults?"
    right = "Is 50 mg melatonin safe for adults every night?"
    new = "Is 50 mg of melatonin every night safe for adults?"
    assert sim(new, near) > sim(new, right)  # the look-alike is the nearest
    await cache.store(fp(near), vec(near), body("5 mg: yes."))
    await cache.store(fp(right), vec(right), body("50 mg: no."))
    result = await cache.lookup(fp(new), vec(new))
    assert result.hit is not None and result.hit.question == right
    assert [b.question for b in result.blocked] == [near]
    one = SemanticCache(cache.storage, threshold=0.3, candidates=1)
    assert (await one.lookup(fp(new), vec(new))).hit is None


async def test_a_second_lookup_may_skip_the_exact_get() -> None:
    class CountingStore(InMemoryCacheStore):
        gets = 0

        async def get(self, *args: Any, **kwargs: Any) -> Any:
            CountingStore.gets += 1
            return await super().get(*args, **kwargs)

    cache = SemanticCache(CountingStore(), threshold=sim(Q, PARAPHRASE) - 0.01)
    await cache.store(fp(Q), vec(Q), body("Use the link."))
    assert (await cache.lookup(fp(PARAPHRASE))).hit is None and CountingStore.gets == 1
    result = await cache.lookup(fp(PARAPHRASE), vec(PARAPHRASE), exact=False)
    assert result.hit is not None and result.hit.kind == "semantic" and CountingStore.gets == 1
    # without the exact get, an exact match is found as the nearest question (similarity 1)
    again = await cache.lookup(fp(Q), vec(Q), exact=False)
    assert again.hit is not None and again.hit.kind == "semantic" and again.hit.similarity == pytest.approx(1.0)
    exact = (await cache.lookup(fp(Q), vec(Q))).hit
    assert exact is not None and exact.kind == "exact" and CountingStore.gets == 2


async def test_what_is_stored() -> None:
    cache = SemanticCache(InMemoryCacheStore(), threshold=0.9)
    assert not (await cache.store(fp("a?"), vec("a?"), body("cut", finish="length"))).stored
    outcome = await cache.store(
        fp("b?"),
        vec("b?"),
        body(
            None,
            tool_calls=[
                {
                    "id": "c",
                    "type": "function",  # type: ignore[arg-type]
                    "function": {"name": "f", "arguments": "{}"},
                }
            ],
        ),
    )
    assert not outcome.stored and outcome.reason is not None and "tool calls" in outcome.reason
    assert not (await cache.store(fp("c?"), vec("c?"), {"choices": [{}, {}]})).stored
    assert (await cache.lookup(fp("a?"), vec("a?"))).hit is None
    tools_ok = SemanticCache(
        InMemoryCacheStore(),
        threshold=0.9,
        policy=CachePolicy(cache_tool_calls=True, finish_reasons=frozenset({"stop", "tool_calls"})),
    )
    call = body(
        None,
        finish="tool_calls",
        tool_calls=[
            {
                "id": "c",
                "type": "function",  # type: ignore[arg-type]
                "function": {"name": "f", "arguments": "{}"},
            }
        ],
    )
    assert (await tools_ok.store(fp("b?"), vec("b?"), call)).stored


def test_policy_request_rules() -> None:
    policy = CachePolicy()
    msgs = [{"role": "user", "content": "hi"}]
    assert policy.request_reason(ChatRequest("auto", msgs)) is None  # no temperature given: cacheable
    assert policy.request_reason(ChatRequest("auto", msgs, params={"temperature": 0.7})) is None
    assert (
        policy.request_reason(ChatRequest("auto", msgs, params={"temperature": 1.5}))
        == "temperature 1.5 is above the cache bound 1"
    )
    assert policy.request_reason(ChatRequest("auto", msgs, params={"n": 3})) == "n=3 asks for several answers"
    greedy = CachePolicy(max_temperature=0)
    assert greedy.request_reason(ChatRequest("auto", msgs, params={"temperature": 0.2})) is not None
    assert CachePolicy(max_temperature=None).request_reason(ChatRequest("auto", msgs, params={"temperature": 2})) is None
    assert CachePolicy(max_answer_chars=3).answer_reason(body("four")) is not None
    assert CachePolicy().answer_reason(body("fine")) is None
    with pytest.raises(ValueError):
        CachePolicy(max_temperature=-1)


async def test_hit_body_is_a_private_copy_with_a_fresh_id_and_streams_exactly() -> None:
    cache = SemanticCache(InMemoryCacheStore(), threshold=0.9)
    answer = body("Click 'Forgot password' on the sign-in page, then follow the e-mail.")
    await cache.store(fp(Q), vec(Q), answer)
    answer["choices"][0]["message"]["content"] = "changed by the caller"  # the store kept its own copy
    hit = (await cache.lookup(fp(Q))).hit
    assert hit is not None
    sent = hit.response_body(id="chatcmpl-new", created=1800000000)
    assert sent["id"] == "chatcmpl-new" and sent["created"] == 1800000000
    sent["choices"][0]["message"]["content"] = "mutated"
    again = (await cache.lookup(fp(Q))).hit
    assert again is not None and again.answer["choices"][0]["message"]["content"].startswith("Click")
    chunks = replay_chunks(again.response_body(id="chatcmpl-s"), chunk_chars=8)
    assert (
        "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == again.answer["choices"][0]["message"]["content"]
    )


async def test_age_comes_from_the_store_clock() -> None:
    now = [100.0]
    cache = SemanticCache(InMemoryCacheStore(ttl_s=60, clock=lambda: now[0]), threshold=0.9)
    await cache.store(fp(Q), vec(Q), body("x"))
    now[0] += 42
    hit = (await cache.lookup(fp(Q))).hit
    assert hit is not None and hit.age_s == pytest.approx(42) and hit.headers()["x-turnout-cache-age"] == "42"
    now[0] += 30
    assert (await cache.lookup(fp(Q))).hit is None


async def test_empty_text_hits_only_exactly_and_bad_vectors_match_nothing() -> None:
    cache = SemanticCache(InMemoryCacheStore(), threshold=-1.0)
    tool_turn = ContextFingerprint.of(
        ChatRequest("auto", [{"role": "user", "content": "q"}, {"role": "tool", "tool_call_id": "1", "content": "r"}]),
        tenant="alice",
    )
    await cache.store(tool_turn, vec("anything"), body("done"))
    assert (await cache.lookup(tool_turn, vec("anything"))).hit is not None  # exact
    await cache.store(fp(Q), vec(Q), body("x"))
    assert (await cache.lookup(fp(PARAPHRASE), np.zeros(EMB.dim, dtype=np.float32))).hit is None
    assert (await cache.lookup(fp(PARAPHRASE), np.full(EMB.dim, np.nan, dtype=np.float32))).hit is None


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="threshold"):
        SemanticCache(InMemoryCacheStore(), threshold=1.5)
    with pytest.raises(ValueError, match="candidates"):
        SemanticCache(InMemoryCacheStore(), threshold=0.9, candidates=0)


async def test_build_cache_from_settings() -> None:
    cache = build_cache(CacheSettings(ttl_s=5, max_entries=2, guard=("numbers",), max_temperature=0.5))
    assert cache.threshold == DEFAULT_THRESHOLD and cache.space == "minilm"
    assert cache.guard is not None and cache.guard.enabled == ("numbers",)
    assert isinstance(cache.storage, InMemoryCacheStore) and cache.storage.max_entries == 2
    assert cache.policy.max_temperature == 0.5
    assert build_cache(CacheSettings(guard=())).guard is None
    shared = InMemoryCacheStore()
    assert build_cache(CacheSettings(), storage=shared).storage is shared
    with pytest.raises(ValueError, match="scope"):
        CacheSettings(scope="global")
    with pytest.raises(ValueError, match="unknown look-alike"):
        CacheSettings(guard=("numbers", "typos"))


def test_settings_from_yaml_params() -> None:
    s = CacheSettings.from_params(
        {
            "threshold": 0.9,
            "ttl_s": None,
            "guard": ["numbers", "negation"],
            "finish_reasons": ["stop", "length"],
            "max_entries": 50,
        }
    )
    assert s.guard == ("numbers", "negation") and s.ttl_s is None and s.finish_reasons == ("stop", "length")
    assert build_cache(s).policy.finish_reasons == frozenset({"stop", "length"})
    with pytest.raises(ConfigError, match=r"stages.cache.params.*unknown cache setting\(s\) treshold.*threshold"):
        CacheSettings.from_params({"treshold": 0.9})
    with pytest.raises(ConfigError, match=r"key 'stages.cache.params.max_entries'.*fix: give an integer"):
        CacheSettings.from_params({"max_entries": "many"})
    with pytest.raises(ConfigError, match="wrong value True"):
        CacheSettings.from_params({"threshold": True})
    with pytest.raises(ConfigError, match="threshold is a cosine similarity"):
        CacheSettings.from_params({"threshold": 3})
    with pytest.raises(ConfigError, match="max_temperature"):
        CacheSettings.from_params({"max_temperature": -1})


async def test_the_stage_as_the_gateway_runs_it() -> None:
    """Lookup before the model call, store after a successful answer, replay as a stream for a streamed hit."""
    cache = build_cache(CacheSettings(threshold=0.5, embedder=EMB.name))
    calls: list[str] = []

    async def serve(req: ChatRequest, key: str) -> tuple[dict[str, Any], str]:
        if cache.policy.request_reason(req) is not None:
            calls.append("model")
            return body("fresh"), "bypass"
        f = ContextFingerprint.of(req, tenant=key)
        result = await cache.lookup(f)
        v = vec(f.text) if result.hit is None and f.text else None
        if v is not None:
            result = await cache.lookup(f, v, exact=False)  # the exact lookup just missed
        if result.hit is not None:
            return result.hit.response_body(id="chatcmpl-hit"), result.log_fields()["cache"]
        calls.append("model")
        answer = body(f"answer to {f.text}")
        await cache.store(f, v, copy.deepcopy(answer))
        return answer, "miss"

    def req(text: str, **params: Any) -> ChatRequest:
        return ChatRequest("auto", [{"role": "user", "content": text}], params=params)

    assert (await serve(req(Q), "alice"))[1] == "miss"
    assert (await serve(req(Q, stream=True), "alice"))[1] == "hit-exact"
    assert (await serve(req(PARAPHRASE), "alice"))[1] == "hit-semantic"
    assert (await serve(req(Q), "bob"))[1] == "miss"
    assert (await serve(req(Q, temperature=1.7), "alice"))[1] == "bypass"
    assert calls == ["model", "model", "model"]
