"""Labelled example files for the learned guards: read once, checked row by row.

Accepted: JSONL (``.jsonl``, ``.jsonl.gz``, or ``.json`` holding one object per
line) and Parquet. A row's text is its ``text`` (or ``prompt``: routing tables
work as unlabelled text, and so do both sides of a question pair ``{a, b}``); its label is the first of ``label`` or ``domain``
present; ``split`` (``train``/``val``/``test``), ``source`` and ``family`` are
kept when present. So the same reader takes ``{text, label}``, CLINC150's
``{text, intent, domain, split}`` and the jailbreak rows ``{text, label, source}``.

Example::

    rows = read_examples("../shared/data/clinc150/clinc150.jsonl")
    train = [r for r in rows if r.split == "train"]
    train[0].label        # 'travel'
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turnout.errors import DataError

_TEXT_KEYS = ("text", "prompt")
_LABEL_KEYS = ("label", "domain")
_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Example:
    """One row: its text, label (None for unlabelled text), split, source and family (None when absent)."""

    text: str
    label: str | None
    split: str | None = None
    source: str | None = None
    family: str | None = None
    row: int = 0


def _json_rows(path: Path) -> Iterator[tuple[int, Any]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for i, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    yield i, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"not valid JSON ({exc.msg})", file=str(path), row=i, fix="write one JSON object per line (JSONL)"
                    ) from exc
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise DataError(f"cannot read the file ({exc})", file=str(path), fix="pass a UTF-8 JSONL or .jsonl.gz file") from exc


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own hierarchy; translated here, at the boundary
        raise DataError(f"cannot read the Parquet file ({exc})", file=str(path)) from exc
    yield from enumerate(table.to_pylist(), start=1)


def read_examples(path: str | Path, *, need_label: bool = True, dedupe: bool = False) -> list[Example]:
    """Every row of ``path`` as an :class:`Example`; bad rows are a :class:`DataError` naming file, row and fix.

    ``need_label=False`` reads unlabelled text (extra benign prompts, a routing table's
    prompts). ``dedupe`` keeps the first row of each distinct text (a routing table has
    one row per prompt × model).
    """
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", file=str(path), fix="check the path")
    rows = _parquet_rows(path) if path.suffix == ".parquet" else _json_rows(path)
    out: list[Example] = []
    seen: set[str] = set()
    for i, obj in rows:
        if not isinstance(obj, dict):
            raise DataError("a row must be a JSON object", file=str(path), row=i, fix='write {"text": ..., "label": ...}')
        text = next((obj[k] for k in _TEXT_KEYS if k in obj), None)
        if text is None and not need_label and isinstance(obj.get("a"), str) and isinstance(obj.get("b"), str):
            # a question-pairs file ({a, b, ...}, as the cache's): both sides are prompts
            for side in ("a", "b"):
                if not (dedupe and obj[side] in seen) and obj[side].strip():
                    seen.add(obj[side])
                    out.append(Example(text=obj[side], label=None, split=obj.get("split"), row=i))
            continue
        if not isinstance(text, str) or not text.strip():
            raise DataError(
                "no text in this row",
                file=str(path),
                row=i,
                column="text",
                fix="give each row a non-empty 'text' (or 'prompt') string",
            )
        label = next((obj[k] for k in _LABEL_KEYS if k in obj), None)
        if need_label and (not isinstance(label, str) or not label.strip()):
            raise DataError(
                "no label in this row",
                file=str(path),
                row=i,
                column="label",
                fix="give each row a non-empty 'label' (or 'domain') string",
            )
        split = obj.get("split")
        if split is not None and split not in _SPLITS:
            raise DataError(
                f"unknown split {split!r}",
                file=str(path),
                row=i,
                column="split",
                fix=f"use one of: {', '.join(_SPLITS)} (or leave it out)",
            )
        if dedupe:
            if text in seen:
                continue
            seen.add(text)
        out.append(
            Example(
                text=text,
                label=label if isinstance(label, str) else None,
                split=split,
                source=_opt_str(obj.get("source")),
                family=_opt_str(obj.get("family")),
                row=i,
            )
        )
    if not out:
        raise DataError("the file holds no rows", file=str(path), fix="pass a file with at least one example")
    return out


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def read_texts(paths: Sequence[str | Path], *, splits: Sequence[str] = ("train",)) -> list[str]:
    """The distinct texts of ``paths``, in file order; where a file has splits, only rows of ``splits``.

    Training reads ``train`` rows (the default); a check on unseen prompts reads ``("val", "test")``.
    """
    texts: list[str] = []
    seen: set[str] = set()
    for p in paths:
        rows = read_examples(p, need_label=False, dedupe=True)
        if any(r.split is not None for r in rows):
            rows = [r for r in rows if r.split in splits]
        for r in rows:
            if r.text not in seen:
                seen.add(r.text)
                texts.append(r.text)
    return texts
