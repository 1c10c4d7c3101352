"""Cascades and fan-outs inside ``turnout eval``: the entries, their pairing, and tables without answers untouched."""

import json

import numpy as np
import pytest

from tests.evaluation.eval_tables import answered, two_kinds
from turnout.cli.main import main
from turnout.evaluation.cascade_eval import CascadeOptions, choose_models
from turnout.evaluation.runner import run_eval
from turnout.evaluation.splits import split_table
from turnout.evaluation.verifier_data import fit_verifier, training_views

pytest.importorskip("sklearn", reason="the verifier is fitted with scikit-learn (pip install 'turnout[ml]')")

TIMINGS = ("fit_s", "decision_ms_p50")


def _routers_only(out):
    """The routers' figures, without timings (which differ from run to run)."""
    return {name: {k: v for k, v in r.items() if k not in TIMINGS} for name, r in out["routers"].items()}


@pytest.fixture(scope="module")
def result():
    table, X = answered(600, seed=0)
    train, test = split_table(table)
    Xtr, Xte = X[: len(train)], X[len(train) :]
    plain = run_eval(train, test, Xtr, Xte, ["best-single", "knn"], progress=False, bootstrap=50)
    full = run_eval(
        train, test, Xtr, Xte, ["best-single", "knn"], progress=False, bootstrap=50, cascades=CascadeOptions(router="knn")
    )
    return plain, full, train, test


def test_entries_are_there_with_the_routers_metrics_and_pairing(result):
    _, out, _, _ = result
    names = set(out["cascades"])
    assert {
        "cascade-verifier-cheap+probe->strong",
        "cascade-agreement-cheap+probe->strong",
        "cascade-verifier-cheap->strong",
        "cascade-choice-cheap->strong",
        "fanout-vote-cheap+probe",
    } <= names
    assert "cascade-knn" in names and all(n.startswith(("cascade-", "fanout-")) for n in names)
    for e in out["cascades"].values():
        for key in (
            "aiq",
            "max_quality",
            "quality_at_best_single_cost",
            "cost_fraction_to_match_best",
            "curve",
            "aiq_ci",
            "aiq_gain_ci",
            "aiq_vs_best_ci",
            "kind",
        ):
            assert key in e
        assert e["aiq_ci"][0] <= e["aiq"] + 1e-9 and e["aiq"] - 1e-9 <= e["aiq_ci"][1] + 0.05
    assert out["best_cascade"] in names
    json.dumps(out["cascades"])  # JSON-able as it is


def test_agreement_cascade_beats_the_strong_model_at_its_cost(result):
    _, out, _, test = result
    # escalating disagreements: the strong model's quality for about half its cost (every call counted)
    e = out["cascades"]["cascade-agreement-cheap+probe->strong"]
    q_strong, c_strong = test.scores[:, 2].mean(), test.costs[:, 2].mean()
    pts = np.array(e["curve"])
    assert pts[:, 0].min() == pytest.approx(2.0)  # never escalating still pays both cheap models
    assert (pts[:, 1] >= q_strong - 0.06).any()
    assert pts[pts[:, 1] >= q_strong - 0.06][:, 0].min() < 0.75 * c_strong


def test_acceptance_report_names_signals_and_skips_logprobs(result):
    _, out, _, _ = result
    acc = out["acceptance"]
    assert acc["cheap"] == "cheap" and acc["probe"] == "probe" and acc["strong"] == "strong"
    # agreement with an independent 65% model: a right answer is agreed with 65% of the time, a wrong one 35%,
    # so the expected AUC of this 0/1 signal is 0.5 + (0.65 - 0.35) / 2 = 0.65
    assert acc["auc"]["agreement"]["all"] == pytest.approx(0.65, abs=0.05)
    assert acc["auc"]["verifier"]["all"] == pytest.approx(0.65, abs=0.05)
    assert acc["auc"]["choice"]["all"] == pytest.approx(0.5)  # every answer names an option: no information
    assert set(acc["skipped"]) == {"logprob_mean", "logprob_min", "margin", "json_schema"}
    assert any("logprob_mean skipped" in n for n in out["notes"])
    fracs = [r["cost_fraction_to_match_strong"]["all"] for r in acc["needed_auc"]]
    reached = [f for f in fracs if f is not None]
    assert reached and reached[-1] <= reached[0]  # a better signal never needs more


def test_router_figures_are_unchanged_by_cascades(result):
    plain, full, _, _ = result
    assert _routers_only(plain) == _routers_only(full)
    assert plain["best_router"] == full["best_router"]


def test_a_table_without_answers_gets_no_cascade_and_the_same_figures():
    table, X = two_kinds(200)
    train, test = table.subset(np.arange(150)), table.subset(np.arange(150, 200))
    args = (train, test, X[:150], X[150:], ["best-single", "knn"])
    plain = run_eval(*args, progress=False, bootstrap=30)
    opted = run_eval(*args, progress=False, bootstrap=30, cascades=CascadeOptions(router="knn"))
    assert "cascades" not in opted and "acceptance" not in opted
    assert _routers_only(plain) == _routers_only(opted)
    assert {k: v for k, v in plain.items() if k != "routers"} == {k: v for k, v in opted.items() if k != "routers"}


def test_the_verifier_learns_from_the_training_split_only(result):
    _, _, train, _ = result
    views, _, groups = training_views(train, contexts=2, seed=0)
    assert len(views) == len(train) * 3 * 2 and set(groups) <= set(range(len(train)))
    assert {v.prompt for v in views} <= set(train.prompts)
    v = fit_verifier(train)
    assert v.report["rows"] == len(train) * 3 * 2


def test_strong_and_cheap_models_are_chosen_on_train():
    table, _ = answered(400, seed=3)
    train, _ = split_table(table)
    strong, pool = choose_models(train)
    assert train.models[strong] == "strong" and sorted(train.models[j] for j in pool) == ["cheap", "probe"]


def _write(tmp_path, table, name="t.jsonl"):
    rows = [
        {
            "prompt_id": table.prompt_ids[i],
            "prompt": table.prompts[i],
            "model": m,
            "score": float(table.scores[i, j]),
            "cost_usd": float(table.costs[i, j]),
            "response": table.responses[i, j],
            "split": table.split[i],
        }
        for i in range(len(table))
        for j, m in enumerate(table.models)
    ]
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_cli_eval_adds_cascades_saves_and_reuses_the_verifier(tmp_path):
    table, _ = answered(300, seed=7)
    src = _write(tmp_path, table)
    out, ver = tmp_path / "o.json", tmp_path / "v.npz"
    base = [
        "eval",
        str(src),
        "--embedder",
        "hashing",
        "--routers",
        "best-single,knn",
        "--bootstrap",
        "20",
        "--cascade-router",
        "knn",
    ]
    assert main([*base, "--json", str(out), "--save-verifier", str(ver)]) == 0
    res = json.loads(out.read_text())
    assert "cascade-agreement-cheap+probe->strong" in res["cascades"] and "cascade-knn" in res["cascades"]
    assert ver.exists()
    out2 = tmp_path / "o2.json"
    assert main([*base, "--json", str(out2), "--verifier", str(ver)]) == 0
    res2 = json.loads(out2.read_text())
    assert (
        res2["cascades"]["cascade-verifier-cheap+probe->strong"]["curve"]
        == res["cascades"]["cascade-verifier-cheap+probe->strong"]["curve"]
    )  # the same verifier judges the same
    out3 = tmp_path / "o3.json"
    assert main(["eval", str(src), "--embedder", "hashing", "--routers", "knn", "--json", str(out3), "--cascades", "off"]) == 0
    assert "cascades" not in json.loads(out3.read_text())


def test_cli_refuses_cascade_flags_that_cannot_apply(tmp_path, capsys):
    table, _ = answered(100, seed=8)
    src = _write(tmp_path, table)
    assert main(["eval", str(src), "--cascades", "off", "--verifier", "v.npz"]) == 2
    assert "cannot go with --cascades off" in capsys.readouterr().err
    assert main(["eval", str(src), "--verifier", str(tmp_path / "missing.npz")]) == 2
    assert "verifier artifact not found" in capsys.readouterr().err


def test_plot_draws_cascades(tmp_path, result):
    pytest.importorskip("matplotlib")
    from turnout.cli.eval import json_safe
    from turnout.evaluation.plot import plot_eval

    _, out, _, _ = result
    png = plot_eval(json.loads(json.dumps(json_safe(out))), tmp_path / "c.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_cells_are_no_candidates_and_are_said():
    table, X = answered(400, seed=9)
    table.scores[::7, 1] = np.nan  # the probe did not answer every seventh prompt
    table.responses[::7, 1] = None
    train, test = split_table(table)
    out = run_eval(
        train,
        test,
        X[: len(train)],
        X[len(train) :],
        ["knn"],
        progress=False,
        bootstrap=20,
        cascades=CascadeOptions(router="knn"),
    )
    assert any("lack an outcome" in n for n in out["notes"])
    e = out["cascades"]["cascade-agreement-cheap+probe->strong"]
    assert np.isfinite(np.array(e["curve"])).all()
