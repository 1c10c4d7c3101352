from __future__ import annotations

import argparse
import io
import json
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from turnout.cli.logs import follow, parse_since
from turnout.cli.main import main
from turnout.gateway.requestlog import LogEntry, RequestLog


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "log.sqlite"
    now = time.time()
    with RequestLog(path) as log:
        log.record(
            LogEntry(
                id="old-1",
                ts=now - 3600,
                key_name="alice",
                route="auto",
                model="small",
                prompt="an old question",
                response_text="old",
                cost_usd=0.001,
            )
        )
        log.record(
            LogEntry(
                id="new-ok",
                ts=now - 5,
                key_name="bob",
                route="auto",
                model="big",
                prompt="What is 2+2?",
                response_text="4",
                cost_usd=0.02,
            )
        )
        log.record(
            LogEntry(
                id="new-err",
                ts=now - 2,
                key_name="bob",
                route="auto",
                model="big",
                status="error",
                error_kind="timeout",
                prompt="Boom",
            )
        )
        log.set_feedback("new-ok", 1.0)
    return path


def _json_lines(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_logs_json_with_filters(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["logs", "--db", str(db), "--json"]) == 0
    assert [r["id"] for r in _json_lines(capsys.readouterr().out)] == ["old-1", "new-ok", "new-err"]
    assert main(["logs", "--db", str(db), "--json", "--since", "10m"]) == 0
    assert [r["id"] for r in _json_lines(capsys.readouterr().out)] == ["new-ok", "new-err"]
    assert main(["logs", "--db", str(db), "--json", "--status", "error"]) == 0
    rows = _json_lines(capsys.readouterr().out)
    assert [(r["id"], r["error_kind"]) for r in rows] == [("new-err", "timeout")]
    assert main(["logs", "--db", str(db), "--json", "--key", "alice", "--model", "small"]) == 0
    assert [r["id"] for r in _json_lines(capsys.readouterr().out)] == ["old-1"]
    assert main(["logs", "--db", str(db), "--json", "--limit", "1"]) == 0
    assert [r["id"] for r in _json_lines(capsys.readouterr().out)] == ["new-err"]


def test_logs_table(db: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich falls back to 80 columns when not on a terminal
    assert main(["logs", "--db", str(db), "--route", "auto"]) == 0
    out = capsys.readouterr().out
    assert "What is 2+2?" in out and "timeout" in out and "1.00" in out


def test_missing_db_and_bad_since_tell_the_fix(tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["logs", "--db", str(tmp_path / "nope.sqlite")]) == 2
    assert "--db PATH" in capsys.readouterr().err
    assert main(["logs", "--db", str(db), "--since", "yesterday"]) == 2
    assert "10m" in capsys.readouterr().err


def test_an_empty_file_is_not_a_log_and_is_left_unchanged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    assert main(["logs", "--db", str(empty)]) == 2
    assert "an empty file, not a request log" in capsys.readouterr().err and empty.stat().st_size == 0


@pytest.mark.parametrize("argv", [["--limit", "-1"], ["--limit", "0"], ["--status", "bogus"]])
def test_bad_limit_and_status_are_refused(db: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:  # argparse's own usage error
        main(["logs", "--db", str(db), *argv])
    assert info.value.code == 2 and argv[0] in capsys.readouterr().err


def test_an_export_with_no_row_says_it_is_not_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "unscored.sqlite"
    with RequestLog(path) as log:
        log.record(LogEntry(id="x", route="auto", model="m", prompt="p", response_text="r"))
    assert main(["logs", "export", "--db", str(path), str(tmp_path / "o.jsonl")]) == 0
    assert "holds no row" in capsys.readouterr().err


def test_parse_since() -> None:
    assert parse_since("10m", now=1000.0) == 400.0
    assert parse_since("2h", now=10_000.0) == 2800.0
    assert parse_since("1970-01-01T00:01:00") == 60.0


def test_export_canonical_through_the_cli(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "table.jsonl"
    assert main(["logs", "export", "--db", str(db), "--format", "canonical", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["prompt"], r["model"], r["score"]) for r in rows] == [("What is 2+2?", "big", 1.0)]
    assert "skipped 1 without feedback" in capsys.readouterr().err
    # --db before the subcommand works too
    assert main(["logs", "--db", str(db), "export", str(tmp_path / "all.parquet"), "--include-unscored"]) == 0
    pq = pytest.importorskip("pyarrow.parquet")
    assert pq.read_table(tmp_path / "all.parquet").num_rows == 2


def test_follow_prints_rows_written_after_it_started(db: Path) -> None:
    buf = io.StringIO()
    console = Console(file=buf, width=200)
    args = argparse.Namespace(since=None, route=None, model=None, status="ok", key=None, json=True, interval=0.02)
    log = RequestLog(db)
    start = log.last_seq()
    seen: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        with RequestLog(db) as other:  # another process's log, as with a running server
            other.record(LogEntry(id="late-err", route="auto", model="big", status="error", prompt="x"))
            other.record(LogEntry(id="late-ok", ts=0.0, route="auto", model="big", prompt="y"))

    def should_stop() -> bool:
        seen[:] = [r["id"] for r in _json_lines(buf.getvalue())]
        return "late-ok" in seen or stop.is_set()

    t = threading.Thread(target=writer)
    timer = threading.Timer(10.0, stop.set)  # a safety net, never the expected path
    timer.start()
    t.start()
    last = follow(log, console, args, start_seq=start, should_stop=should_stop)
    t.join()
    timer.cancel()
    log.close()
    # an old ts (0.0) still shows: tailing goes by write order, not request time; the error is filtered out
    assert seen == ["late-ok"]
    assert last == start + 2


def test_follow_through_the_real_command(db: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "turnout.cli.main", "logs", "--db", str(db), "--json", "--follow", "--limit", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    watchdog = threading.Timer(30.0, proc.kill)  # a hang fails the test instead of blocking the suite
    watchdog.start()
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())  # the initial listing: newest row only
        assert first["id"] == "new-err"
        with RequestLog(db) as log:
            log.record(LogEntry(id="tailed", route="auto", model="small", prompt="hello"))
        assert json.loads(proc.stdout.readline())["id"] == "tailed"  # no flush problem through a pipe
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
