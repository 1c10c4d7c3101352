"""LLMRouter's JSON: ``train.json`` / ``test.json`` lists of ``{question, scores: {model: score}}``.

Prices come from ``default_llm.json`` beside them (or a models card); tasks from the
``default_query_<split>.jsonl`` files when they are there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from turnout.errors import DataError
from turnout.evaluation.loaders._common import (
    CARD_SHAPE,
    LLM_SHAPE,
    _check_card,
    _is_long,
    _json_kind,
    _pd,
    _read_json,
    _rows_of,
    _Where,
)
from turnout.evaluation.loaders.canonical import from_long
from turnout.evaluation.table import RoutingTable


def _llmrouter(p: Path, card: dict[str, dict[str, Any]], unused: list[str] | None) -> RoutingTable:
    pd = _pd()
    folder = p if p.is_dir() else p.parent
    files = (
        [(folder / f"{s}.json", s) for s in ("train", "test")]
        if p.is_dir()
        else [(p, p.stem if p.stem in ("train", "test") else None)]
    )
    loaded = [(f, split, _read_json(f, "give a JSON list of {question, scores}")) for f, split in files if f.exists()]
    for f, _, items in loaded:
        if not isinstance(items, list):
            raise DataError(
                f"the file holds a JSON {_json_kind(items)}; expected a JSON list of LLMRouter items "
                "{question, scores: {model: score}} or of canonical rows {prompt_id, prompt, model, score, ...}",
                file=str(f),
                fix="write the table as a JSON list (or as canonical .jsonl / .parquet)",
            )
    if not p.is_dir() and loaded and loaded[0][2] and isinstance(loaded[0][2][0], dict) and _is_long(loaded[0][2][0]):
        f, _, items = loaded[0]  # canonical rows saved as a JSON array
        if not all(isinstance(it, dict) for it in items):
            i = next(i for i, it in enumerate(items) if not isinstance(it, dict))
            raise DataError(
                f"item {i} is a JSON {_json_kind(items[i])}, not a row object",
                file=str(f),
                row=i,
                fix="give one {prompt_id, prompt, model, score, ...} object per item",
            )
        return from_long(
            pd.DataFrame(items),
            card,
            source=str(f),
            unused=unused,
            where=_rows_of(str(f), lambda i: f" (item {i} of the JSON list, counting from 0)"),
        )
    llm = folder / "default_llm.json"
    if not card and llm.exists():
        raw = _check_card(
            _read_json(llm, f"write default_llm.json as {LLM_SHAPE}"), str(llm), ("input_price", "output_price"), LLM_SHAPE
        )
        card = {
            m: {
                "input_per_mtok": v.get("input_price"),
                "output_per_mtok": v.get("output_price"),
                "params": v.get("size"),
                "description": v.get("feature"),
            }
            for m, v in raw.items()
        }
    rows, origin = [], []  # origin: per long row, (file, item index, model)
    for f, split, items in loaded:
        tasks: dict[str, str | None] = {}
        q = folder / f"default_query_{split}.jsonl" if split else None
        if q is not None and q.exists():
            # some query files hold raw newlines inside strings: decode objects one after another
            text, pos, dec = q.read_text(), 0, json.JSONDecoder(strict=False)
            while pos < len(text):
                while pos < len(text) and text[pos].isspace():
                    pos += 1
                if pos >= len(text):
                    break
                try:
                    o, pos = dec.raw_decode(text, pos)
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"not valid JSON: {exc}",
                        file=str(q),
                        fix="give one {query, task_name} object per line, or remove the query file",
                    ) from exc
                if isinstance(o, dict):
                    tasks.setdefault(o.get("query", ""), o.get("task_name"))
        for i, it in enumerate(items):
            if not isinstance(it, dict) or "question" not in it or not isinstance(it.get("scores"), dict):
                raise DataError(
                    "item lacks 'question' or 'scores' {model: score}",
                    file=str(f),
                    row=i,
                    fix="give {question, scores: {model: score}} (items count from 0)",
                )
            # the same question may appear twice (train and test): ids are positional, not textual
            pid = f"{split or f.stem}.{i}"
            for mname, s in it["scores"].items():
                rows.append(
                    {
                        "prompt_id": pid,
                        "prompt": it["question"],
                        "model": mname,
                        "score": s,
                        "task": tasks.get(it["question"]) if isinstance(it["question"], str) else None,
                        **({"split": split} if split else {}),
                    }
                )
                origin.append((str(f), i, str(mname)))
    if not rows:
        raise DataError("empty table", file=str(p), fix="give at least one item")

    def at(i: int, column: str | None) -> tuple[str, int | None, str | None, str]:
        f, item, mname = origin[i]
        return f, item, None, f" (item {item} of the JSON list counting from 0, model '{mname}')"

    return from_long(
        pd.DataFrame(rows),
        card,
        source=str(p),
        where=_Where(
            at,
            no_cost_fix=(
                "LLMRouter files carry no costs: put default_llm.json (input_price/output_price per model) "
                f"beside train.json, or pass a models card with --models-card: {CARD_SHAPE}"
            ),
            missing_score_fix="give the model a number in that item's scores, or leave it out of them",
        ),
    )
