"""Train/test splits of a routing table: its own ``split`` column, else a seeded random split by prompt.

Example::

    from turnout.evaluation import load_table
    from turnout.evaluation.splits import split_table
    train, test = split_table(load_table("table.parquet"), test_fraction=0.25, seed=0)
"""

from __future__ import annotations

import numpy as np

from turnout.errors import DataError
from turnout.evaluation.table import RoutingTable


def split_table(table: RoutingTable, test_fraction: float = 0.25, seed: int = 0) -> tuple[RoutingTable, RoutingTable]:
    """(train, test): the ``split`` column when it has both train and test rows, else a seeded random split.

    The random split permutes prompts (one row per prompt) with ``numpy.random.default_rng(seed)``
    and keeps ``round(n * test_fraction)`` (at least 1) of them for test; both parts keep table order.
    """
    if table.split is not None:
        sp = np.asarray(table.split, dtype=object).astype(str)
        if (sp == "train").any() and (sp == "test").any():
            return table.subset(np.flatnonzero(sp == "train")), table.subset(np.flatnonzero(sp == "test"))
    tr_rows, te_rows = random_rows(len(table), test_fraction, seed)
    return table.subset(tr_rows), table.subset(te_rows)


def random_rows(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows), each sorted: a seeded random split of ``n`` prompts.

    Permutes ``range(n)`` with ``numpy.random.default_rng(seed)`` and keeps
    ``round(n * test_fraction)`` (at least 1, at most n − 1) of them for test.
    """
    if not 0 < test_fraction < 1:
        raise DataError(f"test fraction {test_fraction} not in (0, 1)", fix="use e.g. --test-fraction 0.25")
    if n < 2:
        raise DataError(
            f"cannot split a table of {n} prompt(s) into train and test",
            fix="use a table with at least 2 prompts, or pass --test",
        )
    perm = np.random.default_rng(seed).permutation(n)
    k = min(n - 1, max(1, int(round(n * test_fraction))))
    return np.sort(perm[k:]), np.sort(perm[:k])


def drop_seen_prompts(train: RoutingTable, test: RoutingTable) -> tuple[RoutingTable, int]:
    """``test`` without the prompts whose exact text is also in ``train``, and how many were dropped.

    A test prompt the routers were trained on measures memory, not routing: LLMRouter's own
    ``test.json`` repeats 119 of its 500 questions from ``train.json``. Raises when nothing is left.
    """
    seen = set(train.prompts)
    keep = np.array([p not in seen for p in test.prompts], dtype=bool)
    dropped = int((~keep).sum())
    if dropped and not keep.any():
        raise DataError(
            f"every one of the {len(test)} test prompts is also in the training table",
            file=test.source or None,
            fix="pass a test table with unseen prompts, or --keep-seen",
        )
    return (test.subset(np.flatnonzero(keep)) if dropped else test), dropped
