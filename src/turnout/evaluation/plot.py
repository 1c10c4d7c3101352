"""Plots of ``turnout eval`` results: router hulls, single models and the oracle; AIQ over repeated splits.

Example::

    from turnout.evaluation.plot import plot_eval
    plot_eval(json.load(open("eval.json")), "eval.png")

matplotlib is optional (``pip install 'turnout[plot]'``) and imported only here, with the Agg backend.
:func:`pyplot` and :func:`save_figure` are the same two steps for other figures (the ``bench/`` scripts use them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from turnout.errors import MissingDependency
from turnout.evaluation.metrics import nondecreasing_hull


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display), or :class:`MissingDependency` without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        raise MissingDependency("matplotlib", "plot", "plotting") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, out_png: str | Path, *, dpi: float | None = None) -> Path:
    """Lay ``fig`` out, write it to ``out_png`` as a PNG (making its folder) and close it; returns the path."""
    plt = pyplot()
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=dpi)
    plt.close(fig)
    return out


def plot_eval(result: dict[str, Any], out_png: str | Path, *, title: str | None = None) -> Path:
    """Write a PNG of ``result`` (the ``turnout eval`` JSON dict) to ``out_png``; returns the path.

    x is the mean cost per request in USD (log scale when the plotted costs span more than 20×; symmetric
    log, linear below the cheapest paid cost, when some model is free, so free models stay on the plot),
    y the mean quality. Each router's non-decreasing hull is a line (its raw λ points faint),
    single models are labelled points and the oracle is a star; the task-mean reference lines
    (when the result has ``references``) are dashed black. Cascades and fan-outs (``cascades``,
    on tables with answers) are dash-dotted, the router-built ones dashed and thicker.
    """
    plt = pyplot()
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
    styles = {
        "task_means": ("task means, true task (train)", "--"),
        "task_means_test": ("task means, true task (test: peeks)", ":"),
    }
    for key, r in (result.get("references") or {}).items():
        pts = np.asarray(r.get("curve") or [], dtype=float).reshape(-1, 2)
        if len(pts):
            h = nondecreasing_hull(pts)
            name, ls = styles.get(key, (key, "--"))
            ax.plot(h[:, 0], h[:, 1], ls, color="black", lw=1.0, alpha=0.7, label=f"{name} (AIQ {r['aiq']:.3f})")
            xs.extend(pts[:, 0].tolist())
    xs.extend(_plot_cascades(ax, plt, result.get("cascades") or {}))
    singles = result.get("single_models", {})
    best = (result.get("best_single") or {}).get("model")
    for m, v in singles.items():
        if v.get("cost") is None or v.get("quality") is None:
            continue
        ax.scatter(
            [v["cost"]],
            [v["quality"]],
            s=36,
            color="black" if m == best else "dimgray",
            zorder=5,
            marker="s" if m == best else "o",
        )
        ax.annotate(m, (v["cost"], v["quality"]), textcoords="offset points", xytext=(4, 3), fontsize=7, color="dimgray")
        xs.append(v["cost"])
    o = result.get("oracle")
    if o:
        ax.scatter(
            [o["cost"]],
            [o["quality"]],
            s=180,
            marker="*",
            color="gold",
            edgecolors="black",
            zorder=6,
            label=f"oracle ({o['quality']:.3f})",
        )
        xs.append(o["cost"])
    pos = [x for x in xs if x > 0]
    if pos and max(pos) / min(pos) > 20:
        if any(x <= 0 for x in xs):  # free (local) models: log scale would drop them; linear near 0, log above
            ax.set_xscale("symlog", linthresh=min(pos))
        else:
            ax.set_xscale("log")
    ax.margins(x=0.06)
    ax.set_xlabel("mean cost per request (USD)")
    ax.set_ylabel("mean quality")
    n = (
        f"{result['n_train']} train / {result.get('n_test', '?')} test"
        if "n_train" in result
        else f"{result.get('n_test', '?')} prompts, trained routers"
    )
    ax.set_title(title or f"{Path(str(result.get('table', ''))).name or 'eval'}: {n}")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return save_figure(fig, out_png)


def _plot_cascades(ax: Any, plt: Any, cascades: dict[str, Any]) -> list[float]:
    """Cascade and fan-out entries: dash-dotted hulls (router-built ones thicker), a lone fan-out as a diamond.

    Returns the costs drawn, for the x scale.
    """
    xs: list[float] = []
    cmap = plt.get_cmap("Dark2")
    for i, (name, r) in enumerate(cascades.items()):
        pts = np.asarray(r.get("curve") or [], dtype=float).reshape(-1, 2)
        if not len(pts):
            continue
        color = cmap(i % cmap.N)
        label = f"{name} (AIQ {r['aiq']:.3f})" if r.get("aiq") is not None else name
        if len(pts) == 1:
            ax.scatter(pts[:, 0], pts[:, 1], s=50, marker="D", color=color, zorder=5, label=label)
        else:
            h = nondecreasing_hull(pts)
            ax.plot(
                h[:, 0], h[:, 1], "-." if "router" not in r else "--", color=color, lw=2.2 if "router" in r else 1.1, label=label
            )
        xs.extend(pts[:, 0].tolist())
    return xs


def plot_repeats(result: dict[str, Any], out_png: str | Path, *, title: str | None = None) -> Path:
    """Write a PNG of a repeated-splits result (``turnout eval --repeats``): each router's AIQ on every split.

    One row per router (best mean on top). Left: a dot per split, the mean as a
    bar, the single-model hull's and the task-means line's mean AIQ as vertical
    lines. Right: the same splits paired, each router's AIQ minus the best
    router's on that split (what the corrected intervals are computed from), so
    a gap hidden by the spread of the splits shows. Dots of one split are joined
    faintly across routers.
    """
    plt = pyplot()
    routers = result.get("routers", {})
    names = sorted(routers, key=lambda n: routers[n]["aiq"]["mean"])
    values = np.array([routers[n]["aiq"]["values"] for n in names], dtype=float).reshape(len(names), -1)
    best = result.get("best_router")
    paired = best in names
    fig, axes = plt.subplots(
        1,
        2 if paired else 1,
        figsize=(13 if paired else 10, 1.2 + 0.45 * max(len(names), 1)),
        dpi=120,
        sharey=True,
        squeeze=False,
    )
    ys = np.arange(len(names))
    diffs = values - values[names.index(str(best))] if paired else None
    panels = [(axes[0][0], values, "AIQ")]
    if diffs is not None:
        panels.append((axes[0][1], diffs, f"AIQ minus {best}'s, same split"))
    for ax, v, xlabel in panels:
        for s in range(v.shape[1]):  # one faint line per split across the routers
            ax.plot(v[:, s], ys, "-", color="gray", lw=0.6, alpha=0.35)
        ax.scatter(v.ravel(), np.repeat(ys, v.shape[1]), s=16, color="tab:blue", alpha=0.7, zorder=3, label="one split")
        ax.scatter(v.mean(axis=1), ys, s=260, marker="|", color="black", zorder=4, linewidths=2, label="mean")
        ax.set_xlabel(xlabel)
        ax.grid(True, axis="x", alpha=0.25)
    ax0 = axes[0][0]
    xs = values.ravel().tolist()
    for key, label, ls in (("single_models_aiq", "single-model hull", ":"), ("task_means_aiq", "task means (true task)", "--")):
        if (result.get(key) or {}).get("mean") is not None:
            ax0.axvline(result[key]["mean"], ls=ls, color="black", lw=1, alpha=0.7, label=f"{label} ({result[key]['mean']:.3f})")
            xs.append(result[key]["mean"])
    pad = 0.04 * (max(xs) - min(xs) or 0.01)  # the reference lines inside the frame, not on its edge
    ax0.set_xlim(min(xs) - pad, max(xs) + pad)
    if diffs is not None:
        right = axes[0][1]
        right.axvline(0.0, color="black", lw=1, alpha=0.7)
        near = diffs[np.abs(diffs.mean(axis=1)) < 0.05]  # zoom on the routers near the best; far ones stay at the edge
        lo = float(min(near.min(), -0.01)) if len(near) else -0.05
        right.set_xlim(lo * 1.15, max(0.01, float(near.max()) * 1.15) if len(near) else 0.01)
    ax0.set_yticks(ys, names)
    fig.suptitle(
        title
        or f"{Path(str(result.get('table', ''))).name or 'eval'}: AIQ over {result.get('repeats', values.shape[1])} random splits"
    )
    ax0.legend(fontsize=8, loc="lower right")
    return save_figure(fig, out_png)
