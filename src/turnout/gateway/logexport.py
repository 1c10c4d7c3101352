"""Logged traffic as a canonical routing table: the request log's export (``turnout logs export``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turnout.errors import DataError
from turnout.gateway.logschema import prompt_id

#: runs a SELECT on the log and yields its rows
Reader = Callable[[str, list[Any]], Iterable[tuple[Any, ...]]]


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What :meth:`RequestLog.export_canonical` wrote and what it left out, and why."""

    path: str
    rows: int
    prompts: int
    skipped_unscored: int
    skipped_errors: int
    merged_repeats: int


def export_canonical(read: Reader, path: str | Path, *, include_unscored: bool = False) -> ExportSummary:
    """Write logged traffic as a canonical routing table (``.jsonl``, ``.jsonl.gz`` or ``.parquet``).

    One row per (prompt, model): ``prompt_id`` (a hash of the prompt
    text), ``prompt``, ``model``, ``score`` (the feedback score),
    ``cost_usd``, ``input_tokens``, ``output_tokens``, ``latency_s``,
    ``response``. Only successful requests (status ``ok``) are exported.
    A prompt sent to the same model several times becomes one row: scores,
    costs, tokens and latencies are averaged, the latest response is kept.

    ``score`` is required by the canonical format, so requests without
    feedback are skipped and counted. ``include_unscored=True`` writes them
    too, with ``score`` null: that file is a *labelling queue* (score it,
    e.g. with a judge, then load it), not yet a valid routing table.
    The caller flushes queued records first.
    """
    out = Path(path)
    name = out.name.lower()
    if not (name.endswith(".jsonl") or name.endswith(".jsonl.gz") or name.endswith(".parquet")):
        raise DataError("unknown output format", file=str(out), fix="name the file .jsonl, .jsonl.gz or .parquet")
    rows = read(
        "SELECT r.status, r.prompt, r.model, f.score, r.cost_usd, r.prompt_tokens, r.completion_tokens, "
        "r.latency_s, r.response_text FROM requests r LEFT JOIN feedback f ON f.request_id = r.id ORDER BY r.seq",
        [],
    )
    groups: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    skipped_unscored = skipped_errors = 0
    for status, prompt, model, score, *rest in rows:
        if status != "ok" or prompt is None or not model or model == "-":
            skipped_errors += 1
            continue
        if score is None and not include_unscored:
            skipped_unscored += 1
            continue
        groups.setdefault((prompt, model), []).append((score, *rest))
    records = [_merge(prompt, model, items) for (prompt, model), items in groups.items()]
    merged = sum(len(items) - 1 for items in groups.values())
    _write_table(out, records)
    return ExportSummary(
        path=str(out),
        rows=len(records),
        prompts=len({r["prompt_id"] for r in records}),
        skipped_unscored=skipped_unscored,
        skipped_errors=skipped_errors,
        merged_repeats=merged,
    )


def _mean(values: list[Any]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _merge(prompt: str, model: str, items: list[tuple[Any, ...]]) -> dict[str, Any]:
    scores, costs, tin, tout, lat, responses = zip(*items)
    mean_in, mean_out = _mean(list(tin)), _mean(list(tout))
    return {
        "prompt_id": prompt_id(prompt),
        "prompt": prompt,
        "model": model,
        "score": _mean(list(scores)),
        "cost_usd": _mean(list(costs)),
        "input_tokens": None if mean_in is None else round(mean_in),
        "output_tokens": None if mean_out is None else round(mean_out),
        "latency_s": _mean(list(lat)),
        "response": next((r for r in reversed(responses) if r is not None), None),
    }


def _write_table(out: Path, records: list[dict[str, Any]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.name.lower().endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema(
            [
                ("prompt_id", pa.string()),
                ("prompt", pa.string()),
                ("model", pa.string()),
                ("score", pa.float64()),
                ("cost_usd", pa.float64()),
                ("input_tokens", pa.int64()),
                ("output_tokens", pa.int64()),
                ("latency_s", pa.float64()),
                ("response", pa.string()),
            ]
        )
        pq.write_table(pa.Table.from_pylist(records, schema=schema), out)
        return
    if out.name.lower().endswith(".gz"):
        import gzip

        with gzip.open(out, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        return
    with out.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


__all__ = ["ExportSummary", "export_canonical"]
