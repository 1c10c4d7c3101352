"""``turnout data info|convert`` on small generated canonical tables, plus one real-data run."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import require
from turnout.cli.main import main

REPO = Path(__file__).resolve().parents[2]


def make_rows() -> list[dict]:
    """3 prompts × 2 models, one cell missing (p2 × big), with tasks and splits."""
    return [
        {"prompt_id": "p0", "prompt": "hello", "model": "small", "score": 0.0, "cost_usd": 0.001, "task": "a", "split": "train"},
        {"prompt_id": "p0", "prompt": "hello", "model": "big", "score": 1.0, "cost_usd": 0.010, "task": "a", "split": "train"},
        {
            "prompt_id": "p1",
            "prompt": "prove it",
            "model": "small",
            "score": 1.0,
            "cost_usd": 0.002,
            "task": "b",
            "split": "train",
        },
        {"prompt_id": "p1", "prompt": "prove it", "model": "big", "score": 1.0, "cost_usd": 0.020, "task": "b", "split": "train"},
        {"prompt_id": "p2", "prompt": "sum 2+2", "model": "small", "score": 0.5, "cost_usd": 0.003, "task": "b", "split": "test"},
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_info_json_matches_hand_computed(tmp_path, capsys):
    src = write_jsonl(tmp_path / "t.jsonl", make_rows())
    assert main(["data", "info", str(src), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["prompts"] == 3 and s["models"] == 2 and s["cost_estimated"] is False
    small, big = s["per_model"]["small"], s["per_model"]["big"]
    assert small["quality"] == pytest.approx(0.5) and small["cost"] == pytest.approx(0.002) and small["coverage"] == 1.0
    assert big["quality"] == pytest.approx(1.0) and big["cost"] == pytest.approx(0.015)
    assert big["coverage"] == pytest.approx(2 / 3)
    # oracle: p0 -> big (1.0, 0.010), p1 -> small (tie at 1.0, cheaper 0.002), p2 -> small (0.5, 0.003)
    assert s["oracle"]["quality"] == pytest.approx(2.5 / 3) and s["oracle"]["cost"] == pytest.approx(0.015 / 3)
    assert s["splits"] == {"train": 2, "test": 1} and s["tasks"] == {"a": 1, "b": 2}


def test_info_table_output(tmp_path, capsys):
    src = write_jsonl(tmp_path / "t.jsonl", make_rows())
    assert main(["data", "info", str(src)]) == 0
    out = capsys.readouterr().out
    for text in ("small", "big", "oracle", "0.015", "train=2", "test=1", "cost estimated: no"):
        assert text in out


def test_info_says_costs_are_estimated(tmp_path, capsys):
    rows = [{k: v for k, v in r.items() if k != "cost_usd"} for r in make_rows()]
    src = write_jsonl(tmp_path / "t.jsonl", rows)
    card = tmp_path / "card.json"
    card.write_text(json.dumps({m: {"input_per_mtok": 1.0, "output_per_mtok": 2.0} for m in ("small", "big")}))
    assert main(["data", "info", str(src), "--models-card", str(card), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["cost_estimated"] is True
    # "hello": ceil(5/4)=2 input tokens, 256 output tokens
    assert s["per_model"]["big"]["cost"] > 0


@pytest.mark.parametrize("mid", ["mid.jsonl", "mid.jsonl.gz"])
def test_convert_round_trip(tmp_path, capsys, mid):
    src = tmp_path / "src.parquet"
    pd.DataFrame(make_rows()).to_parquet(src)
    assert main(["data", "convert", str(src), str(tmp_path / mid)]) == 0
    assert main(["data", "convert", str(tmp_path / mid), str(tmp_path / "back.parquet")]) == 0
    assert "wrote 5 rows" in capsys.readouterr().out
    a = pd.read_parquet(src).sort_values(["prompt_id", "model"]).reset_index(drop=True)
    b = pd.read_parquet(tmp_path / "back.parquet").sort_values(["prompt_id", "model"]).reset_index(drop=True)
    assert list(b.columns) == ["prompt_id", "prompt", "model", "score", "cost_usd", "task", "split"]
    for col in a.columns:
        if a[col].dtype.kind == "f":
            np.testing.assert_allclose(b[col].to_numpy(), a[col].to_numpy())
        else:
            assert b[col].tolist() == a[col].tolist()


def test_convert_llmrouter_json_to_canonical(tmp_path):
    folder = tmp_path / "llm"
    folder.mkdir()
    (folder / "train.json").write_text(
        json.dumps([{"question": "q0", "scores": {"a": 1.0, "b": 0.0}}, {"question": "q1", "scores": {"a": 0.0, "b": 1.0}}])
    )
    (folder / "models.json").write_text(json.dumps({m: {"input_per_mtok": 1, "output_per_mtok": 1} for m in "ab"}))
    out = tmp_path / "c.jsonl"
    assert main(["data", "convert", str(folder / "train.json"), str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and {r["model"] for r in rows} == {"a", "b"}
    assert all(r["split"] == "train" and r["cost_usd"] > 0 for r in rows)


def test_missing_column_exits_2_naming_file_and_column(tmp_path, capsys):
    rows = [{k: v for k, v in r.items() if k != "score"} for r in make_rows()]
    src = write_jsonl(tmp_path / "noscore.jsonl", rows)
    assert main(["data", "info", str(src)]) == 2
    err = capsys.readouterr().err
    assert "noscore.jsonl" in err and "'score'" in err


def test_bad_score_and_missing_file_exit_2(tmp_path, capsys):
    rows = make_rows()
    rows[2]["score"] = 7.0
    src = write_jsonl(tmp_path / "bad.jsonl", rows)
    assert main(["data", "convert", str(src), str(tmp_path / "o.parquet")]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "row 2" in err and "score" in err
    assert main(["data", "info", str(tmp_path / "absent.parquet")]) == 2
    assert "absent.parquet" in capsys.readouterr().err


def test_convert_unknown_extension_exits_2_with_fix(tmp_path, capsys):
    src = write_jsonl(tmp_path / "t.jsonl", make_rows())
    assert main(["data", "convert", str(src), str(tmp_path / "out.csv")]) == 2
    err = capsys.readouterr().err
    assert "out.csv" in err and ".parquet" in err and "fix" in err
    assert not (tmp_path / "out.csv").exists()


def test_info_on_routerbench(data_dir, capsys):
    path = require(data_dir / "routerbench" / "routerbench.parquet")
    assert main(["data", "info", str(path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["prompts"] == 3164 and s["models"] == 11
    assert s["splits"] == {"test": 952, "train": 2212} and s["cost_estimated"] is False
    best = max(v["quality"] for v in s["per_model"].values())
    assert best <= s["oracle"]["quality"] <= 1


def test_installed_entry_point(tmp_path):
    exe = REPO / ".venv" / "bin" / "turnout"
    if not exe.exists():
        pytest.skip(f"{exe} is absent (turnout is not installed in the repo's .venv)")
    src = write_jsonl(tmp_path / "t.jsonl", make_rows())
    env = {**os.environ, "COLUMNS": "200"}
    res = subprocess.run([str(exe), "data", "info", str(src), "--json"], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["per_model"]["big"]["cost"] == pytest.approx(0.015)
    bad = subprocess.run(
        [str(exe), "data", "info", str(tmp_path / "nope.jsonl")], capture_output=True, text=True, timeout=120, env=env
    )
    assert bad.returncode == 2 and "nope.jsonl" in bad.stderr


# --- robustness (audit) --------------------------------------------------------------------------------------


def test_info_oracle_coverage_is_prompts_with_an_outcome(tmp_path, capsys):
    src = write_jsonl(tmp_path / "t.jsonl", make_rows())  # 5 of 6 cells filled, every prompt has an outcome
    assert main(["data", "info", str(src), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["coverage"] == pytest.approx(5 / 6) and s["oracle"]["coverage"] == 1.0
    assert main(["data", "info", str(src)]) == 0
    oracle_line = next(line for line in capsys.readouterr().out.splitlines() if line.strip("│┃| ").startswith("oracle"))
    assert "100.0%" in oracle_line and "83.3%" not in oracle_line


def test_convert_refuses_to_overwrite_its_input(tmp_path, capsys):
    src = tmp_path / "t.parquet"
    pd.DataFrame(make_rows()).to_parquet(src)
    before = src.read_bytes()
    assert main(["data", "convert", str(src), str(tmp_path / "." / "t.parquet")]) == 2
    assert "the output is the input file" in capsys.readouterr().err
    assert src.read_bytes() == before


def test_convert_names_the_columns_it_does_not_carry(tmp_path, capsys):
    rows = [{**r, "input_tokens": 10, "output_tokens": 5, "response": "ok"} for r in make_rows()]
    src = write_jsonl(tmp_path / "t.jsonl", rows)
    assert main(["data", "convert", str(src), str(tmp_path / "o.parquet")]) == 0
    out = capsys.readouterr().out
    assert "not carried" in out and "input_tokens, output_tokens, response" in out


def test_convert_writes_missing_tasks_and_splits_back_as_missing(tmp_path, capsys):
    rows = make_rows()
    for r in rows[:2]:  # p0
        r["task"], r["split"] = None, None
    src = write_jsonl(tmp_path / "t.jsonl", rows)
    assert main(["data", "convert", str(src), str(tmp_path / "o.jsonl")]) == 0
    err = capsys.readouterr().err
    assert "turnout data: warning: " in err and "(no task)" in err and "(no split)=1" in err and "loaders.py" not in err
    back = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    p0 = [r for r in back if r["prompt_id"] == "p0"]
    assert p0 and all(r["task"] is None and r["split"] is None for r in p0)
    assert {r["task"] for r in back if r["prompt_id"] != "p0"} == {"b"}
