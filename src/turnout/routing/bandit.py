"""A contextual bandit router: learns online from feedback, explores within a bound, logs exact propensities.

Arms are the candidate models; the context is the prompt embedding reduced to
``d`` features plus a bias: by default soft shares of ``d`` capability
clusters (k-means on unlabelled prompts, as the ``profile`` router uses), or
PCA, a seeded random projection, or the embedding itself. Per arm, a ridge
regression (LinUCB's statistics, updated by Sherman–Morrison) predicts the
**quality** of that model's answer, and a second head on the same statistics
its **cost**. Each arm's ridge shrinks towards the *pooled* model of every
arm's feedback, so a model with little feedback is predicted as the average
model on that prompt (hard prompts are hard for every model), not as a coin.

A decision maximises ``quality − λ·cost``: the reward of the issue,
``score − λ·cost``, with cost in it. Quality and cost are learned apart (not
one regression on ``score − λ·cost``) so that λ may change online (a route's
budget controller moves it) without invalidating what was learned; with costs
given at decision time (the gateway's prices) the cost head is not used.

**Exploration is bounded and its probabilities exact.** The *greedy* arm has
the best predicted utility. Thompson sampling would draw each arm with its
posterior probability of being the best, ``ts`` (utility ~ N(mean,
(alpha · width)²) per arm, width = LinUCB's ``√(zᵀA⁻¹z)``); here ``ts`` is
computed by quadrature, not sampled, so it is a deterministic function of the
context and the state. The policy is::

    capped = ts with at most max_explore off the greedy arm (the surplus back to it)
    π = (1 − uniform_share) · capped + uniform_share · [(1 − max_explore) · greedy + max_explore · uniform]

So at most ``max_explore`` of the probability ever goes to arms other than
the greedy one; that mass goes where the posterior says another arm may be
better, and fades as it grows certain; and every available arm keeps at least
``uniform_share · max_explore / K`` (what off-policy evaluation of *other*
routers on these logs needs). :meth:`BanditRouter.choose` returns the chosen
arm's propensity and the whole distribution: log them.

**State** is the sufficient statistics ``A = reg·I + Σ z zᵀ``, ``b = Σ z·y``
per arm: additive, so replicas can share learning by exchanging increments
(:meth:`BanditRouter.export_delta`, :meth:`BanditRouter.merge_delta`), and
:meth:`get_state` / :meth:`from_state` persist it (``save_router`` /
``load_router`` write it as an artifact).

Example::

    bandit = BanditRouter(models=["small", "big"], dim=384, projection="random")
    c = bandit.choose(x, costs=np.array([0.0001, 0.002]), lam=100.0, rng=np.random.default_rng())
    # ... serve c.model, log c.propensity with the request; later, feedback arrives:
    bandit.update_features(c.features, c.arm, quality=0.8, cost=0.0021)

Sources: Li et al. 2010 (LinUCB's statistics); Agrawal & Goyal 2013 (linear
Thompson sampling); GreenServ (a cost, there energy, in a contextual bandit's
reward); exact logged propensities as off-policy evaluation needs them
(Dudík et al. 2011).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from turnout.errors import RoutingError
from turnout.routing._common import kmeans, soft_assign
from turnout.routing.base import Prediction, Router, TrainingData
from turnout.routing.registry import register_router

#: quality a model is assumed to have before any evidence (ridge shrinks towards it)
PRIOR_QUALITY = 0.5
#: Sherman–Morrison updates of one arm between exact re-inversions (rounding drift stays ~1e-12)
REINVERT_EVERY = 512
PROJECTIONS = ("pca", "clusters", "random", "none")


@dataclass(frozen=True)
class BanditChoice:
    """One decision: the arm, its exact probability, the whole distribution and the scores behind it.

    ``features`` is the reduced context (``d + 1`` floats, bias last): keep it
    with the request id and pass it to :meth:`BanditRouter.update_features`
    when the feedback comes, instead of the full embedding.
    """

    arm: int
    model: str
    propensity: float
    probabilities: np.ndarray
    #: predicted utility (quality − λ·cost) per arm, NaN where unavailable
    scores: np.ndarray
    #: the posterior spread of each arm's utility (alpha · LinUCB's width)
    spread: np.ndarray
    greedy: int
    features: np.ndarray

    @property
    def explored(self) -> bool:
        """True when the chosen arm is not the greedy one."""
        return self.arm != self.greedy


@register_router
class BanditRouter(Router):
    """Contextual bandit (LinUCB statistics, bounded randomised exploration) over the candidate models.

    ``d``: context features (clusters, or PCA / random components;
    ``projection="none"`` keeps the embedding). ``reg``: prior strength per
    arm, in observations' worth (towards the pooled model when ``pooled``).
    ``alpha``: posterior scale of the utility (Thompson's spread).
    ``max_explore``: most probability on non-greedy arms. ``uniform_share``:
    part of the policy that explores uniformly (the propensity floor).
    ``cluster_temperature``: softness of the cluster shares. ``models`` and
    ``dim`` may be given to start cold (no :meth:`fit`); projections that learn
    from prompts (``clusters``, ``pca``) then need :meth:`fit_projection`.
    Thread-safe: decisions and updates may come from any thread.
    """

    name: ClassVar[str] = "bandit"

    def __init__(
        self,
        d: int = 24,
        projection: str = "clusters",
        reg: float = 10.0,
        alpha: float = 0.5,
        max_explore: float = 0.1,
        uniform_share: float = 0.2,
        pooled: bool = True,
        cluster_temperature: float = 0.05,
        seed: int = 0,
        models: list[str] | None = None,
        dim: int | None = None,
    ) -> None:
        if projection not in PROJECTIONS:
            raise RoutingError(f"bandit: projection must be one of {', '.join(PROJECTIONS)}, got {projection!r}")
        if not 0.0 <= max_explore <= 1.0 or not 0.0 <= uniform_share <= 1.0:
            raise RoutingError("bandit: max_explore and uniform_share must lie in [0, 1]")
        if d < 1 or reg <= 0 or alpha < 0 or cluster_temperature <= 0:
            raise RoutingError("bandit: needs d >= 1, reg > 0, alpha >= 0 and cluster_temperature > 0")
        self.d, self.projection, self.reg, self.alpha = int(d), projection, float(reg), float(alpha)
        self.max_explore, self.uniform_share = float(max_explore), float(uniform_share)
        self.pooled, self.cluster_temperature, self.seed = bool(pooled), float(cluster_temperature), int(seed)
        self._lock = threading.Lock()
        self.models: list[str] = list(models or [])
        self.dim: int | None = dim
        self._P: np.ndarray | None = None  # dim × d projection (None: not fitted yet)
        self._mu: np.ndarray | None = None
        self._scale = 1.0
        self._A: np.ndarray | None = None  # K × d1 × d1
        self._Ainv: np.ndarray | None = None
        self._bq: np.ndarray | None = None  # K × d1 (targets: quality − PRIOR_QUALITY)
        self._bc: np.ndarray | None = None  # K × d1 (cost)
        self._n: np.ndarray | None = None  # observations per arm
        self._nc: np.ndarray | None = None  # cost observations per arm
        self._since_inv: np.ndarray | None = None
        self._delta: dict[str, np.ndarray] | None = None  # increments since the last export_delta
        if self.models and dim is not None and projection in ("random", "none"):  # need no prompts to fit
            self.fit_projection(np.zeros((0, dim), dtype=np.float32))

    # -- the context ---------------------------------------------------------
    @property
    def d1(self) -> int:
        """Length of a reduced context: ``d`` (or the embedding's size without projection) plus the bias."""
        if self._P is None:
            raise RoutingError("bandit: the projection is not fitted: call fit(), warm_start() or fit_projection(X) first")
        return int(self._P.shape[1]) + 1

    def fit_projection(self, X: np.ndarray) -> BanditRouter:
        """Fix the context projection: PCA of ``X`` (unlabelled prompt embeddings), or seeded random.

        Only before any observation: the statistics are sums over projected
        contexts, which another projection would make meaningless.
        """
        X = _rows(X)
        if self.dim is None:
            self.dim = X.shape[1]
        if X.shape[1] != self.dim:
            raise RoutingError(f"bandit: embeddings have {X.shape[1]} dimensions, the bandit was built for {self.dim}")
        if self._n is not None and self._n.sum() > 0:
            raise RoutingError("bandit: the projection cannot change after observations were made")
        D = self.dim
        if self.projection == "none":
            P, mu = np.eye(D), np.zeros(D)
        elif self.projection == "random":
            rng = np.random.default_rng(self.seed)
            P, mu = rng.standard_normal((D, self.d)) / math.sqrt(self.d), np.zeros(D)
        elif self.projection == "clusters":
            if X.shape[0] < self.d:
                raise RoutingError(f"bandit: projection='clusters' needs the embeddings of at least d={self.d} prompts")
            # the columns of P are the centroids: (x · P) are the cosines, softened into capability shares
            P, mu = kmeans(X, self.d, seed=self.seed).T, np.zeros(D)
        else:
            if X.shape[0] < 2:
                raise RoutingError("bandit: projection='pca' needs the embeddings of at least 2 prompts (fit_projection(X))")
            Xn = _unit(X)
            mu = Xn.mean(axis=0)
            # right singular vectors of the centred prompts: the directions they vary along most
            _, _, vt = np.linalg.svd(Xn - mu, full_matrices=False)
            P = vt[: min(self.d, vt.shape[0])].T
        self._P, self._mu = P.astype(np.float64), mu.astype(np.float64)
        # one global scale so a typical context has unit norm: reg then counts in observations' worth
        self._scale = 1.0
        Z = self._project(X)
        self._scale = 1.0 / math.sqrt(float((Z**2).sum(axis=1).mean())) if Z.shape[0] and (Z**2).sum() > 0 else 1.0
        if self.models:
            self._reset_stats()
        return self

    def features(self, X: np.ndarray) -> np.ndarray:
        """Reduced contexts (n × (d + 1), bias last) of embeddings ``X``."""
        X = _rows(X)
        if self._P is None or self._mu is None:
            raise RoutingError("bandit: the projection is not fitted: call fit(), warm_start() or fit_projection(X) first")
        if X.shape[1] != self.dim:
            raise RoutingError(
                f"bandit: embeddings have {X.shape[1]} dimensions, the bandit was built for {self.dim}: "
                "use the same embedder for training and routing"
            )
        Z = self._project(X)
        return np.hstack([Z, np.ones((Z.shape[0], 1))])

    def _project(self, X: np.ndarray) -> np.ndarray:
        assert self._P is not None and self._mu is not None
        U = _unit(X) - self._mu
        # clusters: the columns of P are the centroids, and the context is the soft shares of them
        Z = soft_assign(U, self._P.T, self.cluster_temperature) if self.projection == "clusters" else U @ self._P
        return np.asarray(Z * self._scale)

    def _reset_stats(self) -> None:
        K, d1 = len(self.models), self.d1
        self._A = np.tile(np.eye(d1) * self.reg, (K, 1, 1))
        self._Ainv = np.tile(np.eye(d1) / self.reg, (K, 1, 1))
        self._bq, self._bc = np.zeros((K, d1)), np.zeros((K, d1))
        self._n, self._nc, self._since_inv = np.zeros(K), np.zeros(K), np.zeros(K, dtype=np.int64)
        self._delta = _zero_delta(K, d1)

    def _stats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if self._Ainv is None or self._A is None or self._bq is None or self._bc is None or self._nc is None:
            raise RoutingError("bandit: not initialised: give models and dim, or call fit() / warm_start() first")
        return self._A, self._Ainv, self._bq, self._bc, self._nc

    # -- learning ------------------------------------------------------------
    def fit(self, data: TrainingData) -> BanditRouter:
        """Full-information start: every observed (prompt, model) outcome becomes one observation of that arm.

        Also fits the projection (PCA on ``data.X``) when none is fitted yet.
        This is what ``turnout eval --routers bandit`` measures: the ceiling
        of the bandit's model class when it sees every outcome.
        """
        self.models = list(data.models)
        self.dim = int(np.asarray(data.X).shape[1])
        self._P = self._A = self._n = None  # a fresh start: the projection is fitted again on these prompts
        self.fit_projection(data.X)
        Z = self.features(data.X)
        A, _, bq, bc, nc = self._stats()
        assert self._n is not None
        for j in range(len(self.models)):
            obs = ~np.isnan(data.scores[:, j])
            Zj = Z[obs]
            A[j] += Zj.T @ Zj
            bq[j] += Zj.T @ (data.scores[obs, j] - PRIOR_QUALITY)
            cobs = obs & ~np.isnan(data.costs[:, j])
            bc[j] += Z[cobs].T @ data.costs[cobs, j]
            self._n[j] += obs.sum()
            nc[j] += cobs.sum()
        self._reinvert()
        return self

    def warm_start(
        self,
        X: np.ndarray,
        quality: np.ndarray,
        cost: np.ndarray | None = None,
        *,
        weight: float = 0.1,
        models: list[str] | None = None,
    ) -> BanditRouter:
        """A prior from an offline router: its predicted quality (n × K) on prompts ``X`` as pseudo-observations.

        Each prediction counts ``weight`` of an observation, so real feedback
        soon outweighs it (with ``weight=0.1``, ten predictions weigh as one
        answer). NaN predictions are skipped. Fits the projection on ``X``
        when none is fitted yet.
        """
        if models is not None:
            self.models = list(models)
        if not self.models:
            raise RoutingError("bandit.warm_start needs the models (the columns of quality)")
        quality = np.asarray(quality, dtype=np.float64)
        if quality.shape != (len(_rows(X)), len(self.models)):
            raise RoutingError(f"bandit.warm_start: quality is {quality.shape}, expected {(len(_rows(X)), len(self.models))}")
        if self._P is None:
            self.fit_projection(X)
        if self._A is None:
            self._reset_stats()
        Z = self.features(X)
        with self._lock:
            A, _, bq, bc, nc = self._stats()
            for j in range(len(self.models)):
                ok = ~np.isnan(quality[:, j])
                A[j] += weight * Z[ok].T @ Z[ok]
                bq[j] += weight * Z[ok].T @ (quality[ok, j] - PRIOR_QUALITY)
                if cost is not None:
                    cok = ok & ~np.isnan(cost[:, j])
                    bc[j] += weight * Z[cok].T @ np.asarray(cost, dtype=np.float64)[cok, j]
                    nc[j] += weight * cok.sum()
            self._reinvert()
        return self

    def update(self, x: np.ndarray, arm: int, quality: float, cost: float | None = None) -> None:
        """Learn from one answer: embedding ``x``, the arm that answered, its feedback score (and actual cost)."""
        self.update_features(self.features(x)[0], arm, quality, cost)

    def update_features(self, z: np.ndarray, arm: int, quality: float, cost: float | None = None) -> None:
        """:meth:`update` from a reduced context (:attr:`BanditChoice.features`), e.g. for feedback that comes later."""
        z = np.asarray(z, dtype=np.float64).ravel()
        if z.shape[0] != self.d1:
            raise RoutingError(f"bandit.update: the context has {z.shape[0]} features, expected {self.d1}")
        if not 0 <= arm < len(self.models):
            raise RoutingError(f"bandit.update: arm {arm} out of range (0..{len(self.models) - 1})")
        if not (math.isfinite(quality) and 0.0 <= quality <= 1.0):
            raise RoutingError(f"bandit.update: quality must be a score in [0, 1], got {quality!r}")
        with self._lock:
            A, Ainv, bq, bc, nc = self._stats()
            assert self._n is not None and self._since_inv is not None and self._delta is not None
            outer = np.outer(z, z)
            A[arm] += outer
            # Sherman–Morrison: (A + z zᵀ)⁻¹ = A⁻¹ − A⁻¹z zᵀA⁻¹ / (1 + zᵀA⁻¹z)
            Az = Ainv[arm] @ z
            Ainv[arm] -= np.outer(Az, Az) / (1.0 + z @ Az)
            bq[arm] += z * (quality - PRIOR_QUALITY)
            self._n[arm] += 1
            dl = self._delta
            dl["A"][arm] += outer
            dl["bq"][arm] += z * (quality - PRIOR_QUALITY)
            dl["n"][arm] += 1
            if cost is not None and math.isfinite(cost):
                bc[arm] += z * cost
                nc[arm] += 1
                dl["bc"][arm] += z * cost
                dl["nc"][arm] += 1
            self._since_inv[arm] += 1
            if self._since_inv[arm] >= REINVERT_EVERY:
                Ainv[arm] = np.linalg.inv(A[arm])
                self._since_inv[arm] = 0

    def _reinvert(self) -> None:
        A, Ainv, _, _, _ = self._stats()
        Ainv[:] = np.linalg.inv(A)
        if self._since_inv is not None:
            self._since_inv[:] = 0

    # -- sharing between replicas ----------------------------------------------
    def export_delta(self) -> dict[str, np.ndarray]:
        """The statistics added by :meth:`update` since the last export (and forget them): for other replicas."""
        with self._lock:
            self._stats()
            assert self._delta is not None
            out, self._delta = self._delta, _zero_delta(len(self.models), self.d1)
            return out

    def merge_delta(self, delta: dict[str, np.ndarray]) -> None:
        """Add another replica's :meth:`export_delta`: the statistics are sums, so merging is exact."""
        with self._lock:
            A, _, bq, bc, nc = self._stats()
            assert self._n is not None
            if delta["A"].shape != A.shape:
                raise RoutingError(f"bandit.merge_delta: shapes {delta['A'].shape} and {A.shape} differ (another bandit?)")
            A += delta["A"]
            bq += delta["bq"]
            bc += delta["bc"]
            self._n += delta["n"]
            nc += delta["nc"]
            self._reinvert()

    # -- deciding ------------------------------------------------------------
    def _estimates(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predicted quality, cost and confidence width (each n × K) for reduced contexts ``Z``."""
        with self._lock:
            A, Ainv, bq, bc, nc = self._stats()
            prior_q = self._pooled(A, bq) if self.pooled else 0.0
            # ridge with a prior mean m: θ = A⁻¹ (b + reg · m)
            theta_q = np.einsum("kij,kj->ki", Ainv, bq + self.reg * prior_q)
            theta_c = np.einsum("kij,kj->ki", Ainv, bc)
            width = np.sqrt(np.maximum(np.einsum("ni,kij,nj->nk", Z, Ainv, Z), 0.0))
            has_cost = nc > 0
        quality = PRIOR_QUALITY + Z @ theta_q.T
        # an arm never seen answering has no cost estimate: 0 until one comes (optimistic, so it gets tried)
        cost = np.where(has_cost[None, :], np.maximum(Z @ theta_c.T, 0.0), 0.0)
        return quality, cost, width

    def _pooled(self, A: np.ndarray, bq: np.ndarray) -> np.ndarray:
        """The pooled quality model of every arm's observations: each arm's prior mean.

        A new model is then predicted as the average model on this prompt (hard
        prompts are hard for every model), not as a coin, and learns only how
        it differs from the others. Cost is not pooled: prices differ by
        model far more than prompts differ by cost.
        """
        K, d1 = bq.shape
        A0 = A.sum(axis=0) - (K - 1) * self.reg * np.eye(d1)  # one reg·I, not one per arm
        return np.asarray(np.linalg.solve(A0, bq.sum(axis=0)))

    def probabilities(
        self, X: np.ndarray, costs: np.ndarray | None = None, lam: float = 0.0, available: np.ndarray | None = None
    ) -> np.ndarray:
        """The policy's exact action probabilities (n × K) for embeddings ``X`` (see the module docstring)."""
        return self._policy(self.features(X), costs, lam, available)[0]

    def _policy(
        self, Z: np.ndarray, costs: np.ndarray | None, lam: float, available: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if lam < 0:
            raise RoutingError(f"lam must be >= 0, got {lam}")
        quality, cost_hat, width = self._estimates(Z)
        n, K = quality.shape
        cost = cost_hat if costs is None else np.broadcast_to(np.asarray(costs, dtype=np.float64), (n, K))
        mask = np.ones((n, K), dtype=bool) if available is None else np.broadcast_to(np.asarray(available, bool), (n, K))
        mask = mask & ~np.isnan(cost)
        if not mask.any(axis=1).all():
            raise RoutingError("bandit: a prompt has no available arm")
        util = np.where(mask, quality - lam * cost, -np.inf)
        sd = np.where(mask, np.maximum(self.alpha * width, 1e-9), 1.0)
        # greedy: best predicted utility, ties to the cheaper arm (the policy's rule)
        best = util.max(axis=1, keepdims=True)
        greedy = np.argmin(np.where(mask & (util >= best - 1e-12), cost, np.inf), axis=1)
        rows = np.arange(n)
        # Thompson: each arm's probability of having the best utility under its posterior, capped so that at most
        # max_explore leaves the greedy arm (the surplus goes back to it, the others keep their proportions)
        ts = best_arm_probabilities(util, sd, mask)
        g = ts[rows, greedy]
        scale = np.where(g < 1.0 - self.max_explore, self.max_explore / np.maximum(1.0 - g, 1e-12), 1.0)
        capped = ts * scale[:, None]
        capped[rows, greedy] = np.maximum(g, 1.0 - self.max_explore)
        # the floor: uniform_share of the policy is max_explore spread evenly, so every arm keeps a known minimum
        floor = self.max_explore * mask / mask.sum(axis=1, keepdims=True)
        floor[rows, greedy] += 1.0 - self.max_explore
        probs = (1.0 - self.uniform_share) * capped + self.uniform_share * floor
        return probs, np.where(mask, util, np.nan), np.where(mask, sd, np.nan), greedy

    def choose(
        self,
        x: np.ndarray,
        costs: np.ndarray | None = None,
        lam: float = 0.0,
        rng: np.random.Generator | None = None,
        available: np.ndarray | None = None,
    ) -> BanditChoice:
        """Draw one arm for embedding ``x``; ``costs`` (K, USD) from the fleet's prices, else the learned cost head.

        ``available`` (K booleans) leaves arms out (a key's allowed list, a
        context window); their probability is 0. Returns the arm with its exact
        propensity: log it with the request.
        """
        z = self.features(x)
        probs, util, spread, greedy = self._policy(
            z,
            None if costs is None else np.asarray(costs)[None, :],
            lam,
            None if available is None else np.asarray(available)[None, :],
        )
        p = probs[0]
        rng = rng if rng is not None else np.random.default_rng()
        arm = int(rng.choice(len(p), p=p / p.sum()))
        return BanditChoice(
            arm=arm,
            model=self.models[arm],
            propensity=float(p[arm]),
            probabilities=p,
            scores=util[0],
            spread=spread[0],
            greedy=int(greedy[0]),
            features=z[0],
        )

    def predict(self, X: np.ndarray) -> Prediction:
        """The greedy model of the bandit as a router: predicted quality (clipped to [0, 1]) and cost per arm."""
        quality, cost, _ = self._estimates(self.features(X))
        return Prediction(models=list(self.models), quality=np.clip(quality, 0.0, 1.0), cost=cost)

    @property
    def observations(self) -> np.ndarray:
        """Observations per arm so far (feedback, full-information fit and warm-start weight included)."""
        return np.zeros(0) if self._n is None else self._n.copy()

    # -- persistence ---------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Sufficient statistics and settings (numpy arrays and JSON values); the inverses are rebuilt on load."""
        with self._lock:
            A, _, bq, bc, nc = self._stats()
            assert self._P is not None and self._mu is not None and self._n is not None
            return {
                "params": {
                    "d": self.d,
                    "projection": self.projection,
                    "reg": self.reg,
                    "alpha": self.alpha,
                    "max_explore": self.max_explore,
                    "uniform_share": self.uniform_share,
                    "pooled": self.pooled,
                    "cluster_temperature": self.cluster_temperature,
                    "seed": self.seed,
                },
                "models": list(self.models),
                "dim": self.dim,
                "scale": self._scale,
                "P": self._P.copy(),
                "mu": self._mu.copy(),
                "A": A.copy(),
                "bq": bq.copy(),
                "bc": bc.copy(),
                "n": self._n.copy(),
                "nc": nc.copy(),
            }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> BanditRouter:
        """Rebuild a bandit from :meth:`get_state`'s output (e.g. after a restart)."""
        b = cls(**state["params"])
        b.models, b.dim, b._scale = list(state["models"]), int(state["dim"]), float(state["scale"])
        b._P, b._mu = np.asarray(state["P"], np.float64), np.asarray(state["mu"], np.float64)
        b._reset_stats()
        A, _, bq, bc, nc = b._stats()
        assert b._n is not None
        A[:], bq[:], bc[:] = state["A"], state["bq"], state["bc"]
        b._n[:], nc[:] = state["n"], state["nc"]
        b._reinvert()
        return b


def _phi_cdf(x: np.ndarray) -> np.ndarray:
    """The standard normal CDF (erf by Abramowitz–Stegun 7.1.26, |error| < 1.5e-7)."""
    z = np.abs(x) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * z)
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * np.exp(-z * z)
    return np.asarray(0.5 * (1.0 + np.sign(x) * y))


def best_arm_probabilities(mu: np.ndarray, sd: np.ndarray, mask: np.ndarray, cells: int = 256) -> np.ndarray:
    """P(arm k has the highest draw) for independent normal draws N(mu, sd²) per arm (n × K), by quadrature.

    Deterministic: the same inputs give the same probabilities, so a policy
    that samples from them knows its propensities exactly. Each arm's mass in
    a cell is exact (a difference of CDFs), the others' CDFs are read at the
    cell's middle; rows are normalised to 1.
    """
    m = np.where(mask, mu, np.nan)
    lo = np.nanmin(m - 6 * sd, axis=1, keepdims=True)
    hi = np.nanmax(m + 6 * sd, axis=1, keepdims=True)
    edges = lo + (hi - lo) * np.linspace(0.0, 1.0, cells + 1)[None, :]  # n × (G+1)
    mid = 0.5 * (edges[:, 1:] + edges[:, :-1])
    mu_, sd_ = np.where(mask, mu, 0.0)[:, :, None], sd[:, :, None]
    cdf_edges = _phi_cdf((edges[:, None, :] - mu_) / sd_)  # n × K × (G+1)
    mass = np.diff(cdf_edges, axis=2)  # n × K × G
    cdf_mid = np.where(mask[:, :, None], _phi_cdf((mid[:, None, :] - mu_) / sd_), 1.0)
    log_mid = np.log(np.maximum(cdf_mid, 1e-300))
    others = np.exp(log_mid.sum(axis=1, keepdims=True) - log_mid)  # Π_{j≠k} F_j(mid)
    p = np.where(mask, (mass * others).sum(axis=2), 0.0)
    total = p.sum(axis=1, keepdims=True)
    return np.where(total > 0, p / np.where(total > 0, total, 1.0), mask / mask.sum(axis=1, keepdims=True))


def _zero_delta(K: int, d1: int) -> dict[str, np.ndarray]:
    return {"A": np.zeros((K, d1, d1)), "bq": np.zeros((K, d1)), "bc": np.zeros((K, d1)), "n": np.zeros(K), "nc": np.zeros(K)}


def _rows(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[None, :]
    if X.ndim != 2:
        raise RoutingError(f"bandit: expects a 2-D array of prompt embeddings, got shape {X.shape}")
    return X


def _unit(X: np.ndarray) -> np.ndarray:
    return np.asarray(X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12))


__all__ = ["PRIOR_QUALITY", "BanditChoice", "BanditRouter"]
