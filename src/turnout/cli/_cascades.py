"""``turnout eval``'s cascade options and report: cascades and fan-outs on tables that carry answers.

Kept apart from :mod:`turnout.cli.eval` so that command's other modes stay as they are:
:func:`add_arguments` adds the flags, :func:`options` turns them into
:class:`~turnout.evaluation.cascade_eval.CascadeOptions` (fitting and saving the
verifier when ``--save-verifier`` asks), :func:`report` prints the entries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def add_arguments(p: Any) -> None:
    """The cascade flags of ``turnout eval``."""
    p.add_argument(
        "--cascades",
        choices=["auto", "off"],
        default="auto",
        help="simulate cascades and fan-outs from the table's recorded answers (auto: when both splits "
        "carry answer texts; off: never)",
    )
    p.add_argument(
        "--cascade-router",
        default=None,
        metavar="ROUTER",
        help="the router that chooses per prompt among models and cascade / fan-out plans "
        "(cascade-ROUTER, fanout-ROUTER; default mlp, or knn without the ml extra; 'none' to skip)",
    )
    p.add_argument(
        "--verifier", metavar="VERIFIER.npz", help="use this trained verifier instead of fitting one on the training split"
    )
    p.add_argument(
        "--save-verifier",
        metavar="VERIFIER.npz",
        help="fit the verifier on the training split and save it here (for a gateway's cascade plan)",
    )


def check(args: Any) -> None:
    """Refuse flag combinations that would fail after the work, before any of it."""
    from turnout.errors import DataError

    given = [
        f
        for f, v in (
            ("--verifier", args.verifier),
            ("--save-verifier", args.save_verifier),
            ("--cascade-router", args.cascade_router),
        )
        if v
    ]
    if given and args.cascades == "off":
        raise DataError(f"{', '.join(given)} cannot go with --cascades off", fix="drop them, or --cascades off")
    if given and (args.artifact or args.repeats != 1):
        raise DataError(
            f"{', '.join(given)}: cascades are simulated on one train/test split only",
            fix="drop --artifact / --repeats, or the cascade flags",
        )
    if args.verifier and args.save_verifier:
        raise DataError("--verifier and --save-verifier: one verifier is given, the other fitted", fix="keep one of them")
    if args.verifier and not Path(args.verifier).exists():
        raise DataError(
            "verifier artifact not found",
            file=args.verifier,
            fix="train one with 'turnout eval TABLE --save-verifier verifier.npz'",
        )
    if args.save_verifier:
        out = Path(args.save_verifier)
        if not out.name.endswith(".npz"):
            raise DataError("the verifier must be saved as a .npz file", file=str(out), fix="name it e.g. verifier.npz")
        out.parent.mkdir(parents=True, exist_ok=True)


def _default_router() -> str:
    from turnout.routing.registry import available

    return "mlp" if available(["mlp"])[0] else "knn"


def options(args: Any, train: Any, test: Any, table: str, con: Any) -> Any:
    """The :class:`CascadeOptions` of this run, or None when no cascade is simulated (off, or no answers)."""
    from turnout.evaluation.cascade_eval import CascadeOptions, has_answers

    if args.cascades == "off":
        return None
    if not (has_answers(train) and has_answers(test)):
        if args.verifier or args.save_verifier or args.cascade_router:
            from turnout.errors import DataError

            raise DataError(
                "the table carries no answer texts, so there is no cascade to simulate",
                file=table,
                fix="use a table with a 'response' column (RouterBench's wide CSVs carry "
                "<model>|model_response), or drop the cascade flags",
            )
        return None
    router = args.cascade_router or _default_router()
    opts = CascadeOptions(router=None if router == "none" else router, seed=args.seed)
    if args.verifier:
        from turnout.routing.verifier import load_verifier

        opts.verifier, meta = load_verifier(args.verifier)
        con.print(f"cascades: verifier from {args.verifier} (trained on {meta.get('table', '?')})")
    elif args.save_verifier:
        from turnout.evaluation.verifier_data import fit_verifier
        from turnout.routing.verifier import save_verifier

        con.print(f"cascades: fitting the verifier on the {len(train)} training prompts' answers")
        opts.verifier = fit_verifier(train, seed=args.seed)
        save_verifier(
            opts.verifier, args.save_verifier, meta={"table": table, "split": "train", "n_prompts": len(train), "embedder": None}
        )
        con.print(
            f"wrote {args.save_verifier} ({opts.verifier.report.get('rows')} answers, cross-validated AUC "
            f"{opts.verifier.report.get('cv_auc', float('nan')):.3f})"
        )
    return opts


def render(out: dict[str, Any]) -> Any:
    """A rich Table of the ``cascades`` entries (the routers' columns, paired against the best router)."""
    from rich.table import Table

    from turnout.cli._ui import signed_interval

    t = Table(title="cascades and fan-outs (every call paid for; thresholds and plans chosen on train)")
    t.add_column("entry", justify="left", overflow="fold")
    for col in ("AIQ", "AIQ 95% CI", "vs best router", "gain vs hull", "max q", "q @ best cost", "cost frac"):
        t.add_column(col, justify="right", no_wrap=True)  # numbers are never cut: the names wrap instead

    def f(v: float | None) -> str:
        return "—" if v is None else f"{v:.4g}"

    def ci(v: list[float] | None) -> str:
        return "—" if not v else f"{v[0]:.3f}–{v[1]:.3f}"

    for name, r in out.get("cascades", {}).items():
        t.add_row(
            name,
            f(r["aiq"]),
            ci(r.get("aiq_ci")),
            signed_interval(r.get("aiq_vs_best_ci")),
            signed_interval(r.get("aiq_gain_ci")),
            f(r["max_quality"]),
            f(r["quality_at_best_single_cost"]),
            f(r["cost_fraction_to_match_best"]),
        )
    return t


def render_auc(acc: dict[str, Any]) -> Any:
    """A rich Table of each signal's AUC for 'the cheap model's answer is right', per task."""
    from rich.table import Table

    tasks = sorted({k for per in acc["auc"].values() for k in per if k not in ("all", "judged_share")})
    t = Table(title=f"acceptance signals: AUC for '{acc['cheap']}'s answer is right' (probe: {acc['probe']})")
    for col in ("signal", *tasks, "all", "judged"):
        t.add_column(col, justify="left" if col == "signal" else "right")

    def f(v: float | None) -> str:
        return "—" if v is None else f"{v:.3f}"

    for name, per in acc["auc"].items():
        t.add_row(name, *(f(per.get(k)) for k in (*tasks, "all")), f"{per['judged_share']:.0%}")
    return t


def lines(out: dict[str, Any]) -> list[str]:
    """The verdicts on the cascades: the best, whether it beats the best router, what AUC the goal would need."""
    cs, best = out.get("cascades", {}), out.get("best_cascade")
    if not best:
        return []
    r = cs[best]
    above = [n for n, e in cs.items() if e.get("aiq_vs_best_ci") and e["aiq_vs_best_ci"][0] > 0]
    head = (
        f"best cascade / fan-out: {best} (AIQ {r['aiq']:.4f}); above the best router "
        f"({out.get('best_router', '—')}) by a paired 95% CI above 0: {', '.join(above) or 'none'}"
    )
    out_lines = [head]
    acc = out.get("acceptance") or {}
    for row in acc.get("needed_auc", []):
        frac = row["cost_fraction_to_match_strong"].get("all")
        out_lines.append(
            f"a signal of AUC {row['auc']:.2f} on {acc['cheap']} -> {acc['strong']}: the strong model's "
            f"quality at {'never' if frac is None else f'{frac:.2f}'} of its cost; quality "
            f"{row['quality_at_half_strong_cost'] or float('nan'):.4f} at half its cost"
        )
    return out_lines


def report(con: Any, out: dict[str, Any]) -> None:
    """Print the cascade entries, the signals' AUCs and the verdicts (nothing when the run had none)."""
    from turnout.cli._ui import print_table

    if not out.get("cascades"):
        return
    print_table(con, render(out))
    if out.get("acceptance"):
        print_table(con, render_auc(out["acceptance"]))
    for line in lines(out):
        con.print(line, markup=False)
