"""Cost/quality metrics: the non-decreasing convex hull, AIQ (RouterBench), APGR/CPT (RouteLLM).

AIQ here: area under the router's non-decreasing convex hull over
``[c_min, c_max]`` (cheapest and most expensive single model's mean cost),
divided by ``c_max - c_min``. Left of the router's cheapest point the hull
counts as 0 quality there (RouterBench: points are needed to cover the
range; a router that cannot go that cheap earns nothing for it); right of its
most expensive point the hull stays flat at its max (a router may always spend
less than the budget). Points outside the range still shape the hull inside it.
When every single model costs the same (``c_max == c_min`` up to rounding,
:func:`same_cost`: e.g. one model, or a table without cost information priced
alike) the range has no width and AIQ is the limit of that mean: the hull's
quality at that cost (0 if the router cannot go that cheap). AIQ is kept
within [0, the hull's best quality], which rounding in the integral could
otherwise leave by 1e-16.
"""

from __future__ import annotations

import numpy as np


def nondecreasing_hull(points: np.ndarray) -> np.ndarray:
    """Upper convex hull of (cost, quality) points, cut where quality stops rising; sorted by cost."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    pts = pts[np.lexsort((-pts[:, 1], pts[:, 0]))]
    hull: list[np.ndarray] = []
    for p in pts:
        if hull and p[1] <= hull[-1][1]:
            continue  # costs more (or same), no better: dominated
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            # drop the middle point when it lies on or below the chord to p
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    return np.array(hull)


def hull_quality_at(hull: np.ndarray, cost: float) -> float:
    """Quality of the hull at ``cost`` (linear between vertices, flat after the last, NaN before the first)."""
    if cost < hull[0, 0] - 1e-18:
        return float("nan")
    return float(np.interp(cost, hull[:, 0], hull[:, 1]))


#: relative tolerance under which two mean costs are the same cost (means of equal prices differ by rounding)
SAME_COST_RTOL = 1e-9


def same_cost(c_min: float, c_max: float) -> bool:
    """True when ``[c_min, c_max]`` has no width beyond floating-point rounding."""
    return c_max - c_min <= SAME_COST_RTOL * max(abs(c_max), abs(c_min), 1e-300)


def aiq(points: np.ndarray, c_min: float, c_max: float) -> float:
    """RouterBench's Average Improvement in Quality over ``[c_min, c_max]`` (see the module docstring)."""
    if c_max < c_min:
        raise ValueError("aiq needs c_max >= c_min")
    h = nondecreasing_hull(points)
    if same_cost(c_min, c_max):
        # every point within rounding of that one cost counts as being at it
        q = hull_quality_at(h, c_max) if h[0, 0] <= c_max + SAME_COST_RTOL * abs(c_max) else float("nan")
        return 0.0 if np.isnan(q) else q
    xs = np.linspace(c_min, c_max, 2001)
    xs = np.unique(np.concatenate([xs, h[:, 0][(h[:, 0] > c_min) & (h[:, 0] < c_max)]]))
    ys = np.interp(xs, h[:, 0], h[:, 1])
    ys[xs < h[0, 0]] = 0.0
    area = float(np.trapezoid(ys, xs) / (c_max - c_min))
    return min(max(area, 0.0), float(h[:, 1].max()))


def cost_fraction_to_match(points: np.ndarray, quality: float, cost: float) -> float | None:
    """Least hull cost reaching ``quality``, as a fraction of ``cost``; None if the hull never reaches it,
    or when ``cost`` is 0 (a free model: no fraction of nothing means anything)."""
    if not cost > 0:
        return None
    h = nondecreasing_hull(points)
    if h[-1, 1] < quality - 1e-12:
        return None
    i = int(np.argmax(h[:, 1] >= quality - 1e-12))
    if i == 0:
        return float(h[0, 0] / cost)
    (x1, y1), (x2, y2) = h[i - 1], h[i]
    return float((x1 + (quality - y1) * (x2 - x1) / (y2 - y1)) / cost)


def pgr(q_router: float, q_weak: float, q_strong: float) -> float:
    """RouteLLM's performance gap recovered."""
    return (q_router - q_weak) / (q_strong - q_weak)


def apgr_cpt(shares: np.ndarray, qualities: np.ndarray, q_weak: float, q_strong: float) -> dict[str, float | None]:
    """APGR (area under PGR vs strong-call share on [0, 1], with (0, weak) and (1, strong) as ends) and CPT(50/80%).

    Points at the same share keep their best PGR. The raw curve is kept (not made monotone),
    and CPT(x) is the smallest measured share whose PGR reaches x (None if none does).
    """
    s = np.concatenate([[0.0], np.asarray(shares, float), [1.0]])
    p = np.concatenate([[0.0], [pgr(q, q_weak, q_strong) for q in qualities], [1.0]])
    o = np.lexsort((-p, s))
    s, p = s[o], p[o]
    keep = np.concatenate([[True], s[1:] != s[:-1]])
    s, p = s[keep], p[keep]
    out: dict[str, float | None] = {"apgr": float(np.trapezoid(p, s))}
    for x, key in ((0.5, "cpt50"), (0.8, "cpt80")):
        hit = np.flatnonzero(p >= x - 1e-12)
        out[key] = float(s[hit[0]]) if hit.size else None
    return out


def auc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve of scores ``s`` for binary labels ``y`` (ties count half); NaN if one class."""
    y = np.asarray(y, dtype=bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    # average ranks (1-based) handle ties: the Mann-Whitney U statistic
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=float)
    sorted_s = np.asarray(s)[order]
    _, start, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = start + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def within_task_auc(quality: np.ndarray, scores: np.ndarray, tasks: list[str]) -> float | None:
    """Mean AUC of predicted quality against the outcome, per (task, model), over cells with both outcomes.

    Outcomes are binarised at 0.5 (soft scores above it count as a success). It tells whether a router
    ranks prompts *within* a task, beyond learning which model is best for which task; 0.5 is chance.
    None when no (task, model) pair has both outcomes.
    """
    t = np.asarray(tasks, dtype=object).astype(str)
    vals = []
    for task in np.unique(t):
        rows = t == task
        for j in range(scores.shape[1]):
            ok = rows & ~np.isnan(scores[:, j]) & ~np.isnan(quality[:, j])
            a = auc(scores[ok, j] > 0.5, quality[ok, j]) if ok.sum() >= 2 else float("nan")
            if np.isfinite(a):
                vals.append(a)
    return float(np.mean(vals)) if vals else None
