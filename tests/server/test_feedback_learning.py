"""Online learning end to end: the official openai client asks a bandit route, /v1/feedback scores the answers, and
the route learns which model to send similar prompts to; propensities are logged; learning survives a restart.

Two scripted upstreams on loopback ('small', cheap; 'big', dearer); prompts of two kinds: French translations,
where only big's answers are any good, and Python functions, where both are (so the cheaper small should win).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from turnout.config import parse_config, resolve
from turnout.gateway.builder import build_gateway
from turnout.testing.scripted import ScriptedServer, Step

from server_helpers import Served

openai = pytest.importorskip("openai")

FRENCH = [
    "translate into french: {} the cat sleeps on the mat",
    "translate into french: {} where is the station",
    "translate into french: {} I would like a coffee",
]
PYTHON = [
    "write a python function {} that sorts a list",
    "write a python function {} that parses json",
    "write a python function {} that reverses a string",
]


def prompt(kind: str, i: int) -> str:
    return (FRENCH if kind == "french" else PYTHON)[i % 3].format(i)


def score(kind: str, model: str) -> float:
    """The user's verdict: small's French is useless, everything else is right."""
    return 0.0 if kind == "french" and model == "small" else 1.0


@pytest.fixture
def upstreams() -> Iterator[dict[str, ScriptedServer]]:
    servers = {
        m: ScriptedServer(Step(text=f"an answer from {m}", prompt_tokens=12, completion_tokens=20)).start()
        for m in ("small", "big")
    }
    yield servers
    for s in servers.values():
        s.stop()


def config(upstreams: dict[str, ScriptedServer], tmp: Path, **bandit: Any) -> Any:
    prices = {"small": (0.1, 0.2), "big": (2.0, 6.0)}
    data = {
        "server": {"request_log": str(tmp / "log.sqlite")},
        "backends": {f"b-{m}": {"protocol": "openai", "base_url": s.base_url} for m, s in upstreams.items()},
        "models": {
            m: {
                "backend": f"b-{m}",
                "upstream_model": "scripted",
                "price": {"input_per_mtok": prices[m][0], "output_per_mtok": prices[m][1]},
            }
            for m in upstreams
        },
        "routes": {
            "learn": {
                "router": {"type": "bandit", "params": {"d": 8}},
                "embedder": "hashing",
                "candidates": ["small", "big"],
                "lambda": 100,
                "bandit": {"seed": 0, **bandit},
            },
            "fixed": {
                "router": {"type": "prior", "params": {"quality": {"small": 0.5, "big": 0.9}}},
                "candidates": ["small", "big"],
                "lambda": 0,
            },
        },
    }
    return resolve(parse_config(data, source="test.yaml"))


def serve(cfg: Any) -> Served:
    return Served(build_gateway(cfg)).__enter__()


def dry_run(srv: Served, text: str) -> dict[str, Any]:
    """/v1/route's decision for ``text``: the drawn model, its propensity, and the bandit's reason data."""
    r = httpx.post(srv.base_url + "/route", json={"model": "learn", "messages": [{"role": "user", "content": text}]})
    assert r.status_code == 200, r.text
    body = r.json()
    drew = next(x["data"] for x in body["reasons"] if x["kind"] == "bandit")
    assert body["propensity"] == drew["probabilities"][body["model"]]
    return {**drew, "propensity": body["propensity"], "model": body["model"]}


def chat(client: Any, text: str, stream: bool) -> tuple[str, str, float]:
    """One answer from the 'learn' route: (request id, model that answered, propensity header)."""
    messages = [{"role": "user", "content": text}]
    raw = client.chat.completions.with_raw_response.create(model="learn", messages=messages, stream=stream)
    parsed = raw.parse()
    content = (
        "".join(c.choices[0].delta.content or "" for c in parsed if c.choices) if stream else parsed.choices[0].message.content
    )
    model = raw.headers["x-turnout-model"]
    assert content == f"an answer from {model}"
    return raw.headers["x-turnout-request-id"], model, float(raw.headers["x-turnout-propensity"])


def feedback(srv: Served, request_id: str, value: float) -> dict[str, Any]:
    r = httpx.post(srv.base_url + "/feedback", json={"request_id": request_id, "score": value, "comment": "test"})
    assert r.status_code == 200, r.text
    return r.json()


def teach(srv: Served, n: int) -> list[tuple[str, str, str, float]]:
    """``n`` requests alternating French and Python (every third streamed), each scored through /v1/feedback."""
    client = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)
    served = []
    for i in range(n):
        kind = "french" if i % 2 == 0 else "python"
        rid, model, propensity = chat(client, prompt(kind, i), stream=i % 3 == 0)
        body = feedback(srv, rid, score(kind, model))
        assert body["stored"] and body["learned"] and body["model"] == model and body["route"] == "learn"
        served.append((rid, kind, model, propensity))
    return served


def test_feedback_changes_which_model_the_bandit_picks_for_similar_prompts(upstreams, tmp_path: Path) -> None:
    srv = serve(config(upstreams, tmp_path))
    try:
        before = dry_run(srv, prompt("french", 1001))
        assert before["greedy"] == "small" and before["probabilities"]["big"] <= 0.1  # no evidence: the cheaper one
        served = teach(srv, 60)
        after_fr, after_py = dry_run(srv, prompt("french", 1001)), dry_run(srv, prompt("python", 1002))
        # unseen prompts of each kind: French now goes to big, Python stays on the cheaper small
        assert after_fr["greedy"] == "big" and after_fr["probabilities"]["big"] >= 0.9
        assert after_py["greedy"] == "small" and after_py["probabilities"]["small"] >= 0.9
        assert sum(after_fr["observations"].values()) == 60
        # the first decisions could only learn big's worth by exploring: some answers were drawn off the greedy model
        assert all(0 < p <= 1 for *_, p in served) and any(p <= 0.1 for *_, p in served)
        # every answer's propensity is in the request log, as the header said
        log = srv.gateway.request_log
        log.flush()
        for rid, _, model, propensity in served:
            entry = log.get(rid)
            assert entry.model == model and entry.propensity == pytest.approx(propensity, rel=1e-5)
            assert entry.score is not None and entry.comment == "test"
    finally:
        srv.__exit__()
    # the log feeds off-policy evaluation: every scored bandit request is a sample with its propensity
    from turnout.cli.offpolicy import logged_decisions

    logged = logged_decisions(tmp_path / "log.sqlite", route="learn")
    assert len(logged) == 60 and set(logged.arms) == {"small", "big"}
    assert (logged.propensity > 0).all() and (logged.propensity < 1).all()


def test_feedback_for_other_requests_is_stored_as_before(upstreams, tmp_path: Path) -> None:
    srv = serve(config(upstreams, tmp_path))
    try:
        client = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)
        for model in ("fixed", "big"):  # a deterministic route, and a model asked for by name
            raw = client.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": "hi"}])
            assert "x-turnout-propensity" not in raw.headers
            rid = raw.headers["x-turnout-request-id"]
            assert feedback(srv, rid, 1.0) == {"request_id": rid, "score": 1.0, "stored": True}  # as it always was
        bandit = srv.gateway.routes["learn"].bandit
        assert bandit.observations.sum() == 0
        r = httpx.post(srv.base_url + "/feedback", json={"request_id": "nope", "score": 1})
        assert r.status_code == 404 and "x-turnout-request-id" in r.json()["error"]["message"]
    finally:
        srv.__exit__()


def test_what_the_bandit_learned_survives_a_server_restart(upstreams, tmp_path: Path) -> None:
    state = tmp_path / "bandit-learn.npz"
    cfg = config(upstreams, tmp_path, state_path=str(state))
    srv = serve(cfg)
    try:
        teach(srv, 60)
        client = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)
        late, _, _ = chat(client, prompt("french", 500), stream=False)  # scored only after the restart
        learned = srv.gateway.routes["learn"].bandit.observations.sum()
    finally:
        srv.__exit__()  # the lifespan closes the gateway: the last save
    assert state.exists()
    srv = serve(cfg)  # a new gateway over the same state file and request log
    try:
        after = dry_run(srv, prompt("french", 1001))
        assert after["greedy"] == "big" and sum(after["observations"].values()) == learned == 60
        body = feedback(srv, late, 1.0)
        assert body["learned"] and "recomputed from the logged prompt" in body["detail"]
    finally:
        srv.__exit__()
