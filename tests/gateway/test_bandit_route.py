"""Bandit routes in the gateway: draws with exact propensities, bounded exploration, delayed feedback, persistence."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from turnout.config import parse_config, resolve
from turnout.errors import AllBackendsFailedError, ConfigError, NotFoundError
from turnout.gateway import Gateway
from turnout.gateway.bandit_route import BanditRoute
from turnout.gateway.builder import build_gateway
from turnout.routing.bandit import BanditRouter
from turnout.testing.scripted import ScriptedBackend, Step
from turnout.types import ChatRequest


def config(
    tmp: Path,
    *,
    bandit: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    route: dict[str, Any] | None = None,
    request_log: bool = True,
) -> dict[str, Any]:
    r: dict[str, Any] = {
        "router": {"type": "bandit", "params": {"d": 8, **(params or {})}},
        "embedder": "hashing",
        "candidates": ["small", "big"],
        "lambda": 50,
        "bandit": {"seed": 0, **(bandit or {})},
        **(route or {}),
    }
    return {
        "server": {"request_log": str(tmp / "log.sqlite") if request_log else None},
        "backends": {"up": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {
            "small": {"backend": "up", "price": {"input_per_mtok": 0.1, "output_per_mtok": 0.2}},
            "big": {"backend": "up", "price": {"input_per_mtok": 10, "output_per_mtok": 30}},
        },
        "routes": {"learn": r},
    }


def build(data: dict[str, Any]) -> Gateway:
    gw = build_gateway(resolve(parse_config(data, source="test.yaml")))
    for t in gw.targets.values():
        t.backend = ScriptedBackend(t.name, Step(text=f"an answer from {t.name}"))
    return gw


def ask(text: str, model: str = "learn") -> ChatRequest:
    return ChatRequest(model, [{"role": "user", "content": text}])


def french(i: int) -> str:
    return f"translate into french: {i} the cat sleeps on the mat"


def bandit_of(gw: Gateway) -> BanditRouter:
    rt = gw.routes["learn"]
    assert isinstance(rt, BanditRoute)
    return rt.bandit


async def test_draws_carry_their_exact_propensity_and_explore_within_the_bound(tmp_path: Path) -> None:
    gw = build(config(tmp_path))
    rt = gw.routes["learn"]
    assert isinstance(rt, BanditRoute)
    explored = 0
    n = 400
    for i in range(n):
        d = await gw.route(ask(french(i)))
        drew = next(r.data for r in d.reasons if r.kind == "bandit")
        odds = drew["probabilities"]
        # the propensity is the drawn model's probability, and the same as the bandit's own policy for this prompt
        assert d.propensity == odds[d.model] and 0 < d.propensity <= 1
        vec = rt.embedder.embed_one(french(i))
        exact = rt.bandit.probabilities(vec, np.array([c.cost for c in d.candidates]), d.lam)[0]
        assert odds["small"] == pytest.approx(exact[0], abs=1e-12) and sum(odds.values()) == pytest.approx(1.0)
        # at most max_explore of the probability leaves the greedy model
        assert 1.0 - odds[drew["greedy"]] <= rt.bandit.max_explore + 1e-12
        assert d.fallbacks == [m for m in ("small", "big") if m != d.model]
        assert next(r for r in d.reasons if r.kind == "policy").data["model"] == drew["greedy"]
        explored += drew["explored"]
    # about 9% expected (10% bound, of which a uniform part may land on the greedy model); 3 sd of 400 draws is 4.3%
    assert 0 < explored / n <= rt.bandit.max_explore + 0.043
    assert rt.remembered == 0  # dry runs are not served: nothing kept for feedback
    await gw.aclose()


async def test_served_decisions_log_their_propensity_and_feedback_teaches_the_arm_that_answered(tmp_path: Path) -> None:
    gw = build(config(tmp_path))
    rt = gw.routes["learn"]
    assert isinstance(rt, BanditRoute)
    _, ctx = await gw.serve_chat(ask(french(1)), request_id="r1")
    d = ctx.decision
    assert rt.remembered == 1 and ctx.response_headers["x-turnout-propensity"] == f"{d.propensity:.6g}"
    gw.request_log.flush()
    entry = gw.request_log.get("r1")
    assert entry.propensity == d.propensity < 1 and entry.decision["propensity"] == d.propensity
    assert any(r["kind"] == "bandit" for r in entry.decision["reasons"])
    before = rt.bandit.observations.copy()
    res = await gw.feedback("r1", 0.25, comment="meh")
    arm = rt.bandit.models.index(d.model)
    assert res.learned and res.model == d.model and "kept in memory" in res.detail and rt.remembered == 0
    assert rt.bandit.observations[arm] == before[arm] + 1 and rt.bandit.observations.sum() == before.sum() + 1
    # a second score of the same request is stored (latest wins) but not learned twice
    again = await gw.feedback("r1", 0.75)
    assert not again.learned and "not learned twice" in again.detail
    assert rt.bandit.observations.sum() == before.sum() + 1
    gw.request_log.flush()
    assert gw.request_log.get("r1").score == 0.75
    await gw.aclose()


async def test_feedback_for_requests_the_bandit_did_not_decide_is_stored_only(tmp_path: Path) -> None:
    gw = build(config(tmp_path))
    await gw.chat(ask("hello", model="big"), request_id="byname")  # a model asked for by name
    gw.targets["small"].backend = ScriptedBackend("small", Step(fault="status", status=500))
    gw.targets["big"].backend = ScriptedBackend("big", Step(fault="status", status=500))
    with pytest.raises(AllBackendsFailedError):
        await gw.chat(ask(french(2)), request_id="failed")
    n = bandit_of(gw).observations.sum()
    for rid, why in (("byname", "does not learn online"), ("failed", "no model's answer")):
        res = await gw.feedback(rid, 1.0)
        assert res.stored and not res.learned and why in res.detail
        assert ("learned" in res.to_dict()) == (rid == "failed")  # a non-learning route answers as it always did
    assert bandit_of(gw).observations.sum() == n
    gw.request_log.flush()
    assert gw.request_log.get("byname").score == 1.0
    with pytest.raises(NotFoundError, match="x-turnout-request-id"):
        await gw.feedback("never-made", 1.0)
    await gw.aclose()


async def test_a_forgotten_context_is_recomputed_from_the_logged_prompt_exactly(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    kept = build(config(tmp_path / "a"))
    forgetful = build(config(tmp_path / "b", bandit={"remember": 0}))
    scores = {"small": 0.2, "big": 0.9}
    for gw in (kept, forgetful):
        for i in range(12):
            _, d, _ = await gw.chat(ask(french(i)), request_id=f"r{i}")
            res = await gw.feedback(f"r{i}", scores[d.model])
            assert res.learned
            assert ("kept in memory" if gw is kept else "recomputed from the logged prompt") in res.detail
    # the same draws (same seed), the same lessons: the statistics agree to rounding
    a, b = bandit_of(kept).get_state(), bandit_of(forgetful).get_state()
    assert np.array_equal(a["n"], b["n"]) and a["n"].sum() == 12
    assert np.allclose(a["A"], b["A"], atol=1e-9) and np.allclose(a["bq"], b["bq"], atol=1e-9)
    await kept.aclose()
    await forgetful.aclose()


async def test_the_bandits_state_survives_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state" / "learn.npz"
    data = config(tmp_path, bandit={"state_path": str(state)})
    gw = build(data)
    for i in range(20):
        _, d, _ = await gw.chat(ask(french(i)), request_id=f"r{i}")
        await gw.feedback(f"r{i}", 0.0 if d.model == "small" else 1.0)
    _, _, _ = await gw.chat(ask(french(99)), request_id="late")  # scored only after the restart
    learned = bandit_of(gw).get_state()
    probe = gw.routes["learn"].embedder.embed_one(french(500))
    odds = bandit_of(gw).probabilities(probe, np.array([1e-5, 1e-3]), 50.0)
    await gw.aclose()
    assert state.exists() and [p.name for p in state.parent.iterdir()] == ["learn.npz"]  # no temp file left
    again = build(data)
    restored = bandit_of(again).get_state()
    for k in ("A", "bq", "bc", "n", "nc", "P"):
        assert np.array_equal(restored[k], learned[k]), k
    assert np.allclose(bandit_of(again).probabilities(probe, np.array([1e-5, 1e-3]), 50.0), odds)
    # feedback for a request made before the restart: its context comes back from the logged prompt
    res = await again.feedback("late", 1.0)
    assert res.learned and "recomputed" in res.detail
    assert bandit_of(again).observations.sum() == learned["n"].sum() + 1
    await again.aclose()


async def test_the_state_is_saved_on_a_timer_while_feedback_comes_in(tmp_path: Path) -> None:
    state = tmp_path / "learn.npz"
    gw = build(config(tmp_path, bandit={"state_path": str(state), "save_every_s": 0.05}))
    await gw.start()
    rt = gw.routes["learn"]
    assert isinstance(rt, BanditRoute)
    await asyncio.sleep(0.2)
    assert state.exists() and not rt.dirty  # the first save writes the starting state
    from turnout.routing.artifact import load_router

    await gw.chat(ask(french(1)), request_id="r1")
    await gw.feedback("r1", 1.0)
    assert rt.dirty
    await asyncio.sleep(0.3)
    saved, meta = load_router(state)
    assert not rt.dirty and saved.observations.sum() == 1 and meta["route"] == "learn" and meta["embedder"] == "hashing"
    await gw.aclose()


async def test_a_bandit_route_with_a_key_store_learns_only_from_the_keys_own_requests(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ALICE_KEY", "sk-alice")
    monkeypatch.setenv("BOB_KEY", "sk-bob")
    data = config(tmp_path)
    data["keys"] = [{"name": "alice", "key_env": "ALICE_KEY"}, {"name": "bob", "key_env": "BOB_KEY"}]
    gw = build(data)
    await gw.chat(ask(french(3)), api_key="sk-alice", request_id="a1")
    bob = gw.keys.authenticate("sk-bob")
    with pytest.raises(NotFoundError, match="made with key 'bob'"):
        await gw.feedback("a1", 1.0, key=bob)
    assert bandit_of(gw).observations.sum() == 0
    assert (await gw.feedback("a1", 1.0, key=gw.keys.authenticate("sk-alice"))).learned
    await gw.aclose()


def test_bandit_routes_are_checked_before_anything_starts(tmp_path: Path) -> None:
    def error(data: dict[str, Any]) -> ConfigError:
        with pytest.raises(ConfigError) as info:
            build(data)
        return info.value

    no_embedder = config(tmp_path)
    del no_embedder["routes"]["learn"]["embedder"]
    assert error(no_embedder).key == "routes.learn.embedder"
    e = error(config(tmp_path, params={"projection": "clusters"}))
    assert e.key == "routes.learn.router.params.projection" and "turnout train" in e.fix
    e = error(config(tmp_path, params={"max_explore": 3}))
    assert e.key == "routes.learn.router.params"
    knn = config(tmp_path)
    knn["routes"]["learn"]["router"] = {"type": "prior", "params": {"quality": {"small": 0.5, "big": 0.9}}}
    assert error(knn).key == "routes.learn.bandit"
    # a state file that is not a bandit's, or learned for other arms or another embedder
    state = tmp_path / "s.npz"
    state.write_bytes(b"not a zip")
    e = error(config(tmp_path, bandit={"state_path": str(state)}))
    assert e.key == "routes.learn.bandit.state_path" and "delete it" in e.fix
    from turnout.gateway.bandit_route import save_bandit

    other = BanditRouter(d=8, projection="random", models=["tiny", "huge"], dim=4096)
    save_bandit(other, state, meta={"embedder": "hashing"})
    assert error(config(tmp_path, bandit={"state_path": str(state)})).key == "routes.learn.candidates"
    mine = BanditRouter(d=8, projection="random", models=["small", "big"], dim=4096)
    save_bandit(mine, state, meta={"embedder": "minilm"})
    assert error(config(tmp_path, bandit={"state_path": str(state)})).key == "routes.learn.embedder"


async def test_a_bandit_route_can_start_from_a_trained_artifact_and_its_budget(tmp_path: Path) -> None:
    from turnout.embed.hashing import HashingEmbedder
    from turnout.routing.artifact import save_router
    from turnout.routing.base import TrainingData
    from turnout.routing.calibration import calibration_sample

    prompts = [french(i) if i % 2 else f"write a python function number {i}" for i in range(60)]
    X = HashingEmbedder().embed(prompts)
    hard = np.arange(60) % 2 == 1
    S = np.stack([np.where(hard, 0.1, 0.9), np.full(60, 0.9)], axis=1)
    bandit = BanditRouter(d=8, projection="pca").fit(
        TrainingData(X=X, scores=S, costs=np.tile([1e-5, 1e-3], (60, 1)), models=["small", "big"])
    )
    art = save_router(
        bandit, tmp_path / "bandit.npz", meta={"embedder": "hashing", "calibration": calibration_sample(bandit, X, prompts)}
    )
    state = tmp_path / "state.npz"
    data = config(
        tmp_path,
        bandit={"state_path": str(state)},
        route={
            "router": {"type": "bandit", "artifact": str(art)},
            "lambda": None,
            "budget": {"target_cost_per_request": 0.004, "controller": "pi"},
        },
    )
    del data["routes"]["learn"]["lambda"]
    gw = build(data)
    rt = gw.routes["learn"]
    assert isinstance(rt, BanditRoute) and rt.budget is not None and rt.budget.controller == "pi"
    d = await gw.route(ask(french(1000)))
    assert next(r for r in d.reasons if r.kind == "bandit").data["greedy"] == "big"
    assert d.lam == rt.budget.lam() and d.budget["controller"] == "pi"
    await gw.aclose()
    # the state file keeps the artifact's calibration sample: the budget still calibrates after a restart
    again = build(data)
    assert again.routes["learn"].budget.base_lambda == pytest.approx(rt.budget.base_lambda)
    await again.aclose()


async def test_a_context_shared_by_another_replica_teaches_without_the_prompt(tmp_path: Path) -> None:
    from turnout.state.feedback_index import LoggedRequest

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    served, other = build(config(tmp_path / "a")), build(config(tmp_path / "b"))
    rt, rt2 = served.routes["learn"], other.routes["learn"]
    assert isinstance(rt, BanditRoute) and isinstance(rt2, BanditRoute)
    _, d, _ = await served.chat(ask(french(7)), request_id="r7")
    context = rt.feedback_context("r7")
    assert context is not None and len(context) == rt.bandit.d1 and rt.feedback_context("nope") is None
    # what the index carries for another replica: the decision's own reasons and the context, no prompt
    served.request_log.flush()
    logged = served.request_log.get("r7")
    entry = LoggedRequest(
        id="r7",
        key_name=None,
        route="learn",
        model=d.model,
        status="ok",
        cost_usd=logged.cost_usd,
        decision=logged.decision,
        context=context,
    )
    res = await rt2.learn(entry, 0.8, other.embeddings.embed)
    assert res.learned and "shared by the replica" in res.detail
    await served.feedback("r7", 0.8)  # the serving replica learns the same lesson from its own memory
    a, b = rt.bandit.get_state(), rt2.bandit.get_state()
    assert np.allclose(a["A"], b["A"]) and np.allclose(a["bq"], b["bq"]) and np.allclose(a["bc"], b["bc"])
    await served.aclose()
    await other.aclose()
