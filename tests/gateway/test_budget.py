"""Route budgets: λ calibrated on the artifact's sample at the fleet's prices, tightened by actual spend,
shared by every gateway on one Redis."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from turnout.cli.main import main
from turnout.config import parse_config, resolve
from turnout.errors import ConfigError, StateError
from turnout.gateway import Gateway
from turnout.gateway.budget import RouteBudget
from turnout.gateway.builder import build_gateway
from turnout.gateway.requestlog import SCHEMA_VERSION, RequestLog
from turnout.routing.artifact import save_router
from turnout.routing.base import TrainingData
from turnout.routing.calibration import EXPECTED_OUTPUT_TOKENS, CalibrationSample, calibration_sample
from turnout.routing.policy import choose
from turnout.routing.registry import create_router
from turnout.testing.scripted import ScriptedBackend, Step
from turnout.types import ChatRequest, Price


def knn_artifact(tmp: Path, *, with_sample: bool = True) -> Path:
    """A kNN over 'small' and 'big' where big is better on half the prompts (a real quality/cost trade-off)."""
    from turnout.embed.hashing import HashingEmbedder

    rng = np.random.default_rng(0)
    hard = np.arange(300) % 2 == 1
    prompts = [("hard math proof " if h else "easy hello ") + str(i) + " pad" * (i % 40) for i, h in enumerate(hard)]
    X = HashingEmbedder().embed(prompts)
    S = np.stack([np.where(hard, 0.2, 0.9), np.full(300, 0.95)], axis=1) + rng.normal(0, 0.02, (300, 2))
    costs = np.tile([1e-4, 1e-3], (300, 1))  # the *training* table's prices: must not matter to the gateway
    router = create_router("knn", k=10).fit(TrainingData(X=X, scores=S, costs=costs, models=["small", "big"]))
    meta = {"lambda": 123.0}
    if with_sample:
        meta["calibration"] = calibration_sample(router, X, prompts, max_prompts=200)
    return save_router(router, tmp / "knn.npz", meta=meta)


def config(artifact: Path, budget: dict | None, *, big_price: float = 10.0, lam: float | None = None) -> dict:
    route: dict = {
        "router": {"type": "knn", "artifact": str(artifact)},
        "embedder": "hashing",
        "candidates": {"small": "local", "big": "frontier"},
    }
    if budget is not None:
        # these tests pin the one-way "tighten" controller (the default is "pi": tests/gateway/test_budget_controller.py)
        route["budget"] = {"controller": "tighten", **budget}
    if lam is not None:
        route["lambda"] = lam
    return {
        "server": {"request_log": None},
        "backends": {"up": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {
            "local": {"backend": "up", "price": {"input_per_mtok": 0.1, "output_per_mtok": 0.2}},
            "frontier": {"backend": "up", "price": {"input_per_mtok": big_price, "output_per_mtok": 3 * big_price}},
        },
        "routes": {"auto": route},
    }


def build(data: dict) -> Gateway:
    return build_gateway(resolve(parse_config(data, source="test.yaml")))


def sample_cost_at(gw: Gateway, lam: float) -> float:
    pred = gw.routes["auto"].budget.pred
    idx = choose(pred, lam)
    return float(pred.cost[np.arange(len(idx)), idx].mean())


def test_sample_round_trips_and_is_priced_with_the_fleets_prices(tmp_path: Path) -> None:
    from turnout.routing.artifact import load_router

    _, meta = load_router(knn_artifact(tmp_path))
    sample = CalibrationSample.from_meta(meta)
    assert sample is not None and sample.models == ["small", "big"] and sample.quality.shape == (200, 2) and sample.of == 300
    pred = sample.priced({"small": "local", "big": "frontier"}, {"local": Price(0.1, 0.2), "frontier": Price(10, 30)})
    t = sample.prompt_tokens[0]
    assert pred.models == ["local", "frontier"]
    assert pred.cost[0, 1] == pytest.approx((t * 10 + EXPECTED_OUTPUT_TOKENS * 30) / 1e6)
    windowed = sample.priced({"small": "local", "big": "frontier"}, {"local": Price(), "frontier": Price()}, {"local": 30})
    assert not windowed.available[sample.prompt_tokens > 30, 0].any() and windowed.available[:, 1].all()
    assert CalibrationSample.from_meta({"lambda": 1.0}) is None


def test_a_cost_budget_sets_the_smallest_lambda_meeting_it_at_fleet_prices(tmp_path: Path) -> None:
    art = knn_artifact(tmp_path)
    free = build(config(art, None))
    assert free.routes["auto"].policy.lam == 123.0 and free.routes["auto"].budget is None  # no budget: as before
    gw = build(config(art, {"target_cost_per_request": 0.004}))
    budget = gw.routes["auto"].budget
    lam = budget.base_lambda
    assert lam > 0 and sample_cost_at(gw, lam) <= 0.004 < sample_cost_at(gw, lam * 0.98)
    # the same target on a fleet whose frontier model costs 10x less needs a different lambda: the fleet prices count
    cheap = build(config(art, {"target_cost_per_request": 0.0004}, big_price=1.0)).routes["auto"].budget.base_lambda
    assert cheap != pytest.approx(lam)
    d = asyncio.run(gw.route(ChatRequest("auto", [{"role": "user", "content": "hello"}])))
    assert d.lam == lam and d.budget["target_cost_per_request"] == 0.004 and d.budget["lambda_calibrated"] == lam
    assert any("calibrated on 200 training prompts at fleet prices" in r.detail for r in d.reasons)


def test_a_share_budget_caps_the_expensive_models_share_on_the_sample(tmp_path: Path) -> None:
    gw = build(config(knn_artifact(tmp_path), {"target_share": {"frontier": 0.1}}))
    budget = gw.routes["auto"].budget
    idx = choose(budget.pred, budget.base_lambda)
    assert (idx == 1).mean() <= 0.1 and budget.base_lambda > 0
    assert budget.describe()["target_share"] == {"frontier": 0.1}


async def test_overspending_tightens_lambda_and_it_never_loosens(tmp_path: Path) -> None:
    gw = build(config(knn_artifact(tmp_path), {"target_cost_per_request": 0.004}))
    budget: RouteBudget = gw.routes["auto"].budget
    lam0 = budget.lam()
    for _ in range(budget.warmup - 1):
        await budget.observe("frontier", 0.012)  # answers run 3x the target
    assert budget.lam() == lam0  # still warming up
    await budget.observe("frontier", 0.012)
    tightened = budget.lam()
    d = budget.describe()
    assert tightened > lam0 and d["tightened"] and d["adjusted_target"] == pytest.approx(0.004 / 3)
    assert sample_cost_at(gw, tightened) <= 0.004 / 3 + 1e-12 or tightened == budget._grid[-1]
    for _ in range(200):
        await budget.observe("local", 0.00001)  # now far under target
    assert budget.lam() == tightened  # it only tightens
    assert d["requests"] == budget.warmup and budget.describe()["running_mean_cost"] < 0.004


async def test_actual_spend_of_answered_requests_steers_lambda_and_is_logged(tmp_path: Path) -> None:
    gw = build(config(knn_artifact(tmp_path), {"target_cost_per_request": 0.004}))
    # the answers are far longer than the 256 output tokens priced in: actual cost overshoots
    for t in gw.targets.values():
        t.backend = ScriptedBackend(t.name, Step(text="long answer", prompt_tokens=50, completion_tokens=2000))
    gw.request_log = RequestLog(tmp_path / "log.sqlite")
    lam0 = gw.routes["auto"].budget.lam()
    for i in range(40):
        await gw.chat(ChatRequest("auto", [{"role": "user", "content": f"question {i}"}]))
    assert gw.routes["auto"].budget.lam() > lam0
    gw.request_log.flush()
    rows = sorted(gw.request_log.query(limit=None), key=lambda r: r.seq)
    assert rows[0].lam == lam0 and rows[0].budget["target_cost_per_request"] == 0.004
    assert rows[-1].lam > lam0 and rows[-1].budget["tightened"]
    gw.request_log.close()
    await gw.aclose()


def test_budgets_that_cannot_be_calibrated_fail_at_start_up_with_the_fix(tmp_path: Path) -> None:
    old = knn_artifact(tmp_path, with_sample=False)
    with pytest.raises(ConfigError) as info:
        build(config(old, {"target_cost_per_request": 0.004}))
    assert info.value.key == "routes.auto.budget" and "turnout train" in info.value.fix and "predates" in str(info.value)
    with pytest.raises(ConfigError, match="cannot be met") as info:
        build(config(knn_artifact(tmp_path), {"target_cost_per_request": 1e-9}))
    assert "raise the target" in info.value.fix


def test_turnout_train_stores_the_calibration_sample(tmp_path: Path) -> None:
    rows = []
    for i in range(30):
        for m, c in (("small", 0.001), ("big", 0.01)):
            rows.append({"prompt_id": str(i), "prompt": f"prompt number {i}", "model": m, "score": 0.5, "cost_usd": c})
    src = tmp_path / "t.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "a.npz"
    assert main(["train", str(src), "--router", "knn", "--param", "k=3", "--embedder", "hashing", "--out", str(out)]) == 0
    from turnout.routing.artifact import load_router

    _, meta = load_router(out)
    sample = CalibrationSample.from_meta(meta)
    assert sample is not None and sample.quality.shape == (30, 2) and sample.models == ["small", "big"]
    assert list(sample.prompt_tokens[:2]) == [4, 4]  # "prompt number 0" is 15 characters: about 4 tokens


def test_a_version_1_request_log_is_migrated_in_place(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite"
    RequestLog(db).close()
    conn = sqlite3.connect(db)
    conn.executescript(
        "ALTER TABLE requests DROP COLUMN lam; ALTER TABLE requests DROP COLUMN budget;UPDATE schema_version SET version = 1;"
    )
    conn.execute("INSERT INTO requests (id, ts, status) VALUES ('old', 1.0, 'ok')")
    conn.commit()
    conn.close()
    with RequestLog(db) as log:
        (row,) = log.query(limit=None)
        assert row.id == "old" and row.lam is None and row.budget is None
    assert sqlite3.connect(db).execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION


# -- one route budget shared by several gateways through Redis (real redis-server, tests/conftest.py) --------------


def shared(data: dict, url: str, prefix: str) -> dict:
    return {**data, "state": {"redis_url": url, "prefix": prefix}}


def overspending(gw: Gateway) -> Gateway:
    # answers far longer than the 256 output tokens priced in: every answer overshoots the target
    for t in gw.targets.values():
        t.backend = ScriptedBackend(t.name, Step(text="long answer", prompt_tokens=50, completion_tokens=2000))
    return gw


async def test_spend_through_one_gateway_tightens_lambda_in_another_sharing_redis(tmp_path: Path, redis_url: str) -> None:
    from turnout.state import RedisCounters

    data = shared(config(knn_artifact(tmp_path), {"target_cost_per_request": 0.004}), redis_url, f"t-{uuid.uuid4().hex[:8]}:")
    a, b = overspending(build(data)), build(data)
    ba, bb = a.routes["auto"].budget, b.routes["auto"].budget
    assert isinstance(bb.counters, RedisCounters) and a.state is ba.counters  # the gateway's one store
    lam0 = bb.base_lambda
    assert bb.describe()["requests"] == 0 and lam0 == ba.base_lambda
    for i in range(30):
        await a.chat(ChatRequest("auto", [{"role": "user", "content": f"question {i}"}]))
    assert ba.lam() > lam0
    # b answered nothing and has read nothing yet: its first decision reads a's answers back
    d = await b.route(ChatRequest("auto", [{"role": "user", "content": "hello"}]))
    mean = ba.describe()["running_mean_cost"]
    assert d.budget["requests"] == 30 and d.budget["running_mean_cost"] == pytest.approx(mean)
    # b tightens at once for the overshoot it reads; a, which tightened step by step as it went, is at least as tight
    assert d.budget["tightened"] and d.budget["adjusted_target"] == pytest.approx(0.004 / (mean / 0.004))
    assert lam0 < d.lam <= ba.lam()
    # and b's answers count for a: one total, steered from both sides
    overspending(b)
    await b.chat(ChatRequest("auto", [{"role": "user", "content": "one more"}]))
    await a.chat(ChatRequest("auto", [{"role": "user", "content": "and one more"}]))
    assert ba.describe()["requests"] == 32 and bb.describe()["requests"] == 31  # b sees a's last at its next read
    await a.aclose()
    await b.aclose()


async def test_share_budgets_on_one_redis_add_up_and_reads_are_throttled(tmp_path: Path, redis_url: str) -> None:
    from turnout.state import RedisCounters

    gw = build(config(knn_artifact(tmp_path), {"target_share": {"frontier": 0.1}}))
    pred, prefix = gw.routes["auto"].budget.pred, f"t-{uuid.uuid4().hex[:8]}:"
    a, b = (
        RouteBudget.calibrate(
            pred,
            target_share={"frontier": 0.1},
            route="auto",
            refresh_s=0.3,
            counters=RedisCounters(redis_url, prefix=prefix),
            controller="tighten",
        )
        for _ in range(2)
    )
    lam0 = b.base_lambda
    for _ in range(10):
        await a.observe("frontier", 0.01)  # a alone: 10 of 10 to frontier, but still warming up
    assert a.lam() == lam0
    for _ in range(10):
        await b.observe("local", 0.0001)  # b's first answer reads a's frontier answers back
    d = b.describe()
    assert d["requests"] == 20 and d["running_share"] == {"frontier": 0.5} and d["tightened"] and b.lam() > lam0
    await a.observe("frontier", 0.01)  # a's own write returns the shared totals at once
    assert a.describe()["requests"] == 21 and a.describe()["running_share"]["frontier"] == pytest.approx(11 / 21)
    # b read back moments ago: a's new answer shows in b only once b's figures are refresh_s old
    await b.refresh_if_stale()
    assert b.describe()["requests"] == 20
    time.sleep(0.35)
    await b.refresh_if_stale()
    assert b.describe()["requests"] == 21
    await gw.aclose()


async def test_redis_down_keeps_the_budget_figures_and_still_serves_the_answer(tmp_path: Path, private_redis) -> None:
    redis = private_redis()
    gw = overspending(build(shared(config(knn_artifact(tmp_path), {"target_cost_per_request": 0.004}), redis.url, "t:")))
    await gw.start()  # reaches Redis: a gateway whose Redis is down does not start (below)
    budget = gw.routes["auto"].budget
    for i in range(25):
        await gw.chat(ChatRequest("auto", [{"role": "user", "content": f"q {i}"}]))
    lam = budget.lam()
    assert lam > budget.base_lambda and budget.describe()["requests"] == 25
    redis.stop()
    await asyncio.sleep(budget.refresh_s)  # so that the next decision reads the totals back, and fails to
    resp, decision, _ = await gw.chat(ChatRequest("auto", [{"role": "user", "content": "still there?"}]))
    assert resp.content == "long answer" and decision.lam == lam  # figures read before; the answer is served
    assert budget.describe()["requests"] == 25
    assert 'turnout_errors_total{kind="state_unavailable"} 1.0' in gw.metrics.render()[0].decode()
    await gw.aclose()
    down = build(shared(config(knn_artifact(tmp_path), None), redis.url, "t:"))
    with pytest.raises(StateError, match=re.escape(redis.url)):
        await down.start()
    await down.aclose()
