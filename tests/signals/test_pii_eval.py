"""evaluate_pii: the loader's errors, the template split, exact metrics on a hand-made file, and a real slice."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from turnout.errors import DataError
from turnout.evaluation.guards_pii import (
    SpanTally,
    evaluate_pii,
    load_pii_rows,
    template_family,
    template_split,
)
from turnout.signals.pii import STRUCTURED_TYPES


def write_rows(path: Path, rows: list[Any]) -> str:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def span(text: str, value: str, type: str) -> dict[str, Any]:
    start = text.index(value)
    return {"type": type, "start": start, "end": start + len(value), "value": value}


# ------------------------------------------------------------------------------------------- loading


def test_loader_errors_name_row_and_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"row 2: not JSON.*one JSON object per line"):
        load_pii_rows(write_rows(tmp_path / "a.jsonl", [{"text": "x", "spans": []}, "{oops"]))
    with pytest.raises(DataError, match=r"row 1, column 'text'"):
        load_pii_rows(write_rows(tmp_path / "b.jsonl", [{"spans": []}]))
    with pytest.raises(DataError, match=r"row 1, column 'spans': span 2-9 is outside the text"):
        load_pii_rows(write_rows(tmp_path / "c.jsonl", [{"text": "abc", "spans": [{"type": "X", "start": 2, "end": 9}]}]))
    with pytest.raises(DataError, match=r"reads 'abc', not its value 'zzz'"):
        load_pii_rows(
            write_rows(
                tmp_path / "d.jsonl", [{"text": "abc def", "spans": [{"type": "X", "start": 0, "end": 3, "value": "zzz"}]}]
            )
        )
    with pytest.raises(DataError, match="file not found"):
        load_pii_rows(tmp_path / "missing.jsonl")


def test_loader_realigns_a_nearby_value_and_reads_gzip(tmp_path: Path) -> None:
    text = "For my take on Mrs. Ayers, see"
    row = {"text": text, "spans": [{"type": "PERSON", "start": 21, "end": 26, "value": "Ayers"}], "template": "t"}
    path = tmp_path / "rows.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
    rows, moved = load_pii_rows(path)
    assert moved == 1
    s = rows[0].spans[0]
    assert text[s.start : s.end] == "Ayers"


# ------------------------------------------------------------------------------------------- split


def test_template_family_folds_slot_names_and_case() -> None:
    assert template_family("They're not answering at {{phone_number}}") == template_family(
        "They're not  answering at {{PHONE_NUMBER}}"
    )
    assert template_family("a {{x}}") != template_family("b {{x}}")


def test_span_tally_strict_and_overlap() -> None:
    strict, loose = SpanTally(), SpanTally()
    gold = [("EMAIL", 0, 10), ("PHONE", 20, 30)]
    pred = [("EMAIL", 0, 10), ("PHONE", 21, 30), ("SSN", 40, 51)]
    strict.add(gold, pred, overlap=False)
    loose.add(gold, pred, overlap=True)
    assert strict.scores(["EMAIL", "PHONE", "SSN"]) == {
        "precision": 0.3333,
        "recall": 0.5,
        "f1": 0.4,
        "tp": 1,
        "fp": 2,
        "fn": 1,
        "support": 2,
    }
    assert loose.scores(["PHONE"])["f1"] == 1.0
    assert strict.scores(["IBAN"])["f1"] is None  # no gold, no prediction: undefined, not 0


# ------------------------------------------------------------------------------------------- evaluate, by hand


def test_evaluate_exact_metrics_on_a_hand_made_file(tmp_path: Path) -> None:
    t1 = "Write to ann@example.org or call +1-202-555-0143."
    t2 = "My card is 4111 1111 1111 1111 and my SSN 123-45-6789."
    t3 = "Order 4111 1111 1111 1112 is not a card; from 10.0.0.1."
    rows = [
        {"text": t1, "spans": [span(t1, "ann@example.org", "EMAIL_ADDRESS"), span(t1, "+1-202-555-0143", "PHONE_NUMBER")]},
        {"text": t2, "spans": [span(t2, "4111 1111 1111 1111", "CREDIT_CARD"), span(t2, "123-45-6789", "US_SSN")]},
        # the gold misses the IP (a false positive for us) and labels an invalid card (a false negative for us)
        {"text": t3, "spans": [span(t3, "4111 1111 1111 1112", "CREDIT_CARD"), span(t3, "Order", "MADE_UP")]},
    ]
    report = evaluate_pii(
        write_rows(tmp_path / "hand.jsonl", rows),
        holdout="all",
        types=["EMAIL", "PHONE", "CREDIT_CARD", "SSN", "IP_ADDRESS"],
        progress=False,
    )
    assert report["n_texts"] == 3
    assert report["per_type"]["CREDIT_CARD"] == {
        "precision": 1.0,
        "recall": 0.5,
        "f1": 0.6667,
        "tp": 1,
        "fp": 0,
        "fn": 1,
        "support": 2,
    }
    assert report["per_type"]["IP_ADDRESS"]["fp"] == 1
    # tp 4 (email, phone, card, ssn), fp 1 (ip), fn 1 (invalid card): P = R = 0.8
    assert report["micro_f1_structured"] == 0.8
    assert report["type_map"] == {
        "CREDIT_CARD": "CREDIT_CARD",
        "EMAIL_ADDRESS": "EMAIL",
        "MADE_UP": None,
        "PHONE_NUMBER": "PHONE",
        "US_SSN": "SSN",
    }
    assert any("MADE_UP (1)" in n for n in report["notes"])
    assert report["p50_ms"] > 0 and report["p99_ms"] >= report["p50_ms"]
    assert report["examples"]["structured_false_negatives"][0]["text"] == "4111 1111 1111 1112"


def test_evaluate_with_a_train_file_drops_seen_families(tmp_path: Path) -> None:
    rows = [
        {
            "text": f"mail a{i}@x.io",
            "spans": [span(f"mail a{i}@x.io", f"a{i}@x.io", "EMAIL")],
            "template": "mail {{email}}" if i < 3 else "write {{email}}",
        }
        for i in range(5)
    ]
    test = write_rows(tmp_path / "test.jsonl", rows)
    train = write_rows(tmp_path / "train.jsonl", [{"text": "x", "spans": [], "template": "mail {{EMAIL}}"}])
    report = evaluate_pii(test, train, progress=False)
    assert report["split"]["dropped_rows"] == 3 and report["n_texts"] == 2
    with pytest.raises(DataError, match="unknown holdout"):
        evaluate_pii(test, holdout="dev")


# ------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real_rows(data_dir: Path) -> Path:
    return require(data_dir / "guards" / "pii" / "pii.jsonl")


def test_template_split_is_stratified_on_real_data(real_rows: Path) -> None:
    rows, _ = load_pii_rows(real_rows)
    parts = template_split(rows)
    assert parts == template_split(list(reversed(rows)))  # deterministic, order-free
    assert set(parts.values()) == {"train", "val", "test"}
    for t in STRUCTURED_TYPES:
        where = {parts[template_family(r.template)] for r in rows if any(s.type is t for s in r.spans)}
        assert {"train", "test"} <= where, t  # every structured type is both tuned on and held out


def test_goal_on_held_out_templates_of_real_data(real_rows: Path) -> None:
    report = evaluate_pii(
        str(real_rows),
        types=["EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "SSN", "IP_ADDRESS", "SECRET", "ADDRESS", "LOCATION"],
        progress=False,
    )
    assert report["split"]["part"] == "test" and report["n_texts"] > 500
    assert report["micro_f1_structured"] >= 0.90  # the goal
    assert set(report["per_type"]) >= {t.value for t in STRUCTURED_TYPES}
    assert report["type_map"]["GPE"] == "LOCATION" and report["type_map"]["STREET_ADDRESS"] == "ADDRESS"
    assert report["addresses"]["strict"]["support"] > 0
