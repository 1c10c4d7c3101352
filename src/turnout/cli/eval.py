"""``turnout eval TABLE``: fit routers on train, sweep λ on test, print metrics and write JSON (and a plot)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from turnout.cli import _cascades
from turnout.cli._ui import signed_interval
from turnout.evaluation.runner import BOOTSTRAP
from turnout.evaluation.splits import drop_seen_prompts, split_table

#: every built-in router that needs no configuration (``prior`` needs a config, so it is left out)
DEFAULT_ROUTERS = "random,best-single,cheapest,knn,mlp,mf,bt,graph,profile,ensemble"

__all__ = ["DEFAULT_ROUTERS", "register", "render_table", "run", "split_table"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("eval", help="train and compare routers on a routing table")
    p.add_argument("table")
    p.add_argument("--test", help="a separate test table (else the split column, else a random split)")
    p.add_argument("--test-fraction", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--keep-seen",
        action="store_true",
        help="keep test prompts whose text is also in train (by default they are dropped and counted)",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=None,
        help=f"test resamples for each AIQ's 95%% interval (default {BOOTSTRAP}, or 0 with --repeats; 0 = off)",
    )
    p.add_argument(
        "--routers",
        help=f"comma-separated router names (default: {DEFAULT_ROUTERS}, less those whose optional packages are not installed)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        metavar="N",
        help="run on N seeded random splits (seeds --seed, --seed+1, ...; the table's split column is "
        "not used) and report each metric's mean and spread, with corrected resampled t intervals "
        "of the differences between routers (default 1: one split)",
    )
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="ROUTER.K=V",
        help="a parameter of one router of the run, repeatable (e.g. --param knn.k=50; values parsed as int, float, bool or str)",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL=ROUTER",
        help="also run ROUTER under the name LABEL, repeatable, to compare settings paired on the same "
        "split (e.g. --variant knn50=knn --param knn50.k=50)",
    )
    p.add_argument("--embedder", default="minilm", choices=["minilm", "hashing"])
    p.add_argument(
        "--models-card", help="models.json with per-model prices, for tables without costs (default: beside each table)"
    )
    p.add_argument(
        "--artifact",
        action="append",
        default=[],
        metavar="ROUTER.npz",
        help="evaluate this trained router (repeatable) on every prompt of TABLE, fitting nothing; "
        "each is embedded with its own embedder",
    )
    p.add_argument("--json", dest="json_out", help="write the result as JSON here (schema: docs/eval.md)")
    p.add_argument("--plot", dest="plot_out", help="write a cost/quality plot (PNG) here; needs matplotlib")
    _cascades.add_arguments(p)
    p.set_defaults(func=run)


def render_table(out: dict[str, Any], title: str) -> Any:
    """A rich Table of a ``run_eval`` result: one row per router, then best single, single-model hull, oracle."""
    from rich.table import Table

    two = any("apgr" in r for r in out["routers"].values())
    t = Table(title=title)
    cols = [
        "router",
        "AIQ",
        "AIQ 95% CI",
        "gain vs hull",
        "max q",
        "q @ best cost",
        "cost frac",
        "in-task AUC",
        "fit s",
        "p50 ms",
    ]
    for col in cols + (["APGR", "CPT50", "CPT80"] if two else []):
        if col == "router":
            t.add_column(col, justify="left", overflow="fold")
        else:  # numbers are never cut: on a narrow terminal the router names wrap instead
            t.add_column(col, justify="right", no_wrap=True)
    f = lambda v: "—" if v is None else f"{v:.4g}"  # noqa: E731
    ci = lambda v: "—" if not v else f"{v[0]:.3f}–{v[1]:.3f}"  # noqa: E731
    for name, r in out["routers"].items():
        extra = [f(r.get("apgr")), f(r.get("cpt50")), f(r.get("cpt80"))] if two else []
        t.add_row(
            name,
            f(r["aiq"]),
            ci(r.get("aiq_ci")),
            signed_interval(r.get("aiq_gain_ci")),
            f(r["max_quality"]),
            f(r["quality_at_best_single_cost"]),
            f(r["cost_fraction_to_match_best"]),
            f(r.get("within_task_auc")),
            f(r["fit_s"]),
            f(r["decision_ms_p50"]),
            *extra,
        )
    b = out["best_single"]
    pad = [""] * (3 if two else 0)
    t.add_row(f"best single ({b['model']})", "", "", "", f(b["quality"]), f(b["quality"]), "1", "", "", "", *pad)
    t.add_row(
        "single-model hull", f(out["single_models_aiq"]), ci(out.get("single_models_aiq_ci")), "", "", "", "", "", "", "", *pad
    )
    labels = {"task_means": "task means (true task, train)", "task_means_test": "task means (true task, test: peeks)"}
    for key, r in out.get("references", {}).items():
        t.add_row(
            labels.get(key, key),
            f(r["aiq"]),
            "",
            "",
            f(r["max_quality"]),
            f(r["quality_at_best_single_cost"]),
            f(r["cost_fraction_to_match_best"]),
            "",
            "",
            "",
            *pad,
        )
    t.add_row("oracle", "", "", "", f(out["oracle"]["quality"]), "", "", "", "", "", *pad)
    return t


def comparison_lines(out: dict[str, Any]) -> list[str]:
    """What the paired bootstrap says (``run_eval``'s ``aiq_gain_ci``, ``aiq_vs_best_ci``, ``aiq_vs_task_means_ci``).

    Empty when the run had no resamples (``--bootstrap 0``).
    """
    best = out.get("best_router")
    if best is None:
        return []
    rs = out["routers"]

    def names(key: str, above: bool) -> str:
        hit = [n for n, r in rs.items() if r.get(key) and (r[key][0] > 0 if above else r[key][1] >= 0)]
        return ", ".join(hit) or "none"

    lines = [
        f"best AIQ: {best} ({rs[best]['aiq']:.4f}); not told apart from it by this test set "
        f"(paired 95% CI of the AIQ difference reaches 0): {names('aiq_vs_best_ci', above=False)}",
        f"above the single-model hull (paired 95% CI of the gain above 0): {names('aiq_gain_ci', above=True)}",
    ]
    if any("aiq_vs_task_means_ci" in r for r in rs.values()):
        lines.append(
            "above the task-means line (true task, train), so using signal within tasks "
            f"(paired 95% CI above 0): {names('aiq_vs_task_means_ci', above=True)}"
        )
    return lines


def run(args: Any) -> int:
    from turnout.cli._ui import console, runnable
    from turnout.embed import create_embedder
    from turnout.evaluation.loaders import load_table
    from turnout.evaluation.runner import run_eval
    from turnout.routing.registry import router_names

    check_options(args)
    _cascades.check(args)
    if args.artifact:
        return _run_artifacts(args)
    routers = [r for r in (args.routers or DEFAULT_ROUTERS).split(",") if r]
    unknown = [r for r in routers if r not in router_names()]
    if unknown:
        from turnout.errors import RoutingError

        raise RoutingError(f"unknown router(s) {', '.join(unknown)}; choose from: {', '.join(router_names())}")
    if not args.routers:  # the default list: leave out what cannot run here, and say so (named routers must run)
        routers = runnable(routers, console())
    variants = parse_variants(args.variant, routers)
    routers += list(variants)
    params = parse_router_params(args.param, routers, variants)
    if args.repeats != 1:
        return _run_repeats(args, routers, variants, params)
    table = load_table(args.table, models_card=args.models_card)
    if args.test:
        train, test = table, load_table(args.test, models_card=args.models_card)
    else:
        train, test = split_table(table, args.test_fraction, args.seed)
    dropped = 0
    if not args.keep_seen:
        test, dropped = drop_seen_prompts(train, test)
    emb = create_embedder(args.embedder, threads=os.cpu_count() or 1)  # a batch job: use every core
    Xtr, Xte = emb.embed(train.prompts), emb.embed(test.prompts)
    con = console()
    cascades = _cascades.options(args, train, test, str(args.table), con)
    out = run_eval(
        train,
        test,
        Xtr,
        Xte,
        routers,
        table=str(args.table),
        bootstrap=_bootstrap(args),
        seed=args.seed,
        router_params=params,
        variants=variants,
        cascades=cascades,
    )
    out["test_prompts_seen_in_train_dropped"] = dropped
    if params or variants:
        out["router_params"] = params
        out["variants"] = variants
    _report(con, render_table(out, f"{args.table}: {len(train)} train / {len(test)} test"), comparison_lines(out), out)
    _cascades.report(con, out)
    if dropped:
        con.print(f"dropped {dropped} test prompt(s) whose text is also in train (--keep-seen keeps them)")
    if out.get("models_left_out"):
        con.print(f"left out (in the test table, not in training): {', '.join(out['models_left_out'])}")
    _write_outputs(args, out)
    return 0


def _bootstrap(args: Any) -> int:
    """``--bootstrap``, else its default for one split."""
    return BOOTSTRAP if args.bootstrap is None else args.bootstrap


def _run_repeats(args: Any, routers: list[str], variants: dict[str, str], params: dict[str, dict[str, Any]]) -> int:
    """``turnout eval TABLE --repeats N``: the routers on N random splits, summarised (evaluation.repeats)."""
    from turnout.cli._ui import console
    from turnout.embed import create_embedder
    from turnout.errors import DataError
    from turnout.evaluation.loaders import load_table
    from turnout.evaluation.repeats import run_repeated

    if args.test:
        raise DataError(
            "--repeats draws its own splits of TABLE, so it cannot go with --test",
            fix="drop --test (or --repeats), or pass one table holding both",
        )
    table = load_table(args.table, models_card=args.models_card)
    con = console()
    if table.split is not None and len(set(table.split)) > 1:
        con.print(f"--repeats: the table's split column is not used; {args.repeats} random splits are drawn")
    X = create_embedder(args.embedder, threads=os.cpu_count() or 1).embed(table.prompts)
    out = run_repeated(
        table,
        X,
        routers,
        repeats=args.repeats,
        test_fraction=args.test_fraction,
        seed=args.seed,
        keep_seen=args.keep_seen,
        bootstrap=args.bootstrap or 0,
        router_params=params,
        variants=variants,
        table_name=str(args.table),
    )
    if params or variants:
        out["router_params"], out["variants"] = params, variants
    _report(
        con,
        render_repeats(
            out,
            f"{args.table}: {args.repeats} random splits, ~{int(np.mean(out['n_train']))} "
            f"train / ~{int(np.mean(out['n_test']))} test each",
        ),
        repeats_lines(out),
        out,
    )
    from turnout.evaluation.plot import plot_repeats  # matplotlib itself is imported only to draw

    _write_outputs(args, out, plot_repeats)
    return 0


def render_repeats(out: dict[str, Any], title: str) -> Any:
    """A rich Table of a ``run_repeated`` result: one row per router, then the hull, task line and oracle."""
    from rich.table import Table

    t = Table(title=title)
    for col in ("router", "AIQ mean", "sd", "min–max", "vs best (95% CI)", "vs hull (95% CI)", "max q", "cost frac", "wins"):
        t.add_column(
            col,
            justify="left" if col == "router" else "right",
            overflow="fold" if col == "router" else "ellipsis",
            no_wrap=col != "router",
        )
    f = lambda v: "—" if v is None else f"{v:.4f}"  # noqa: E731
    n = out["repeats"]
    for name, r in out["routers"].items():
        a = r["aiq"]
        vs_best = signed_interval(r["aiq_vs_best"]["ci"]) if "aiq_vs_best" in r else "(best)"
        frac = r.get("cost_fraction_to_match_best", {"mean": None, "n": 0})
        frac_s = "—" if frac["mean"] is None else f"{frac['mean']:.3f} ({frac['n']}/{n})"
        t.add_row(
            name,
            f(a["mean"]),
            f(a["sd"]),
            f"{a['min']:.3f}–{a['max']:.3f}",
            vs_best,
            signed_interval(r["aiq_gain"]["ci"]),
            f(r["max_quality"]["mean"]),
            frac_s,
            f"{r['wins']}/{n}",
        )
    h = out["single_models_aiq"]
    t.add_row(
        "single-model hull",
        f(h["mean"]),
        f(h["sd"]),
        f"{h['min']:.3f}–{h['max']:.3f}",
        "",
        "",
        f(out["best_single_quality"]["mean"]),
        "",
        "",
    )
    if "task_means_aiq" in out:
        tm = out["task_means_aiq"]
        t.add_row(
            "task means (true task, train)", f(tm["mean"]), f(tm["sd"]), f"{tm['min']:.3f}–{tm['max']:.3f}", "", "", "", "", ""
        )
    t.add_row("oracle", "", "", "", "", "", f(out["oracle_quality"]["mean"]), "", "")
    return t


def repeats_lines(out: dict[str, Any]) -> list[str]:
    """The verdicts of a ``run_repeated`` result, from its corrected resampled t intervals."""
    best, rs = out.get("best_router"), out["routers"]
    if best is None:
        return []

    def names(key: str, above: bool) -> str:
        hit = [n for n, r in rs.items() if r.get(key, {}).get("ci") and (r[key]["ci"][0] > 0 if above else r[key]["ci"][1] >= 0)]
        return ", ".join(hit) or "none"

    lines = [
        f"best mean AIQ: {best} ({rs[best]['aiq']['mean']:.4f}); not told apart from it over these splits "
        f"(corrected 95% CI of the difference reaches 0): {names('aiq_vs_best', above=False)}",
        f"above the single-model hull (corrected 95% CI above 0): {names('aiq_gain', above=True)}",
    ]
    if "task_means_aiq" in out:
        lines.append(f"above the task-means line (corrected 95% CI above 0): {names('aiq_vs_task_means', above=True)}")
    return lines


def parse_variants(items: list[str], routers: list[str]) -> dict[str, str]:
    """``["knn50=knn"]`` -> ``{"knn50": "knn"}``; a label may be neither a router's name nor used twice."""
    from turnout.errors import RoutingError
    from turnout.routing.registry import router_names

    out: dict[str, str] = {}
    for item in items:
        label, sep, router = (x.strip() for x in item.partition("="))
        if not sep or not label or not router:
            raise RoutingError(f"--variant '{item}' is not LABEL=ROUTER (e.g. --variant knn50=knn)")
        if router not in router_names():
            raise RoutingError(f"--variant {item}: unknown router {router}; choose from: {', '.join(router_names())}")
        if label in router_names() or label in routers or label in out:
            raise RoutingError(
                f"--variant {item}: the label {label} is already a router's name or another "
                f"variant's; pick a new one (e.g. {router}2)"
            )
        if "." in label:
            raise RoutingError(f"--variant {item}: a label may not contain '.' (--param LABEL.K=V splits at it)")
        out[label] = router
    return out


def parse_router_params(items: list[str], routers: list[str], variants: dict[str, str]) -> dict[str, dict[str, Any]]:
    """``["knn.k=50"]`` -> ``{"knn": {"k": 50}}``, each router built once here so a wrong name fails before any work."""
    from turnout.cli.train import parse_value
    from turnout.errors import RoutingError
    from turnout.routing.registry import create_router

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, val = item.partition("=")
        name, dot, key = target.strip().partition(".")
        if not sep or not dot or not name or not key.strip():
            raise RoutingError(f"--param '{item}' is not ROUTER.KEY=VALUE (e.g. --param knn.k=50)")
        if name not in routers:
            raise RoutingError(f"--param {item}: {name} is not in this run (routers: {', '.join(routers)})")
        out.setdefault(name, {})[key.strip()] = parse_value(val)
    for name, params in out.items():
        create_router(variants.get(name, name), **params)  # an unknown parameter fails here, naming itself
    return out


def check_options(args: Any) -> None:
    """Option values that would fail only after the work: refused (or their folders made) before any of it."""
    from turnout.errors import DataError

    if args.bootstrap is not None and args.bootstrap < 0:
        raise DataError(f"--bootstrap {args.bootstrap} is negative", fix="give a count of resamples, or 0 for none")
    if args.repeats < 1:
        raise DataError(f"--repeats {args.repeats} is not a number of splits", fix="use 1 (one split) or more")
    for flag, path in (("--json", args.json_out), ("--plot", args.plot_out)):
        if not path:
            continue
        target = Path(path)
        if target.is_dir():
            raise DataError(f"{flag} names a folder", file=str(target), fix="name a file in it, e.g. out/eval.json")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(
                f"{flag}: cannot create the folder ({exc.strerror})", file=str(target.parent), fix="choose a writable path"
            ) from exc


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float as None, so the file is valid JSON (which has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _write_json(path: str, out: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(json_safe(out), indent=2, allow_nan=False))


def _report(con: Any, table: Any, verdicts: list[str], out: dict[str, Any]) -> None:
    """Print a result's table, the verdicts under it and its notes."""
    from turnout.cli._ui import print_table

    print_table(con, table)
    for line in verdicts + [f"note: {n}" for n in out.get("notes", [])]:
        con.print(line)


def _write_outputs(args: Any, out: dict[str, Any], plot: Any = None) -> None:
    """``--json`` and ``--plot`` (drawn by ``plot``, default :func:`~turnout.evaluation.plot.plot_eval`)."""
    if args.json_out:
        _write_json(args.json_out, out)
    if args.plot_out:
        from turnout.evaluation.plot import plot_eval

        (plot or plot_eval)(out, args.plot_out)


def _same_file(a: str, b: str) -> bool:
    """True when paths ``a`` and ``b`` name one existing file (or folder)."""
    try:
        return Path(a).resolve().samefile(Path(b).resolve())
    except OSError:
        return False


def _run_artifacts(args: Any) -> int:
    """``turnout eval TABLE --artifact A.npz ...``: trained routers on all of TABLE (e.g. traffic logged since)."""
    from turnout.cli._ui import console
    from turnout.embed import create_embedder
    from turnout.errors import DataError
    from turnout.evaluation.loaders import load_table
    from turnout.evaluation.runner import eval_fitted
    from turnout.routing.artifact import load_router

    clashing = [
        flag
        for flag, given in (
            ("--routers", args.routers),
            ("--test", args.test),
            ("--keep-seen", args.keep_seen),
            ("--param", args.param),
            ("--variant", args.variant),
            ("--repeats", args.repeats != 1),
        )
        if given
    ]
    if clashing:
        raise DataError(
            f"{', '.join(clashing)} cannot go with --artifact: an artifact is evaluated on every prompt of TABLE, as trained",
            fix="drop them, or evaluate routers by name without --artifact",
        )
    table = load_table(args.table, models_card=args.models_card)
    routers: dict[str, Any] = {}
    embeddings: dict[str, Any] = {}
    trained_here: list[str] = []
    for path in args.artifact:
        router, meta = load_router(path)
        name = Path(path).stem if Path(path).stem not in routers else str(path)
        if meta.get("table") and _same_file(meta["table"], args.table):
            trained_here.append(name)
        emb = meta.get("embedder", "minilm")
        if emb not in embeddings:
            embeddings[emb] = create_embedder(emb, threads=os.cpu_count() or 1).embed(table.prompts)
        routers[name] = (router, embeddings[emb])
    out = eval_fitted(table, routers, table=str(args.table), bootstrap=_bootstrap(args), seed=args.seed)
    if trained_here:
        out.setdefault("notes", []).append(
            f"{', '.join(trained_here)} was trained on this table: the prompts it was trained on are scored too, "
            "so its figures are optimistic (evaluate on a held-out table, e.g. the test split saved apart)"
        )
    con = console()
    _report(
        con,
        render_table(out, f"{args.table}: {len(table)} prompts, {len(routers)} trained router(s)"),
        comparison_lines(out),
        out,
    )
    if out.get("models_left_out"):
        con.print(f"left out (in the table, not routed by the artifacts): {', '.join(out['models_left_out'])}")
    _write_outputs(args, out)
    return 0
