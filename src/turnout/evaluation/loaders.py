"""Load routing tables from the canonical long format, RouterBench's wide CSVs and LLMRouter's JSON.

Cost of a cell, in order: ``cost_usd``; else tokens × card prices; else
estimated tokens × card prices (prompt ≈ chars / 4, output
:data:`DEFAULT_OUTPUT_TOKENS`) and the table says ``cost_estimated=True``.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from turnout.errors import DataError, MissingDependency
from turnout.evaluation.table import RoutingTable


class DataWarning(UserWarning):
    """A routing table loaded, but with something the user should know (the message says what was done)."""

#: assumed answer length when a table has neither cost nor token counts (documented in docs/eval.md)
DEFAULT_OUTPUT_TOKENS = 256
REQUIRED = ("prompt_id", "prompt", "model", "score")


def _pd():
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingDependency("pandas", "pandas", "loading routing tables") from exc
    return pd


def _card(path: Path, explicit: str | Path | None) -> dict[str, dict[str, Any]]:
    p = Path(explicit) if explicit else path.parent / "models.json" if path.is_file() else path / "models.json"
    if not p.exists():
        if explicit:
            raise DataError("models card not found", file=str(p), fix="pass an existing models.json")
        return {}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON: {exc}", file=str(p), fix="fix the models card JSON") from exc


def _est_cost(card: dict[str, Any], prompt: str, in_tok: float | None = None, out_tok: float | None = None) -> float:
    pin, pout = card.get("input_per_mtok"), card.get("output_per_mtok")
    if pin is None or pout is None:
        return math.nan
    i = in_tok if in_tok is not None else math.ceil(len(prompt) / 4)
    o = out_tok if out_tok is not None else DEFAULT_OUTPUT_TOKENS
    return (i * pin + o * pout) / 1e6


def detect_format(path: Path) -> str:
    """``canonical``, ``routerbench`` or ``llmrouter`` from the path's name and contents."""
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


def load_table(path: str | Path, *, models_card: str | Path | None = None, format: str | None = None) -> RoutingTable:
    """Load any supported routing table; raises :class:`DataError` naming the file, row/column and fix."""
    p = Path(path)
    if not p.exists():
        raise DataError("file not found", file=str(p), fix="check the path")
    fmt = format or detect_format(p)
    card = _card(p, models_card)
    if fmt == "canonical":
        return _canonical(p, card)
    if fmt == "routerbench":
        return _routerbench(p, card)
    if fmt == "llmrouter":
        return _llmrouter(p, card)
    raise DataError(f"unknown format '{fmt}'", file=str(p), fix="use canonical, routerbench or llmrouter")


def _read_long(p: Path):
    pd = _pd()
    try:
        if p.name.endswith(".parquet"):
            return pd.read_parquet(p)
        return pd.read_json(p, lines=True, compression="gzip" if p.name.endswith(".gz") else None)
    except ValueError as exc:
        raise DataError(f"cannot read: {exc}", file=str(p), fix="write one JSON object per line") from exc


def _canonical(p: Path, card: dict[str, dict[str, Any]]) -> RoutingTable:
    df = _read_long(p)
    return from_long(df, card, source=str(p))


def from_long(df, card: dict[str, dict[str, Any]], *, source: str) -> RoutingTable:
    """Build a table from a long DataFrame with the canonical columns."""
    for col in REQUIRED:
        if col not in df.columns:
            raise DataError("missing required column", file=source, column=col,
                            fix=f"add '{col}' (required: {', '.join(REQUIRED)})")
    if len(df) == 0:
        raise DataError("empty table", file=source, fix="give at least one (prompt, model) row")
    for col in ("prompt_id", "model", "prompt"):
        blank = (df[col].isna() | (df[col].astype(str).str.strip() == "")).to_numpy()
        if blank.any():
            raise DataError(f"empty {col}", file=source, row=int(np.flatnonzero(blank)[0]), column=col,
                            fix=f"give every row a {col}" + (" (the text the models saw)" if col == "prompt" else ""))
    score = df["score"].astype(float).to_numpy()
    if np.isnan(score).any():
        raise DataError("missing score", file=source, row=int(np.flatnonzero(np.isnan(score))[0]), column="score",
                        fix="drop the row: a model with no outcome for a prompt is simply not a row")
    bad = np.flatnonzero(~((score >= 0) & (score <= 1)))
    if bad.size:
        raise DataError(f"score {score[bad[0]]} outside [0, 1]", file=source, row=int(bad[0]), column="score",
                        fix="rescale scores to [0, 1]")
    texts = df.groupby(df["prompt_id"].astype(str), sort=False)["prompt"].nunique()
    if (texts > 1).any():
        # real tables have this (14 RouterBench ids carry another text in one model's row): keep the first, say so
        k = texts.index[int(np.flatnonzero((texts > 1).to_numpy())[0])]
        warnings.warn(f"{source}: {int((texts > 1).sum())} prompt_id(s) carry different prompt texts in different rows "
                      f"(first: {k}); the first row's text (and task, split) is used", DataWarning, stacklevel=3)
    dup = df.duplicated(["prompt_id", "model"], keep="first").to_numpy()
    if dup.any():
        r = int(np.flatnonzero(dup)[0])
        raise DataError(f"duplicate (prompt_id, model) = ({df['prompt_id'].iloc[r]}, {df['model'].iloc[r]})",
                        file=source, row=r, fix="keep one row per prompt and model")
    pid = df["prompt_id"].astype(str).to_numpy()
    uniq, first = np.unique(pid, return_index=True)
    order = np.sort(first)  # keep file order of prompts
    ids = [pid[i] for i in order]
    row_of = {k: i for i, k in enumerate(ids)}
    models = list(dict.fromkeys(df["model"].astype(str)))
    col_of = {m: j for j, m in enumerate(models)}
    r = np.array([row_of[k] for k in pid])
    c = np.array([col_of[m] for m in df["model"].astype(str)])
    n, m = len(ids), len(models)
    S = np.full((n, m), np.nan)
    C = np.full((n, m), np.nan)
    S[r, c] = score
    prompts = df["prompt"].astype(str).to_numpy()
    estimated = False
    if "cost_usd" in df.columns:
        cost = df["cost_usd"].astype(float).to_numpy()
    else:
        cost = np.full(len(df), np.nan)
    missing = np.isnan(cost)
    if missing.any():
        has_tok = "input_tokens" in df.columns and "output_tokens" in df.columns
        for i in np.flatnonzero(missing):
            mc = card.get(str(df["model"].iloc[i]), {})
            if has_tok and not (math.isnan(df["input_tokens"].iloc[i]) or math.isnan(df["output_tokens"].iloc[i])):
                cost[i] = _est_cost(mc, "", float(df["input_tokens"].iloc[i]), float(df["output_tokens"].iloc[i]))
            else:
                cost[i] = _est_cost(mc, prompts[i])
                estimated = True
    if np.isnan(cost).any():
        i = int(np.flatnonzero(np.isnan(cost))[0])
        raise DataError(f"no cost for model '{df['model'].iloc[i]}'", file=source, row=i, column="cost_usd",
                        fix="add cost_usd, or give the model input_per_mtok/output_per_mtok in models.json")
    badc = np.flatnonzero(~np.isfinite(cost) | (cost < 0))
    if badc.size:
        raise DataError(f"cost {cost[badc[0]]} is not a non-negative number", file=source, row=int(badc[0]),
                        column="cost_usd", fix="costs are USD per answer, 0 or more")
    C[r, c] = cost
    pick = lambda col: [str(v) for v in df[col].to_numpy()[order]] if col in df.columns else None  # noqa: E731
    return RoutingTable(prompt_ids=ids, prompts=[prompts[i] for i in order], models=models, scores=S, costs=C,
                        tasks=pick("task"), split=pick("split"), model_cards=card, source=source,
                        cost_estimated=estimated)


def _routerbench(p: Path, card: dict[str, dict[str, Any]]) -> RoutingTable:
    pd = _pd()
    files = sorted(p.glob("*.csv")) if p.is_dir() else [p]
    frames = []
    for f in files:
        df = pd.read_pickle(f) if f.suffix in (".pkl", ".pickle") else pd.read_csv(f)
        stem = f.stem
        task, split = stem, None
        for s in ("train", "test"):
            if stem.endswith("_" + s):
                task, split = stem[: -len(s) - 1], s
        models = [c for c in df.columns if "|" not in c and f"{c}|total_cost" in df.columns]
        if not models:
            raise DataError("no model columns (need '<model>' and '<model>|total_cost')", file=str(f),
                            column="<model>|total_cost", fix="export RouterBench's wide table with cost columns")
        if "prompt" not in df.columns:
            raise DataError("missing column", file=str(f), column="prompt", fix="add the prompt column")
        ids = df["sample_id"].astype(str) if "sample_id" in df.columns else pd.Series(range(len(df))).astype(str)
        for mname in models:
            frames.append(pd.DataFrame({
                "prompt_id": ids.to_numpy(), "prompt": df["prompt"].astype(str).to_numpy(), "model": mname,
                "score": df[mname].astype(float).to_numpy(), "cost_usd": df[f"{mname}|total_cost"].astype(float).to_numpy(),
                "task": df["eval_name"].astype(str).to_numpy() if "eval_name" in df.columns else task,
                **({"split": split} if split else {}),
            }))
    long = pd.concat(frames, ignore_index=True)
    long = long[~long["score"].isna()]
    return from_long(long, card, source=str(p))


def _llmrouter(p: Path, card: dict[str, dict[str, Any]]) -> RoutingTable:
    pd = _pd()
    folder = p if p.is_dir() else p.parent
    files = [(folder / f"{s}.json", s) for s in ("train", "test")] if p.is_dir() else [(p, p.stem if p.stem in ("train", "test") else None)]
    llm = folder / "default_llm.json"
    if not card and llm.exists():
        raw = json.loads(llm.read_text())
        card = {m: {"input_per_mtok": v.get("input_price"), "output_per_mtok": v.get("output_price"),
                    "params": v.get("size"), "description": v.get("feature")} for m, v in raw.items()}
    rows = []
    for f, split in files:
        if not f.exists():
            continue
        try:
            items = json.loads(f.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON: {exc}", file=str(f), fix="give a JSON list of {question, scores}") from exc
        tasks: dict[str, str] = {}
        q = folder / f"default_query_{split}.jsonl" if split else None
        if q is not None and q.exists():
            # some query files hold raw newlines inside strings: decode objects one after another
            text, pos, dec = q.read_text(), 0, json.JSONDecoder(strict=False)
            while pos < len(text):
                while pos < len(text) and text[pos].isspace():
                    pos += 1
                if pos >= len(text):
                    break
                o, pos = dec.raw_decode(text, pos)
                tasks.setdefault(o.get("query", ""), o.get("task_name", ""))
        for i, it in enumerate(items):
            if "question" not in it or "scores" not in it:
                raise DataError("item lacks 'question' or 'scores'", file=str(f), row=i, fix="give {question, scores: {model: score}}")
            # the same question may appear twice (train and test): ids are positional, not textual
            pid = f"{split or f.stem}.{i}"
            for mname, s in it["scores"].items():
                rows.append({"prompt_id": pid, "prompt": it["question"], "model": mname, "score": s,
                             "task": tasks.get(it["question"], ""), **({"split": split} if split else {})})
    if not rows:
        raise DataError("empty table", file=str(p), fix="give at least one item")
    return from_long(pd.DataFrame(rows), card, source=str(p))
