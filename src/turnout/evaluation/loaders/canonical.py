"""The canonical long table (JSONL, JSONL.gz, Parquet; also CSV, pickle or a JSON list holding its rows).

:func:`from_long` builds a :class:`RoutingTable` from canonical rows; the other loaders turn their
formats into such rows and call it, with a :class:`_Where` that points errors at their own files.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import warnings
import zlib
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from turnout.errors import DataError
from turnout.evaluation.loaders._common import (
    CARRIED,
    DEFAULT_OUTPUT_TOKENS,
    NO_SPLIT,
    NO_TASK,
    REQUIRED,
    DataWarning,
    _blank,
    _numbers,
    _pd,
    _rows_of,
    _Where,
)
from turnout.evaluation.table import RoutingTable
from turnout.tokens import estimate_tokens

if TYPE_CHECKING:  # pandas is imported when a table is read, not with turnout.evaluation
    from pandas import DataFrame


def _is_gzip(p: Path) -> bool:
    with open(p, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _read_long(p: Path) -> DataFrame:
    pd = _pd()
    if p.name.lower().endswith(".parquet"):
        try:
            table: DataFrame = pd.read_parquet(p)
            return table
        except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise DataError(
                f"cannot read: {exc}",
                file=str(p),
                fix="give a Parquet file (e.g. written by DataFrame.to_parquet); name a JSONL table .jsonl",
            ) from exc
    gz = _is_gzip(p)
    if p.name.lower().endswith(".gz") and not gz:
        warnings.warn(f"{p}: named .gz but not gzip-compressed; read as plain JSONL", DataWarning, stacklevel=3)
    try:
        df: DataFrame = pd.read_json(p, lines=True, compression="gzip" if gz else None)
    except (EOFError, OSError, zlib.error) as exc:  # a cut or corrupt gzip stream
        raise DataError(
            f"cannot read: {exc}", file=str(p), fix="the gzip file is cut short or corrupt: copy or compress it again"
        ) from exc
    except ValueError as exc:
        raise DataError(f"cannot read: {exc}", file=str(p), fix="write one JSON object per line") from exc
    if len(df) == 0 and len(df.columns) == 0:
        raise DataError("the file holds no rows", file=str(p), fix="write one JSON object per (prompt, model) line")
    return df


def _jsonl_line(p: Path, k: int) -> int | None:
    """1-based line of the ``k``-th record (pandas skips blank lines), None if it cannot be told."""
    try:
        with gzip.open(p, "rt", encoding="utf-8") if _is_gzip(p) else open(p, encoding="utf-8") as fh:
            n = -1
            for line_no, text in enumerate(fh, 1):
                n += bool(text.strip())
                if n == k:
                    return line_no
    except (OSError, EOFError, ValueError, zlib.error):
        pass
    return None


def _canonical(p: Path, card: dict[str, dict[str, Any]], unused: list[str] | None) -> RoutingTable:
    df = _read_long(p)
    if p.name.lower().endswith(".parquet"):
        where = _rows_of(str(p), lambda i: " (rows count from 0)")
    else:
        where = _rows_of(str(p), lambda i: f" (line {n} of the file)" if (n := _jsonl_line(p, i)) else "")
    return from_long(df, card, source=str(p), where=where, unused=unused)


def from_long(
    df: DataFrame, card: dict[str, dict[str, Any]], *, source: str, where: _Where | None = None, unused: list[str] | None = None
) -> RoutingTable:
    """Build a table from a long DataFrame with the canonical columns.

    ``where`` points errors at the user's file (default: the frame's own rows, from 0);
    ``unused``, when given, receives the frame's columns a canonical copy leaves out (``turnout data
    convert`` writes :data:`CARRIED`): token counts, latency, and ``response``, which the table
    does carry (``responses``, for cascades) but convert does not write.
    """
    pd = _pd()
    where = where or _rows_of(source)
    for col in REQUIRED:
        if col not in df.columns:
            raise DataError(
                "missing required column", file=source, column=col, fix=f"add '{col}' (required: {', '.join(REQUIRED)})"
            )
    if len(df) == 0:
        raise DataError("empty table", file=source, fix="give at least one (prompt, model) row")
    if unused is not None:
        unused.extend(str(c) for c in df.columns if c not in CARRIED)
    df, where = _drop_exact_repeats(df, where, source)
    for col in ("prompt_id", "model", "prompt"):
        blank = _blank(df[col])
        if blank.any():
            raise where.error(
                f"empty {col}",
                int(np.flatnonzero(blank)[0]),
                col,
                f"give every row a {col}" + (" (the text the models saw)" if col == "prompt" else ""),
            )
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
        warnings.warn(
            f"{source}: {int((texts > 1).sum())} prompt_id(s) carry different prompt texts in different rows "
            f"(first: {k}); the first row's text (and task, split) is used",
            DataWarning,
            stacklevel=3,
        )
    dup = pd.DataFrame({"p": pid, "m": mod}).duplicated(keep="first").to_numpy()
    if dup.any():
        d = int(np.flatnonzero(dup)[0])
        f = int(np.flatnonzero((pid == pid[d]) & (mod == mod[d]))[0])
        file, row, _, _ = where.at(d, None)
        other = where.at(f, None)[0]
        raise DataError(
            f"duplicate (prompt_id, model) = ({pid[d]}, {mod[d]}) in two rows that differ: "
            f"{where.text(f)}{'' if other == file else ' of ' + other} and {where.text(d)}",
            file=file,
            row=row,
            fix="keep one row per prompt and model",
        )
    _, first = np.unique(pid, return_index=True)
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
    cost = (
        _numbers(df, "cost_usd", where, "give cost_usd as a number (USD per answer)")
        if "cost_usd" in df.columns
        else np.full(len(df), np.nan)
    )
    estimated = False
    if np.isnan(cost).any():
        cost, estimated = _priced(df, cost, card, prompts, mod, where)
    badc = np.flatnonzero(~np.isfinite(cost) | (cost < 0))
    if badc.size:
        raise where.error(
            f"cost {cost[badc[0]]} is not a non-negative number", int(badc[0]), "cost_usd", "costs are USD per answer, 0 or more"
        )
    C[r, c] = cost
    return RoutingTable(
        prompt_ids=ids,
        prompts=[prompts[i] for i in order],
        models=models,
        scores=S,
        costs=C,
        tasks=_tasks(df, order, source),
        split=_splits(df, order, source),
        model_cards=card,
        source=source,
        cost_estimated=estimated,
        responses=_responses(df, r, c, (n, m)),
    )


def _responses(df: DataFrame, r: np.ndarray, c: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
    """The ``response`` column as an n × m object array (``None`` where a row has none), or None without any.

    An empty string stays an answer (the model said nothing); a JSON object or list (a structured
    answer) is kept as its JSON text, so every answer a signal reads is a string.
    """
    if "response" not in df.columns:
        return None
    values = df["response"]
    missing = values.isna().to_numpy()
    if missing.all():
        return None
    R = np.full(shape, None, dtype=object)
    R[r, c] = np.array(
        [
            None if gone else v if isinstance(v, str) else json.dumps(v) if isinstance(v, (dict, list)) else str(v)
            for v, gone in zip(values, missing)
        ],
        dtype=object,
    )
    return R


def _drop_exact_repeats(df: DataFrame, where: _Where, source: str) -> tuple[DataFrame, _Where]:
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
    warnings.warn(
        f"{source}: {int(repeat.sum())} row(s) repeat an earlier row in every column (first: "
        f"{where.text(r)} repeats {where.text(same)}); the repeats are dropped",
        DataWarning,
        stacklevel=4,
    )
    at = where.at
    return df.iloc[keep].reset_index(drop=True), dataclasses.replace(where, at=lambda i, c: at(int(keep[i]), c))


def _priced(
    df: DataFrame, cost: np.ndarray, card: dict[str, dict[str, Any]], prompts: np.ndarray, models: np.ndarray, where: _Where
) -> tuple[np.ndarray, bool]:
    """``cost`` with each missing entry priced from the card, and whether any count was estimated.

    Per row: the row's input/output token counts where it has them, else prompt chars / 4 input
    tokens and :data:`DEFAULT_OUTPUT_TOKENS` output tokens (estimated).
    """
    idx = np.flatnonzero(np.isnan(cost))
    counts: dict[str, np.ndarray] = {}
    for col in ("input_tokens", "output_tokens"):
        t = (_numbers(df, col, where, "give token counts as numbers") if col in df.columns else np.full(len(df), np.nan))[idx]
        neg = np.flatnonzero(~np.isnan(t) & (~np.isfinite(t) | (t < 0)))
        if neg.size:
            raise where.error(
                f"{col} {t[neg[0]]} is not a non-negative number", int(idx[neg[0]]), col, "token counts are 0 or more"
            )
        counts[col] = t
    est_in, est_out = np.isnan(counts["input_tokens"]), np.isnan(counts["output_tokens"])
    n_in = np.where(est_in, [estimate_tokens(prompts[i]) for i in idx], counts["input_tokens"])
    n_out = np.where(est_out, DEFAULT_OUTPUT_TOKENS, counts["output_tokens"])

    def price(key: str) -> np.ndarray:
        return np.array([card.get(models[i], {}).get(key) for i in idx], dtype=float)

    fill = (n_in * price("input_per_mtok") + n_out * price("output_per_mtok")) / 1e6
    if np.isnan(fill).any():
        i = int(idx[np.flatnonzero(np.isnan(fill))[0]])
        raise where.error(f"no cost for model '{models[i]}'", i, "cost_usd", where.no_cost_fix)
    out = cost.copy()
    out[idx] = fill
    return out, bool((est_in | est_out).any())


def _labels(df: DataFrame, col: str, order: np.ndarray) -> list[str | None] | None:
    """Per prompt (its first row) the value of ``col``, None where missing; None when there is no such column."""
    if col not in df.columns:
        return None
    values = df[col].iloc[order]
    return [None if b else str(v).strip() for v, b in zip(values, _blank(values))]


def _tasks(df: DataFrame, order: np.ndarray, source: str) -> list[str] | None:
    tasks = _labels(df, "task", order)
    if tasks is None or all(t is None for t in tasks):
        return None
    k = tasks.count(None)
    if k:
        warnings.warn(
            f"{source}: {k} of {len(tasks)} prompts have no task; they are put in one task named '{NO_TASK}'",
            DataWarning,
            stacklevel=3,
        )
    return [NO_TASK if t is None else t for t in tasks]


def _splits(df: DataFrame, order: np.ndarray, source: str) -> list[str] | None:
    labels = _labels(df, "split", order)
    if labels is None or all(s is None for s in labels):
        return None
    split = [NO_SPLIT if s is None else s.lower() for s in labels]  # TRAIN / Test are train / test
    other = Counter(s for s in split if s not in ("train", "test"))
    if other:
        warnings.warn(
            f"{source}: {sum(other.values())} of {len(split)} prompts have a split other than train/test: "
            + ", ".join(f"{v}={n}" for v, n in other.most_common())
            + "; wherever the split column is used (eval: when it has train and test prompts; train: when "
            "it has train prompts) they are in neither part: rename them train or test to use them",
            DataWarning,
            stacklevel=3,
        )
    return split
