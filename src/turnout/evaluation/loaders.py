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

import csv
import dataclasses
import gzip
import json
import math
import warnings
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from turnout.errors import DataError, MissingDependency
from turnout.evaluation.table import RoutingTable


class DataWarning(UserWarning):
    """A routing table loaded, but with something the user should know (the message says what was done)."""

#: assumed answer length when a row has neither cost nor an output token count (documented in docs/eval.md)
DEFAULT_OUTPUT_TOKENS = 256
REQUIRED = ("prompt_id", "prompt", "model", "score")
#: the long-table columns a RoutingTable keeps; others (token counts, responses, latency) are not carried
CARRIED = (*REQUIRED, "cost_usd", "task", "split")
#: task of a prompt that has none while others have one (routers group prompts by task *name*, so never None)
NO_TASK = "(no task)"
#: split of a prompt that has none while others have one; like any value but train/test it is in neither part
NO_SPLIT = "(no split)"
CARD_SHAPE = '{model: {"input_per_mtok": number, "output_per_mtok": number, ...}}'
LLM_SHAPE = '{model: {"input_price": number, "output_price": number, ...}}'
WIDE_NAMES = {"prompt_id": "sample_id", "prompt": "prompt", "task": "eval_name"}


def _pd():
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
    no_cost_fix: str = ("add cost_usd (or input_tokens/output_tokens) to the row, or give the model "
                        f"input_per_mtok/output_per_mtok in a models card (models.json beside the table, "
                        f"or --models-card): {CARD_SHAPE}")
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
        raise DataError(f"the models card must be {shape}; this one is a JSON {_json_kind(raw)}", file=file,
                        fix="write one object keyed by model name")
    for m, v in raw.items():
        if not isinstance(v, dict):
            raise DataError(f"the models card must be {shape}; model '{m}' maps to a JSON {_json_kind(v)}",
                            file=file, fix="give each model an object of its prices")
        for k in prices:
            x = v.get(k)
            if x is not None and (isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0):
                raise DataError(f"model '{m}': {k} is {x!r}, not a non-negative number (the card must be {shape})",
                                file=file, fix="write prices as numbers (USD per million tokens), not strings")
    return raw


def _json_kind(x: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(x), "number")


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
        raise DataError("folder holds neither RouterBench CSVs nor LLMRouter train.json/test.json", file=str(path),
                        fix="point at a table file")
    if name.endswith((".csv", ".pkl", ".pickle")):
        return "routerbench"
    if name.endswith(".json"):
        return "llmrouter"
    if name.endswith((".jsonl", ".jsonl.gz", ".parquet")):
        return "canonical"
    raise DataError("unknown table format", file=str(path),
                    fix="use .parquet, .jsonl, .jsonl.gz (canonical), .csv/.pkl (RouterBench) or .json (LLMRouter)")


def load_table(path: str | Path, *, models_card: str | Path | None = None, format: str | None = None,
               unused: list[str] | None = None) -> RoutingTable:
    """Load any supported routing table; raises :class:`DataError` naming the file, row/column and fix.

    ``unused``, when given, receives the names of the input's columns the table does not carry
    (token counts, responses, ...): ``turnout data convert`` reports them.
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


def _is_gzip(p: Path) -> bool:
    with open(p, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _read_long(p: Path):
    pd = _pd()
    if p.name.lower().endswith(".parquet"):
        try:
            return pd.read_parquet(p)
        except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise DataError(f"cannot read: {exc}", file=str(p),
                            fix="give a Parquet file (e.g. written by DataFrame.to_parquet); name a JSONL table .jsonl") from exc
    gz = _is_gzip(p)
    if p.name.lower().endswith(".gz") and not gz:
        warnings.warn(f"{p}: named .gz but not gzip-compressed; read as plain JSONL", DataWarning, stacklevel=3)
    try:
        df = pd.read_json(p, lines=True, compression="gzip" if gz else None)
    except (EOFError, OSError, zlib.error) as exc:  # a cut or corrupt gzip stream
        raise DataError(f"cannot read: {exc}", file=str(p),
                        fix="the gzip file is cut short or corrupt: copy or compress it again") from exc
    except ValueError as exc:
        raise DataError(f"cannot read: {exc}", file=str(p), fix="write one JSON object per line") from exc
    if len(df) == 0 and len(df.columns) == 0:
        raise DataError("the file holds no rows", file=str(p), fix="write one JSON object per (prompt, model) line")
    return df


def _jsonl_line(p: Path, k: int) -> int | None:
    """1-based line of the ``k``-th record (pandas skips blank lines), None if it cannot be told."""
    try:
        with (gzip.open(p, "rt", encoding="utf-8") if _is_gzip(p) else open(p, encoding="utf-8")) as fh:
            n = -1
            for line_no, text in enumerate(fh, 1):
                n += bool(text.strip())
                if n == k:
                    return line_no
    except (OSError, EOFError, ValueError, zlib.error):
        pass
    return None


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


def _canonical(p: Path, card: dict[str, dict[str, Any]], unused: list[str] | None) -> RoutingTable:
    df = _read_long(p)
    if p.name.lower().endswith(".parquet"):
        where = _rows_of(str(p), lambda i: " (rows count from 0)")
    else:
        where = _rows_of(str(p), lambda i: f" (line {n} of the file)" if (n := _jsonl_line(p, i)) else "")
    return from_long(df, card, source=str(p), where=where, unused=unused)


def _blank(values) -> np.ndarray:
    """Where a Series is missing (null, NaN) or only whitespace."""
    return (values.isna() | (values.astype(str).str.strip() == "")).to_numpy()


def _numbers(df, col: str, where: _Where, fix: str) -> np.ndarray:
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
    return num.to_numpy(dtype=float, na_value=np.nan)


def from_long(df, card: dict[str, dict[str, Any]], *, source: str, where: _Where | None = None,
              unused: list[str] | None = None) -> RoutingTable:
    """Build a table from a long DataFrame with the canonical columns.

    ``where`` points errors at the user's file (default: the frame's own rows, from 0);
    ``unused``, when given, receives the frame's columns the table does not carry.
    """
    pd = _pd()
    where = where or _rows_of(source)
    for col in REQUIRED:
        if col not in df.columns:
            raise DataError("missing required column", file=source, column=col,
                            fix=f"add '{col}' (required: {', '.join(REQUIRED)})")
    if len(df) == 0:
        raise DataError("empty table", file=source, fix="give at least one (prompt, model) row")
    if unused is not None:
        unused.extend(str(c) for c in df.columns if c not in CARRIED)
    df, where = _drop_exact_repeats(df, where, source)
    for col in ("prompt_id", "model", "prompt"):
        blank = _blank(df[col])
        if blank.any():
            raise where.error(f"empty {col}", int(np.flatnonzero(blank)[0]), col,
                              f"give every row a {col}" + (" (the text the models saw)" if col == "prompt" else ""))
    score = _numbers(df, "score", where, "give scores as numbers in [0, 1]")
    if np.isnan(score).any():
        raise where.error("missing score", int(np.flatnonzero(np.isnan(score))[0]), "score", where.missing_score_fix)
    bad = np.flatnonzero(~((score >= 0) & (score <= 1)))
    if bad.size:
        raise where.error(f"score {score[bad[0]]} outside [0, 1]", int(bad[0]), "score", "rescale scores to [0, 1]")
    pid = df["prompt_id"].astype(str).to_numpy()
    mod = df["model"].astype(str).to_numpy()
    texts = df.groupby(pid, sort=False)["prompt"].nunique()
    if (texts > 1).any():
        # real tables have this (14 RouterBench ids carry another text in one model's row): keep the first, say so
        k = texts.index[int(np.flatnonzero((texts > 1).to_numpy())[0])]
        warnings.warn(f"{source}: {int((texts > 1).sum())} prompt_id(s) carry different prompt texts in different rows "
                      f"(first: {k}); the first row's text (and task, split) is used", DataWarning, stacklevel=3)
    dup = pd.DataFrame({"p": pid, "m": mod}).duplicated(keep="first").to_numpy()
    if dup.any():
        r = int(np.flatnonzero(dup)[0])
        f = int(np.flatnonzero((pid == pid[r]) & (mod == mod[r]))[0])
        file, row, _, _ = where.at(r, None)
        other = where.at(f, None)[0]
        raise DataError(f"duplicate (prompt_id, model) = ({pid[r]}, {mod[r]}) in two rows that differ: "
                        f"{where.text(f)}{'' if other == file else ' of ' + other} and {where.text(r)}",
                        file=file, row=row, fix="keep one row per prompt and model")
    uniq, first = np.unique(pid, return_index=True)
    order = np.sort(first)  # keep file order of prompts
    ids = [pid[i] for i in order]
    row_of = {k: i for i, k in enumerate(ids)}
    models = list(dict.fromkeys(mod))
    col_of = {m: j for j, m in enumerate(models)}
    r = np.array([row_of[k] for k in pid])
    c = np.array([col_of[m] for m in mod])
    n, m = len(ids), len(models)
    S = np.full((n, m), np.nan)
    C = np.full((n, m), np.nan)
    S[r, c] = score
    prompts = df["prompt"].astype(str).to_numpy()
    cost = (_numbers(df, "cost_usd", where, "give cost_usd as a number (USD per answer)") if "cost_usd" in df.columns
            else np.full(len(df), np.nan))
    estimated = False
    if np.isnan(cost).any():
        cost, estimated = _priced(df, cost, card, prompts, mod, where)
    badc = np.flatnonzero(~np.isfinite(cost) | (cost < 0))
    if badc.size:
        raise where.error(f"cost {cost[badc[0]]} is not a non-negative number", int(badc[0]), "cost_usd",
                          "costs are USD per answer, 0 or more")
    C[r, c] = cost
    return RoutingTable(prompt_ids=ids, prompts=[prompts[i] for i in order], models=models, scores=S, costs=C,
                        tasks=_tasks(df, order, source), split=_splits(df, order, source), model_cards=card,
                        source=source, cost_estimated=estimated)


def _drop_exact_repeats(df, where: _Where, source: str):
    """``df`` without rows that repeat an earlier row in every column (said in a warning), and ``where`` for it."""
    pd = _pd()
    key = pd.DataFrame({"p": df["prompt_id"].astype(str), "m": df["model"].astype(str)})
    if not key.duplicated().any():
        return df, where
    repeat = df.astype(str).duplicated(keep="first").to_numpy()
    if not repeat.any():
        return df, where
    keep, r = np.flatnonzero(~repeat), int(np.flatnonzero(repeat)[0])
    same = int(np.flatnonzero(((key == key.iloc[r]).all(axis=1)).to_numpy())[0])
    warnings.warn(f"{source}: {int(repeat.sum())} row(s) repeat an earlier row in every column (first: "
                  f"{where.text(r)} repeats {where.text(same)}); the repeats are dropped", DataWarning, stacklevel=4)
    at = where.at
    return df.iloc[keep].reset_index(drop=True), dataclasses.replace(where, at=lambda i, c: at(int(keep[i]), c))


def _priced(df, cost: np.ndarray, card: dict[str, dict[str, Any]], prompts: np.ndarray, models: np.ndarray,
            where: _Where) -> tuple[np.ndarray, bool]:
    """``cost`` with each missing entry priced from the card, and whether any count was estimated.

    Per row: the row's input/output token counts where it has them, else prompt chars / 4 input
    tokens and :data:`DEFAULT_OUTPUT_TOKENS` output tokens (estimated).
    """
    idx = np.flatnonzero(np.isnan(cost))
    counts = {}
    for col in ("input_tokens", "output_tokens"):
        t = (_numbers(df, col, where, "give token counts as numbers") if col in df.columns
             else np.full(len(df), np.nan))[idx]
        neg = np.flatnonzero(~np.isnan(t) & (~np.isfinite(t) | (t < 0)))
        if neg.size:
            raise where.error(f"{col} {t[neg[0]]} is not a non-negative number", int(idx[neg[0]]), col,
                              "token counts are 0 or more")
        counts[col] = t
    est_in, est_out = np.isnan(counts["input_tokens"]), np.isnan(counts["output_tokens"])
    n_in = np.where(est_in, [math.ceil(len(prompts[i]) / 4) for i in idx], counts["input_tokens"])
    n_out = np.where(est_out, DEFAULT_OUTPUT_TOKENS, counts["output_tokens"])
    price = lambda key: np.array([card.get(models[i], {}).get(key) for i in idx], dtype=float)  # noqa: E731
    fill = (n_in * price("input_per_mtok") + n_out * price("output_per_mtok")) / 1e6
    if np.isnan(fill).any():
        i = int(idx[np.flatnonzero(np.isnan(fill))[0]])
        raise where.error(f"no cost for model '{models[i]}'", i, "cost_usd", where.no_cost_fix)
    out = cost.copy()
    out[idx] = fill
    return out, bool((est_in | est_out).any())


def _labels(df, col: str, order: np.ndarray) -> list[str | None] | None:
    """Per prompt (its first row) the value of ``col``, None where missing; None when there is no such column."""
    if col not in df.columns:
        return None
    values = df[col].iloc[order]
    return [None if b else str(v).strip() for v, b in zip(values, _blank(values))]


def _tasks(df, order: np.ndarray, source: str) -> list[str] | None:
    tasks = _labels(df, "task", order)
    if tasks is None or all(t is None for t in tasks):
        return None
    k = tasks.count(None)
    if k:
        warnings.warn(f"{source}: {k} of {len(tasks)} prompts have no task; they are put in one task named "
                      f"'{NO_TASK}'", DataWarning, stacklevel=3)
    return [NO_TASK if t is None else t for t in tasks]


def _splits(df, order: np.ndarray, source: str) -> list[str] | None:
    split = _labels(df, "split", order)
    if split is None or all(s is None for s in split):
        return None
    split = [NO_SPLIT if s is None else s.lower() for s in split]  # TRAIN / Test are train / test
    other = Counter(s for s in split if s not in ("train", "test"))
    if other:
        warnings.warn(f"{source}: {sum(other.values())} of {len(split)} prompts have a split other than train/test: "
                      + ", ".join(f"{v}={n}" for v, n in other.most_common())
                      + "; wherever the split column is used (eval: when it has train and test prompts; train: when "
                        "it has train prompts) they are in neither part: rename them train or test to use them",
                      DataWarning, stacklevel=3)
    return split


def _is_long(columns: Any) -> bool:
    """Columns of a canonical long table (saved as CSV, pickle or a JSON list of records)."""
    cols = {str(c) for c in columns}
    return {"prompt_id", "model", "score"} <= cols and not any("|" in c for c in cols)


def _read_wide(f: Path):
    pd = _pd()
    if f.suffix.lower() in (".pkl", ".pickle"):
        try:
            df = pd.read_pickle(f)
        except Exception as exc:  # a cut or foreign pickle fails in many ways (UnpicklingError, EOFError, AttributeError)
            raise DataError(f"cannot read: {type(exc).__name__}: {exc}", file=str(f),
                            fix="the pickle is cut short or not a pandas one: save it again with DataFrame.to_pickle") from exc
        if not isinstance(df, pd.DataFrame):
            raise DataError(f"the pickle holds a {type(df).__name__}, not a pandas DataFrame", file=str(f),
                            fix="pickle the wide table with DataFrame.to_pickle")
        return df
    try:
        return pd.read_csv(f)
    except pd.errors.EmptyDataError as exc:
        raise DataError("the file holds no columns", file=str(f), fix="write the header and rows into it") from exc
    except (ValueError, OSError) as exc:  # pandas' ParserError is a ValueError
        raise DataError(f"cannot read: {exc}", file=str(f),
                        fix="the CSV is cut short or malformed (e.g. a quoted field never closes): export it again") from exc


def _routerbench(p: Path, card: dict[str, dict[str, Any]], unused: list[str] | None) -> RoutingTable:
    pd = _pd()
    files = sorted(p.glob("*.csv")) if p.is_dir() else [p]
    frames, f_of, row_of, model_of = [], [], [], []  # per long row: which file, data row and model
    for fi, f in enumerate(files):
        df = _read_wide(f)
        if not p.is_dir() and _is_long(df.columns):  # a canonical long table saved as CSV or pickle
            return from_long(df, card, source=str(f), where=_rows_of(str(f), lambda i: _wide_note(f, i)), unused=unused)
        df.columns = cols = [str(c) for c in df.columns]
        stem = f.stem
        task, split = stem, None
        for s in ("train", "test"):
            if stem.endswith("_" + s):
                task, split = stem[: -len(s) - 1], s
        scored = [c for c in cols if "|" not in c and (f"{c}|total_cost" in cols or f"{c}|model_response" in cols)]
        if not scored:
            raise DataError("no model columns (need '<model>' and '<model>|total_cost')", file=str(f),
                            column="<model>|total_cost",
                            fix="export RouterBench's wide table with cost columns; a canonical long table needs "
                                f"columns {', '.join(REQUIRED)}")
        models = []
        for mname in scored:
            priced = all(card.get(mname, {}).get(k) is not None for k in ("input_per_mtok", "output_per_mtok"))
            if f"{mname}|total_cost" in cols:
                models.append(mname)
            elif priced:
                models.append(mname)
                warnings.warn(f"{f}: model '{mname}' has no '{mname}|total_cost' column; its costs are estimated "
                              "from its models card prices", DataWarning, stacklevel=3)
            else:
                warnings.warn(f"{f}: model '{mname}' has scores but no '{mname}|total_cost' column and no prices in a "
                              "models card; it is left out", DataWarning, stacklevel=3)
        if not models:
            raise DataError("no model has a '<model>|total_cost' column or models card prices", file=str(f),
                            fix=f"add the cost columns, or pass a models card (--models-card): {CARD_SHAPE}")
        if "prompt" not in cols:
            raise DataError("missing column", file=str(f), column="prompt", fix="add the prompt column")
        if unused is not None:
            used = {"sample_id", "prompt", "eval_name", *models, *(f"{m}|total_cost" for m in models)}
            rest = [c for c in cols if c not in used]
            responses = [c for c in rest if c.endswith("|model_response")]
            unused.extend([c for c in rest if c not in responses]
                          + ([f"<model>|model_response ({len(responses)} columns)"] if responses else []))
        ids = df["sample_id"].to_numpy() if "sample_id" in cols else np.arange(len(df)).astype(str)
        for mname in models:
            cost_col = f"{mname}|total_cost"
            frames.append(pd.DataFrame({
                "prompt_id": ids, "prompt": df["prompt"].to_numpy(), "model": mname, "score": df[mname].to_numpy(),
                "cost_usd": df[cost_col].to_numpy() if cost_col in cols else np.full(len(df), np.nan),
                "task": df["eval_name"].to_numpy() if "eval_name" in cols else task,
                **({"split": split} if split else {}),
            }))
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

    fix = ("fill the '<model>|total_cost' cell, or give the model input_per_mtok/output_per_mtok in a models card "
           f"(models.json beside the table, or --models-card): {CARD_SHAPE}")
    return from_long(long, card, source=str(p), where=_Where(at, no_cost_fix=fix))


def _read_json(f: Path, fix: str) -> Any:
    """The JSON document in ``f``; a DataError naming the file and ``fix`` when it is not JSON."""
    try:
        return json.loads(f.read_text())
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise DataError(f"not valid JSON: {exc}", file=str(f), fix=fix) from exc


def _llmrouter(p: Path, card: dict[str, dict[str, Any]], unused: list[str] | None) -> RoutingTable:
    pd = _pd()
    folder = p if p.is_dir() else p.parent
    files = [(folder / f"{s}.json", s) for s in ("train", "test")] if p.is_dir() else [(p, p.stem if p.stem in ("train", "test") else None)]
    loaded = [(f, split, _read_json(f, "give a JSON list of {question, scores}")) for f, split in files if f.exists()]
    for f, _, items in loaded:
        if not isinstance(items, list):
            raise DataError(f"the file holds a JSON {_json_kind(items)}; expected a JSON list of LLMRouter items "
                            "{question, scores: {model: score}} or of canonical rows {prompt_id, prompt, model, score, ...}",
                            file=str(f), fix="write the table as a JSON list (or as canonical .jsonl / .parquet)")
    if not p.is_dir() and loaded and loaded[0][2] and isinstance(loaded[0][2][0], dict) and _is_long(loaded[0][2][0]):
        f, _, items = loaded[0]  # canonical rows saved as a JSON array
        if not all(isinstance(it, dict) for it in items):
            i = next(i for i, it in enumerate(items) if not isinstance(it, dict))
            raise DataError(f"item {i} is a JSON {_json_kind(items[i])}, not a row object", file=str(f), row=i,
                            fix="give one {prompt_id, prompt, model, score, ...} object per item")
        return from_long(pd.DataFrame(items), card, source=str(f), unused=unused,
                         where=_rows_of(str(f), lambda i: f" (item {i} of the JSON list, counting from 0)"))
    llm = folder / "default_llm.json"
    if not card and llm.exists():
        raw = _check_card(_read_json(llm, f"write default_llm.json as {LLM_SHAPE}"), str(llm),
                          ("input_price", "output_price"), LLM_SHAPE)
        card = {m: {"input_per_mtok": v.get("input_price"), "output_per_mtok": v.get("output_price"),
                    "params": v.get("size"), "description": v.get("feature")} for m, v in raw.items()}
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
                    raise DataError(f"not valid JSON: {exc}", file=str(q),
                                    fix="give one {query, task_name} object per line, or remove the query file") from exc
                if isinstance(o, dict):
                    tasks.setdefault(o.get("query", ""), o.get("task_name"))
        for i, it in enumerate(items):
            if not isinstance(it, dict) or "question" not in it or not isinstance(it.get("scores"), dict):
                raise DataError("item lacks 'question' or 'scores' {model: score}", file=str(f), row=i,
                                fix="give {question, scores: {model: score}} (items count from 0)")
            # the same question may appear twice (train and test): ids are positional, not textual
            pid = f"{split or f.stem}.{i}"
            for mname, s in it["scores"].items():
                rows.append({"prompt_id": pid, "prompt": it["question"], "model": mname, "score": s,
                             "task": tasks.get(it["question"]) if isinstance(it["question"], str) else None,
                             **({"split": split} if split else {})})
                origin.append((str(f), i, str(mname)))
    if not rows:
        raise DataError("empty table", file=str(p), fix="give at least one item")

    def at(i: int, column: str | None) -> tuple[str, int | None, str | None, str]:
        f, item, mname = origin[i]
        return f, item, None, f" (item {item} of the JSON list counting from 0, model '{mname}')"

    return from_long(pd.DataFrame(rows), card, source=str(p), where=_Where(
        at, no_cost_fix=("LLMRouter files carry no costs: put default_llm.json (input_price/output_price per model) "
                         f"beside train.json, or pass a models card with --models-card: {CARD_SHAPE}"),
        missing_score_fix="give the model a number in that item's scores, or leave it out of them"))
