import json

import numpy as np
import pytest

from turnout.cli.eval import DEFAULT_ROUTERS
from turnout.cli.main import main
from turnout.evaluation.loaders import load_table
from turnout.evaluation.splits import split_table


def _write_table(tmp_path, n=120, split=False):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        hard = i % 2
        for m, c, p in (("small", 0.001, 0.9 - 0.8 * hard), ("big", 0.01, 0.95)):
            r = {
                "prompt_id": str(i),
                "prompt": ("hard math proof " if hard else "easy hello ") + str(i),
                "model": m,
                "score": float(rng.random() < p),
                "cost_usd": c,
            }
            if split:
                r["split"] = "test" if i % 4 == 0 else "train"
            rows.append(r)
    src = tmp_path / "t.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows))
    return src


def test_eval_on_generated_table(tmp_path):
    src = _write_table(tmp_path)
    out = tmp_path / "o.json"
    assert main(["eval", str(src), "--embedder", "hashing", "--routers", "knn", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["n_train"] == 90 and res["n_test"] == 30
    r = res["routers"]["knn"]
    assert 0 <= r["aiq"] <= 1 and r["curve"] and r["max_quality"] <= res["oracle"]["quality"] + 1e-9
    # two models: RouteLLM's APGR and CPT are emitted
    assert {"apgr", "cpt50", "cpt80"} <= set(r)
    assert r["apgr"] is None or -1 <= r["apgr"] <= 2
    for key in ("table", "n_train", "n_test", "best_single", "oracle", "single_models_aiq", "single_models", "routers"):
        assert key in res
    for key in (
        "aiq",
        "max_quality",
        "quality_at_best_single_cost",
        "cost_fraction_to_match_best",
        "curve",
        "fit_s",
        "decision_ms_p50",
    ):
        assert key in r


def test_eval_writes_plot_and_runs_baselines(tmp_path):
    pytest.importorskip("matplotlib")
    src = _write_table(tmp_path)
    out, png = tmp_path / "o.json", tmp_path / "o.png"
    assert (
        main(
            [
                "eval",
                str(src),
                "--embedder",
                "hashing",
                "--routers",
                "random,best-single,cheapest,knn",
                "--json",
                str(out),
                "--plot",
                str(png),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert set(res["routers"]) == {"random", "best-single", "cheapest", "knn"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_routers_are_registered_and_skip_prior():
    from turnout.routing.registry import router_names

    names = DEFAULT_ROUTERS.split(",")
    assert "prior" not in names and set(names) <= set(router_names())


def test_unknown_router_fails_cleanly(tmp_path):
    src = _write_table(tmp_path, n=20)
    assert main(["eval", str(src), "--embedder", "hashing", "--routers", "nope"]) != 0


def test_split_uses_split_column_else_seeded_random(tmp_path):
    t = load_table(str(_write_table(tmp_path, split=True)))
    tr, te = split_table(t, 0.5, 3)
    assert len(te) == 30 and set(te.split) == {"test"} and set(tr.split) == {"train"}
    t2 = load_table(str(_write_table(tmp_path / "..", n=40)))
    a_tr, a_te = split_table(t2, 0.25, 1)
    b_tr, b_te = split_table(t2, 0.25, 1)
    assert len(a_te) == 10 and a_te.prompt_ids == b_te.prompt_ids
    assert not set(a_tr.prompt_ids) & set(a_te.prompt_ids)
    assert split_table(t2, 0.25, 2)[1].prompt_ids != a_te.prompt_ids


def test_two_model_metrics_apgr_cpt():
    from turnout.evaluation.runner import baselines, two_model_metrics
    from turnout.evaluation.table import RoutingTable

    S = np.array([[1.0, 1.0], [0.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    C = np.tile([1.0, 10.0], (4, 1))
    t = RoutingTable([str(i) for i in range(4)], ["p"] * 4, ["weak", "strong"], S, C)
    base = baselines(t)
    # all weak, then the two prompts only the strong model solves, then everything strong
    curve = [[1.0, 0.5], [5.5, 1.0], [10.0, 1.0]]
    shares = [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    m = two_model_metrics(curve, shares, t, base)
    assert m["cpt50"] == 0.5 and m["cpt80"] == 0.5
    assert abs(m["apgr"] - 0.75) < 1e-9
    three = RoutingTable(t.prompt_ids, t.prompts, ["a", "b", "c"], np.c_[S, S[:, :1]], np.c_[C, C[:, :1]])
    assert two_model_metrics(curve, shares, three, baselines(three)) == {}


def test_eval_table_is_not_cut_when_piped(tmp_path):
    """Piped output (no terminal, no COLUMNS) keeps every number whole instead of rich's 80-column '0.8…'."""
    import os
    import subprocess
    import sys

    src = _write_table(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "turnout.cli.main",
            "eval",
            str(src),
            "--embedder",
            "hashing",
            "--routers",
            "knn,mlp",
            "--bootstrap",
            "20",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    rows = [ln for ln in p.stdout.splitlines() if ln.startswith("│ knn")]
    assert rows and "…" not in rows[0]
    assert "AIQ 95% CI" in p.stdout and "in-task AUC" in p.stdout


def _rows(path):
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def test_eval_with_test_file_drops_seen_prompts_and_matches_models_by_name(tmp_path):
    src = _write_table(tmp_path, n=80)
    rows = _rows(src)
    # a test file: 20 new prompts with the models listed the other way round, plus one prompt copied from train
    test_rows = [dict(r, prompt_id="t" + r["prompt_id"], prompt="new " + r["prompt"]) for r in rows[:40]]
    test_rows = sorted(test_rows, key=lambda r: (r["prompt_id"], r["model"] != "big")) + rows[-2:]
    tst = tmp_path / "test.jsonl"
    tst.write_text("\n".join(json.dumps(r) for r in test_rows))
    out = tmp_path / "o.json"
    assert (
        main(
            [
                "eval",
                str(src),
                "--test",
                str(tst),
                "--embedder",
                "hashing",
                "--routers",
                "best-single",
                "--bootstrap",
                "0",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert res["n_test"] == 20 and res["test_prompts_seen_in_train_dropped"] == 1
    # best-single on test is "big" whichever order the file listed the models in
    assert res["best_single"]["model"] == "big" and "models_left_out" not in res
    assert (
        main(
            [
                "eval",
                str(src),
                "--test",
                str(tst),
                "--embedder",
                "hashing",
                "--routers",
                "best-single",
                "--bootstrap",
                "0",
                "--keep-seen",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert res["n_test"] == 21 and res["test_prompts_seen_in_train_dropped"] == 0


def test_eval_on_a_one_model_table_reports_instead_of_crashing(tmp_path):
    rows = [r for r in _rows(_write_table(tmp_path)) if r["model"] == "big"]
    src = tmp_path / "one.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "o.json"
    assert main(["eval", str(src), "--embedder", "hashing", "--routers", "knn,best-single", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    q = res["best_single"]["quality"]
    # no cost range: AIQ is the quality at the one cost there is
    assert res["single_models_aiq"] == q and res["routers"]["knn"]["aiq"] == q


def test_without_torch_the_default_routers_run_less_the_torch_ones_and_say_what_to_install(tmp_path, monkeypatch, capsys):
    from turnout.routing.ensemble import default_members
    from turnout.routing.registry import available, missing_packages

    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # as on an install without the 'ml' extra
    assert missing_packages("mlp") == {"torch": "ml"} and missing_packages("knn") == {}
    assert available(["knn", "mlp", "bt"]) == (["knn", "bt"], {"mlp": {"torch": "ml"}})
    assert default_members() == ["knn", "bt", "profile"]
    src = _write_table(tmp_path)
    out = tmp_path / "o.json"
    assert main(["eval", str(src), "--embedder", "hashing", "--bootstrap", "0", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["routers"]) == set(DEFAULT_ROUTERS.split(",")) - {"mlp", "mf", "graph"}
    printed = capsys.readouterr().out
    assert "not run: mlp, mf, graph" in printed and "pip install 'turnout[ml]'" in printed
    # a router named on the command line must run: no silent drop
    assert main(["eval", str(src), "--embedder", "hashing", "--routers", "knn,mlp"]) != 0
    assert "turnout[ml]" in capsys.readouterr().err


def test_signed_interval_prints_no_negative_zero():
    from turnout.cli.eval import signed_interval

    assert signed_interval([-1e-17, 1e-17]) == "+0.000 to +0.000"
    assert signed_interval([-0.0204, 0.5]) == "-0.020 to +0.500"
    assert signed_interval(None) == "—"


def _split_files(tmp_path):
    src = _write_table(tmp_path, n=160)
    rows = [json.loads(line) for line in src.read_text().splitlines()]
    train = tmp_path / "train.jsonl"
    test = tmp_path / "test.jsonl"
    # every fifth prompt is a test prompt: easy and hard ones alike
    train.write_text("\n".join(json.dumps(r) for r in rows if int(r["prompt_id"]) % 5))
    test.write_text("\n".join(json.dumps(r) for r in rows if int(r["prompt_id"]) % 5 == 0))
    return train, test


def test_eval_of_a_trained_artifact_matches_fitting_the_same_router_in_eval(tmp_path):
    train, test = _split_files(tmp_path)
    art = tmp_path / "knn.npz"
    assert main(["train", str(train), "--router", "knn", "--embedder", "hashing", "--out", str(art)]) == 0
    fitted, direct = tmp_path / "a.json", tmp_path / "d.json"
    assert main(["eval", str(test), "--artifact", str(art), "--bootstrap", "0", "--json", str(fitted)]) == 0
    assert (
        main(
            [
                "eval",
                str(train),
                "--test",
                str(test),
                "--routers",
                "knn",
                "--embedder",
                "hashing",
                "--bootstrap",
                "0",
                "--json",
                str(direct),
            ]
        )
        == 0
    )
    a, d = json.loads(fitted.read_text()), json.loads(direct.read_text())
    assert a["n_test"] == d["n_test"] == 32 and "n_train" not in a
    assert a["routers"]["knn"]["aiq"] == d["routers"]["knn"]["aiq"]
    assert a["routers"]["knn"]["curve"] == d["routers"]["knn"]["curve"]
    assert a["routers"]["knn"]["fit_s"] is None and a["single_models_aiq"] == d["single_models_aiq"]


def test_eval_compares_several_artifacts_paired(tmp_path, capsys):
    train, test = _split_files(tmp_path)
    for name in ("knn", "profile", "cheapest"):
        assert main(["train", str(train), "--router", name, "--embedder", "hashing", "--out", str(tmp_path / f"{name}.npz")]) == 0
    out = tmp_path / "o.json"
    assert (
        main(
            [
                "eval",
                str(test),
                *sum((["--artifact", str(tmp_path / f"{n}.npz")] for n in ("knn", "profile", "cheapest")), []),
                "--bootstrap",
                "50",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert set(res["routers"]) == {"knn", "profile", "cheapest"} and res["best_router"] in ("knn", "profile")
    assert res["routers"]["cheapest"]["aiq_vs_best_ci"][1] < 0  # one model for every prompt is far behind
    assert "best AIQ: " in capsys.readouterr().out


def test_eval_artifact_refuses_flags_that_only_mean_something_when_fitting(tmp_path, capsys):
    train, test = _split_files(tmp_path)
    art = tmp_path / "knn.npz"
    assert main(["train", str(train), "--router", "knn", "--embedder", "hashing", "--out", str(art)]) == 0
    assert main(["eval", str(test), "--artifact", str(art), "--routers", "mlp"]) != 0
    assert "--routers cannot go with --artifact" in capsys.readouterr().err


def test_eval_artifacts_of_different_models_are_refused(tmp_path, capsys):
    train, test = _split_files(tmp_path)
    small_only = tmp_path / "small.jsonl"
    small_only.write_text("\n".join(line for line in train.read_text().splitlines() if '"small"' in line))
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert main(["train", str(train), "--router", "knn", "--embedder", "hashing", "--out", str(a)]) == 0
    assert main(["train", str(small_only), "--router", "knn", "--embedder", "hashing", "--out", str(b)]) == 0
    assert main(["eval", str(test), "--artifact", str(a), "--artifact", str(b), "--bootstrap", "0"]) != 0
    assert "route different models" in capsys.readouterr().err


def test_eval_artifacts_may_list_their_models_in_another_order(tmp_path):
    train, test = _split_files(tmp_path)
    lines = train.read_text().splitlines()
    flipped = tmp_path / "flipped.jsonl"  # the same outcomes, each prompt's 'big' row first
    flipped.write_text("\n".join(b for a, b in zip(lines[::2], lines[1::2]) for b in (b, a)))
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert main(["train", str(train), "--router", "profile", "--embedder", "hashing", "--out", str(a)]) == 0
    assert main(["train", str(flipped), "--router", "cheapest", "--embedder", "hashing", "--out", str(b)]) == 0
    assert load_router_models(a) != load_router_models(b)
    both, alone = tmp_path / "both.json", tmp_path / "alone.json"
    assert main(["eval", str(test), "--artifact", str(a), "--artifact", str(b), "--bootstrap", "0", "--json", str(both)]) == 0
    assert main(["eval", str(test), "--artifact", str(b), "--bootstrap", "0", "--json", str(alone)]) == 0
    r_both, r_alone = json.loads(both.read_text())["routers"]["b"], json.loads(alone.read_text())["routers"]["b"]
    assert r_both["aiq"] == r_alone["aiq"] and r_both["curve"] == r_alone["curve"]


def load_router_models(path):
    from turnout.routing.artifact import load_router

    return load_router(path)[0].models


def test_eval_variants_and_params_compare_settings_of_one_router_paired(tmp_path):
    train, test = _split_files(tmp_path)
    both, k3 = tmp_path / "both.json", tmp_path / "k3.json"
    common = [str(train), "--test", str(test), "--embedder", "hashing", "--bootstrap", "50"]
    assert (
        main(
            [
                "eval",
                *common,
                "--routers",
                "knn",
                "--variant",
                "knn3=knn",
                "--param",
                "knn3.k=3",
                "--param",
                "knn.k=40",
                "--json",
                str(both),
            ]
        )
        == 0
    )
    assert main(["eval", *common, "--routers", "knn", "--param", "knn.k=3", "--json", str(k3)]) == 0
    res, alone = json.loads(both.read_text()), json.loads(k3.read_text())
    assert list(res["routers"]) == ["knn", "knn3"]
    assert res["variants"] == {"knn3": "knn"} and res["router_params"] == {"knn3": {"k": 3}, "knn": {"k": 40}}
    # the variant is exactly kNN with k=3, and the base router kept its own k
    assert res["routers"]["knn3"]["curve"] == alone["routers"]["knn"]["curve"]
    assert res["routers"]["knn"]["curve"] != res["routers"]["knn3"]["curve"]
    other = ({"knn", "knn3"} - {res["best_router"]}).pop()  # paired against the best, as any router is
    assert len(res["routers"][other]["aiq_vs_best_ci"]) == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--param", "knn.kk=3"], "has no parameter(s) kk"),
        (["--param", "mlp.k=3"], "mlp is not in this run"),
        (["--param", "k=3"], "is not ROUTER.KEY=VALUE"),
        (["--variant", "knn=knn"], "already a router's name"),
        (["--variant", "x=nope"], "unknown router nope"),
        (["--variant", "x"], "is not LABEL=ROUTER"),
    ],
)
def test_eval_bad_params_and_variants_fail_before_any_work(tmp_path, capsys, extra, message):
    train, test = _split_files(tmp_path)
    assert main(["eval", str(train), "--test", str(test), "--embedder", "hashing", "--routers", "knn", *extra]) != 0
    assert message in capsys.readouterr().err


def test_eval_repeats_summarises_random_splits_and_plots_them(tmp_path, capsys):
    src = _write_table(tmp_path, n=80, split=True)
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    assert (
        main(
            [
                "eval",
                str(src),
                "--embedder",
                "hashing",
                "--routers",
                "knn,cheapest",
                "--repeats",
                "3",
                "--seed",
                "2",
                "--json",
                str(out),
                "--plot",
                str(png),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert res["repeats"] == 3 and res["seeds"] == [2, 3, 4] and set(res["routers"]) == {"knn", "cheapest"}
    assert res["n_test"] == [20, 20, 20]  # random splits of 80 prompts: the split column (20 test rows) is not used
    assert all(len(r["aiq"]["values"]) == 3 for r in res["routers"].values())
    assert "aiq_ci" not in res["splits"][0]["routers"]["knn"]  # no bootstrap within splits unless asked
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "split column is not used" in printed and "best mean AIQ" in printed


def test_eval_repeats_refuses_a_separate_test_table_and_artifacts(tmp_path, capsys):
    train, test = _split_files(tmp_path)
    assert main(["eval", str(train), "--test", str(test), "--embedder", "hashing", "--routers", "knn", "--repeats", "3"]) != 0
    assert "cannot go with --test" in capsys.readouterr().err
    art = tmp_path / "knn.npz"
    assert main(["train", str(train), "--router", "knn", "--embedder", "hashing", "--out", str(art)]) == 0
    assert main(["eval", str(test), "--artifact", str(art), "--repeats", "3"]) != 0
    assert "--repeats cannot go with --artifact" in capsys.readouterr().err


def test_eval_json_is_valid_json_when_metrics_are_undefined(tmp_path):
    src = tmp_path / "free.jsonl"  # every model free: no cost fraction means anything
    src.write_text(
        "\n".join(
            json.dumps({"prompt_id": str(i), "prompt": f"q {i}", "model": m, "score": float((i + j) % 2), "cost_usd": 0.0})
            for i in range(40)
            for j, m in enumerate(("a", "b"))
        )
    )
    out = tmp_path / "deep" / "er" / "o.json"  # folders are made, before any work
    assert main(["eval", str(src), "--embedder", "hashing", "--routers", "knn", "--json", str(out)]) == 0

    def no_nan(token):
        raise AssertionError(f"{token} in the JSON")

    res = json.loads(out.read_text(), parse_constant=no_nan)
    assert res["routers"]["knn"]["cost_fraction_to_match_best"] is None
    assert any("costs the same" in n for n in res["notes"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--bootstrap", "-5"], "--bootstrap -5 is negative"),
        (["--repeats", "0"], "--repeats 0 is not a number of splits"),
    ],
)
def test_eval_bad_counts_fail_before_any_work(tmp_path, capsys, extra, message):
    src = _write_table(tmp_path, n=20)
    assert main(["eval", str(src), "--embedder", "hashing", "--routers", "knn", *extra]) != 0
    assert message in capsys.readouterr().err


def test_eval_json_into_a_path_that_cannot_be_a_folder_fails_before_fitting(tmp_path, capsys):
    src = _write_table(tmp_path, n=20)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["eval", str(src), "--embedder", "hashing", "--routers", "knn", "--json", str(blocker / "o.json")]) != 0
    err = capsys.readouterr()
    assert "--json: cannot create the folder" in err.err and "fitting" not in err.out


def test_eval_reads_prices_from_a_models_card_given_on_the_command_line(tmp_path, capsys):
    src = tmp_path / "t.jsonl"
    src.write_text(
        "\n".join(
            json.dumps(
                {
                    "prompt_id": str(i),
                    "prompt": f"question {i} " + "w " * (i % 7),
                    "model": m,
                    "score": float(i % 3 != 0 or m == "big"),
                }
            )
            for i in range(60)
            for m in ("small", "big")
        )
    )
    card = tmp_path / "elsewhere.json"
    card.write_text(
        json.dumps(
            {"small": {"input_per_mtok": 0.1, "output_per_mtok": 0.1}, "big": {"input_per_mtok": 10.0, "output_per_mtok": 30.0}}
        )
    )
    out = tmp_path / "o.json"
    assert (
        main(
            [
                "eval",
                str(src),
                "--models-card",
                str(card),
                "--embedder",
                "hashing",
                "--routers",
                "knn",
                "--bootstrap",
                "0",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert res["single_models"]["big"]["cost"] > 50 * res["single_models"]["small"]["cost"] > 0
    assert any("estimated" in n for n in res["notes"])


def test_eval_of_an_artifact_on_its_own_training_table_says_it_is_optimistic(tmp_path, capsys):
    train, test = _split_files(tmp_path)
    art = tmp_path / "knn.npz"
    assert main(["train", str(train), "--router", "knn", "--embedder", "hashing", "--out", str(art)]) == 0
    capsys.readouterr()
    assert main(["eval", str(train), "--artifact", str(art), "--bootstrap", "0"]) == 0
    assert "knn was trained on this table" in capsys.readouterr().out
    assert main(["eval", str(test), "--artifact", str(art), "--bootstrap", "0"]) == 0
    assert "trained on this table" not in capsys.readouterr().out


def test_tables_are_printed_whole_on_a_narrow_terminal():
    import io

    from rich.console import Console
    from rich.table import Table

    from turnout.cli._ui import print_table

    t = Table()
    for col in ("router", "AIQ", "max q", "cost frac", "in-task AUC", "fit s", "p50 ms", "APGR", "CPT50", "CPT80"):
        t.add_column(col, no_wrap=True)
    t.add_row("a-long-router-name", *["0.123456"] * 9)
    buf = io.StringIO()
    con = Console(file=buf, width=60)
    print_table(con, t)
    text = buf.getvalue()
    assert "a-long-router-name" in text and text.count("0.123456") == 9 and "…" not in text
    assert con.width == 60  # the console is left as it was


def test_turnout_warnings_print_as_one_plain_line(tmp_path, capsys):
    rows = [
        {"prompt_id": "1", "prompt": "one text", "model": "a", "score": 1.0, "cost_usd": 1.0},
        {"prompt_id": "1", "prompt": "another text", "model": "b", "score": 0.0, "cost_usd": 2.0},
    ]
    rows += [
        {"prompt_id": str(i), "prompt": f"p{i}", "model": m, "score": 1.0, "cost_usd": 1.0}
        for i in range(2, 6)
        for m in ("a", "b")
    ]
    src = tmp_path / "t.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows))
    assert main(["data", "info", str(src)]) == 0
    err = capsys.readouterr().err
    assert "turnout data: warning: " in err and "loaders.py" not in err


def test_eval_variant_of_an_ensemble_takes_a_list_of_members(tmp_path):
    train, test = _split_files(tmp_path)
    out = tmp_path / "o.json"
    assert (
        main(
            [
                "eval",
                str(train),
                "--test",
                str(test),
                "--embedder",
                "hashing",
                "--routers",
                "knn,profile",
                "--variant",
                "pair=ensemble",
                "--param",
                "pair.members=knn,profile",
                "--bootstrap",
                "0",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert res["router_params"] == {"pair": {"members": ["knn", "profile"]}} and "pair" in res["routers"]
