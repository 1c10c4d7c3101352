"""Acceptance thresholds of a cascade, calibrated on training confidences like λ: to a share or a cost.

A cascade step escalates when its answer's confidence is below the step's threshold, or when the
signal could not judge the answer (NaN). These functions choose that threshold from the confidences
the step's signal gave on *training* prompts: so that a target share of them escalates
(:func:`threshold_for_share`), or so that the mean cost of the cascade stays under a target
(:func:`threshold_for_cost`). Pure numpy; the offline simulation (:mod:`turnout.evaluation.cascade`)
and the gateway's cascade plans (:mod:`turnout.gateway.planners`) share them.

Example::

    conf = np.array([0.9, 0.2, 0.6, np.nan])
    th = threshold_for_share(conf, 0.5)      # 0.2 + ε: the NaN and the 0.2 escalate
    escalates(conf, th)                      # [False, True, False, True]
"""

from __future__ import annotations

import numpy as np

from turnout.errors import DataError


def escalates(conf: np.ndarray, threshold: float) -> np.ndarray:
    """Where a cascade escalates: below ``threshold``, or not judged (NaN)."""
    esc: np.ndarray = np.isnan(conf) | (np.nan_to_num(conf, nan=-np.inf) < threshold)
    return esc


def threshold_for_share(conf: np.ndarray, share: float) -> float:
    """The threshold under which ``share`` of these (training) confidences fall, so that share escalates.

    Unjudged (NaN) confidences always escalate and count toward the share. 0 gives
    ``-inf`` (never escalate a judged answer), 1 gives ``+inf`` (always escalate).
    Ties: every confidence equal to the threshold is accepted, so the share reached
    can be lower than asked when many answers share one confidence.
    """
    if not 0.0 <= share <= 1.0:
        raise DataError(f"escalation share {share} not in [0, 1]", fix="give a share between 0 and 1")
    if share >= 1.0:
        return float("inf")
    judged = np.sort(conf[~np.isnan(conf)])
    need = share * len(conf) - (len(conf) - len(judged))  # escalations still to come from judged answers
    if need <= 0 or not len(judged):
        return float("-inf")
    k = min(int(np.ceil(need)), len(judged))
    return float(judged[k - 1]) + 1e-12  # strictly above the k-th lowest: those k escalate


def threshold_for_cost(conf: np.ndarray, base_cost: np.ndarray, strong_cost: np.ndarray, target: float) -> float:
    """The highest threshold (the most escalation) whose (training) mean cost stays at or under ``target`` USD.

    ``base_cost`` is each prompt's cost of the first step (its group), ``strong_cost`` that of escalating.
    When even never escalating costs more than ``target``, ``-inf`` (never escalate).
    """
    order = np.sort(np.unique(conf[~np.isnan(conf)]))
    best = float("-inf")
    for th in np.r_[order + 1e-12, np.inf]:
        c = float((base_cost + np.where(escalates(conf, th), strong_cost, 0.0)).mean())
        if c <= target + 1e-15:
            best = float(th)
        else:
            break
    return best


__all__ = ["escalates", "threshold_for_cost", "threshold_for_share"]
