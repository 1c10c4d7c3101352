"""The closed-loop λ controller: spend converges through drift, no windup at a bound, state round-trips."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from turnout.errors import RoutingError
from turnout.routing.controller import LambdaController


def _spend(lam: float, mix: float, rng: np.random.Generator) -> float:
    """One answer's cost: the expensive model (1.0) with a probability falling in λ and rising with ``mix``."""
    p = 1.0 / (1.0 + math.exp(-(mix - 1.5 * math.log(max(lam, 1e-12)))))
    return (1.0 if rng.random() < p else 0.1) * float(rng.lognormal(0.0, 0.5)) / math.exp(0.125)


def _run(ctl: LambdaController, mixes: list[float], per_phase: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    costs, lams = [], []
    for mix in mixes:
        for _ in range(per_phase):
            lam = ctl.lam()
            c = _spend(lam, mix, rng)
            ctl.observe(c)
            costs.append(c)
            lams.append(lam)
    return np.array(costs), np.array(lams)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spend_converges_on_target_through_drift(seed: int) -> None:
    target = 0.4
    lam0 = math.exp(math.log(2) / 1.5)  # calibrated for mix 0: P(expensive) = 1/3, mean cost 0.4
    ctl = LambdaController(target, lam0)
    costs, lams = _run(ctl, [0.0, 2.0, -2.0], 4000, seed)  # the mix drifts dearer, then cheaper than calibrated
    for phase in range(3):
        settled = costs[phase * 4000 + 1000 : (phase + 1) * 4000]
        assert abs(settled.mean() / target - 1.0) < 0.05, phase
    # a static λ would be far off in the drifted phases: the controller moved λ both ways
    assert lams[8000 - 1] > lam0 * 2 and lams[-1] < lam0


def test_no_windup_when_the_target_is_unreachable() -> None:
    rng = np.random.default_rng(3)
    ctl = LambdaController(0.05, 1.0, lam_max=100.0, window=200)
    # every answer costs at least 0.1: 0.05 cannot be reached, whatever λ
    for _ in range(20_000):
        ctl.observe(0.1 + 0.9 * float(ctl.lam() < 100.0) * rng.random())
    assert ctl.lam() > 90.0  # at (or, with the noise of the proportional term, just under) its bound
    state = ctl.get_state()
    assert ctl.ki * state["integral"] <= math.log(100.0) - math.log(1.0) + 1e-9  # no stored-up debt
    # the target becomes easy: λ must come off the bound within a few windows (the running mean takes about two to
    # fall under target), not after the ~14,000 answers an unbounded integral (20,000 answers × log 2 / window) needs
    left_at = None
    for t in range(2000):
        ctl.observe(0.01)
        if ctl.lam() < 50.0:
            left_at = t
            break
    assert left_at is not None and left_at < 3 * 200


def test_a_loose_target_lets_lambda_fall_to_its_floor() -> None:
    ctl = LambdaController(1.0, 10.0, lam_min=0.0, lam_max=1000.0, window=50)
    for _ in range(3000):
        ctl.observe(0.01)  # spending far under target: quality can have it all
    assert ctl.lam() == 0.0 and ctl.describe()["saturated"]


def test_state_round_trips_and_the_copy_steers_alike() -> None:
    ctl = LambdaController(0.4, 1.6)
    _run(ctl, [1.0], 700)
    again = LambdaController.from_state(ctl.get_state())
    assert again.lam() == ctl.lam() and again.running_mean == ctl.running_mean
    for c in (0.9, 0.1, 0.5, 2.0):
        assert again.observe(c) == ctl.observe(c)
    assert again.describe() == ctl.describe()


def test_warmup_holds_the_start_up_lambda() -> None:
    ctl = LambdaController(0.4, 2.0, window=100)  # warm-up: half a window
    for _ in range(49):
        assert ctl.observe(5.0) == 2.0
    assert ctl.observe(5.0) > 2.0


def test_concurrent_observations_are_all_counted() -> None:
    ctl = LambdaController(0.4, 2.0)

    def work() -> None:
        for _ in range(500):
            ctl.observe(0.4)
            ctl.lam()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ctl.describe()["observed"] == 2000
    assert ctl.lam() == pytest.approx(2.0)  # on target all along: nothing to correct


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"target": 0.0, "lam0": 1.0}, "target must be a positive"),
        ({"target": 1.0, "lam0": -1.0}, "lam0 must be >= 0"),
        ({"target": 1.0, "lam0": 0.0}, "give lam_max"),
        ({"target": 1.0, "lam0": 5.0, "lam_max": 2.0}, "lam_min <= lam0 <= lam_max"),
        ({"target": 1.0, "lam0": 1.0, "window": 0}, "window >= 1"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(RoutingError, match=match):
        LambdaController(**kwargs)  # type: ignore[arg-type]


def test_bad_observation_is_refused() -> None:
    with pytest.raises(RoutingError, match="finite number >= 0"):
        LambdaController(1.0, 1.0).observe(float("nan"))
