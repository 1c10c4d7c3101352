import json

import numpy as np
import pytest

from tests.conftest import require
from turnout.errors import DataError
from turnout.evaluation.loaders import DEFAULT_OUTPUT_TOKENS, NO_SPLIT, NO_TASK, DataWarning, load_table


def _write(tmp_path, rows, name="t.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(json.dumps(r) for r in rows))
    return p


ROW = {"prompt_id": "a", "prompt": "hi", "model": "m1", "score": 1.0, "cost_usd": 0.1}


def test_canonical_small(tmp_path):
    p = _write(tmp_path, [ROW, {**ROW, "model": "m2", "score": 0.0, "cost_usd": 0.01}, {**ROW, "prompt_id": "b", "prompt": "yo"}])
    t = load_table(p)
    assert t.models == ["m1", "m2"] and t.scores.shape == (2, 2)
    assert np.isnan(t.scores[1, 1]) and t.costs[0, 1] == 0.01


def test_estimated_cost_from_card(tmp_path):
    p = _write(tmp_path, [{k: v for k, v in ROW.items() if k != "cost_usd"} | {"prompt": "x" * 400}])
    (tmp_path / "models.json").write_text(json.dumps({"m1": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}))
    t = load_table(p)
    assert t.cost_estimated and t.costs[0, 0] == pytest.approx((100 * 1 + 256 * 2) / 1e6)


@pytest.mark.parametrize(
    "rows,needle",
    [
        ([{k: v for k, v in ROW.items() if k != "score"}], "column 'score'"),
        ([{**ROW, "score": 1.5}], "outside [0, 1]"),
        ([ROW, {**ROW, "score": 0.0}], "duplicate"),
        ([{**ROW, "prompt": None}], "row 0, column 'prompt': empty prompt"),
        ([ROW, {**ROW, "prompt_id": "b", "prompt": "  "}], "row 1, column 'prompt': empty prompt"),
        ([{**ROW, "model": ""}], "column 'model': empty model"),
        ([ROW, {**ROW, "prompt_id": "b", "score": None}], "row 1, column 'score': missing score"),
        ([ROW, {**ROW, "model": "m2", "cost_usd": -0.5}], "row 1, column 'cost_usd': cost -0.5"),
    ],
)
def test_errors(tmp_path, rows, needle):
    with pytest.raises(DataError, match="t.jsonl") as e:
        load_table(_write(tmp_path, rows))
    assert needle in str(e.value) and "fix:" in str(e.value)


def test_unknown_extension(tmp_path):
    p = tmp_path / "t.xlsx"
    p.write_text("x")
    with pytest.raises(DataError, match="unknown table format"):
        load_table(p)


def test_routerbench_parquet_matches_csvs(data_dir):
    a = load_table(require(data_dir / "routerbench" / "routerbench.parquet"))
    b = load_table(data_dir / "routerbench")
    assert a.scores.shape == b.scores.shape and sorted(a.models) == sorted(b.models)
    ja = [a.models.index(m) for m in b.models]
    assert np.nanmean(a.scores[:, ja], axis=0) == pytest.approx(np.nanmean(b.scores, axis=0))
    assert np.nanmean(a.costs[:, ja], axis=0) == pytest.approx(np.nanmean(b.costs, axis=0))


def test_dcrouter_parquet_matches_json_train(data_dir):
    a = load_table(require(data_dir / "dcrouter" / "dcrouter.parquet"))
    b = load_table(data_dir / "dcrouter" / "train.json")
    at = a.subset(np.flatnonzero(np.array(a.split) == "train"))
    ja = [at.models.index(m) for m in b.models]
    assert len(at) == len(b)
    assert np.nanmean(at.scores[:, ja], axis=0) == pytest.approx(np.nanmean(b.scores, axis=0))


def test_one_prompt_id_with_two_texts_warns_and_keeps_the_first(tmp_path):
    from turnout.evaluation.loaders import DataWarning

    p = _write(tmp_path, [ROW, {**ROW, "model": "m2", "prompt": "another text"}])
    with pytest.warns(DataWarning, match="1 prompt_id.*different prompt texts.*first: a"):
        t = load_table(p)
    assert t.prompts == ["hi"] and t.scores.shape == (1, 2)


# --- robustness (audit): each test below failed before its fix -------------------------------------------

CARD = {"m1": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}, "m2": {"input_per_mtok": 3.0, "output_per_mtok": 4.0}}


def _parquet(tmp_path, rows, name="t.parquet", card=None):
    import pandas as pd

    p = tmp_path / name
    pd.DataFrame(rows).to_parquet(p)
    if card is not None:
        (tmp_path / "models.json").write_text(json.dumps(card))
    return p


def _rows(n=3, **extra):
    """n prompts × models m1, m2, with costs."""
    return [
        {"prompt_id": f"p{i}", "prompt": "x" * 40, "model": m, "score": float((i + j) % 2), "cost_usd": 0.01 * (j + 1), **extra}
        for i in range(n)
        for j, m in enumerate(("m1", "m2"))
    ]


def test_missing_cost_in_some_rows_is_priced_per_row_from_the_card(tmp_path):
    rows = _rows()
    rows[3]["cost_usd"] = None  # p1 x m2
    t = load_table(_parquet(tmp_path, rows, card=CARD))
    assert t.cost_estimated
    assert t.costs[1, 1] == pytest.approx((10 * 3.0 + DEFAULT_OUTPUT_TOKENS * 4.0) / 1e6)
    assert t.costs[0, 1] == pytest.approx(0.02) and t.costs[2, 0] == pytest.approx(0.01)  # measured costs kept


def test_missing_cost_without_card_names_the_row(tmp_path):
    rows = _rows()
    rows[3]["cost_usd"] = None
    with pytest.raises(DataError, match=r"row 3, column 'cost_usd': no cost for model 'm2' \(rows count from 0\)") as e:
        load_table(_parquet(tmp_path, rows))
    assert "models.json" in str(e.value)


def test_missing_cost_counted_tokens_are_not_estimated(tmp_path):
    rows = [{**r, "cost_usd": None, "input_tokens": 100, "output_tokens": 50} for r in _rows(1)]
    t = load_table(_parquet(tmp_path, rows, card=CARD))
    assert not t.cost_estimated and t.costs[0, 0] == pytest.approx((100 * 1.0 + 50 * 2.0) / 1e6)


def test_input_tokens_only_use_them_with_the_default_output_estimate(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "cost_usd"} | {"input_tokens": 1000} for r in _rows(1)]
    t = load_table(_parquet(tmp_path, rows, card=CARD))
    assert t.cost_estimated
    assert t.costs[0, 0] == pytest.approx((1000 * 1.0 + DEFAULT_OUTPUT_TOKENS * 2.0) / 1e6)


def test_non_numeric_score_names_row_and_column(tmp_path):
    with pytest.raises(DataError, match=r"row 1, column 'score': score 'correct' is not a number \(line 2 of the file\)"):
        load_table(_write(tmp_path, [ROW, {**ROW, "model": "m2", "score": "correct"}]))


@pytest.mark.parametrize(
    "card,needle",
    [
        ({"m1": {"input_per_mtok": "0.2", "output_per_mtok": "0.4"}}, "input_per_mtok is '0.2', not a non-negative number"),
        ([{"model": "m1", "input_per_mtok": 0.2, "output_per_mtok": 0.4}], "this one is a JSON list"),
        ({"m1": 0.2}, "model 'm1' maps to a JSON number"),
    ],
)
def test_malformed_models_card_names_the_card_and_its_shape(tmp_path, card, needle):
    (tmp_path / "models.json").write_text(json.dumps(card))
    with pytest.raises(DataError, match="models.json") as e:
        load_table(_write(tmp_path, [{k: v for k, v in ROW.items() if k != "cost_usd"}]))
    assert needle in str(e.value) and '{model: {"input_per_mtok": number, "output_per_mtok": number, ...}}' in str(e.value)


def _cut(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def test_truncated_or_corrupt_files_are_data_errors(tmp_path):
    import gzip

    import pandas as pd

    gz = tmp_path / "t.jsonl.gz"
    gz.write_bytes(gzip.compress(("\n".join(json.dumps({**ROW, "prompt_id": str(i)}) for i in range(500))).encode()))
    wide = pd.DataFrame(
        {"sample_id": ["s0", "s1"], "prompt": ["a", "b\nwith a newline"], "m1": [1.0, 0.0], "m1|total_cost": [0.1, 0.2]}
    )
    wide.to_pickle(tmp_path / "t.pkl")
    (tmp_path / "t.csv").write_text('sample_id,prompt,m1,m1|total_cost\ns0,"a prompt that never clo')
    (tmp_path / "bad.parquet").write_text("not parquet at all")
    cases = {
        _cut(gz): "cut short or corrupt",
        _cut(tmp_path / "t.pkl"): "save it again with DataFrame.to_pickle",
        tmp_path / "t.csv": "export it again",
        tmp_path / "bad.parquet": "give a Parquet file",
    }
    for path, fix in cases.items():
        with pytest.raises(DataError, match="cannot read: ") as e:
            load_table(path)
        assert str(path) in str(e.value) and fix in str(e.value), str(e.value)


def test_plain_jsonl_named_gz_is_read_with_a_warning(tmp_path):
    p = tmp_path / "t.jsonl.gz"
    p.write_text(json.dumps(ROW) + "\n")
    with pytest.warns(DataWarning, match="not gzip-compressed"):
        t = load_table(p)
    assert t.prompt_ids == ["a"]


def test_empty_file_says_so(tmp_path):
    (tmp_path / "t.jsonl").write_text("")
    with pytest.raises(DataError, match="the file is empty"):
        load_table(tmp_path / "t.jsonl")


def test_split_values_case_insensitive_others_and_missing_warned(tmp_path):
    splits = ["TRAIN", "Test", "val", None, "train"]
    rows = [{**ROW, "prompt_id": f"p{i}", "split": s} for i, s in enumerate(splits)]
    with pytest.warns(DataWarning, match=r"2 of 5 prompts have a split other than train/test: .*val=1.*\(no split\)=1"):
        t = load_table(_parquet(tmp_path, rows))
    assert t.split == ["train", "test", "val", NO_SPLIT, "train"] and "nan" not in t.split


def test_all_missing_split_is_no_split(tmp_path):
    t = load_table(_parquet(tmp_path, [{**ROW, "split": None}, {**ROW, "prompt_id": "b", "split": None}]))
    assert t.split is None


def test_missing_tasks_get_a_named_placeholder(tmp_path):
    rows = [{**ROW, "prompt_id": f"p{i}", "task": t} for i, t in enumerate(["math", None, "code"])]
    with pytest.warns(DataWarning, match=r"1 of 3 prompts have no task.*'\(no task\)'"):
        t = load_table(_parquet(tmp_path, rows))
    assert t.tasks == ["math", NO_TASK, "code"]
    assert load_table(_parquet(tmp_path, [{**ROW, "task": None}], name="n.parquet")).tasks is None


def _llm_folder(tmp_path, items, card=True):
    folder = tmp_path / "llm"
    folder.mkdir()
    (folder / "train.json").write_text(json.dumps(items))
    if card:
        (folder / "default_llm.json").write_text(
            json.dumps({m: {"input_price": 1.0, "output_price": 1.0, "size": "7B"} for m in ("a", "b")})
        )
    return folder


def test_llmrouter_without_query_files_has_no_tasks(tmp_path):
    t = load_table(_llm_folder(tmp_path, [{"question": "q0", "scores": {"a": 1.0, "b": 0.0}}]))
    assert t.tasks is None


def test_llmrouter_errors_name_item_and_model(tmp_path):
    items = [{"question": f"q{i}", "scores": {"a": 1.0, "b": 0.0}} for i in range(4)]
    items[3]["scores"]["b"] = None
    with pytest.raises(
        DataError,
        match=r"train.json, row 3: missing score \(item 3 of the JSON list counting from 0, "
        r"model 'b'\)",
    ):
        load_table(_llm_folder(tmp_path, items))


def test_llmrouter_without_default_llm_points_at_it(tmp_path):
    with pytest.raises(DataError, match="no cost for model 'a'") as e:
        load_table(_llm_folder(tmp_path, [{"question": "q0", "scores": {"a": 1.0}}], card=False))
    assert "default_llm.json" in str(e.value) and "--models-card" in str(e.value) and "cost_usd" not in str(e.value)


WIDE_HEADER = "sample_id,prompt,m1,m2,m1|total_cost,m2|total_cost\n"


def test_wide_csv_errors_name_data_row_line_and_model_column(tmp_path):
    p = tmp_path / "w.csv"
    # data row 1 holds a newline inside its prompt, so data row 2 starts on line 5
    p.write_text(WIDE_HEADER + 's0,a,1,0,0.1,0.2\ns1,"two\nlines",1,0,0.1,0.2\ns2,c,1,1.5,0.1,0.2\n')
    with pytest.raises(
        DataError,
        match=r"w.csv, row 2, column 'm2': score 1.5 outside \[0, 1\] "
        r"\(data row 2 counting from 0, line 5 of the file\)",
    ):
        load_table(p)


def test_wide_csv_empty_cost_cell_priced_from_card_or_named(tmp_path):
    p = tmp_path / "w.csv"
    p.write_text(WIDE_HEADER + "s0,a,1,0,0.1,0.2\ns1,b,1,0,0.1,\n")
    with pytest.raises(DataError, match=r"row 1, column 'm2\|total_cost': no cost for model 'm2'"):
        load_table(p)
    (tmp_path / "models.json").write_text(json.dumps(CARD))
    t = load_table(p)
    assert t.cost_estimated and t.costs[1, 1] == pytest.approx((1 * 3.0 + DEFAULT_OUTPUT_TOKENS * 4.0) / 1e6)
    assert t.costs[0, 1] == pytest.approx(0.2)


def test_wide_model_without_cost_column_priced_from_card_or_left_out_with_a_warning(tmp_path):
    p = tmp_path / "w.csv"
    p.write_text("sample_id,prompt,m1,m2,m1|total_cost,m2|model_response\ns0,a,1,0,0.1,hi\n")
    with pytest.warns(DataWarning, match="model 'm2' has scores but no 'm2\\|total_cost' column .* left out"):
        t = load_table(p)
    assert t.models == ["m1"]
    (tmp_path / "models.json").write_text(json.dumps(CARD))
    with pytest.warns(DataWarning, match="'m2'.*estimated"):
        t = load_table(p)
    assert t.models == ["m1", "m2"] and t.cost_estimated and t.costs[0, 1] > 0


def test_parquet_errors_say_rows_count_from_zero_and_garbage_has_a_parquet_fix(tmp_path):
    rows = _rows()
    rows[4]["score"] = 2.0
    with pytest.raises(DataError, match=r"row 4, column 'score': score 2.0 outside \[0, 1\] \(rows count from 0\)"):
        load_table(_parquet(tmp_path, rows))
    (tmp_path / "g.parquet").write_text('{"prompt_id": "a"}')
    with pytest.raises(DataError) as e:
        load_table(tmp_path / "g.parquet")
    assert "Parquet" in str(e.value).split("fix:")[1] and "JSON object per line" not in str(e.value)


def test_canonical_table_saved_as_csv_or_json_records_is_read(tmp_path):
    import pandas as pd

    rows = _rows()
    pd.DataFrame(rows).to_csv(tmp_path / "long.csv", index=False)
    (tmp_path / "long.json").write_text(json.dumps(rows))
    for name in ("long.csv", "long.json"):
        t = load_table(tmp_path / name)
        assert t.models == ["m1", "m2"] and t.scores.shape == (3, 2) and t.costs[1, 1] == pytest.approx(0.02)


def test_json_object_is_not_a_table(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(DataError, match="holds a JSON object; expected a JSON list of LLMRouter items"):
        load_table(tmp_path / "d.json")


def test_conflicting_duplicates_name_both_rows(tmp_path):
    rows = [ROW, {**ROW, "model": "m2"}, {**ROW, "score": 0.0}]
    with pytest.raises(
        DataError,
        match=r"row 2: duplicate \(prompt_id, model\) = \(a, m1\) in two rows that differ: "
        r"row 0 \(line 1 of the file\) and row 2 \(line 3 of the file\)",
    ):
        load_table(_write(tmp_path, rows))


def test_exact_duplicate_rows_are_dropped_with_a_warning(tmp_path):
    rows = [ROW, {**ROW, "model": "m2"}, ROW, {**ROW, "prompt_id": "b", "score": 7.0}]
    # the rows are still named as in the file
    with (
        pytest.warns(DataWarning, match=r"1 row\(s\) repeat an earlier row .*row 2 .* repeats row 0"),
        pytest.raises(DataError, match=r"row 3, column 'score'.*\(line 4 of the file\)"),
    ):
        load_table(_write(tmp_path, rows))
    with pytest.warns(DataWarning, match="repeat an earlier row"):
        t = load_table(_write(tmp_path, rows[:3]))
    assert t.scores.shape == (1, 2)


def test_unused_columns_are_reported(tmp_path):
    unused: list[str] = []
    load_table(_write(tmp_path, [{**ROW, "input_tokens": 3, "response": "hi"}]), unused=unused)
    assert unused == ["input_tokens", "response"]


def test_canonical_responses_are_carried(tmp_path):
    rows = [
        {**ROW, "response": "B"},
        {**ROW, "model": "m2", "response": {"answer": 1}},
        {**ROW, "prompt_id": "b", "prompt": "yo", "response": None},
    ]
    t = load_table(_write(tmp_path, rows))
    assert t.responses is not None and t.responses.shape == (2, 2)
    assert t.responses[0, 0] == "B" and t.responses[0, 1] == '{"answer": 1}'
    assert t.responses[1, 0] is None and t.responses[1, 1] is None  # a null answer, and a missing cell
    sub = t.subset([1, 0]).with_models(["m2", "m1", "m3"])
    assert sub.responses[1, 0] == '{"answer": 1}' and sub.responses[1, 1] == "B" and sub.responses[1, 2] is None
    assert load_table(_write(tmp_path, [ROW], name="plain.jsonl")).responses is None


def test_routerbench_responses_are_unwrapped(tmp_path):
    p = tmp_path / "arc_test.csv"
    p.write_text(
        "sample_id,prompt,m1,m1|total_cost,m1|model_response,m2,m2|total_cost,m2|model_response\n"
        "s0,q,1,0.1,\"['D\\n']\",0,0.2,plain text\n"
    )
    t = load_table(p)
    assert list(t.responses[0]) == ["D\n", "plain text"]


def test_routerbench_csvs_carry_every_answer(data_dir):
    t = load_table(require(data_dir / "routerbench" / "arc_challenge_test.csv"))
    there = t.responses[~np.isnan(t.scores)]  # every cell with an outcome has its answer, unwrapped
    assert len(there) > 4000 and all(isinstance(r, str) and not r.startswith("['") for r in there)
