"""RouterBench's wide tables: one row per prompt, ``<model>``, ``<model>|total_cost`` and ``<model>|model_response`` columns.

A folder of ``<task>_train.csv`` / ``<task>_test.csv`` files is one table, its split and task
taken from the file names (an ``eval_name`` column wins for the task).
"""

from __future__ import annotations

import ast
import csv
import functools
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from turnout.errors import DataError
from turnout.evaluation.loaders._common import (
    CARD_SHAPE,
    REQUIRED,
    WIDE_NAMES,
    DataWarning,
    _is_long,
    _pd,
    _rows_of,
    _Where,
)
from turnout.evaluation.loaders.canonical import from_long
from turnout.evaluation.table import RoutingTable

if TYPE_CHECKING:  # pandas is imported when a table is read, not with turnout.evaluation
    from pandas import DataFrame


def _csv_line(p: Path, k: int) -> int | None:
    """1-based line where data row ``k`` (from 0, after the header) starts; quoted fields may span lines."""
    try:
        with open(p, newline="", encoding="utf-8", errors="replace") as fh:
            reader, end, n = csv.reader(fh), 0, -2  # the header is record -1
            for rec in reader:
                start, end = end + 1, reader.line_num
                if rec:
                    n += 1
                    if n == k:
                        return start
    except (OSError, csv.Error):
        pass
    return None


def _wide_note(f: Path, r: int) -> str:
    if f.suffix.lower() in (".pkl", ".pickle"):
        return f" (DataFrame row {r}, counting from 0)"
    line = _csv_line(f, r)
    return f" (data row {r} counting from 0" + (f", line {line} of the file)" if line else ")")


def _unwrap(cell: Any) -> str | None:
    """One ``<model>|model_response`` cell as the answer text; None when empty.

    RouterBench writes each answer as the repr of a list of generations (``"['D\\n']"``): the
    first generation is the answer. A cell that is not such a list is taken as it is.
    """
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return None
    text = str(cell)
    if text.startswith("[") and text.endswith("]"):
        try:
            gens = ast.literal_eval(text)  # literals only: a cell cannot run code
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return text
        if isinstance(gens, list) and gens and all(isinstance(g, str) for g in gens):
            first: str = gens[0]
            return first
    return text


def _read_wide(f: Path) -> DataFrame:
    pd = _pd()
    if f.suffix.lower() in (".pkl", ".pickle"):
        try:
            df = pd.read_pickle(f)
        except Exception as exc:  # a cut or foreign pickle fails in many ways (UnpicklingError, EOFError, AttributeError)
            raise DataError(
                f"cannot read: {type(exc).__name__}: {exc}",
                file=str(f),
                fix="the pickle is cut short or not a pandas one: save it again with DataFrame.to_pickle",
            ) from exc
        if not isinstance(df, pd.DataFrame):
            raise DataError(
                f"the pickle holds a {type(df).__name__}, not a pandas DataFrame",
                file=str(f),
                fix="pickle the wide table with DataFrame.to_pickle",
            )
        return cast("DataFrame", df)  # checked just above (pd is imported lazily, so untyped here)
    try:
        table: DataFrame = pd.read_csv(f)
        return table
    except pd.errors.EmptyDataError as exc:
        raise DataError("the file holds no columns", file=str(f), fix="write the header and rows into it") from exc
    except (ValueError, OSError) as exc:  # pandas' ParserError is a ValueError
        raise DataError(
            f"cannot read: {exc}",
            file=str(f),
            fix="the CSV is cut short or malformed (e.g. a quoted field never closes): export it again",
        ) from exc


def _routerbench(p: Path, card: dict[str, dict[str, Any]], unused: list[str] | None) -> RoutingTable:
    pd = _pd()
    files = sorted(p.glob("*.csv")) if p.is_dir() else [p]
    frames, f_of, row_of, model_of = [], [], [], []  # per long row: which file, data row and model
    for fi, f in enumerate(files):
        df = _read_wide(f)
        if not p.is_dir() and _is_long(df.columns):  # a canonical long table saved as CSV or pickle
            return from_long(df, card, source=str(f), where=_rows_of(str(f), functools.partial(_wide_note, f)), unused=unused)
        df.columns = cols = [str(c) for c in df.columns]
        stem = f.stem
        task, split = stem, None
        for s in ("train", "test"):
            if stem.endswith("_" + s):
                task, split = stem[: -len(s) - 1], s
        scored = [c for c in cols if "|" not in c and (f"{c}|total_cost" in cols or f"{c}|model_response" in cols)]
        if not scored:
            raise DataError(
                "no model columns (need '<model>' and '<model>|total_cost')",
                file=str(f),
                column="<model>|total_cost",
                fix="export RouterBench's wide table with cost columns; a canonical long table needs "
                f"columns {', '.join(REQUIRED)}",
            )
        models = []
        for mname in scored:
            priced = all(card.get(mname, {}).get(k) is not None for k in ("input_per_mtok", "output_per_mtok"))
            if f"{mname}|total_cost" in cols:
                models.append(mname)
            elif priced:
                models.append(mname)
                warnings.warn(
                    f"{f}: model '{mname}' has no '{mname}|total_cost' column; its costs are estimated "
                    "from its models card prices",
                    DataWarning,
                    stacklevel=3,
                )
            else:
                warnings.warn(
                    f"{f}: model '{mname}' has scores but no '{mname}|total_cost' column and no prices in a "
                    "models card; it is left out",
                    DataWarning,
                    stacklevel=3,
                )
        if not models:
            raise DataError(
                "no model has a '<model>|total_cost' column or models card prices",
                file=str(f),
                fix=f"add the cost columns, or pass a models card (--models-card): {CARD_SHAPE}",
            )
        if "prompt" not in cols:
            raise DataError("missing column", file=str(f), column="prompt", fix="add the prompt column")
        if unused is not None:
            used = {"sample_id", "prompt", "eval_name", *models, *(f"{m}|total_cost" for m in models)}
            rest = [c for c in cols if c not in used]
            responses = [c for c in rest if c.endswith("|model_response")]
            unused.extend(
                [c for c in rest if c not in responses]
                + ([f"<model>|model_response ({len(responses)} columns)"] if responses else [])
            )
        ids = df["sample_id"].to_numpy() if "sample_id" in cols else np.arange(len(df)).astype(str)
        for mname in models:
            cost_col = f"{mname}|total_cost"
            frames.append(
                pd.DataFrame(
                    {
                        "prompt_id": ids,
                        "prompt": df["prompt"].to_numpy(),
                        "model": mname,
                        "score": df[mname].to_numpy(),
                        "cost_usd": df[cost_col].to_numpy() if cost_col in cols else np.full(len(df), np.nan),
                        "task": df["eval_name"].to_numpy() if "eval_name" in cols else task,
                        **({"split": split} if split else {}),
                        **({"response": [_unwrap(v) for v in df[resp]]} if (resp := f"{mname}|model_response") in cols else {}),
                    }
                )
            )
            f_of.append(np.full(len(df), fi))
            row_of.append(np.arange(len(df)))
            model_of.append(np.full(len(df), mname, dtype=object))
    long = pd.concat(frames, ignore_index=True)
    keep = long["score"].notna().to_numpy()  # an empty score cell: that model has no outcome on that prompt
    long = long[keep].reset_index(drop=True)
    f_at, row_at, model_at = (np.concatenate(a)[keep] for a in (f_of, row_of, model_of))

    def at(i: int, column: str | None) -> tuple[str, int | None, str | None, str]:
        f, mname, r = files[int(f_at[i])], str(model_at[i]), int(row_at[i])
        col = mname if column == "score" else f"{mname}|total_cost" if column == "cost_usd" else WIDE_NAMES.get(column or "")
        return str(f), r, col, _wide_note(f, r)

    fix = (
        "fill the '<model>|total_cost' cell, or give the model input_per_mtok/output_per_mtok in a models card "
        f"(models.json beside the table, or --models-card): {CARD_SHAPE}"
    )
    return from_long(long, card, source=str(p), where=_Where(at, no_cost_fix=fix))
