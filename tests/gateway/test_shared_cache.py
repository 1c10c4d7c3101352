"""The semantic cache stage over Redis state: what one replica cached, another serves; a dead Redis is a miss."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from turnout.config import parse_config, resolve
from turnout.gateway import Gateway
from turnout.gateway.builder import build_gateway
from turnout.state.cache_store import FailOpenCacheStore, RedisCacheStore
from turnout.testing.scripted import ScriptedServer, Step
from turnout.types import ChatRequest


def replica(upstream: str, redis_url: str, prefix: str) -> Gateway:
    cfg = resolve(
        parse_config(
            {
                "server": {"request_log": None, "metrics": False},
                "backends": {"up": {"protocol": "openai", "base_url": upstream, "retries": {"attempts": 1}}},
                "models": {"alpha": {"backend": "up", "upstream_model": "scripted"}},
                "state": {"redis_url": redis_url, "prefix": prefix},
                "stages": [{"type": "cache", "params": {"embedder": "hashing", "threshold": 0.9, "ttl_s": 60}}],
            },
            source="test.yaml",
        )
    )
    return build_gateway(cfg)


def ask(text: str) -> ChatRequest:
    return ChatRequest("alpha", [{"role": "user", "content": text}])


async def test_replicas_share_cached_answers_and_a_dead_redis_is_a_miss(private_redis: Any) -> None:
    pytest.importorskip("redis")
    redis = private_redis()
    prefix = f"t-{uuid.uuid4().hex[:6]}:"
    with ScriptedServer(Step(text="Paris.")) as upstream:
        a, b = replica(upstream.base_url, redis.url, prefix), replica(upstream.base_url, redis.url, prefix)
        stage = next(s for s in b.stages.all if getattr(s, "name", "") == "cache")
        assert isinstance(stage.cache.storage, FailOpenCacheStore)
        assert isinstance(stage.cache.storage.inner, RedisCacheStore)
        try:
            resp, decision, _ = await a.chat(ask("What is the capital of France?"))
            assert resp.content == "Paris." and upstream.count == 1 and decision.router != "cache"
            _, ctx = await b.serve_chat(ask("What is the capital of France?"))
            assert ctx.answered_by == "cache" and upstream.count == 1  # replica b never called the model
            redis.stop()
            resp, ctx = await b.serve_chat(ask("What is the capital of Spain?"))
            assert resp.content == "Paris." and ctx.answered_by == "model" and upstream.count == 2
            assert stage.cache.storage.failures >= 1
        finally:
            await a.aclose()
            await b.aclose()
