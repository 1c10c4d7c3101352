"""Lazy torch import and the one masked training loop shared by the torch routers.

torch is imported only inside these functions, so importing a router module
costs nothing until ``fit`` runs; prediction is numpy-only (weights are
exported after training), which keeps single-prompt routing well under 1 ms.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from turnout.errors import MissingDependency

#: what the torch routers declare as ``Router.requires``: the package and the extra that installs it
REQUIRES = {"torch": "ml"}


def import_torch(feature: str) -> Any:
    """``torch``, or :class:`MissingDependency` naming the extra in :data:`REQUIRES`."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingDependency("torch", REQUIRES["torch"], feature) from exc
    return torch


def train_masked(
    torch: Any,
    module: Any,
    forward: Callable[[Any], Any],
    X: np.ndarray,
    Y: np.ndarray,
    *,
    seed: int,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    val_fraction: float,
    patience: int,
) -> int:
    """Train ``module`` with masked BCE on Y (n × m, NaN = missing); early-stop on a held-out slice.

    ``forward(xb)`` returns logits (batch × m). The best weights on the
    held-out slice are restored. Deterministic under ``seed`` (one thread,
    seeded shuffles). Returns the number of epochs run.

    Training runs on one torch thread (the caller's setting is restored after):
    the routers' matrices are small (a batch of 128 × a few hundred), so a
    second thread costs more in hand-offs than it computes. On 2 cores, one
    thread fitted mlp, graph and mf on DCRouter 1.7–2.5× faster than two.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(
            torch,
            module,
            forward,
            X,
            Y,
            seed=seed,
            epochs=epochs,
            lr=lr,
            weight_decay=weight_decay,
            batch_size=batch_size,
            val_fraction=val_fraction,
            patience=patience,
        )
    finally:
        torch.set_num_threads(threads)


def _train(
    torch: Any,
    module: Any,
    forward: Callable[[Any], Any],
    X: np.ndarray,
    Y: np.ndarray,
    *,
    seed: int,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    val_fraction: float,
    patience: int,
) -> int:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = X.shape[0]
    order = rng.permutation(n)
    n_val = int(round(n * val_fraction)) if n >= 20 else 0
    val_idx, tr_idx = order[:n_val], order[n_val:]
    Xt = torch.from_numpy(np.asarray(X, dtype=np.float32))
    mask = torch.from_numpy(~np.isnan(Y))
    Yt = torch.from_numpy(np.nan_to_num(Y, nan=0.0).astype(np.float32))
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    bce = torch.nn.BCEWithLogitsLoss(reduction="none")

    def loss_on(idx: np.ndarray) -> Any:
        ii = torch.from_numpy(idx)
        m = mask[ii].float()
        return (bce(forward(Xt[ii]), Yt[ii]) * m).sum() / m.sum().clamp(min=1.0)

    best = float("inf")
    best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    bad = 0
    epoch = 0
    for epoch in range(1, epochs + 1):  # noqa: B007  (the epochs run are returned after the loop)
        module.train()
        perm = tr_idx[rng.permutation(len(tr_idx))]
        for s in range(0, len(perm), batch_size):
            opt.zero_grad()
            loss = loss_on(perm[s : s + batch_size])
            loss.backward()
            opt.step()
        if n_val == 0:
            continue
        module.eval()
        with torch.no_grad():
            v = float(loss_on(val_idx))
        if v < best - 1e-5:
            best, bad = v, 0
            best_state = {k: t.detach().clone() for k, t in module.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                break
    if n_val:
        module.load_state_dict(best_state)
    module.eval()
    return epoch
