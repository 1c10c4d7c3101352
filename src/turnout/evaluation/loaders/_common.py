"""What every loader shares: the warning class, the constants, cell parsing and errors that point at the user's file."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from turnout.errors import DataError, MissingDependency

if TYPE_CHECKING:  # pandas is imported when a table is read, not with turnout.evaluation
    from pandas import DataFrame, Series


class DataWarning(UserWarning):
    """A routing table loaded, but with something the user should know (the message says what was done)."""


#: assumed answer length when a row has neither cost nor an output token count (documented in docs/eval.md)
DEFAULT_OUTPUT_TOKENS = 256
REQUIRED = ("prompt_id", "prompt", "model", "score")
#: the long-table columns ``turnout data convert`` writes; others (token counts, latency, responses) it leaves out
#: (responses are read into ``RoutingTable.responses`` for cascades, but not written)
CARRIED = (*REQUIRED, "cost_usd", "task", "split")
#: task of a prompt that has none while others have one (routers group prompts by task *name*, so never None)
NO_TASK = "(no task)"
#: split of a prompt that has none while others have one; like any value but train/test it is in neither part
NO_SPLIT = "(no split)"
CARD_SHAPE = '{model: {"input_per_mtok": number, "output_per_mtok": number, ...}}'
LLM_SHAPE = '{model: {"input_price": number, "output_price": number, ...}}'
WIDE_NAMES = {"prompt_id": "sample_id", "prompt": "prompt", "task": "eval_name"}


def _pd() -> ModuleType:
    """The pandas module, imported on first use (a MissingDependency naming the extra without it)."""
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingDependency("pandas", "pandas", "loading routing tables") from exc
    return pd


@dataclasses.dataclass(frozen=True)
class _Where:
    """Points long-frame rows at the user's file, with the fixes that fit its format.

    ``at(i, column)`` maps long-frame row ``i`` and canonical ``column`` to (file, row, column,
    note): the row and column as the user's file has them, and a note (how rows are counted,
    which model) that ends the message.
    """

    at: Callable[[int, str | None], tuple[str, int | None, str | None, str]]
    no_cost_fix: str = (
        "add cost_usd (or input_tokens/output_tokens) to the row, or give the model "
        f"input_per_mtok/output_per_mtok in a models card (models.json beside the table, "
        f"or --models-card): {CARD_SHAPE}"
    )
    missing_score_fix: str = "drop the row: a model with no outcome for a prompt is simply not a row"

    def error(self, message: str, i: int, column: str | None, fix: str) -> DataError:
        file, row, col, note = self.at(i, column)
        return DataError(message + note, file=file, row=row, column=col, fix=fix)

    def text(self, i: int) -> str:
        """Row ``i`` in words, for a message that names another row too."""
        _, row, _, note = self.at(i, None)
        return f"row {row}{note}"


def _rows_of(source: str, note: Callable[[int], str] = lambda i: "") -> _Where:
    """A table whose long-frame rows are the file's rows, in order."""
    return _Where(lambda i, c: (source, i, c, note(i)))


def _card(path: Path, explicit: str | Path | None) -> dict[str, dict[str, Any]]:
    p = Path(explicit) if explicit else path.parent / "models.json" if path.is_file() else path / "models.json"
    if not p.exists():
        if explicit:
            raise DataError("models card not found", file=str(p), fix="pass an existing models.json")
        return {}
    raw = _read_json(p, f"write the models card as {CARD_SHAPE}")
    return _check_card(raw, str(p), ("input_per_mtok", "output_per_mtok"), CARD_SHAPE)


def _check_card(raw: Any, file: str, prices: tuple[str, str], shape: str) -> dict[str, dict[str, Any]]:
    """``raw`` when it is ``shape`` (prices numbers ≥ 0, or absent/null), else a DataError naming the card file."""
    if not isinstance(raw, dict):
        raise DataError(
            f"the models card must be {shape}; this one is a JSON {_json_kind(raw)}",
            file=file,
            fix="write one object keyed by model name",
        )
    for m, v in raw.items():
        if not isinstance(v, dict):
            raise DataError(
                f"the models card must be {shape}; model '{m}' maps to a JSON {_json_kind(v)}",
                file=file,
                fix="give each model an object of its prices",
            )
        for k in prices:
            x = v.get(k)
            if x is not None and (isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0):
                raise DataError(
                    f"model '{m}': {k} is {x!r}, not a non-negative number (the card must be {shape})",
                    file=file,
                    fix="write prices as numbers (USD per million tokens), not strings",
                )
    return raw


def _json_kind(x: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(x), "number")


def _blank(values: Series) -> np.ndarray:
    """Where a Series is missing (null, NaN) or only whitespace."""
    blank: np.ndarray = (values.isna() | (values.astype(str).str.strip() == "")).to_numpy()
    return blank


def _numbers(df: DataFrame, col: str, where: _Where, fix: str) -> np.ndarray:
    """``df[col]`` as floats, NaN where missing; a value that is there but is not a number is a DataError."""
    pd = _pd()
    raw = df[col]
    try:
        num = pd.to_numeric(raw, errors="coerce")
    except (TypeError, ValueError):  # lists or dicts in cells: not numbers either
        num = pd.to_numeric(raw.map(lambda v: v if isinstance(v, (int, float, str)) else None), errors="coerce")
    bad = np.flatnonzero((num.isna() & raw.notna()).to_numpy())
    if bad.size:
        raise where.error(f"{col} {raw.iloc[int(bad[0])]!r} is not a number", int(bad[0]), col, fix)
    values: np.ndarray = num.to_numpy(dtype=float, na_value=np.nan)
    return values


def _is_long(columns: Any) -> bool:
    """Columns of a canonical long table (saved as CSV, pickle or a JSON list of records)."""
    cols = {str(c) for c in columns}
    return {"prompt_id", "model", "score"} <= cols and not any("|" in c for c in cols)


def _read_json(f: Path, fix: str) -> Any:
    """The JSON document in ``f``; a DataError naming the file and ``fix`` when it is not JSON."""
    try:
        return json.loads(f.read_text())
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise DataError(f"not valid JSON: {exc}", file=str(f), fix=fix) from exc
