"""``turnout add-model``: a model absent from training joins a profile artifact from a few probe outcomes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from turnout.cli.main import main
from turnout.embed import create_embedder
from turnout.routing.artifact import load_router

TOPICS = ("easy hello", "hard math proof", "poem about rain", "sql join query")
#: the training prompts; with fewer than 2,000 of them the calibration sample is all of them, in order
PROMPTS = [f"{TOPICS[i % len(TOPICS)]} {i}" for i in range(240)]


def _rows(ids, models):
    """Four prompt topics; each model is right on some: 'small' on easy ones, 'big' on all, 'coder' on code only."""
    rng = np.random.default_rng(0)
    p_right = {"small": (0.9, 0.1, 0.8, 0.1), "big": (0.95, 0.9, 0.9, 0.9), "coder": (0.2, 0.3, 0.1, 0.95)}
    price = {"small": 0.001, "big": 0.01, "coder": 0.003}
    for i in ids:
        t = i % len(TOPICS)
        for m in models:
            yield {
                "prompt_id": str(i),
                "prompt": f"{TOPICS[t]} {i}",
                "model": m,
                "score": float(rng.random() < p_right[m][t]),
                "cost_usd": price[m],
            }


def _write(path: Path, rows) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture
def trained(tmp_path):
    """A profile artifact trained on 'small' and 'big' only, and a probe table of 'coder' on 40 other prompts."""
    train = _write(tmp_path / "train.jsonl", _rows(range(240), ("small", "big")))
    art = tmp_path / "profile.npz"
    assert main(["train", str(train), "--router", "profile", "--embedder", "hashing", "--out", str(art)]) == 0
    probe = _write(tmp_path / "probe.jsonl", _rows(range(1000, 1040), ("coder", "big")))
    return train, art, probe


def test_added_model_is_scored_from_its_probes_and_joins_the_calibration_sample(tmp_path, trained, capsys):
    train, art, probe = trained
    out = tmp_path / "with-coder.npz"
    assert main(["add-model", str(art), str(probe), "--model", "coder", "--out", str(out)]) == 0
    assert "added coder" in capsys.readouterr().out
    router, meta = load_router(out)
    assert router.models == ["small", "big", "coder"] == meta["models"]
    emb = create_embedder("hashing")
    q = router.predict(np.asarray(emb.embed([f"{t} 5000" for t in TOPICS]))).quality[:, 2]
    # only the probes say where coder is good: on code, and not on the easy prompts 'small' is good at
    assert q[3] > 0.7 and q[3] > q[0] + 0.4 and q[3] > q[2] + 0.4
    added = meta["added_models"][0]
    assert added["model"] == "coder" and added["n_probe"] == 40 and added["cost_from"] == "probe costs"
    # the calibration column comes from the capability mixes stored at training: what predict gives there
    cal = meta["calibration"]
    assert cal["models"] == ["small", "big", "coder"] and all(len(row) == 3 for row in cal["quality"])
    assert added["calibration_residual"] == 0.0 and added["calibration"].startswith("exact")
    direct = router.predict(np.asarray(emb.embed(PROMPTS))).quality[:, 2]
    assert np.abs(np.array([row[2] for row in cal["quality"]]) - direct).max() < 1e-5


def test_an_artifact_without_stored_mixes_gets_a_blend_within_its_stated_error(tmp_path, trained, capsys):
    from turnout.routing.artifact import ARTIFACT_KEYS, save_router

    _, art, probe = trained
    router, meta = load_router(art)
    del meta["calibration"]["features"]  # as an artifact trained before the mixes were stored
    old = tmp_path / "old.npz"
    save_router(router, old, meta={k: v for k, v in meta.items() if k not in ARTIFACT_KEYS})
    out = tmp_path / "with-coder.npz"
    assert main(["add-model", str(old), str(probe), "--model", "coder", "--out", str(out)]) == 0
    assert "a blend of the trained models'" in capsys.readouterr().out
    router, meta = load_router(out)
    added = meta["added_models"][0]
    assert added["calibration_residual"] > 0  # two trained models cannot span coder's profile
    direct = router.predict(np.asarray(create_embedder("hashing").embed(PROMPTS))).quality[:, 2]
    col = np.array([row[2] for row in meta["calibration"]["quality"]])
    assert np.abs(col - direct).max() <= added["calibration_residual"] + 1e-5


def test_added_model_is_priced_from_its_probe_costs(tmp_path, trained):
    _, art, probe = trained
    out = tmp_path / "with-coder.npz"
    assert main(["add-model", str(art), str(probe), "--model", "coder", "--out", str(out)]) == 0
    router, _ = load_router(out)
    c = router.predict(np.asarray(create_embedder("hashing").embed(["sql join query 7"]))).cost[0]
    assert c[0] < c[2] < c[1]  # 0.003 lies between the trained 0.001 and 0.01


@pytest.mark.parametrize("price, between", [(0.03, False), (10.0, True)])
def test_added_model_without_probe_costs_is_priced_from_its_card(tmp_path, trained, price, between):
    """An artifact trained on measured costs knows no card prices: the card × the probes' estimated tokens it is."""
    _, art, _ = trained
    probe = tmp_path / "nocost.jsonl"
    _write(probe, ({k: v for k, v in r.items() if k != "cost_usd"} for r in _rows(range(1000, 1040), ("coder",))))
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"coder": {"input_per_mtok": price, "output_per_mtok": price}}))
    out = tmp_path / "o.npz"
    assert main(["add-model", str(art), str(probe), "--model", "coder", "--models-card", str(card), "--out", str(out)]) == 0
    router, meta = load_router(out)
    c = router.predict(np.asarray(create_embedder("hashing").embed(["sql join query 7"]))).cost[0]
    assert meta["added_models"][0]["cost_from"] == "card prices × estimated probe tokens"
    # ~260 tokens a probe (256 assumed for the answer): $0.03/Mtok is far below the trained 0.001 per answer,
    # $10/Mtok (about 0.0026) between 0.001 and 0.01
    assert (c[0] < c[2] < c[1]) if between else (c[2] < c[0])


def test_a_tiny_probe_set_is_warned_about(tmp_path, trained, capsys):
    _, art, _ = trained
    probe = _write(tmp_path / "p3.jsonl", _rows(range(1000, 1003), ("coder",)))
    assert main(["add-model", str(art), str(probe), "--model", "coder", "--out", str(tmp_path / "o.npz")]) == 0
    assert "only 3 probe prompt(s) for coder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--model", "nope"], "models there: coder, big"),
        (["--model", "big"], "already routed"),
        (["--model", "coder", "--as", "small"], "--as small is already routed"),
    ],
)
def test_add_model_errors_name_the_fix(tmp_path, trained, argv, needle, capsys):
    _, art, probe = trained
    out = tmp_path / "o.npz"
    assert main(["add-model", str(art), str(probe), *argv, "--out", str(out)]) != 0
    assert needle in capsys.readouterr().err and not out.exists()


def test_add_model_needs_a_profile_artifact(tmp_path, trained, capsys):
    train, _, probe = trained
    knn = tmp_path / "knn.npz"
    assert main(["train", str(train), "--router", "knn", "--embedder", "hashing", "--out", str(knn)]) == 0
    assert main(["add-model", str(knn), str(probe), "--model", "coder", "--out", str(tmp_path / "o.npz")]) != 0
    assert "only 'profile' can add a model" in capsys.readouterr().err


def test_a_route_serves_the_added_model_under_a_budget(tmp_path, trained, monkeypatch):
    """The gateway loads the grown artifact, calibrates a budget over all three models, and sends code to coder."""
    import yaml

    from turnout.config import load_config
    from turnout.gateway.builder import build_gateway
    from turnout.types import ChatRequest

    _, art, probe = trained
    out = tmp_path / "with-coder.npz"
    assert main(["add-model", str(art), str(probe), "--model", "coder", "--out", str(out)]) == 0
    price = lambda i, o: {"input_per_mtok": i, "output_per_mtok": o}  # noqa: E731
    cfg = {
        "backends": {"openai": {"protocol": "openai", "base_url": "https://api.openai.com/v1", "api_key_env": "OPENAI_API_KEY"}},
        "models": {
            "s": {"backend": "openai", "price": price(1, 4)},
            "b": {"backend": "openai", "price": price(30, 60)},
            "c": {"backend": "openai", "price": price(3, 12)},
        },
        "routes": {
            "auto": {
                "router": {"type": "profile", "artifact": str(out)},
                "embedder": "hashing",
                "candidates": {"small": "s", "big": "b", "coder": "c"},
                "budget": {"target_cost_per_request": 0.004},
            }
        },
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    route = build_gateway(load_config(tmp_path / "c.yaml", env={"OPENAI_API_KEY": "sk-test"})).routes["auto"]
    ask = lambda text: route.decide(ChatRequest(model="auto", messages=[{"role": "user", "content": text}]))  # noqa: E731
    code, easy = ask("sql join query 4242"), ask("easy hello 4243")
    assert code.lam > 0  # the budget binds: the big model alone would cost several times the target
    assert code.model == "c" and easy.model == "s"
