"""Load routing tables from the canonical long format, RouterBench's wide CSVs and LLMRouter's JSON.

Cost of a cell, row by row: ``cost_usd``; else tokens × card prices; else estimated
tokens × card prices (a missing input count ≈ prompt chars / 4, a missing output count
:data:`DEFAULT_OUTPUT_TOKENS`) and the table says ``cost_estimated=True``. One table may
mix measured, counted and estimated costs.

Errors point at the user's file, not at the long frame built here: a Parquet row (from 0),
a JSONL line (from 1), a CSV data row (from 0) and its line, an LLMRouter item (from 0) and
model, with the file's column. Foreign read errors (pyarrow, gzip, pandas' CSV parser,
pickle) become :class:`DataError` here.
"""

from __future__ import annotations

from pathlib import Path

from turnout.errors import DataError
from turnout.evaluation.loaders._common import (
    CARD_SHAPE,
    CARRIED,
    DEFAULT_OUTPUT_TOKENS,
    LLM_SHAPE,
    NO_SPLIT,
    NO_TASK,
    REQUIRED,
    DataWarning,
    _card,
)
from turnout.evaluation.loaders.canonical import _canonical, from_long
from turnout.evaluation.loaders.llmrouter import _llmrouter
from turnout.evaluation.loaders.routerbench import _routerbench
from turnout.evaluation.table import RoutingTable

__all__ = [
    "CARD_SHAPE",
    "CARRIED",
    "DEFAULT_OUTPUT_TOKENS",
    "LLM_SHAPE",
    "NO_SPLIT",
    "NO_TASK",
    "REQUIRED",
    "DataWarning",
    "detect_format",
    "from_long",
    "load_table",
]


def detect_format(path: Path) -> str:
    """``canonical``, ``routerbench`` or ``llmrouter`` from the path's name and contents.

    A ``.csv``/``.pkl`` or ``.json`` file that holds canonical rows is read as canonical
    by its format's loader (it looks at the columns).
    """
    name = path.name.lower()
    if path.is_dir():
        if list(path.glob("*_train.csv")) or list(path.glob("*_test.csv")):
            return "routerbench"
        if (path / "train.json").exists():
            return "llmrouter"
        raise DataError(
            "folder holds neither RouterBench CSVs nor LLMRouter train.json/test.json",
            file=str(path),
            fix="point at a table file",
        )
    if name.endswith((".csv", ".pkl", ".pickle")):
        return "routerbench"
    if name.endswith(".json"):
        return "llmrouter"
    if name.endswith((".jsonl", ".jsonl.gz", ".parquet")):
        return "canonical"
    raise DataError(
        "unknown table format",
        file=str(path),
        fix="use .parquet, .jsonl, .jsonl.gz (canonical), .csv/.pkl (RouterBench) or .json (LLMRouter)",
    )


def load_table(
    path: str | Path, *, models_card: str | Path | None = None, format: str | None = None, unused: list[str] | None = None
) -> RoutingTable:
    """Load any supported routing table; raises :class:`DataError` naming the file, row/column and fix.

    ``unused``, when given, receives the names of the input's columns that ``turnout data convert``
    does not write (token counts, responses, ...), and it reports them. Answer texts are read
    into ``responses`` all the same (a canonical ``response`` column, RouterBench's
    ``<model>|model_response``): cascades and fan-outs need them.
    """
    p = Path(path)
    if not p.exists():
        raise DataError("file not found", file=str(p), fix="check the path")
    if p.is_file() and p.stat().st_size == 0:
        raise DataError("the file is empty", file=str(p), fix="write the table into it, or point at another file")
    fmt = format or detect_format(p)
    card = _card(p, models_card)
    if fmt == "canonical":
        return _canonical(p, card, unused)
    if fmt == "routerbench":
        return _routerbench(p, card, unused)
    if fmt == "llmrouter":
        return _llmrouter(p, card, unused)
    raise DataError(f"unknown format '{fmt}'", file=str(p), fix="use canonical, routerbench or llmrouter")
