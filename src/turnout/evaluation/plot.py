"""Plots of ``turnout eval`` results: router hulls, single models and the oracle; AIQ over repeated splits.

Example::

    from turnout.evaluation.plot import plot_eval
    plot_eval(json.load(open("eval.json")), "eval.png")

matplotlib is optional (``pip install 'turnout[plot]'``) and imported only here, with the Agg backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from turnout.errors import MissingDependency
from turnout.evaluation.metrics import nondecreasing_hull


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MissingDependency("matplotlib", "plot", "plotting") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, out_png: str | Path) -> Path:
    """Lay ``fig`` out, write it to ``out_png`` (making its folder) and close it."""
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    plt.close(fig)
    return out


def plot_eval(result: dict[str, Any], out_png: str | Path, *, title: str | None = None) -> Path:
    """Write a PNG of ``result`` (the ``turnout eval`` JSON dict) to ``out_png``; returns the path.

    x is the mean cost per request in USD (log scale when the plotted costs span more than 20×),
    y the mean quality. Each router's non-decreasing hull is a line (its raw λ points faint),
    single models are labelled points and the oracle is a star; the task-mean reference lines
    (when the result has ``references``) are dashed black.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(12, 6.5), dpi=120)
    xs: list[float] = []
    cmap = plt.get_cmap("tab10" if len(result.get("routers", {})) <= 10 else "tab20")
    for i, (name, r) in enumerate(result.get("routers", {}).items()):
        pts = np.asarray(r.get("curve") or [], dtype=float).reshape(-1, 2)
        if not len(pts):
            continue
        color = cmap(i % cmap.N)
        ax.scatter(pts[:, 0], pts[:, 1], s=6, color=color, alpha=0.18, linewidths=0)
        h = nondecreasing_hull(pts)
        label = f"{name} (AIQ {r['aiq']:.3f})" if r.get("aiq") is not None else name
        ax.plot(h[:, 0], h[:, 1], "-", color=color, lw=1.6, label=label, marker="." if len(h) < 30 else None)
        xs.extend(pts[:, 0].tolist())
    # evaluation-only reference lines (true task labels): dashed, so they never read as routers
    styles = {"task_means": ("task means, true task (train)", "--"), "task_means_test": ("task means, true task (test: peeks)", ":")}
    for key, r in (result.get("references") or {}).items():
        pts = np.asarray(r.get("curve") or [], dtype=float).reshape(-1, 2)
        if len(pts):
            h = nondecreasing_hull(pts)
            name, ls = styles.get(key, (key, "--"))
            ax.plot(h[:, 0], h[:, 1], ls, color="black", lw=1.0, alpha=0.7, label=f"{name} (AIQ {r['aiq']:.3f})")
            xs.extend(pts[:, 0].tolist())
    singles = result.get("single_models", {})
    best = (result.get("best_single") or {}).get("model")
    for m, v in singles.items():
        if v.get("cost") is None or v.get("quality") is None:
            continue
        ax.scatter([v["cost"]], [v["quality"]], s=36, color="black" if m == best else "dimgray", zorder=5,
                   marker="s" if m == best else "o")
        ax.annotate(m, (v["cost"], v["quality"]), textcoords="offset points", xytext=(4, 3), fontsize=7, color="dimgray")
        xs.append(v["cost"])
    o = result.get("oracle")
    if o:
        ax.scatter([o["cost"]], [o["quality"]], s=180, marker="*", color="gold", edgecolors="black", zorder=6,
                   label=f"oracle ({o['quality']:.3f})")
        xs.append(o["cost"])
    pos = [x for x in xs if x > 0]
    if pos and max(pos) / min(pos) > 20:
        ax.set_xscale("log")
    ax.margins(x=0.06)
    ax.set_xlabel("mean cost per request (USD)")
    ax.set_ylabel("mean quality")
    n = (f"{result['n_train']} train / {result.get('n_test', '?')} test" if "n_train" in result
         else f"{result.get('n_test', '?')} prompts, trained routers")
    ax.set_title(title or f"{Path(str(result.get('table', ''))).name or 'eval'}: {n}")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return _save(plt, fig, out_png)


def plot_repeats(result: dict[str, Any], out_png: str | Path, *, title: str | None = None) -> Path:
    """Write a PNG of a repeated-splits result (``turnout eval --repeats``): each router's AIQ on every split.

    One row per router (best mean on top): a dot per split, the mean as a bar;
    the single-model hull's and the task-means line's mean AIQ are vertical
    reference lines. Dots of the same split are joined faintly across routers,
    so a split that is hard for every router reads as one line.
    """
    plt = _pyplot()
    routers = result.get("routers", {})
    names = sorted(routers, key=lambda n: routers[n]["aiq"]["mean"])
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.45 * max(len(names), 1)), dpi=120)
    values = np.array([routers[n]["aiq"]["values"] for n in names], dtype=float).reshape(len(names), -1)
    ys = np.arange(len(names))
    for s in range(values.shape[1]):  # one faint line per split across the routers
        ax.plot(values[:, s], ys, "-", color="gray", lw=0.6, alpha=0.35)
    ax.scatter(values.ravel(), np.repeat(ys, values.shape[1]), s=16, color="tab:blue", alpha=0.7, zorder=3,
               label="one split")
    ax.scatter(values.mean(axis=1), ys, s=260, marker="|", color="black", zorder=4, linewidths=2, label="mean")
    refs = [("single_models_aiq", "single-model hull", ":"), ("task_means_aiq", "task means (true task)", "--")]
    for key, label, ls in refs:
        if result.get(key, {}).get("mean") is not None:
            ax.axvline(result[key]["mean"], ls=ls, color="black", lw=1, alpha=0.7,
                       label=f"{label} ({result[key]['mean']:.3f})")
    ax.set_yticks(ys, names)
    ax.set_xlabel("AIQ")
    ax.set_title(title or f"{Path(str(result.get('table', ''))).name or 'eval'}: AIQ over "
                          f"{result.get('repeats', values.shape[1])} random splits")
    ax.grid(True, axis="x", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return _save(plt, fig, out_png)
