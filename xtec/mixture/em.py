"""The EM loop for Gaussian mixtures, written as sufficient statistics.

One pass over the data computes, for the current parameters, per component the
summed responsibilities N_k, the responsibility-weighted sums of x and of x x^T
(or x^2 for diagonal covariances), and the log-likelihood
(:mod:`xtec.mixture.engines` per chunk, :mod:`xtec.mixture.passes` over a Dask
array); the M-step (:func:`xtec.mixture.parameters.m_step`) turns them into
parameters.  :func:`run_em` is the one loop; estimators with another E-step
(label smoothing) pass it their own, and ``accelerate=True`` runs it as SQUAREM.
"""

from __future__ import annotations

import functools
import logging
import math

from xtec.errors import ParameterError
from xtec.mixture.parameters import MixtureParams, SufficientStats, m_step
from xtec.mixture.passes import data_stats

log = logging.getLogger(__name__)


def run_em(X, params: MixtureParams, n: int, *, reg_covar: float, tol: float, max_iter: int,
           engine: str = "auto", e_step=None, accelerate: bool = False):
    """EM from ``params`` until the mean log-likelihood changes by at most
    ``tol * |mean log-likelihood|``: (params, mean loglik, n_iter, converged).

    ``e_step(X, params)`` gives the M-step's sufficient statistics (default: the
    plain mixture's, :func:`data_stats` with ``engine``); estimators with a
    different E-step (label smoothing) pass their own.  ``accelerate`` runs
    SQUAREM (:func:`run_squarem`) instead of plain EM steps; ``n_iter`` then
    counts E-steps (passes over X), as it does for plain EM.
    """
    if e_step is None:
        e_step = functools.partial(data_stats, engine=engine)
    if accelerate:
        return run_squarem(X, params, n, e_step, reg_covar=reg_covar, tol=tol,
                           max_iter=max_iter)
    prev = -math.inf
    converged = False
    ll = -math.inf
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 (it is reported)
        stats, ll = _checked_e_step(e_step, X, params, n)
        params = m_step(stats, reg_covar)
        log.debug("EM iteration %d on %d points: mean log-likelihood %.8g", it, n, ll)
        if abs(ll - prev) <= tol * abs(ll):
            converged = True
            break
        prev = ll
    return params, ll, it, converged


def _checked_e_step(e_step, X, params: MixtureParams, n: int) -> tuple[SufficientStats, float]:
    stats = e_step(X, params)
    ll = stats.loglik / n
    if not math.isfinite(ll):
        raise ParameterError("the log-likelihood is not finite: X holds NaN or inf, "
                             "or reg_covar is 0 with a constant feature")
    return stats, ll


# --------------------------------------------------------------------- acceleration
def run_squarem(X, params: MixtureParams, n: int, e_step, *, reg_covar: float, tol: float,
                max_iter: int):
    """EM accelerated by SQUAREM (Varadhan & Roland 2008, scheme S3), same fixed point.

    Each cycle takes two EM steps from theta0 (theta1, theta2), extrapolates
    along them, theta' = theta0 - 2 a r + a^2 v with r = theta1 - theta0,
    v = theta2 - 2 theta1 + theta0 and a = -|r|/|v| (at most -1), and takes one
    EM step from theta'.  Where theta' is not a valid mixture or its
    log-likelihood is below theta1's, the cycle falls back to theta2, so the
    log-likelihood never falls.  EM on overlapping clusters creeps (the
    issue's data: 31-144 plain steps on a 50,000-row sample); SQUAREM reaches
    a log-likelihood as high or higher there in 1.5-1.9x fewer passes over a
    whole start (one restart of 18 took one pass more; docs/gmm_performance.md).
    Converged by plain EM's rule on a cycle's EM step (theta0 to theta1), or
    when a cycle's start is within ``tol * |ll|`` of the previous cycle's
    theta1.  Returns (params, ll, passes, converged).
    """
    passes = 0
    prev = -math.inf
    while True:
        stats0, ll0 = _checked_e_step(e_step, X, params, n)
        passes += 1
        log.debug("SQUAREM pass %d on %d points: mean log-likelihood %.8g", passes, n, ll0)
        theta1 = m_step(stats0, reg_covar)
        if abs(ll0 - prev) <= tol * abs(ll0):
            return theta1, ll0, passes, True
        if passes + 3 > max_iter:  # no room for a whole cycle: plain steps for the rest
            if passes == max_iter:
                return theta1, ll0, passes, False
            params, ll, it, converged = run_em(X, theta1, n, reg_covar=reg_covar, tol=tol,
                                               max_iter=max_iter - passes, e_step=e_step)
            return params, ll, passes + it, converged
        stats1, ll1 = _checked_e_step(e_step, X, theta1, n)
        theta2 = m_step(stats1, reg_covar)
        passes += 1
        if abs(ll1 - ll0) <= tol * abs(ll1):  # plain EM's own rule, on the cycle's EM step
            return theta2, ll1, passes, True
        prev = ll1
        v0, v1, v2 = params.as_vector(), theta1.as_vector(), theta2.as_vector()
        r, v = v1 - v0, v2 - 2.0 * v1 + v0
        norm_v = math.sqrt(float(v @ v))
        alpha = min(-math.sqrt(float(r @ r)) / norm_v, -1.0) if norm_v > 0 else -1.0
        params = theta2
        if alpha < -1.0:
            jump = params.from_vector(v0 - 2.0 * alpha * r + alpha * alpha * v)
            if jump is not None:
                stats_j = e_step(X, jump)
                passes += 1
                ll_j = stats_j.loglik / n
                if math.isfinite(ll_j) and ll_j >= ll1:
                    params = m_step(stats_j, reg_covar)
