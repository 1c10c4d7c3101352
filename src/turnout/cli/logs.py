"""``turnout logs``: show, tail and export the request log.

turnout logs [--db PATH] [--since 10m] [--route R] [--model M] [--status S] [--key K] [--limit N] [--json] [--follow]
turnout logs export --db PATH --format canonical OUT.(jsonl|jsonl.gz|parquet) [--include-unscored]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from rich.text import Text

from turnout.errors import InvalidRequestError, TurnoutError
from turnout.gateway.requestlog import DEFAULT_REQUEST_LOG, LogEntry, RequestLog

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, *, now: float | None = None) -> float:
    """``10m``, ``2h``, ``30s``, ``1d`` ago, or an ISO date/time, as a unix time."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequestError(
            f"--since {text!r} is neither a duration nor a date (fix: use e.g. 30s, 10m, 2h, 1d or 2026-01-31T12:00)"
        ) from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "logs",
        help="tail, filter and export the request log",
        description="Show the newest requests of the log (the last --limit, oldest of them first, like "
        "tail), or tail it with --follow.",
    )
    _add_db(p)
    p.add_argument("--since", help="only requests newer than this: 30s, 10m, 2h, 1d, or an ISO date/time")
    p.add_argument("--route", help="only this route")
    p.add_argument("--model", help="only this model")
    p.add_argument("--status", choices=STATUSES, help="only this status")
    p.add_argument("--key", help="only this API key name")
    p.add_argument("--limit", type=_positive, default=50, help="at most this many rows (default 50)")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new requests as they are logged (Ctrl-C stops)")
    p.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)
    p.set_defaults(func=_show)
    sub = p.add_subparsers(dest="logs_command", metavar="SUBCOMMAND")
    e = sub.add_parser(
        "export",
        help="write logged traffic with feedback as a canonical routing table",
        description="Export successful, scored requests as a canonical routing table.",
    )
    # SUPPRESS: `turnout logs --db X export OUT` keeps X instead of this parser's default
    e.add_argument("--db", default=argparse.SUPPRESS, help=f"request log file (default {DEFAULT_REQUEST_LOG})")
    e.add_argument("--format", choices=["canonical"], default="canonical", help="output format (canonical)")
    e.add_argument("out", help="output file: .jsonl, .jsonl.gz or .parquet")
    e.add_argument(
        "--include-unscored",
        action="store_true",
        help="also write requests without feedback, with score null (a labelling queue, not yet a valid table)",
    )
    e.set_defaults(func=_export)


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=DEFAULT_REQUEST_LOG, help=f"request log file (default {DEFAULT_REQUEST_LOG})")


#: the statuses the gateway writes (see turnout.gateway.requestlog)
STATUSES = ("ok", "error", "cancelled")


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not a number of rows (1 or more)")
    return n


def _open(db: str) -> RequestLog:
    p = Path(db)
    if not p.exists():
        raise TurnoutError(f"no request log at {db} (fix: pass --db PATH, the server's server.request_log setting)")
    if p.is_file() and p.stat().st_size == 0:  # opening would write a schema into it: a read must change nothing
        raise TurnoutError(
            f"{db} is an empty file, not a request log (fix: pass --db PATH, the server's server.request_log setting)"
        )
    return RequestLog(db)


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "since": parse_since(args.since) if args.since else None,
        "route": args.route,
        "model": args.model,
        "status": args.status,
        "key": args.key,
    }


def _show(args: argparse.Namespace) -> int:
    from turnout.cli._ui import console as make_console

    console = make_console()
    log = _open(args.db)
    try:
        # taken first, so a row written meanwhile is shown exactly once: here if seq <= start, else by follow
        start = log.last_seq()
        entries = [e for e in log.query(limit=args.limit, **_filters(args)) if (e.seq or 0) <= start]
        _print(console, entries[::-1], as_json=args.json)  # oldest first, like a tail
        if args.follow:
            follow(log, console, args, start_seq=start)
    finally:
        log.close()
    return 0


def follow(
    log: RequestLog,
    console: Any,
    args: argparse.Namespace,
    *,
    start_seq: int,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Print rows written after ``start_seq`` as they arrive until ``should_stop()`` or Ctrl-C; return the last seq."""
    seq = start_seq
    filters = _filters(args)
    try:
        while not should_stop():
            entries = log.query(limit=None, after_seq=seq, **filters)
            # advance past filtered-out rows too, so they are not re-read every poll
            seq = max([seq, *(e.seq or 0 for e in entries)])
            if entries:
                _print(console, entries, as_json=args.json, header=False)
            else:
                time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    return seq


def _lam_cell(e: LogEntry) -> str:
    # a budget-steered λ is marked: '*' once the route's running spend has tightened it
    if e.lam is None:
        return "-"
    return f"{e.lam:.3g}" + ("*" if e.budget and e.budget.get("tightened") else "")


#: C0 and C1 control characters (ESC starts terminal escape sequences), shown escaped instead of sent to the terminal
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x20), *range(0x7F, 0xA0))}
_CONTROL[0x0A] = _CONTROL[0x0D] = _CONTROL[0x09] = " "


def clean(value: object) -> Text:
    """A logged value as inert terminal text: control characters escaped (no terminal injection from a prompt)
    and never read as rich markup (a prompt holding "[red]" stays those characters)."""
    return Text(str(value).translate(_CONTROL))


def _print(console: Any, entries: list[LogEntry], *, as_json: bool, header: bool = True) -> None:
    if as_json:
        for e in entries:
            console.print_json(json.dumps(e.to_dict(), default=str), indent=None)
        return
    from rich.table import Table

    table = Table(show_header=header, box=None, pad_edge=False)
    columns: tuple[tuple[str, Literal["left", "right"]], ...] = (
        ("time", "left"),
        ("id", "left"),
        ("key", "left"),
        ("route", "left"),
        ("model", "left"),
        ("status", "left"),
        ("tokens", "right"),
        ("cost $", "right"),
        ("sec", "right"),
        ("λ", "right"),
        ("score", "right"),
        ("prompt", "left"),
    )
    for col, just in columns:
        # the prompt takes the room left over and is cut, never wrapped: one request, one line
        table.add_column(
            col,
            justify=just,
            no_wrap=True,
            overflow="ellipsis",
            ratio=1 if col == "prompt" else None,
            min_width=12 if col == "prompt" else None,
        )
    for e in entries:
        status = clean(e.status) if e.status == "ok" else Text(str(e.error_kind or e.status).translate(_CONTROL), style="red")
        table.add_row(
            datetime.fromtimestamp(e.ts).strftime("%H:%M:%S"),
            clean(e.id[:8]),
            clean(e.key_name or "-"),
            clean(e.route or "-"),
            clean(e.model or "-"),
            status,
            f"{e.prompt_tokens or 0}+{e.completion_tokens or 0}",
            "-" if e.cost_usd is None else f"{e.cost_usd:.5f}",
            "-" if e.latency_s is None else f"{e.latency_s:.2f}",
            _lam_cell(e),
            "-" if e.score is None else f"{e.score:.2f}",
            clean((e.prompt or "")[:200]),
        )
    if header and not entries:
        console.print("[dim]no matching requests[/dim]")
        return
    console.print(table)


def _export(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    log = _open(args.db)
    try:
        summary = log.export_canonical(args.out, include_unscored=args.include_unscored)
    finally:
        log.close()
    console.print(
        f"wrote {summary.rows} rows ({summary.prompts} prompts) to {summary.path}; "
        f"skipped {summary.skipped_unscored} without feedback"
        + (" (use --include-unscored to keep them)" if summary.skipped_unscored else "")
        + f", {summary.skipped_errors} failed requests; merged {summary.merged_repeats} repeats"
    )
    if not summary.rows:
        console.print(
            "warning: the export holds no row, so it is not a routing table turnout can read "
            "(score some requests with POST /v1/feedback, or pass --include-unscored)",
            style="yellow",
        )
    return 0
