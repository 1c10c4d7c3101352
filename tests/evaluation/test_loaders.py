import json

import numpy as np
import pytest

from tests.conftest import require
from turnout.errors import DataError
from turnout.evaluation.loaders import load_table


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


@pytest.mark.parametrize("rows,needle", [
    ([{k: v for k, v in ROW.items() if k != "score"}], "column 'score'"),
    ([{**ROW, "score": 1.5}], "outside [0, 1]"),
    ([ROW, ROW], "duplicate"),
    ([{**ROW, "prompt": None}], "row 0, column 'prompt': empty prompt"),
    ([ROW, {**ROW, "prompt_id": "b", "prompt": "  "}], "row 1, column 'prompt': empty prompt"),
    ([{**ROW, "model": ""}], "column 'model': empty model"),
    ([ROW, {**ROW, "prompt_id": "b", "score": None}], "row 1, column 'score': missing score"),
    ([ROW, {**ROW, "model": "m2", "cost_usd": -0.5}], "row 1, column 'cost_usd': cost -0.5"),
])
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
