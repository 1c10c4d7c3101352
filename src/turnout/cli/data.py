"""``turnout data info|convert``: inspect a routing table, or rewrite it in the canonical long format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from turnout.errors import DataError

#: output extensions ``convert`` can write, canonical long format
WRITABLE = (".parquet", ".jsonl", ".jsonl.gz")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("data", help="inspect and convert routing tables")
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    info = sub.add_parser("info", help="prompts, models, per-model quality/cost/coverage, oracle, splits, tasks")
    info.add_argument("table")
    info.add_argument("--models-card", help="models.json with per-model prices (default: beside the table)")
    info.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    info.set_defaults(func=run_info)

    conv = sub.add_parser("convert", help="any supported format -> canonical .parquet, .jsonl or .jsonl.gz")
    conv.add_argument("src")
    conv.add_argument("out", help="output file; its extension picks the format (.parquet, .jsonl, .jsonl.gz)")
    conv.add_argument("--models-card", help="models.json with per-model prices (default: beside the table)")
    conv.set_defaults(func=run_convert)


def run_info(args: Any) -> int:
    from turnout.evaluation.loaders import load_table

    table = load_table(args.table, models_card=args.models_card)
    s = table.summary()
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    from rich.table import Table

    from turnout.cli._ui import console

    f = lambda v: "—" if v is None else f"{v:.4g}"  # noqa: E731
    t = Table(
        title=f"{s['source']}: {s['prompts']} prompts × {s['models']} models"
        + (" (costs partly ESTIMATED from assumed token counts)" if s["cost_estimated"] else "")
    )
    t.add_column("model", overflow="fold")
    for col in ("mean quality", "mean cost USD", "coverage"):
        t.add_column(col, justify="right", no_wrap=True)
    for m, v in s["per_model"].items():
        t.add_row(m, f(v["quality"]), f(v["cost"]), f"{v['coverage']:.1%}")
    t.add_row("oracle", f(s["oracle"]["quality"]), f(s["oracle"]["cost"]), f"{s['oracle']['coverage']:.1%}")
    con = console()
    con.print(t)
    for key in ("splits", "tasks"):
        counts = s[key]
        con.print(f"{key}: " + ("none" if not counts else ", ".join(f"{k}={v}" for k, v in counts.items())))
    con.print(f"cost estimated: {'yes' if s['cost_estimated'] else 'no'}")
    return 0


def _out_kind(out: Path) -> str:
    name = out.name.lower()
    for ext in (".jsonl.gz", ".jsonl", ".parquet"):  # longest first
        if name.endswith(ext):
            return ext
    raise DataError("unknown output extension", file=str(out), fix=f"name the output with one of: {', '.join(WRITABLE)}")


def table_rows(table: Any) -> dict[str, list[Any]]:
    """Columns of the canonical long table: one row per observed (prompt, model) cell."""
    from turnout.evaluation.loaders import NO_SPLIT, NO_TASK

    i, j = np.nonzero(~np.isnan(table.scores))
    cols: dict[str, list[Any]] = {
        "prompt_id": [table.prompt_ids[k] for k in i],
        "prompt": [table.prompts[k] for k in i],
        "model": [table.models[k] for k in j],
        "score": table.scores[i, j].astype(float).tolist(),
        "cost_usd": table.costs[i, j].astype(float).tolist(),
    }
    # the loader's placeholders for a missing task / split are written back as missing (null)
    if table.tasks is not None:
        cols["task"] = [None if table.tasks[k] == NO_TASK else table.tasks[k] for k in i]
    if table.split is not None:
        cols["split"] = [None if table.split[k] == NO_SPLIT else table.split[k] for k in i]
    return cols


def write_table(table: Any, out: str | Path) -> int:
    """Write ``table`` in the canonical long format chosen by ``out``'s extension; returns the row count."""
    out = Path(out)
    kind = _out_kind(out)
    cols = table_rows(table)
    n = len(cols["prompt_id"])
    if not out.parent.exists():
        raise DataError("output folder does not exist", file=str(out.parent), fix="create it first")
    if kind == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:  # pragma: no cover - depends on the install
            from turnout.errors import MissingDependency

            raise MissingDependency("pyarrow", "eval", "writing Parquet tables") from exc
        pq.write_table(pa.table(cols), out)
    else:
        import gzip

        opener = gzip.open if kind == ".jsonl.gz" else open
        keys = list(cols)
        with opener(out, "wt", encoding="utf-8") as fh:  # type: ignore[operator]
            for r in range(n):
                fh.write(json.dumps({k: cols[k][r] for k in keys}) + "\n")
    return n


def run_convert(args: Any) -> int:
    from turnout.evaluation.loaders import load_table

    out = Path(args.out)
    _out_kind(out)  # fail on a bad extension before loading a large table
    if out.exists() and out.resolve() == Path(args.src).resolve():
        raise DataError(
            "the output is the input file: converting would overwrite it", file=str(out), fix="name another output file"
        )
    unused: list[str] = []
    table = load_table(args.src, models_card=args.models_card, unused=unused)
    n = write_table(table, out)
    note = " (some costs were ESTIMATED from assumed token counts and are written as cost_usd)" if table.cost_estimated else ""
    print(f"wrote {n} rows ({len(table)} prompts × {len(table.models)} models) to {out}{note}")
    if unused:
        # a RoutingTable keeps only the canonical columns below; say what the output lacks rather than drop it silently
        kept = [
            "prompt_id",
            "prompt",
            "model",
            "score",
            "cost_usd",
            *(["task"] if table.tasks is not None else []),
            *(["split"] if table.split is not None else []),
        ]
        print(f"not carried (the output has only {', '.join(kept)}): {', '.join(dict.fromkeys(unused))}")
    return 0
