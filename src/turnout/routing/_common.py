"""Small numpy helpers shared by the routers (private: not part of the public surface)."""

from __future__ import annotations

from typing import Any

import numpy as np

from turnout.errors import RoutingError

#: quality assumed for a model that has no observed outcome at all (an uninformed coin)
UNINFORMED_QUALITY = 0.5


def l2_normalize(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as float32 for fast dot products."""
    X = np.asarray(X, dtype=np.float32)
    if X.ndim == 1:
        X = X[None, :]
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    unit: np.ndarray = X / np.maximum(norms, 1e-12)
    return unit


def column_means(M: np.ndarray, default: float = UNINFORMED_QUALITY) -> np.ndarray:
    """Per-column mean ignoring NaN; ``default`` for a column with no value at all."""
    obs = ~np.isnan(M)
    counts = obs.sum(axis=0)
    sums = np.where(obs, M, 0.0).sum(axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), default).astype(np.float64)


def mean_costs(C: np.ndarray) -> np.ndarray:
    """Per-model mean observed cost; a model with no cost at all gets the fleet's mean (0 if none)."""
    obs = ~np.isnan(C)
    fleet = float(np.nanmean(C)) if obs.any() else 0.0
    return column_means(C, default=fleet)


def as_2d(X: np.ndarray, dim: int | None, router: str) -> np.ndarray:
    """Validate a batch of prompt features: 2-D (a 1-D row is promoted) with the fitted width."""
    X = np.asarray(X, dtype=np.float32)
    if X.ndim == 1:
        X = X[None, :]
    if X.ndim != 2:
        raise RoutingError(f"router '{router}' expects a 2-D array of prompt features, got shape {X.shape}")
    if dim is not None and X.shape[1] != dim:
        raise RoutingError(
            f"router '{router}' was fitted on {dim}-dimensional features but got {X.shape[1]}: "
            "use the same embedder for training and routing"
        )
    return X


def require_fitted(router: Any, attr: str) -> None:
    """Raise a RoutingError telling the fix when a router is used before ``fit``."""
    if getattr(router, attr, None) is None:
        raise RoutingError(f"router '{router.name}' is not fitted: call fit(data) or load a saved router first")


#: similarity cells :func:`top_k_similar` holds at once (a chunk of query rows × the reference rows)
TOP_K_CHUNK_CELLS = 1 << 24


def top_k_similar(Q: np.ndarray, R: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine similarities of the ``k`` rows of ``R`` nearest each row of ``Q``.

    Both inputs must already be L2-normalised. ``exclude`` (one index into ``R``
    per row of ``Q``) leaves that row of ``R`` out of the row's neighbours: with
    ``Q = R[rows]`` and ``exclude=rows`` it gives leave-one-out neighbours.
    """
    k = min(k, R.shape[0] - (1 if exclude is not None else 0))
    if k <= 0:
        raise RoutingError("a neighbour router needs at least 2 training prompts")
    # in row chunks: the full similarity matrix (and argpartition's index array, 8 bytes a cell) of a
    # big batch against a big table would take gigabytes
    step = max(1, TOP_K_CHUNK_CELLS // max(R.shape[0], 1))
    idx = np.empty((Q.shape[0], k), dtype=np.int64)
    top = np.empty((Q.shape[0], k), dtype=np.float32)
    skip = None if exclude is None else np.asarray(exclude)
    for s in range(0, Q.shape[0], step):
        sims = Q[s : s + step] @ R.T
        if skip is not None:
            sims[np.arange(len(sims)), skip[s : s + step]] = -np.inf
        i = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        idx[s : s + step], top[s : s + step] = i, np.take_along_axis(sims, i, axis=1)
    return idx, top


def kmeans(X: np.ndarray, k: int, *, seed: int, iters: int = 30) -> np.ndarray:
    """Spherical k-means (cosine) with k-means++ seeding; returns L2-normalised centroids (k × d).

    Deterministic under ``seed``. Used to find prompt "capabilities" when no task labels exist.
    """
    Xn = l2_normalize(X)
    n = Xn.shape[0]
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centres = [Xn[rng.integers(n)]]
    closest = 1.0 - Xn @ centres[0]
    for _ in range(1, k):
        p = np.maximum(closest, 0) ** 2
        total = p.sum()
        i = rng.choice(n, p=p / total) if total > 0 else rng.integers(n)
        centres.append(Xn[i])
        closest = np.minimum(closest, 1.0 - Xn @ Xn[i])
    C = np.stack(centres)
    for _ in range(iters):
        assign = np.argmax(Xn @ C.T, axis=1)
        newC = C.copy()
        for j in range(k):
            members = Xn[assign == j]
            if len(members):
                newC[j] = members.sum(axis=0)
        newC = l2_normalize(newC)
        if np.allclose(newC, C, atol=1e-6):
            break
        C = newC
    return C


def soft_assign(Xn: np.ndarray, centroids: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax over cosine similarity to each centroid (rows sum to 1)."""
    logits = (Xn @ centroids.T) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    w = np.exp(logits)
    rows: np.ndarray = w / w.sum(axis=1, keepdims=True)
    return rows


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function, through tanh so that large ``|z|`` cannot overflow ``exp``."""
    s: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * z))
    return s


def logit(p: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    """The inverse of :func:`sigmoid`, with ``p`` clipped to ``[eps, 1 - eps]`` so that 0 and 1 stay finite."""
    p = np.clip(p, eps, 1 - eps)
    z: np.ndarray = np.log(p / (1 - p))
    return z
