"""Route budgets in ``controller: pi`` mode, live through the gateway: the target holds when the traffic drifts.

The fleet is scripted in-process (deterministic); the router is a kNN trained here whose calibration sample
prices answers at 256 output tokens, while the scripted answers run shorter or longer, so the start-up λ
is off and only the running spend can correct it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from turnout.config import parse_config, resolve
from turnout.errors import ConfigError
from turnout.gateway import Gateway
from turnout.gateway.budget import DEFAULT_CONTROLLER, RouteBudget
from turnout.gateway.builder import build_gateway
from turnout.testing.scripted import ScriptedBackend, Step
from turnout.types import ChatRequest


def prompt(i: int, hard: bool) -> str:
    return ("hard math proof " if hard else "easy hello ") + str(i) + " pad" * (i % 40)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kNN over 'small' and 'big': big is far better on hard prompts, slightly on easy ones."""
    from turnout.embed.hashing import HashingEmbedder
    from turnout.routing.artifact import save_router
    from turnout.routing.base import TrainingData
    from turnout.routing.calibration import calibration_sample
    from turnout.routing.registry import create_router

    rng = np.random.default_rng(0)
    hard = np.arange(300) % 2 == 1
    prompts = [prompt(i, bool(h)) for i, h in enumerate(hard)]
    X = HashingEmbedder().embed(prompts)
    S = np.stack([np.where(hard, 0.2, 0.9), np.full(300, 0.95)], axis=1) + rng.normal(0, 0.02, (300, 2))
    router = create_router("knn", k=10).fit(
        TrainingData(X=X, scores=S, costs=np.tile([1e-4, 1e-3], (300, 1)), models=["small", "big"])
    )
    path = tmp_path_factory.mktemp("budget") / "knn.npz"
    return save_router(router, path, meta={"calibration": calibration_sample(router, X, prompts, max_prompts=200)})


def build(artifact: Path, budget: dict[str, Any]) -> Gateway:
    data = {
        "server": {"request_log": None},
        "backends": {"up": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {
            "local": {"backend": "up", "price": {"input_per_mtok": 0.1, "output_per_mtok": 0.2}},
            "frontier": {"backend": "up", "price": {"input_per_mtok": 10, "output_per_mtok": 30}},
        },
        "routes": {
            "auto": {
                "router": {"type": "knn", "artifact": str(artifact)},
                "embedder": "hashing",
                "candidates": {"small": "local", "big": "frontier"},
                "budget": budget,
            }
        },
    }
    return build_gateway(resolve(parse_config(data, source="test.yaml")))


def answers(gw: Gateway, completion_tokens: int) -> None:
    """Every model now answers with ``completion_tokens`` tokens (40 prompt tokens)."""
    for t in gw.targets.values():
        t.backend = ScriptedBackend(t.name, Step(text="an answer", prompt_tokens=40, completion_tokens=completion_tokens))


async def serve(
    gw: Gateway, n: int, start: int, hard_share: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """``n`` requests, ``hard_share`` of them hard: each answer's cost, whether 'frontier' answered, each decision."""
    cost, big, decisions = np.empty(n), np.empty(n), []
    for i in range(n):
        hard = bool(rng.random() < hard_share)
        _, d, attempts = await gw.chat(ChatRequest("auto", [{"role": "user", "content": prompt(start + i, hard)}]))
        cost[i], big[i] = sum(a.cost_usd for a in attempts), d.model == "frontier"
        decisions.append(d)
    return cost, big, decisions


async def drifting_lengths(artifact: Path, budget: dict[str, Any]) -> tuple[list[float], list[float], RouteBudget]:
    """300 requests with 100-token answers, then 300 with 600-token ones; the settled (last 60%) spend of each half
    over the target, and λ at the end of each half."""
    gw = build(artifact, budget)
    rng = np.random.default_rng(1)
    devs, lams = [], []
    for k, tokens in enumerate((100, 600)):
        answers(gw, tokens)
        cost, _, decisions = await serve(gw, 300, 1000 + 300 * k, 0.5, rng)
        devs.append(float(cost[120:].mean()) / budget["target_cost_per_request"] - 1.0)
        lams.append(decisions[-1].lam)
    rb = gw.routes["auto"].budget
    await gw.aclose()
    return devs, lams, rb


async def test_pi_mode_holds_a_cost_target_when_answers_get_longer_half_way(artifact: Path) -> None:
    target = 0.003
    devs, lams, rb = await drifting_lengths(artifact, {"target_cost_per_request": target, "controller": "pi", "window": 50})
    lam0 = rb.base_lambda
    # short answers: λ comes down to spend the unused budget on quality; long ones: λ goes back up
    assert all(abs(d) <= 0.10 for d in devs), devs
    assert lams[0] < 0.5 * lam0 and lams[1] > 2 * lams[0]
    d = rb.describe()
    assert d["controller"] == "pi" and d["pi"]["cost"]["target"] == target and not d["tightened"]
    # tighten mode on the same traffic: cumulative and one-sided, it underspends the first half by half and lets the
    # second overspend (the first half's savings hide the overshoot from its running mean)
    tdevs, tlams, _ = await drifting_lengths(artifact, {"target_cost_per_request": target, "controller": "tighten"})
    assert tdevs[0] < -0.4 and tdevs[1] > 0.25 and tlams[0] == lam0


async def test_pi_mode_holds_a_models_share_when_the_prompt_mix_drifts(artifact: Path) -> None:
    shares = {}
    for mode in ("pi", "tighten"):
        budget = {
            "target_share": {"frontier": 0.3},
            **({"controller": "pi", "window": 50} if mode == "pi" else {"controller": "tighten"}),
        }
        gw = build(artifact, budget)
        answers(gw, 200)
        rng = np.random.default_rng(1)
        # 20% hard prompts (frontier's share would fall), then 80% (it would rise)
        _, first, _ = await serve(gw, 300, 1000, 0.2, rng)
        _, second, decisions = await serve(gw, 300, 2000, 0.8, rng)
        shares[mode] = (float(first[120:].mean()), float(second[120:].mean()))
        if mode == "pi":
            assert decisions[-1].budget["pi"]["frontier"]["target"] == 0.3
            assert any("by the PI controller" in r.detail for r in decisions[-1].reasons if r.kind == "budget")
        await gw.aclose()
    assert all(abs(s - 0.3) <= 0.05 for s in shares["pi"]), shares
    assert shares["tighten"][0] < 0.2 and shares["tighten"][1] > 0.35, shares


async def test_an_unreachable_target_pins_lambda_at_its_bound_without_winding_up(artifact: Path) -> None:
    target = 0.0003
    gw = build(artifact, {"target_cost_per_request": target, "controller": "pi", "window": 50})
    rb: RouteBudget = gw.routes["auto"].budget
    rng = np.random.default_rng(2)
    answers(gw, 5000)  # even the small model's answers now cost 3x the target: out of reach
    await serve(gw, 250, 1000, 0.5, rng)
    pi = rb.describe()["pi"]["cost"]
    ctl = rb.controller_state()["cost"]
    assert pi["saturated"] and rb.lam() == pytest.approx(ctl["lam_max"])
    # anti-windup: the integral holds no more than what puts λ on its bound, so nothing is stored up
    assert ctl["ki"] * ctl["integral"] <= np.log(ctl["lam_max"] / ctl["lam0"]) + 1e-9
    answers(gw, 10)  # reachable again: λ leaves the bound within a window and comes back to the target
    cost, _, decisions = await serve(gw, 450, 2000, 0.5, rng)
    lams = np.array([d.lam for d in decisions])
    # down two decades at the integral's largest pace (one log unit a window): about four windows, then held
    assert lams[50] < ctl["lam_max"] and not rb.describe()["pi"]["cost"]["saturated"]
    assert abs(float(cost[250:].mean()) / target - 1.0) <= 0.15
    await gw.aclose()


async def test_the_controllers_running_figures_carry_over_to_a_new_budget(artifact: Path) -> None:
    budget = {"target_cost_per_request": 0.003, "controller": "pi", "window": 50}
    gw = build(artifact, budget)
    answers(gw, 100)
    await serve(gw, 120, 1000, 0.5, np.random.default_rng(3))
    a: RouteBudget = gw.routes["auto"].budget
    state = a.controller_state()
    fresh = build(artifact, budget)
    b: RouteBudget = fresh.routes["auto"].budget
    assert b.lam() == b.base_lambda != a.lam()
    b.load_controller_state(state)
    assert b.lam() == a.lam() and b.describe()["pi"] == a.describe()["pi"]
    for rb in (a, b):
        await rb.observe("frontier", 0.004)
    assert b.lam() == a.lam()
    with pytest.raises(Exception, match="controls"):
        b.load_controller_state({"frontier": state["cost"]})
    await gw.aclose()
    await fresh.aclose()


def test_pi_settings_are_checked_and_pi_is_the_default(artifact: Path) -> None:
    assert DEFAULT_CONTROLLER == "pi"
    gw = build(artifact, {"target_cost_per_request": 0.003})
    assert gw.routes["auto"].budget.controller == "pi"
    tight = build(artifact, {"target_cost_per_request": 0.003, "controller": "tighten"})
    assert tight.routes["auto"].budget.controller == "tighten" and tight.routes["auto"].budget.controller_state() == {}
    with pytest.raises(ConfigError, match="set controller: pi") as info:
        build(artifact, {"target_cost_per_request": 0.003, "controller": "tighten", "kp": 2.0})
    assert info.value.key == "routes.auto.budget"
    with pytest.raises(ConfigError, match="tighten") as info:
        build(artifact, {"target_cost_per_request": 0.003, "controller": "pid"})
    assert info.value.key == "routes.auto.budget.controller"
    with pytest.raises(ConfigError, match="above 0") as info:
        build(artifact, {"target_share": {"frontier": 0.0}, "controller": "pi"})
    assert info.value.key == "routes.auto.budget"
    gains = (
        build(
            artifact,
            {"target_cost_per_request": 0.003, "controller": "pi", "kp": 0.5, "ki": 2.0, "window": 80, "lambda_range": 10},
        )
        .routes["auto"]
        .budget.controller_state()["cost"]
    )
    lam0 = gains["lam0"]
    assert (gains["kp"], gains["ki"], gains["window"]) == (0.5, 2.0, 80)
    assert gains["lam_min"] == pytest.approx(lam0 / 10) and gains["lam_max"] == pytest.approx(lam0 * 10)
