"""The guards' evaluation helpers: which rows are test rows, the rank AUC, the latency record, the readers."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from turnout.errors import DataError
from turnout.evaluation.guards import _auc, latency, split_rows
from turnout.signals.examples import read_examples, read_texts


def write(path: Path, rows: list[dict[str, object]]) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_test_rows_by_split(tmp_path):
    rows = [{"text": f"t{i}", "label": "a", "split": s} for i, s in enumerate(["train"] * 4 + ["val"] * 2 + ["test"])]
    test, train, val, notes = split_rows(write(tmp_path / "f.jsonl", rows), None)
    assert [r.text for r in test] == ["t6"] and len(train) == 4 and len(val) == 2
    assert any("no --train" in n for n in notes)
    # no test split: val is the test, and then it can tune nothing
    rows = [r for r in rows if r["split"] != "test"]
    test, train, val, notes = split_rows(write(tmp_path / "g.jsonl", rows), None)
    assert [r.text for r in test] == ["t4", "t5"] and val == [] and any("no 'test' split" in n for n in notes)
    # a separate TRAIN file lends its val rows for tuning
    other = write(
        tmp_path / "tr.jsonl", [{"text": "x", "label": "a", "split": "train"}, {"text": "y", "label": "a", "split": "val"}]
    )
    test, train, val, _ = split_rows(write(tmp_path / "h.jsonl", [{"text": "z", "label": "a"}]), other)
    assert [r.text for r in test] == ["z"] and [r.text for r in val] == ["y"]


def test_split_errors(tmp_path):
    only_train = write(tmp_path / "t.jsonl", [{"text": "a", "label": "x", "split": "train"}])
    with pytest.raises(DataError, match="no 'test' or 'val' rows"):
        split_rows(only_train, None)
    no_split = write(tmp_path / "n.jsonl", [{"text": "a", "label": "x"}])
    with pytest.raises(DataError, match="same file"):
        split_rows(no_split, no_split)


def test_reader_checks_rows_and_reads_every_format(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "x"}\n{oops\n')
    with pytest.raises(DataError, match="row 2"):
        read_examples(bad)
    with pytest.raises(DataError, match="split"):
        read_examples(write(tmp_path / "s.jsonl", [{"text": "a", "label": "x", "split": "dev"}]))
    with pytest.raises(DataError, match="no label"):
        read_examples(write(tmp_path / "l.jsonl", [{"text": "a"}]))
    gz = tmp_path / "r.jsonl.gz"
    with gzip.open(gz, "wt") as fh:
        fh.write(json.dumps({"prompt": "p1", "domain": "d"}) + "\n")
    assert read_examples(gz)[0].label == "d"
    pairs = write(tmp_path / "pairs.jsonl", [{"a": "q1", "b": "q2", "duplicate": True}, {"a": "q1", "b": "q3"}])
    assert read_texts([pairs]) == ["q1", "q2", "q3"]
    split = write(tmp_path / "sp.jsonl", [{"text": "tr", "split": "train"}, {"text": "te", "split": "test"}])
    assert read_texts([split]) == ["tr"] and read_texts([split], splits=("val", "test")) == ["te"]


def test_rank_auc():
    assert _auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert _auc(np.array([1.0]), np.array([1.0])) == 0.5
    assert _auc(np.array([1.0, 3.0]), np.array([2.0])) == 0.5
    assert _auc(np.array([]), np.array([1.0])) is None


def test_latency_record():
    calls: list[str] = []
    rec = latency(calls.append, ["a", "b", "c"])
    assert rec["n"] == 3 and len(calls) == 5 and 0 <= rec["p50_ms"] <= rec["p99_ms"]
