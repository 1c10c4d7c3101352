"""``turnout guards eval KIND TEST`` and ``turnout signals train KIND TRAIN``: measure and train the guards.

``turnout guards eval KIND TEST [--train TRAIN] [--json OUT]`` fits the guard
on TRAIN where it learns, evaluates it on TEST at its default operating point,
prints the report as tables and writes it as JSON. A guard kind is one entry of
:data:`KINDS`: the ``"module:function"`` of its evaluation, resolved only when
asked for, so a kind whose module is not there yet is reported as not available
instead of breaking the command. The function's signature is
``evaluate_<kind>(test_path, train_path=None, *, option=default, ...) -> dict``;
``--param K=V`` sets any of its keyword options (checked against the signature),
``--embedder`` and ``--artifact`` are shorthands for two common ones.

``turnout signals train domain|jailbreak TRAIN --out FILE.npz`` fits a learned
guard and saves the artifact the gateway's config points at.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from turnout.errors import DataError, TurnoutError

#: guard kind -> "module:function" of its evaluation (one entry per kind; resolved lazily)
KINDS: dict[str, str] = {
    "domain": "turnout.evaluation.guards:evaluate_domain",
    "jailbreak": "turnout.evaluation.guards:evaluate_jailbreak",
    "pii": "turnout.evaluation.guards_pii:evaluate_pii",
    "cache": "turnout.evaluation.guards_cache:evaluate_cache",
}
#: guards ``turnout signals train`` can fit
TRAINABLE = ("domain", "jailbreak")


class GuardUnavailable(TurnoutError):
    """A guard kind is in :data:`KINDS` but its evaluation module or function is not installed yet."""

    kind = "guard_unavailable"


def resolve(kind: str, kinds: dict[str, str] | None = None) -> Callable[..., dict[str, Any]]:
    """The evaluation function of ``kind``; :class:`GuardUnavailable` naming what is missing, or DataError if unknown."""
    table = KINDS if kinds is None else kinds
    if kind not in table:
        raise DataError(f"unknown guard kind {kind!r}", fix=f"use one of: {', '.join(table)}")
    module_name, _, func = table[kind].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # only the guard's own module being absent means "not available yet"; a missing dependency inside it
        # is a real error and keeps its own message
        if exc.name is not None and module_name.startswith(exc.name):
            raise GuardUnavailable(
                f"the '{kind}' guard is not available yet: module {module_name} is not installed in this turnout"
            ) from exc
        raise
    fn = getattr(module, func, None)
    if not callable(fn):
        raise GuardUnavailable(f"the '{kind}' guard is not available yet: {module_name} has no {func}()")
    return fn  # type: ignore[no-any-return]


def options_of(fn: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """The keyword options an evaluation function takes (everything after ``test_path, train_path``)."""
    params = list(inspect.signature(fn).parameters.values())
    return {p.name: p for p in params[2:] if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def build_options(kind: str, fn: Callable[..., Any], args: Any) -> dict[str, Any]:
    """``--param``/``--embedder``/``--artifact`` as keyword options of ``fn``, refused when it does not take them."""
    from turnout.cli.train import parse_params

    accepted = options_of(fn)
    opts = parse_params(args.param)
    for flag in ("embedder", "artifact"):
        value = getattr(args, flag, None)
        if value is not None:
            opts[flag] = value
    if "progress" in accepted and "progress" not in opts:
        opts["progress"] = not args.quiet
    unknown = sorted(set(opts) - set(accepted))
    if unknown:
        raise DataError(
            f"the '{kind}' guard takes no option {', '.join(unknown)}", fix=f"its options are: {', '.join(accepted) or 'none'}"
        )
    for name, value in list(opts.items()):
        param = accepted[name]
        # a list option (by its default or its annotation) given one value, with no comma, is a list of one
        listy = isinstance(param.default, (list, tuple)) or any(w in str(param.annotation) for w in ("Sequence", "list["))
        if listy and not isinstance(value, list):
            opts[name] = [value]
    return opts


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("guards", help="measure the guards (domain, jailbreak, pii, cache) on labelled data")
    inner = p.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    e = inner.add_parser("eval", help="fit a guard on TRAIN and report its quality and latency on TEST")
    e.add_argument("kind", choices=list(KINDS), metavar="KIND", help=f"one of: {', '.join(KINDS)}")
    e.add_argument("test", help="labelled test rows (the guard's file format; see docs)")
    e.add_argument("--train", help="rows to fit on (their 'train' split; 'val' rows tune where the guard tunes)")
    e.add_argument("--json", metavar="OUT", help="write the report here as JSON")
    e.add_argument("--embedder", help="embedder name (kinds that embed: domain, jailbreak, cache)")
    e.add_argument("--artifact", help="evaluate this trained guard (.npz) instead of fitting one")
    e.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="K=V",
        help="an option of the kind's evaluation, repeatable (lists with commas)",
    )
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=run_eval)


def register_signals(subparsers: Any) -> None:
    p = subparsers.add_parser("signals", help="train the learned request signals (domain, jailbreak)")
    inner = p.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    t = inner.add_parser("train", help="fit a learned guard and save its artifact (.npz)")
    t.add_argument("kind", choices=list(TRAINABLE), metavar="KIND", help=f"one of: {', '.join(TRAINABLE)}")
    t.add_argument("train", help="labelled rows: {text, label} JSONL (domain: CLINC150 rows too; jailbreak: label attack|benign)")
    t.add_argument("--out", required=True, help="artifact path (.npz)")
    t.add_argument("--embedder", default="minilm", help="embedder name (default minilm)")
    t.add_argument(
        "--benign",
        action="append",
        default=[],
        metavar="FILE",
        help="jailbreak: extra benign prompts (any text/prompt file; its train rows), repeatable",
    )
    t.add_argument(
        "--param", action="append", default=[], metavar="K=V", help="a setting of DomainSettings / JailbreakSettings, repeatable"
    )
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=run_train)


def run_eval(args: Any) -> int:
    from turnout.cli._ui import console

    fn = resolve(args.kind)
    opts = build_options(args.kind, fn, args)
    if args.json:
        _check_out(args.json, ".json")
    report = fn(args.test, args.train, **opts)
    con = console()
    print_report(con, report, title=f"{args.kind} guard on {Path(args.test).name}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=_jsonable) + "\n")
        con.print(f"wrote {args.json}", markup=False)
    return 0


def run_train(args: Any) -> int:
    from turnout.cli._ui import console
    from turnout.cli.train import parse_params
    from turnout.embed import create_embedder
    from turnout.signals.examples import read_examples, read_texts

    _check_out(args.out, ".npz")
    params = parse_params(args.param)
    emb = create_embedder(args.embedder, progress=not args.quiet)
    rows = read_examples(args.train)
    train = [r for r in rows if r.split in (None, "train")]
    con = console()
    if args.kind == "domain":
        from turnout.signals.domain import DomainClassifier, DomainSettings

        if args.benign:
            raise DataError("--benign is for the jailbreak detector", fix="leave it out for the domain guard")
        clf = DomainClassifier.fit_examples(
            train,
            [r for r in rows if r.split == "val"],
            emb,
            embedder_name=args.embedder,
            settings=_settings(DomainSettings, params),
            provenance={"examples": args.train},
        )
        clf.save(args.out)
        c = clf.choice
        con.print(
            f"domain guard: {len(clf.domains)} domains, {len(clf.subtopic_owner)} sub-topics, "
            f"{len(clf.prototypes)} prototypes; out-of-scope threshold {clf.threshold:.4f} "
            f"({c.rule if c else ''}; on {c.validation if c else ''})",
            markup=False,
        )
    else:
        from turnout.evaluation.guards import attack_labels
        from turnout.signals.jailbreak import JailbreakDetector, JailbreakSettings

        attack_labels(train, args.train)
        det = JailbreakDetector.fit(
            [r.text for r in train],
            [str(r.label) for r in train],
            emb,
            embedder_name=args.embedder,
            sources=[r.source for r in train],
            extra_benign=read_texts(args.benign),
            settings=_settings(JailbreakSettings, params),
            provenance={"train": args.train, "benign": list(args.benign)},
        )
        det.save(args.out)
        con.print(
            f"jailbreak detector: {det.provenance['n_attack']} attack, {det.provenance['n_benign']} benign, "
            f"{det.provenance['n_extra_benign']} extra benign rows; threshold {det.threshold:.4f} "
            f"({det.provenance['threshold_rule']})",
            markup=False,
        )
    con.print(f"wrote {args.out}", markup=False)
    return 0


def _settings(cls: Any, params: dict[str, Any]) -> Any:
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise DataError(f"unknown setting {', '.join(unknown)}", fix=f"settings are: {', '.join(sorted(names))}")
    return cls(**params)


def _check_out(path: str, suffix: str) -> None:
    out = Path(path)
    if not out.name.endswith(suffix):
        raise DataError(f"the output must be a {suffix} file", file=path, fix=f"name it e.g. guard{suffix}")
    if not out.parent.exists():
        raise DataError("output folder does not exist", file=str(out.parent), fix="create it first")


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays in a report become plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


# ------------------------------------------------------------------ printing
def print_report(con: Any, report: dict[str, Any], *, title: str) -> None:
    """Any guard's report as rich tables: one of its scalar figures (and small records, field by field), then
    one per table-shaped entry.

    A table-shaped entry is a dict of dicts (rows) whose values are scalars or one more
    level of dicts (flattened as ``outer.inner`` columns); lists and deeper nesting stay
    in the JSON only.
    """
    from rich.table import Table

    from turnout.cli._ui import print_table

    top = Table(title=title, show_header=True)
    top.add_column("figure")
    top.add_column("value", justify="right")
    for k, v in report.items():
        if _scalar(v):
            top.add_row(k, _fmt(v))
        elif isinstance(v, dict) and v and all(_scalar(x) for x in v.values()):
            for k2, x in v.items():  # a small record (counts, how the threshold was chosen): one row per field
                top.add_row(f"{k}.{k2}", _fmt(x))
    print_table(con, top)
    for k, v in report.items():
        rows = _rows(v)
        if rows:
            _print_rows(con, k, rows)
        elif isinstance(v, dict):
            for k2, v2 in v.items():  # one level down: e.g. probes.per_family
                rows = _rows(v2)
                if rows:
                    _print_rows(con, f"{k}.{k2}", rows)
    for note in report.get("notes", []) or []:
        con.print(f"note: {note}", style="yellow", markup=False)


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    return "" if v is None else str(v)


def _rows(v: Any) -> dict[str, dict[str, Any]] | None:
    """``v`` as {row: {column: scalar}} when it is table-shaped, else None."""
    if not isinstance(v, dict) or not v or not all(isinstance(r, dict) for r in v.values()):
        return None
    out: dict[str, dict[str, Any]] = {}
    for name, row in v.items():
        flat: dict[str, Any] = {}
        for c, x in row.items():
            if _scalar(x):
                flat[c] = x
            elif isinstance(x, dict) and all(_scalar(y) for y in x.values()):
                flat.update({f"{c}.{c2}": y for c2, y in x.items()})
            elif isinstance(x, dict) and all(isinstance(y, dict) for y in x.values()):
                for c2, y in x.items():
                    flat.update({f"{c}.{c2}.{c3}": z for c3, z in y.items() if _scalar(z)})
        if flat:
            out[str(name)] = flat
    return out or None


def _print_rows(con: Any, title: str, rows: dict[str, dict[str, Any]]) -> None:
    from rich.table import Table

    from turnout.cli._ui import print_table

    cols: list[str] = []
    for row in rows.values():
        cols.extend(c for c in row if c not in cols)
    t = Table(title=title)
    t.add_column("")
    for c in cols:
        t.add_column(c, justify="right")
    for name, row in rows.items():
        t.add_row(name, *(_fmt(row.get(c)) for c in cols))
    print_table(con, t)
