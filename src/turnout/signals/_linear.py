"""Numpy-only learners shared by the learned guards: softmax regression and k-means.

Both are small, seeded and deterministic, so the core install (no scikit-learn)
can train a guard at start-up and load one from an artifact. Softmax regression
is fitted by mini-batch Adam on the mean cross-entropy plus an L2 penalty: on a
few thousand to a few tens of thousands of embedded prompts that converges in
seconds on one core, within a fraction of a point of scikit-learn's L-BFGS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: fewest Adam steps of a fit: a small data set gets more epochs
MIN_STEPS = 400


@dataclass(frozen=True)
class Softmax:
    """A fitted linear softmax model: ``probs(X) = softmax(X @ W + b)``; ``W`` is (d, k), ``b`` is (k,)."""

    W: np.ndarray
    b: np.ndarray

    def logits(self, X: np.ndarray) -> np.ndarray:
        """Raw class scores, shape (n, k)."""
        out: np.ndarray = np.asarray(X, dtype=np.float32) @ self.W + self.b
        return out

    def probs(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (n, k); rows sum to 1."""
        return softmax(self.logits(X))


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def fit_softmax(
    X: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    l2: float = 1e-4,
    epochs: int = 40,
    batch_size: int = 256,
    lr: float = 0.01,
    sample_weight: np.ndarray | None = None,
    seed: int = 0,
) -> Softmax:
    """Fit multinomial logistic regression on ``X`` (n, d) and integer labels ``y`` in ``[0, n_classes)``.

    ``l2`` penalises ``||W||²`` on the *mean* loss (scikit-learn's ``C`` is about ``1 / (l2 · n)``);
    ``sample_weight`` rescales each row's loss (normalised to mean 1, so ``l2`` keeps its meaning).
    The learning rate decays linearly to a tenth over the epochs, which settles Adam's last steps;
    at least :data:`MIN_STEPS` steps are taken (more epochs on small data).

    Example::

        model = fit_softmax(X, y, n_classes=3)
        model.probs(X[:2]).shape   # (2, 3)
    """
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    n, d = X.shape
    if n == 0 or n_classes < 2:
        raise ValueError(f"need rows and at least 2 classes, got {n} rows and {n_classes} classes")
    if y.shape != (n,) or y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must be {n} integers in [0, {n_classes})")
    w = np.ones(n, dtype=np.float32) if sample_weight is None else np.asarray(sample_weight, dtype=np.float32)
    w = w * (n / w.sum())
    rng = np.random.default_rng(seed)
    W = np.zeros((d, n_classes), dtype=np.float32)
    b = np.zeros(n_classes, dtype=np.float32)
    # b starts at the log class priors: the first epochs then learn features, not frequencies
    prior = np.bincount(y, weights=w, minlength=n_classes) + 1.0
    b[:] = np.log(prior / prior.sum())
    mW, vW = np.zeros_like(W), np.zeros_like(W)
    mb, vb = np.zeros_like(b), np.zeros_like(b)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    onehot = np.eye(n_classes, dtype=np.float32)
    step = 0
    batches = max(1, -(-n // batch_size))
    # small data sets get more epochs: Adam needs a few hundred steps whatever the size
    epochs = max(epochs, -(-MIN_STEPS // batches))
    total = epochs * batches
    for _ in range(epochs):
        order = rng.permutation(n)
        for s in range(0, n, batch_size):
            idx = order[s : s + batch_size]
            xb, wb = X[idx], w[idx]
            p = softmax(xb @ W + b)
            g = (p - onehot[y[idx]]) * wb[:, None] / len(idx)
            gW = xb.T @ g + 2.0 * l2 * W
            gb = g.sum(axis=0)
            step += 1
            rate = lr * (1.0 - 0.9 * step / total)
            mW = beta1 * mW + (1 - beta1) * gW
            vW = beta2 * vW + (1 - beta2) * gW * gW
            mb = beta1 * mb + (1 - beta1) * gb
            vb = beta2 * vb + (1 - beta2) * gb * gb
            c1, c2 = 1 - beta1**step, 1 - beta2**step
            W -= rate * (mW / c1) / (np.sqrt(vW / c2) + eps)
            b -= rate * (mb / c1) / (np.sqrt(vb / c2) + eps)
    return Softmax(W=W, b=b)


def kmeans(X: np.ndarray, k: int, *, iters: int = 25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means on unit rows: ``(centroids (k, d) unit rows, labels (n,))``.

    Seeded k-means++ start, then Lloyd steps by cosine similarity; stops early
    when no label changes. ``k`` is clipped to the number of rows.
    An empty cluster is re-seeded on the row farthest from its centroid.
    """
    X = np.asarray(X, dtype=np.float32)
    n = len(X)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centres = np.empty((k, X.shape[1]), dtype=np.float32)
    centres[0] = X[rng.integers(n)]
    best = 1.0 - X @ centres[0]  # cosine distance to the nearest chosen centre
    for j in range(1, k):
        weights = np.clip(best, 0, None) ** 2
        total = weights.sum()
        pick = rng.choice(n, p=weights / total) if total > 0 else rng.integers(n)
        centres[j] = X[pick]
        best = np.minimum(best, 1.0 - X @ centres[j])
    labels = np.full(n, -1, dtype=np.int64)
    for _ in range(iters):
        sims = X @ centres.T
        new = sims.argmax(axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = X[labels == j]
            if len(members) == 0:
                far = int(np.argmin(sims[np.arange(n), labels]))
                centres[j] = X[far]
                continue
            c = members.sum(axis=0)
            norm = float(np.linalg.norm(c))
            centres[j] = c / norm if norm > 0 else members[0]
    return centres, labels
