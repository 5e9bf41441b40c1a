"""Choosing the number of clusters K by the Bayesian information criterion.

:func:`bic_scan` fits the Gaussian mixture for every K in a range and several
seeds.  With a distributed client active the (K, seed) fits run in parallel as
tasks on the cluster (the trajectories are scattered to the workers once);
otherwise they run one after another in-process.  Trajectories given as a Dask
array are gathered first when they fit in ``gather_limit`` bytes; larger ones
are fitted one (K, seed) at a time with the Dask EM (each fit is then
distributed over the chunks).

BIC = -2 log L + p log N keeps falling with K on large N long after the planted
structure is resolved (every extra component buys a little likelihood on
hundreds of thousands of points), so besides the minimum :func:`choose_k`
offers an *elbow* rule: the first K after which every further improvement of
the best BIC stays below ``frac`` (0.25) of the largest single-step improvement.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import dask
import dask.array as da
import numpy as np

from xtec.errors import ParameterError
from xtec.mixture.gaussian_mixture import GaussianMixture, bic_score
from xtec.runtime.schedulers import current_client

log = logging.getLogger(__name__)

RULES = ("elbow", "min")


@dataclass
class BICResult:
    """BIC and log-likelihood per K and seed.

    ks : (nK,) int; seeds : (nS,) int; bic : (nK, nS) float (lower is better);
    loglik : (nK, nS) mean log-likelihood per point; n_iter : (nK, nS) int;
    converged : (nK, nS) bool; n_points : int; n_features : int.
    """

    ks: np.ndarray
    seeds: np.ndarray
    bic: np.ndarray
    loglik: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray
    n_points: int
    n_features: int
    params: dict = field(default_factory=dict)

    @property
    def best_bic(self) -> np.ndarray:
        """(nK,) lowest BIC over the seeds."""
        return self.bic.min(axis=1)

    @property
    def mean_bic(self) -> np.ndarray:
        return self.bic.mean(axis=1)

    @property
    def std_bic(self) -> np.ndarray:
        return self.bic.std(axis=1)

    @property
    def best_loglik(self) -> np.ndarray:
        """(nK,) mean log-likelihood per point of the seed with the lowest BIC."""
        return self.loglik[np.arange(len(self.ks)), self.bic.argmin(axis=1)]

    def table(self) -> list[dict]:
        """One row per K (for printing, JSON or a DataFrame)."""
        return [
            dict(
                k=int(k),
                best_bic=float(b),
                mean_bic=float(m),
                std_bic=float(s),
                loglik=float(ll),
                all_converged=bool(c),
            )
            for k, b, m, s, ll, c in zip(
                self.ks,
                self.best_bic,
                self.mean_bic,
                self.std_bic,
                self.best_loglik,
                self.converged.all(axis=1),
            )
        ]

    def to_dict(self) -> dict:
        return dict(
            ks=self.ks.tolist(),
            seeds=self.seeds.tolist(),
            bic=self.bic.tolist(),
            loglik=self.loglik.tolist(),
            n_iter=self.n_iter.tolist(),
            converged=self.converged.tolist(),
            n_points=self.n_points,
            n_features=self.n_features,
            params=self.params,
            k_min=choose_k(self, "min"),
            k_elbow=choose_k(self, "elbow"),
        )


def _fit_one(X, index, k: int, seed: int, kwargs: dict) -> tuple[float, float, int, bool]:
    """(BIC, mean log-likelihood, iterations, converged) of one fit."""
    gmm = GaussianMixture(k, random_state=seed, **kwargs).fit(X, index)
    ll = float(gmm.lower_bound_)
    bic = bic_score(ll, int(X.shape[0]), gmm.n_parameters())
    return bic, ll, int(gmm.n_iter_), bool(gmm.converged_)


def bic_scan(
    X,
    index=None,
    ks: Iterable[int] = range(2, 15),
    seeds: Iterable[int] = (0, 1, 2),
    covariance_type: str = "diag",
    *,
    n_init: int = 1,
    max_iter: int = 500,
    tol: float = 1e-6,
    gather_limit: int = 2 << 30,
    **gmm_kwargs,
) -> BICResult:
    """Fit a GaussianMixture for every K in ``ks`` and seed in ``seeds``.

    X : (N, T) rescaled trajectories, NumPy or Dask; index : (N,) global voxel
    ids (NumPy or Dask), which fix the initial subsample whatever the chunking.
    n_init : restarts per fit (the seeds already give restarts).
    gather_limit : bytes up to which Dask X is gathered for parallel fits.
    Other keyword arguments go to :class:`~xtec.mixture.gaussian_mixture.GaussianMixture`.

    The BIC of each fit is :func:`~xtec.mixture.gaussian_mixture.bic_score` of its ``lower_bound_``:
    -2 N lower_bound_ + p log N, p the free parameters.
    """
    ks = np.array(sorted({int(k) for k in ks}), dtype=np.int64)
    seeds = np.array(list(dict.fromkeys(int(s) for s in seeds)), dtype=np.int64)
    if ks.size == 0 or seeds.size == 0:
        raise ParameterError("bic_scan needs at least one K and one seed")
    if ks[0] < 1:
        raise ParameterError(f"every K must be >= 1 (got {ks.tolist()})")
    n = int(X.shape[0])
    if ks[-1] > n:
        raise ParameterError(f"K up to {ks[-1]} but only {n} trajectories")
    kwargs = dict(
        covariance_type=covariance_type, n_init=n_init, max_iter=max_iter, tol=tol, **gmm_kwargs
    )
    if isinstance(X, da.Array) and X.nbytes <= gather_limit:
        X, index = dask.compute(X, index)
    if isinstance(index, da.Array) and not isinstance(X, da.Array):
        index = index.compute()
    if index is None and not isinstance(X, da.Array):
        index = np.arange(n, dtype=np.int64)
    jobs = [(k, s) for k in ks for s in seeds]
    client = current_client()
    if client is not None and not isinstance(X, da.Array):
        # One copy of the trajectories per worker, then one task per (K, seed);
        # the largest K first so the slowest fits do not trail at the end.
        xf, idf = client.scatter([X, index], broadcast=True)
        order = sorted(range(len(jobs)), key=lambda j: -jobs[j][0])
        futs = {
            j: client.submit(
                _fit_one, xf, idf, int(jobs[j][0]), int(jobs[j][1]), kwargs, pure=False
            )
            for j in order
        }
        out = [futs[j].result() for j in range(len(jobs))]
    else:
        out = []
        for k, s in jobs:
            out.append(_fit_one(X, index, int(k), int(s), kwargs))
            log.info("K=%d seed=%d: BIC %.6g", k, s, out[-1][0])
    shape = (len(ks), len(seeds))
    res = np.array([o[:2] for o in out], dtype=np.float64).reshape(*shape, 2)
    return BICResult(
        ks=ks,
        seeds=seeds,
        bic=res[..., 0],
        loglik=res[..., 1],
        n_iter=np.array([o[2] for o in out]).reshape(shape),
        converged=np.array([o[3] for o in out]).reshape(shape),
        n_points=n,
        n_features=int(X.shape[1]),
        params=dict(kwargs),
    )


def choose_k(result: BICResult, rule: str = "elbow", frac: float = 0.25) -> int:
    """K chosen from a BIC scan.

    rule 'min': the K of the lowest best BIC.  rule 'elbow': with gains
    g_j = B(K_j) - B(K_{j+1}) of the best BIC between consecutive K, the
    smallest K_j after which every further gain is below ``frac`` x max(g): the
    curve has gone flat after it, later components only buy the little
    likelihood that any extra component buys on many points.  Falls back to the
    minimum when there are fewer than three K.
    """
    if rule not in RULES:
        raise ParameterError(f"rule must be one of {RULES} (got {rule!r})")
    if not 0 < frac < 1:
        raise ParameterError(f"frac must lie in (0, 1) (got {frac!r})")
    b = result.best_bic
    ks = result.ks
    k_min = int(ks[int(np.argmin(b))])
    if rule == "min" or len(ks) < 3:
        return k_min
    gain = b[:-1] - b[1:]  # gain[j]: from ks[j] to ks[j + 1]
    top = gain.max()
    if top <= 0:
        return int(ks[0])
    small = gain < frac * top
    # tail[j]: every gain from ks[j] onwards is small.
    tail = np.logical_and.accumulate(small[::-1])[::-1]
    return int(ks[int(np.argmax(tail))]) if tail.any() else int(ks[-1])
