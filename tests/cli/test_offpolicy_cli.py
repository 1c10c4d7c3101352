"""``turnout eval offpolicy``: a real SQLite request log, a real router artifact, a real config file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from turnout.cli.main import main
from turnout.cli.offpolicy import Target, evaluate, logged_decisions
from turnout.embed import create_embedder
from turnout.gateway.requestlog import LogEntry, RequestLog
from turnout.routing import TrainingData, create_router, save_router

MODELS = ["big", "small"]
TOPICS = ["prove the theorem about primes", "write a haiku about rain"]


def _prompt(i: int) -> str:
    return f"{TOPICS[i % 2]} number {i}"


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    """A knn artifact on the hashing embedder: 'big' answers the proofs, both answer the haiku."""
    prompts = [_prompt(i) for i in range(60)]
    X = create_embedder("hashing").embed(prompts)
    S = np.array([[1.0, 0.0] if i % 2 == 0 else [1.0, 1.0] for i in range(60)])
    C = np.tile([0.01, 0.001], (60, 1))
    router = create_router("knn").fit(TrainingData(X=X, scores=S, costs=C, models=MODELS))
    return save_router(router, tmp_path / "knn.npz", meta={"embedder": "hashing", "lambda": 10.0})


def _candidates(quality: tuple[float, float]) -> list[dict[str, object]]:
    return [
        {"model": m, "quality": q, "cost": c, "utility": q - 10 * c, "excluded": None}
        for m, q, c in zip(MODELS, quality, (0.01, 0.001))
    ]


@pytest.fixture
def log(tmp_path: Path) -> Path:
    """Traffic logged by a router that always chose 'small': right for the haiku, wrong for the proofs."""
    path = tmp_path / "requests.sqlite"
    with RequestLog(path) as rl:
        for i in range(40):
            rl.record(
                LogEntry(
                    id=f"r{i}",
                    route="auto",
                    model="small",
                    prompt=_prompt(100 + i),
                    response_text="ok",
                    candidates=_candidates((0.5, 0.6)),
                    cost_usd=0.001,
                    lam=10.0,
                )
            )
            rl.set_feedback(f"r{i}", 0.0 if i % 2 == 0 else 1.0)
        # rows that cannot be used, one per reason
        rl.record(LogEntry(id="err", route="auto", model="small", status="error", prompt="x", candidates=_candidates((0.5, 0.6))))
        rl.record(
            LogEntry(
                id="fb",
                route="auto",
                model="big",
                prompt="y",
                candidates=_candidates((0.5, 0.6)),
                fallbacks_tried=["small"],
                cost_usd=0.01,
            )
        )
        rl.set_feedback("fb", 1.0)
        rl.record(
            LogEntry(id="nofb", route="auto", model="small", prompt="z", candidates=_candidates((0.5, 0.6)), cost_usd=0.001)
        )
        rl.record(LogEntry(id="byname", route="small", model="small", prompt="w", cost_usd=0.001))
        rl.set_feedback("byname", 1.0)
    return path


def test_logged_decisions_reads_the_log_and_counts_what_it_skips(log: Path) -> None:
    d = logged_decisions(log, assume_deterministic=True)
    assert len(d) == 40 and d.total == 44 and d.arms == MODELS
    assert d.skipped == {
        "not answered (error)": 1,
        "answered by a fallback": 1,
        "no feedback": 1,
        "not routed (no candidates)": 1,
    }
    assert (d.actions == 1).all() and (d.propensity == 1.0).all() and d.score.mean() == 0.5
    assert d.available.all() and np.allclose(d.predicted_cost, [0.01, 0.001])
    # today's log has no propensity column: without the assumption every usable row lacks one
    assert logged_decisions(log).skipped.get("no propensity") == 40


def test_a_router_that_agrees_with_the_log_gets_the_logged_figures(log: Path, artifact: Path) -> None:
    d = logged_decisions(log, assume_deterministic=True)
    cheap = create_router("cheapest").fit(TrainingData(np.zeros((2, 1)), np.ones((2, 2)), np.tile([0.01, 0.001], (2, 1)), MODELS))
    doc = evaluate(d, Target("cheapest", cheap, None, 0.0, None))
    assert doc["agreement"] == 1.0 and not doc["notes"]
    for k in ("ips", "snips", "dr"):
        assert doc["estimates"]["quality"][k]["value"] == pytest.approx(0.5)
        assert doc["estimates"]["cost"][k]["value"] == pytest.approx(0.001)


def test_cli_estimates_an_artifact_on_the_log(
    log: Path, artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out" / "offpolicy.json"
    rc = main(["eval", "offpolicy", str(log), "--router", str(artifact), "--assume-deterministic", "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["evaluated"] == 40 and doc["lambda"] == 10.0 and doc["skipped"]["no feedback"] == 1
    # knn sends the proofs to 'big', which the log never tried: the estimators see only the haiku half
    assert doc["agreement"] == pytest.approx(0.5)
    assert doc["estimates"]["quality"]["snips"]["value"] == pytest.approx(1.0)  # the haiku it kept on 'small'
    assert doc["estimates"]["quality"]["ips"]["value"] == pytest.approx(0.5)  # the proofs count as 0
    assert doc["notes"] and "deterministic" in doc["notes"][0]
    text = capsys.readouterr().out
    assert "SNIPS" in text and "deterministic" in text


def test_cli_evaluates_a_route_of_a_config_without_its_api_keys(
    log: Path, artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OFFPOLICY_TEST_KEY", raising=False)
    cfg = tmp_path / "turnout.yaml"
    cfg.write_text(f"""
backends:
  up: {{protocol: openai, base_url: "https://example.invalid/v1", api_key_env: OFFPOLICY_TEST_KEY}}
models:
  big: {{backend: up, price: {{input_per_mtok: 10, output_per_mtok: 30}}}}
  small: {{backend: up, price: {{input_per_mtok: 0.1, output_per_mtok: 0.3}}}}
routes:
  auto:
    router: {{type: knn, artifact: {artifact.name}}}
    embedder: hashing
    candidates: {{big: big, small: small}}
    lambda: 1000000
""")
    # λ huge: the route always takes the cheapest candidate, exactly what the log did
    out = tmp_path / "route.json"
    assert (
        main(
            [
                "eval",
                "offpolicy",
                str(log),
                "--router",
                "auto",
                "--config",
                str(cfg),
                "--assume-deterministic",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    doc = json.loads(out.read_text())
    assert doc["router"] == "route auto" and doc["agreement"] == 1.0
    assert doc["estimates"]["quality"]["dr"]["value"] == pytest.approx(0.5)


def test_errors_name_the_fix(log: Path, artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "offpolicy", str(tmp_path / "none.sqlite"), "--router", str(artifact)]) == 2
    assert "request log not found" in capsys.readouterr().err
    assert main(["eval", "offpolicy", str(log), "--router", str(artifact)]) == 2
    err = capsys.readouterr().err
    assert "40 no propensity" in err and "--assume-deterministic" in err
    assert main(["eval", "offpolicy", str(log), "--router", "auto"]) == 2
    assert "--config" in capsys.readouterr().err


def test_help_and_the_plain_eval_command_still_work(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "offpolicy", "--help"])
    assert exit_.value.code == 0 and "--assume-deterministic" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "offpolicy" not in capsys.readouterr().out.split("\n")[0]  # `turnout eval TABLE` is cli/eval.py's, untouched


def test_a_budget_route_is_evaluated_at_its_start_up_lambda(log: Path, tmp_path: Path) -> None:
    from turnout.routing.calibration import calibration_sample

    prompts = [_prompt(i) for i in range(60)]
    X = create_embedder("hashing").embed(prompts)
    S = np.array([[1.0, 0.0] if i % 2 == 0 else [1.0, 1.0] for i in range(60)])
    router = create_router("knn").fit(TrainingData(X=X, scores=S, costs=np.tile([0.01, 0.001], (60, 1)), models=MODELS))
    art = save_router(
        router, tmp_path / "budget.npz", meta={"embedder": "hashing", "calibration": calibration_sample(router, X, prompts)}
    )
    cfg = tmp_path / "turnout.yaml"
    cfg.write_text(f"""
backends:
  up: {{protocol: openai, base_url: "https://example.invalid/v1"}}
models:
  big: {{backend: up, price: {{input_per_mtok: 10, output_per_mtok: 30}}}}
  small: {{backend: up, price: {{input_per_mtok: 0.1, output_per_mtok: 0.3}}}}
routes:
  auto:
    router: {{type: knn, artifact: {art}}}
    embedder: hashing
    candidates: [big, small]
    budget: {{target_share: {{big: 0.5}}}}
""")
    out = tmp_path / "budget.json"
    assert (
        main(
            [
                "eval",
                "offpolicy",
                str(log),
                "--router",
                "auto",
                "--config",
                str(cfg),
                "--assume-deterministic",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    doc = json.loads(out.read_text())
    assert doc["lambda"] > 0  # calibrated so that at most half the calibration prompts go to 'big'
    assert doc["target_share"]["big"] <= 0.6


def test_a_bandit_artifact_is_evaluated_as_the_randomised_policy_it_is(log: Path, tmp_path: Path) -> None:
    from turnout.routing.bandit import BanditRouter

    prompts = [_prompt(i) for i in range(60)]
    X = create_embedder("hashing").embed(prompts)
    bandit = BanditRouter(projection="random", d=8, models=MODELS, dim=X.shape[1], max_explore=0.2)
    for i, x in enumerate(X):
        bandit.update(x, i % 2, 1.0 if i % 2 else 0.0)
    art = save_router(bandit, tmp_path / "bandit.npz", meta={"embedder": "hashing"})
    out = tmp_path / "bandit.json"
    assert main(["eval", "offpolicy", str(log), "--router", str(art), "--assume-deterministic", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    share = doc["target_share"]["small"]
    assert 0.8 - 1e-9 <= share < 1.0  # the greedy 'small' most of the time, 'big' within the exploration bound


def test_a_randomised_log_gives_unbiased_estimates_of_another_router(artifact: Path, tmp_path: Path) -> None:
    """The logger drew 'big' or 'small' with logged propensities; the knn artifact's truth is known: 1.0."""
    path = tmp_path / "random.sqlite"
    rng = np.random.default_rng(0)
    with RequestLog(path) as rl:
        for i in range(400):
            p_big = 0.3 if i % 2 else 0.6
            big = bool(rng.random() < p_big)
            # 'big' solves everything, 'small' only the haiku (odd i)
            score = 1.0 if big or i % 2 else 0.0
            rl.record(
                LogEntry(
                    id=f"q{i}",
                    route="auto",
                    model="big" if big else "small",
                    prompt=_prompt(1000 + i),
                    candidates=_candidates((0.5, 0.6)),
                    cost_usd=0.01 if big else 0.001,
                    propensity=p_big if big else 1 - p_big,
                )
            )
            rl.set_feedback(f"q{i}", score)
        rl.record(
            LogEntry(
                id="cached",
                route="auto",
                model="small",
                prompt="c",
                candidates=_candidates((0.5, 0.6)),
                cost_usd=0.0,
                propensity=1.0,
                answered_by="cache",
            )
        )
        rl.set_feedback("cached", 1.0)
    out = tmp_path / "random.json"
    assert main(["eval", "offpolicy", str(path), "--router", str(artifact), "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["evaluated"] == 400 and doc["skipped"] == {"answered by the cache, not a model": 1}
    assert not doc["notes"]  # randomised logging: nothing to warn about
    # knn sends the proofs to 'big' and the haiku to 'small' (cheaper at λ = 10): truth quality 1.0, cost 0.0055
    for k in ("ips", "snips", "dr"):
        q, c = doc["estimates"]["quality"][k], doc["estimates"]["cost"][k]
        assert q["ci"][0] <= 1.0 <= q["ci"][1] + 1e-9, k
        assert c["ci"][0] <= 0.0055 <= c["ci"][1], k
    assert doc["target_share"]["big"] == pytest.approx(0.5)
