from __future__ import annotations

import json
import logging
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from turnout.errors import DataError, InvalidRequestError
from turnout.gateway.requestlog import SCHEMA_VERSION, LogEntry, RequestLog, prompt_id


def _entry(i: int, **over: object) -> LogEntry:
    base: dict[str, object] = dict(
        key_name="alice",
        route="auto",
        model=f"m{i % 3}",
        status="ok",
        prompt=f"prompt {i % 10}",
        response_text=f"answer {i}",
        prompt_tokens=10 + i,
        completion_tokens=20,
        cost_usd=0.001 * (i + 1),
        latency_s=0.5,
        ttft_s=0.1,
        decision_ms=0.2,
        candidates=[{"model": "m0", "quality": 0.7}],
        fallbacks_tried=[],
        http_status=200,
    )
    base.update(over)
    return LogEntry(**base)  # type: ignore[arg-type]


def test_file_is_real_sqlite_in_wal_mode_with_a_schema_version(tmp_path: Path) -> None:
    db = tmp_path / "log.sqlite"
    with RequestLog(db) as log:
        log.record(_entry(1))
        log.flush()
        assert (tmp_path / "log.sqlite-wal").exists()
        conn = sqlite3.connect(db)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 1
        conn.close()


def test_a_thousand_records_from_many_threads_all_land(tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "log.sqlite", batch_size=64)

    def work(t: int) -> None:
        for i in range(125):
            log.record(_entry(t * 1000 + i, key_name=f"k{t}"))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    log.close()
    assert log.dropped == 0 and log.write_errors == 0
    assert log.written == 1000
    reopened = RequestLog(tmp_path / "log.sqlite")
    rows = reopened.query(limit=None)
    assert len(rows) == 1000
    assert len({r.id for r in rows}) == 1000
    assert len(reopened.query(key="k3", limit=None)) == 125
    reopened.close()


def test_record_round_trips_and_filters(tmp_path: Path) -> None:
    with RequestLog(tmp_path / "log.sqlite") as log:
        ok = _entry(1, ts=1000.0, fallbacks_tried=["big"])
        bad = _entry(2, ts=2000.0, status="error", error_kind="timeout", response_text=None, http_status=504)
        log.record(ok)
        log.record(bad)
        log.flush()
        rows = log.query()
        assert [r.id for r in rows] == [bad.id, ok.id]  # newest first
        got = rows[1]
        assert got.candidates == [{"model": "m0", "quality": 0.7}]
        assert got.fallbacks_tried == ["big"]
        assert (got.prompt, got.model, got.cost_usd, got.http_status) == (ok.prompt, "m1", ok.cost_usd, 200)
        assert [r.id for r in log.query(status="error")] == [bad.id]
        assert [r.id for r in log.query(since=1500.0)] == [bad.id]
        assert [r.id for r in log.query(model="m1")] == [ok.id]
        assert log.query(route="other") == []
        assert [r.id for r in log.query(after_seq=rows[1].seq)] == [bad.id]


def test_full_queue_drops_are_counted_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = RequestLog(tmp_path / "log.sqlite", max_queue=5)
    # hold the database write lock so the writer thread stalls and the queue fills
    blocker = sqlite3.connect(tmp_path / "log.sqlite", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    with caplog.at_level(logging.WARNING, logger="turnout.gateway.requestlog"):
        for i in range(200):
            log.record(_entry(i))
    blocker.execute("COMMIT")
    blocker.close()
    log.close()
    assert log.dropped > 0
    assert log.written + log.dropped == 200
    assert "dropped an entry because the write queue is full" in caplog.text
    log.record(_entry(999))  # after close: counted, not raised
    assert log.written + log.dropped == 201


def test_feedback_scores_and_validation(tmp_path: Path) -> None:
    with RequestLog(tmp_path / "log.sqlite") as log:
        e = _entry(1)
        log.set_feedback(e.id, 0.25)  # feedback may arrive before its request is written
        log.record(e)
        log.set_feedback(e.id, 0.75)  # the latest score wins
        log.flush()
        assert log.query()[0].score == 0.75
        log.record(e)  # re-recording keeps the feedback
        log.flush()
        assert log.query()[0].score == 0.75
        for bad in (1.5, -0.1, "good", True):
            with pytest.raises(InvalidRequestError, match=r"\[0, 1\]"):
                log.set_feedback(e.id, bad)  # type: ignore[arg-type]


def test_wrong_schema_version_tells_the_fix(tmp_path: Path) -> None:
    db = tmp_path / "log.sqlite"
    RequestLog(db).close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(DataError, match="schema version 99.*new file"):
        RequestLog(db)


def _traffic(log: RequestLog) -> dict[str, LogEntry]:
    es = {
        "a_small": _entry(0, prompt="What is 2+2?", model="small", cost_usd=0.001),
        "a_small_again": _entry(0, prompt="What is 2+2?", model="small", cost_usd=0.003, response_text="4"),
        "a_big": _entry(0, prompt="What is 2+2?", model="big", cost_usd=0.02),
        "b_small": _entry(0, prompt="Write a haiku", model="small"),
        "unscored": _entry(0, prompt="No feedback here", model="big"),
        "failed": _entry(0, prompt="Boom", model="big", status="error", response_text=None),
    }
    for e in es.values():
        log.record(e)
    log.set_feedback(es["a_small"].id, 0.0)
    log.set_feedback(es["a_small_again"].id, 1.0)
    log.set_feedback(es["a_big"].id, 1.0)
    log.set_feedback(es["b_small"].id, 0.6)
    log.set_feedback(es["failed"].id, 0.0)
    return es


def test_export_canonical_jsonl(tmp_path: Path) -> None:
    with RequestLog(tmp_path / "log.sqlite") as log:
        _traffic(log)
        summary = log.export_canonical(tmp_path / "out.jsonl")
        rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
        assert (summary.rows, summary.prompts, summary.skipped_unscored, summary.skipped_errors, summary.merged_repeats) == (
            3,
            2,
            1,
            1,
            1,
        )
        by = {(r["prompt"], r["model"]): r for r in rows}
        assert set(by) == {("What is 2+2?", "small"), ("What is 2+2?", "big"), ("Write a haiku", "small")}
        merged = by[("What is 2+2?", "small")]
        assert merged["score"] == pytest.approx(0.5)
        assert merged["cost_usd"] == pytest.approx(0.002)
        assert merged["response"] == "4"
        assert merged["prompt_id"] == by[("What is 2+2?", "big")]["prompt_id"] == prompt_id("What is 2+2?")
        assert set(merged) == {
            "prompt_id",
            "prompt",
            "model",
            "score",
            "cost_usd",
            "input_tokens",
            "output_tokens",
            "latency_s",
            "response",
        }

        summary = log.export_canonical(tmp_path / "queue.jsonl", include_unscored=True)
        assert summary.rows == 4 and summary.skipped_unscored == 0
        rows = [json.loads(line) for line in (tmp_path / "queue.jsonl").read_text().splitlines()]
        assert [r["score"] for r in rows if r["prompt"] == "No feedback here"] == [None]


def test_export_parquet_loads_as_a_routing_table(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    with RequestLog(tmp_path / "log.sqlite") as log:
        _traffic(log)
        log.export_canonical(tmp_path / "out.parquet")
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.num_rows == 3
    assert table.schema.field("score").type == "double"
    try:
        from turnout.evaluation.loaders import load_table
    except ImportError:
        pytest.skip("turnout.evaluation.loaders is not there yet: only the file itself was checked")
    loaded = load_table(tmp_path / "out.parquet")
    # 3 observed (prompt, model) cells over 2 prompts and 2 models
    assert len(loaded.prompts) == 2
    assert sorted(loaded.models) == ["big", "small"]
    assert int((~np.isnan(loaded.scores)).sum()) == 3
    i = loaded.prompts.index("What is 2+2?")
    assert loaded.scores[i, loaded.models.index("small")] == pytest.approx(0.5)


def test_export_rejects_unknown_suffix(tmp_path: Path) -> None:
    with RequestLog(tmp_path / "log.sqlite") as log, pytest.raises(DataError, match=r"\.jsonl, \.jsonl\.gz or \.parquet"):
        log.export_canonical(tmp_path / "out.csv")


class _Opaque:
    """Something neither JSON nor SQLite can store as it is."""

    def __str__(self) -> str:
        return "opaque"


def test_an_entry_sqlite_cannot_take_as_it_is_costs_neither_its_batch_nor_itself(tmp_path: Path) -> None:
    with RequestLog(tmp_path / "log.sqlite") as log:
        good = [_entry(i) for i in range(5)]
        odd = _entry(
            9,
            prompt=["not", "a", "string"],
            candidates=[{"model": "m0", "quality": _Opaque()}],
            budget={"target": _Opaque()},
            latency_s="slow",
        )
        for e in (*good[:3], odd, *good[3:]):
            log.record(e)
        log.flush()
        assert (log.written, log.write_errors) == (6, 0)
        rows = {r.id: r for r in log.query(limit=None)}
        assert set(rows) == {e.id for e in (*good, odd)}
        got = rows[odd.id]
        assert got.prompt == "['not', 'a', 'string']" and got.candidates == [{"model": "m0", "quality": "opaque"}]
        assert got.budget == {"target": "opaque"} and got.latency_s is None
        assert rows[good[0].id].prompt == good[0].prompt


def test_an_entry_even_coercion_cannot_store_is_counted_and_the_rest_land(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with RequestLog(tmp_path / "log.sqlite") as log, caplog.at_level(logging.ERROR, logger="turnout.gateway.requestlog"):
        broken = _entry(1, status=None)  # NOT NULL: no form of it can be stored
        log.record(_entry(0))
        log.record(broken)
        log.set_feedback(broken.id, 0.5)
        log.flush()
        assert (log.written, log.write_errors) == (1, 1)
        assert f"could not write request {broken.id!r}" in caplog.text
        assert len(log.query(limit=None)) == 1
        assert log.get(broken.id) is None


def test_get_finds_a_request_just_recorded_with_its_score(tmp_path: Path) -> None:
    with RequestLog(tmp_path / "log.sqlite", linger_s=5.0) as log:  # a long linger: get() must flush, not wait
        e = _entry(1)
        log.record(e)
        got = log.get(e.id)
        assert got is not None and (got.id, got.prompt, got.score) == (e.id, e.prompt, None)
        log.set_feedback(e.id, 0.5)
        log.flush()
        assert log.get(e.id).score == 0.5
        assert log.get("no-such-id") is None


@pytest.mark.parametrize(
    "content",
    [
        [{"type": "text", "text": 5}],
        [{"type": "text", "text": None}, {"type": "text", "text": "kept"}],
        [{"type": "text", "text": ["a"]}],
        ["a bare string part"],
    ],
)
async def test_a_request_with_odd_content_built_in_code_is_answered_and_logged(tmp_path: Path, content: list) -> None:
    # the server rejects these at the wire; a request built in code can still carry them, and must be logged
    from turnout.gateway import Gateway, ModelTarget
    from turnout.testing.scripted import ScriptedBackend, Step
    from turnout.types import ChatRequest

    log = RequestLog(tmp_path / "log.sqlite")
    gw = Gateway(
        {
            "m": ModelTarget(
                name="m", backend=ScriptedBackend("up", Step(text="hi", prompt_tokens=1, completion_tokens=1)), upstream="m"
            )
        },
        request_log=log,
    )
    req = ChatRequest(model="m", messages=[{"role": "user", "content": content}, "not a message"])  # type: ignore[list-item]
    resp, _, _ = await gw.chat(req, request_id="odd-1")
    assert resp.content == "hi"
    await gw.aclose()
    log.close()
    with RequestLog(tmp_path / "log.sqlite") as reopened:
        got = reopened.get("odd-1")
    assert (
        got is not None
        and got.status == "ok"
        and got.prompt == ("kept" if content[-1:] == [{"type": "text", "text": "kept"}] else "")
    )
