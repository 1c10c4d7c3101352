"""``turnout train`` on small generated canonical tables (hashing embedder: fast, no model files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from turnout.cli.main import main
from turnout.cli.train import parse_params
from turnout.embed import create_embedder
from turnout.routing.artifact import load_router
from turnout.routing.base import Prediction
from turnout.routing.policy import choose


def make_table(path: Path, n: int = 60, *, split: bool = False) -> Path:
    """Easy prompts: the small model is right; hard prompts: only the big one is."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        hard = i % 2
        for m, c, p in (("small", 0.001, 0.9 - 0.8 * hard), ("big", 0.01, 0.95)):
            row = {
                "prompt_id": str(i),
                "prompt": ("hard math proof " if hard else "easy hello ") + str(i),
                "model": m,
                "score": float(rng.random() < p),
                "cost_usd": c,
            }
            if split:
                row["split"] = "test" if i >= n - 20 else "train"
            rows.append(row)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_parse_params_types():
    assert parse_params(["k=40", "lr=0.01", "weighted=true", "metric=cosine", "off=False"]) == {
        "k": 40,
        "lr": 0.01,
        "weighted": True,
        "metric": "cosine",
        "off": False,
    }
    assert parse_params(["members=knn, profile", "weights=2,1"]) == {"members": ["knn", "profile"], "weights": [2, 1]}


def test_train_writes_loadable_artifact(tmp_path, capsys):
    src = make_table(tmp_path / "t.jsonl")
    out = tmp_path / "knn.npz"
    assert main(["train", str(src), "--router", "knn", "--param", "k=5", "--embedder", "hashing", "--out", str(out)]) == 0
    assert "lambda=0" in capsys.readouterr().out
    router, meta = load_router(out)
    assert meta["router"] == "knn" and meta["router_name"] == "knn" and meta["router_params"] == {"k": 5}
    assert meta["embedder"] == "hashing" and meta["models"] == ["small", "big"]
    assert meta["n_train"] == 60 and meta["lambda"] == 0.0 and meta["table"] == str(src)
    X = create_embedder("hashing").embed(["easy hello 7", "hard math proof 9", "new"])
    pred = router.predict(X)
    assert pred.quality.shape == (3, 2) and pred.cost.shape == (3, 2) and pred.models == ["small", "big"]


def test_train_uses_train_split(tmp_path):
    src = make_table(tmp_path / "t.jsonl", split=True)
    out = tmp_path / "a.npz"
    assert main(["train", str(src), "--router", "knn", "--embedder", "hashing", "--out", str(out)]) == 0
    _, meta = load_router(out)
    assert meta["n_train"] == 40 and meta["n_held_out"] == 20


def test_train_test_fraction_without_split(tmp_path):
    src = make_table(tmp_path / "t.jsonl")
    out = tmp_path / "a.npz"
    assert (
        main(["train", str(src), "--router", "knn", "--embedder", "hashing", "--out", str(out), "--test-fraction", "0.25"]) == 0
    )
    assert load_router(out)[1]["n_train"] == 45


def test_target_cost_gives_lambda_meeting_it(tmp_path):
    src = make_table(tmp_path / "t.jsonl")
    out = tmp_path / "knn.npz"
    target = 0.004
    assert (
        main(
            [
                "train",
                str(src),
                "--router",
                "knn",
                "--param",
                "k=5",
                "--embedder",
                "hashing",
                "--out",
                str(out),
                "--target-cost",
                str(target),
            ]
        )
        == 0
    )
    router, meta = load_router(out)
    lam = meta["lambda"]
    assert lam > 0 and meta["target"]["cost_usd"] == target
    # recompute the training choices at that lambda: mean predicted cost meets the target
    prompts = [("hard math proof " if i % 2 else "easy hello ") + str(i) for i in range(60)]
    pred = router.predict(create_embedder("hashing").embed(prompts))
    idx = choose(Prediction(pred.models, pred.quality, pred.cost), lam)
    assert pred.cost[np.arange(60), idx].mean() <= target + 1e-12
    assert meta["target"]["train_mean_predicted_cost"] <= target + 1e-12
    # and at lambda = 0 it would not have (else calibration would have returned 0)
    idx0 = choose(Prediction(pred.models, pred.quality, pred.cost), 0.0)
    assert pred.cost[np.arange(60), idx0].mean() > target


def test_target_share_limits_the_expensive_model(tmp_path, capsys):
    src = make_table(tmp_path / "t.jsonl")
    out = tmp_path / "knn.npz"
    assert (
        main(
            [
                "train",
                str(src),
                "--router",
                "knn",
                "--embedder",
                "hashing",
                "--out",
                str(out),
                "--target-share",
                "0.2",
                "--share-model",
                "big",
            ]
        )
        == 0
    )
    assert load_router(out)[1]["lambda"] > 0
    capsys.readouterr()
    # without --share-model: the most expensive model, named in the artifact, its share printed
    assert main(["train", str(src), "--router", "knn", "--embedder", "hashing", "--out", str(out), "--target-share", "0.2"]) == 0
    target = load_router(out)[1]["target"]
    assert target["share_model"] == "big" and 0 <= target["train_share"] <= 0.2  # the most expensive, resolved
    assert "share to big" in capsys.readouterr().out


def test_training_that_can_hardly_route_is_warned_about(tmp_path, capsys):
    src = make_table(tmp_path / "t.jsonl")
    lines = src.read_text().splitlines()
    one = tmp_path / "one.jsonl"
    one.write_text("\n".join(line for line in lines if '"big"' in line))
    assert main(["train", str(one), "--router", "knn", "--embedder", "hashing", "--out", str(tmp_path / "a.npz")]) == 0
    assert "nothing to route" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                str(src),
                "--router",
                "auto",
                "--candidates",
                "knn,profile",
                "--cv-folds",
                "10",
                "--embedder",
                "hashing",
                "--out",
                str(tmp_path / "b.npz"),
            ]
        )
        == 0
    )
    assert "prompts per fold" in capsys.readouterr().err
    assert (
        main(["train", str(src), "--router", "knn", "--cv-folds", "3", "--embedder", "hashing", "--out", str(tmp_path / "c.npz")])
        == 2
    )
    assert "--cv-folds needs --router auto" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv_tail, needle",
    [
        (["--router", "nosuch"], "nosuch"),
        (["--router", "knn", "--param", "bogus=1"], "bogus"),
        (["--router", "knn", "--param", "novalue"], "novalue"),
        (["--router", "knn", "--target-cost", "0.0000001"], "target"),
        (["--router", "knn", "--target-cost", "-1"], "is not a positive mean cost"),
        (["--router", "knn", "--target-share", "1.5"], "is not a share of prompts in [0, 1]"),
        (["--router", "knn", "--target-share", "0.2", "--share-model", "nosuch"], "nosuch is not a model of the table"),
        (["--router", "knn", "--share-model", "big"], "only means something with --target-share"),
    ],
)
def test_bad_router_inputs_exit_2(tmp_path, capsys, argv_tail, needle):
    src = make_table(tmp_path / "t.jsonl")
    out = tmp_path / "x.npz"
    assert main(["train", str(src), "--embedder", "hashing", "--out", str(out), *argv_tail]) == 2
    assert needle in capsys.readouterr().err
    assert not out.exists()


def test_bad_table_and_out_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt_id": "1", "prompt": "x", "model": "m", "cost_usd": 1.0}) + "\n")
    assert main(["train", str(bad), "--router", "knn", "--embedder", "hashing", "--out", str(tmp_path / "a.npz")]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "'score'" in err
    src = make_table(tmp_path / "t.jsonl")
    assert main(["train", str(src), "--router", "knn", "--embedder", "hashing", "--out", str(tmp_path / "a.pkl")]) == 2
    assert "a.pkl" in capsys.readouterr().err


def test_gateway_reads_the_artifact(tmp_path, monkeypatch):
    """A route pointing at the artifact gets its lambda and decides with the hashing embedder."""
    import yaml

    from turnout.config import load_config
    from turnout.gateway.builder import build_gateway
    from turnout.types import ChatRequest

    src = make_table(tmp_path / "t.jsonl")
    art = tmp_path / "k.npz"
    assert main(["train", str(src), "--router", "knn", "--embedder", "hashing", "--out", str(art), "--target-cost", "0.004"]) == 0
    lam = load_router(art)[1]["lambda"]
    cfg = {
        "backends": {"openai": {"protocol": "openai", "base_url": "https://api.openai.com/v1", "api_key_env": "OPENAI_API_KEY"}},
        "models": {
            "cheap": {"backend": "openai", "price": {"input_per_mtok": 1, "output_per_mtok": 4}},
            "dear": {"backend": "openai", "price": {"input_per_mtok": 10, "output_per_mtok": 40}},
        },
        "routes": {
            "auto": {
                "router": {"type": "knn", "artifact": str(art)},
                "embedder": "hashing",
                "candidates": {"small": "cheap", "big": "dear"},
            }
        },
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    gw = build_gateway(load_config(tmp_path / "c.yaml", env={"OPENAI_API_KEY": "sk-test"}))
    route = gw.routes["auto"]
    assert route.policy.lam == pytest.approx(lam) and lam > 0
    d = route.decide(ChatRequest(model="auto", messages=[{"role": "user", "content": "hard math proof 3"}]))
    assert d.model in ("cheap", "dear") and d.lam == pytest.approx(lam)


def test_train_auto_picks_the_cross_validated_best_and_records_why(tmp_path, capsys):
    src = make_table(tmp_path / "t.jsonl", n=120)
    out = tmp_path / "auto.npz"
    # "cheapest" always answers with the small model; knn can tell hard prompts from easy ones
    assert (
        main(
            [
                "train",
                str(src),
                "--router",
                "auto",
                "--candidates",
                "cheapest,knn",
                "--cv-folds",
                "3",
                "--embedder",
                "hashing",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    router, meta = load_router(out)
    sel = meta["selection"]
    assert meta["router_name"] == "knn" == router.name
    assert set(sel["scores"]) == {"cheapest", "knn"} and len(sel["scores"]["knn"]["aiq_folds"]) == 3
    assert sel["scores"]["knn"]["aiq"] > sel["scores"]["cheapest"]["aiq"]
    assert sel["tied_with_choice"] == []  # knn wins every fold by far
    printed = capsys.readouterr().out
    assert "chose knn" in printed and "do not tell" not in printed


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--router", "auto", "--param", "k=5"], "--param needs a named router"),
        (["--router", "knn", "--candidates", "knn,mlp"], "--candidates needs --router auto"),
        (["--router", "auto", "--candidates", "knn,nope"], "nope"),
    ],
)
def test_train_auto_rejects_contradictory_flags_before_any_work(tmp_path, argv, needle, capsys):
    src = make_table(tmp_path / "t.jsonl")
    code = main(["train", str(src), "--embedder", "hashing", "--out", str(tmp_path / "r.npz"), *argv])
    assert code != 0 and needle in capsys.readouterr().err
    assert not (tmp_path / "r.npz").exists()


def test_train_auto_without_torch_chooses_among_the_candidates_that_can_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "torch", None)
    src = make_table(tmp_path / "t.jsonl", n=120)
    out = tmp_path / "auto.npz"
    assert main(["train", str(src), "--router", "auto", "--cv-folds", "2", "--embedder", "hashing", "--out", str(out)]) == 0
    _, meta = load_router(out)
    assert set(meta["selection"]["candidates"]) == {"knn", "bt", "profile", "ensemble"}
    assert "not run: mlp, mf, graph" in capsys.readouterr().out


def test_an_ensemble_of_one_named_member_is_a_list_of_one(tmp_path):
    from turnout.routing.artifact import load_router

    src = make_table(tmp_path / "t.jsonl")
    out = tmp_path / "ens.npz"
    assert (
        main(
            [
                "train",
                str(src),
                "--router",
                "ensemble",
                "--param",
                "members=knn",
                "--param",
                "weights=1",
                "--embedder",
                "hashing",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    router, _ = load_router(out)
    assert router.member_names == ["knn"] and router.weights == [1.0]
