"""Gaussian mixtures of temperature trajectories, fitted by EM on arrays or Dask.

:class:`GaussianMixture` is a small scikit-learn-style estimator: parameters in
one validated table, ``get_params``/``set_params``, ``fit`` -> start
(:mod:`xtec.mixture.start`) -> EM (:func:`xtec.mixture.em.run_em`) through the ``_e_step``
hook that variants override (label smoothing, :mod:`xtec.spatial.smoothing`).  The
math it runs on NumPy, CuPy or Dask chunks lives in :mod:`xtec.mixture.em`.
"""

from __future__ import annotations

import inspect
import logging
import math

import dask.array as da
import numpy as np

from xtec.backend import namespace
from xtec.errors import ParameterError, check_choice
from xtec.mixture.em import run_em
from xtec.mixture.engines import ENGINES, chunk_predict, log_prob, logsumexp
from xtec.mixture.parameters import COVARIANCE_TYPES, MixtureParams, SufficientStats, n_parameters
from xtec.mixture.passes import data_stats
from xtec.mixture.start import (
    best_start,
    canonical_order,
    init_sample,
)
from xtec.runtime.chunks import map_blocks_dropping

log = logging.getLogger(__name__)


def bic_score(mean_loglik: float, n_points: int, n_params: int) -> float:
    """Bayesian information criterion -2 N mean_loglik + p log N (lower is better)."""
    return -2.0 * mean_loglik * n_points + n_params * math.log(n_points)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


# Every constructor parameter: (test, what it must be) or the allowed choices.
_PARAMETER_CONSTRAINTS: dict[str, tuple] = {
    "n_components": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "covariance_type": COVARIANCE_TYPES,
    "tol": (lambda v: _is_real(v) and v >= 0, "a number >= 0"),
    "reg_covar": (lambda v: _is_real(v) and v >= 0, "a number >= 0"),
    "max_iter": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "n_init": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "init_sample": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "random_state": (_is_int, "an integer"),
    "engine": ENGINES,
}


def validate_parameters(estimator, constraints: dict[str, tuple]) -> None:
    """Raise :class:`ParameterError` naming the first parameter that breaks its constraint."""
    for name, rule in constraints.items():
        value = getattr(estimator, name)
        if isinstance(rule[0], str):
            check_choice(value, rule, name)
        elif not rule[0](value):
            raise ParameterError(f"{name} must be {rule[1]} (got {value!r})")


class ParamsMixin:
    """``get_params``/``set_params`` from the constructor's signature, as scikit-learn's
    ``BaseEstimator`` (so ``sklearn.base.clone`` works) without importing scikit-learn."""

    @classmethod
    def _get_param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return sorted(p.name for p in sig.parameters.values()
                      if p.name != "self" and p.kind is not p.VAR_KEYWORD)

    def get_params(self, deep: bool = True) -> dict:
        """The constructor's parameters and their values (``deep`` as in scikit-learn)."""
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params):
        """Set constructor parameters; returns self."""
        valid = self._get_param_names()
        for name, value in params.items():
            if name not in valid:
                raise ParameterError(f"{name} is not a parameter of {type(self).__name__} "
                                     f"(parameters: {', '.join(valid)})")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items()
                         if not hasattr(v, "shape"))
        return f"{type(self).__name__}({args})"


class GaussianMixture(ParamsMixin):
    """Gaussian mixture fitted by EM, for NumPy, array-API and Dask arrays.

    Parameters
    ----------
    n_components : int
        Number of clusters K.
    covariance_type : {'diag', 'full'}
    tol : float
        Stop when the mean log-likelihood per point changes by at most
        ``tol * |mean log-likelihood|`` between iterations.
    reg_covar : float
        Variance floor added to the diagonal of every covariance.
    max_iter : int
    n_init : int
        Restarts from different k-means++ seeds; the best log-likelihood wins.
    init_sample : int
        Size of the subsample k-means++ runs on.
    random_state : int
    engine : {'auto', 'numba', 'numpy', 'array-api'}

    Attributes
    ----------
    weights_ : (K,); means_ : (K, T); covariances_ : (K, T) or (K, T, T)
    converged_ : bool; n_iter_ : int; lower_bound_ : float (mean log-likelihood)

    ``get_params``/``set_params`` as scikit-learn's, so ``sklearn.base.clone`` works.  Subclasses change the model through the
    E-step hook :meth:`_e_step` (see :class:`xtec.spatial.smoothing.SmoothedGaussianMixture`).
    """

    _parameter_constraints = _PARAMETER_CONSTRAINTS

    def __init__(self, n_components: int = 4, *, covariance_type: str = "diag",
                 tol: float = 1e-6, reg_covar: float = 1e-6, max_iter: int = 500,
                 n_init: int = 3, init_sample: int = 50_000, random_state: int = 0,
                 engine: str = "auto"):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_sample = init_sample
        self.random_state = random_state
        self.engine = engine

    # -- validation
    def _validate(self, X) -> None:
        validate_parameters(self, self._parameter_constraints)
        if len(X.shape) != 2:
            raise ParameterError(f"X must be 2-D (n_points, n_temperatures), got shape {X.shape}")
        n = X.shape[0]
        if isinstance(n, float) and math.isnan(n):
            raise ParameterError("X has unknown chunk sizes; call compute_chunk_sizes() first")
        if n < self.n_components:
            raise ParameterError(
                f"K={self.n_components} clusters but only {n} points to cluster; lower "
                "n_components or keep more voxels"
            )

    @property
    def params_(self) -> MixtureParams:
        return MixtureParams(self.weights_, self.means_, self.covariances_)

    def _set_fitted(self, p: MixtureParams) -> None:
        self.weights_, self.means_, self.covariances_ = p.weights, p.means, p.covariances

    # -- fitting
    def fit(self, X, index=None) -> GaussianMixture:
        """Fit to X of shape (N, T): NumPy, array-API or Dask (chunked along N).

        index : (N,) int, optional
            Global ids of the rows (voxel indices); they choose the k-means++
            subsample, so the fit does not depend on row order or chunking.
        """
        self._validate(X)
        n = int(X.shape[0])
        sample = init_sample(X, index, self.init_sample, self.random_state)
        if not np.all(np.isfinite(sample)):
            raise ParameterError("X holds NaN or infinite values")
        start = best_start(sample, self.n_components, self.covariance_type, self.reg_covar,
                           self.n_init, self.random_state, tol=self.tol,
                           max_iter=self.max_iter, engine=self.engine)
        params, ll, n_iter, converged = self._em(X, start, n, self._e_step)
        log.info("EM on all %d points: mean log-likelihood %.6g after %d iterations", n, ll,
                 n_iter)
        order = canonical_order(params.means)
        self._set_fitted(MixtureParams(params.weights[order], params.means[order],
                                       params.covariances[order]))
        self.lower_bound_, self.n_iter_, self.converged_ = ll, n_iter, converged
        self.n_features_in_ = int(X.shape[1])
        if not converged:
            log.warning("EM did not converge in %d iterations", self.max_iter)
        return self

    # SQUAREM (xtec.mixture.em.run_squarem) on the EM map: same fixed point, fewer passes.
    _accelerated = True

    def _e_step(self, X, params: MixtureParams) -> SufficientStats:
        """E-step over the data given to ``fit``: the M-step's sufficient statistics
        and the log-likelihood at ``params``.  The hook subclasses override."""
        return data_stats(X, params, self.engine)

    def _em(self, X, params: MixtureParams, n: int, e_step):
        """EM from ``params`` with this model's ``e_step(X, params)`` hook: see :func:`run_em`."""
        return run_em(X, params, n, reg_covar=self.reg_covar, tol=self.tol,
                      max_iter=self.max_iter, e_step=e_step, accelerate=self._accelerated)

    # -- inference
    def _check_fitted(self):
        if not hasattr(self, "means_"):
            raise ParameterError("this GaussianMixture is not fitted yet; call fit first")

    def predict(self, X):
        """Component of each row: (N,) int16 (a Dask array for Dask input)."""
        self._check_fitted()
        p = self.params_
        if isinstance(X, da.Array):
            if X.numblocks[1] != 1:
                X = X.rechunk({1: -1})
            return map_blocks_dropping(chunk_predict, X, 1, p, self.engine, dtype=np.int16,
                                       meta=np.empty(0, np.int16))
        return chunk_predict(X, p, self.engine)

    def predict_proba(self, X):
        """Responsibilities (N, K) float64."""
        self._check_fitted()
        if isinstance(X, da.Array):
            return X.map_blocks(self._proba, dtype=np.float64,
                                chunks=(X.chunks[0], (self.n_components,)))
        return self._proba(X)

    def _proba(self, X):
        xp = namespace(X)
        lp = log_prob(X, self.params_)
        return xp.exp(lp - logsumexp(lp, xp)[:, None])

    def score(self, X) -> float:
        """Mean log-likelihood per row."""
        self._check_fitted()
        s = data_stats(X, self.params_, self.engine)
        return s.loglik / max(s.n, 1)

    def n_parameters(self) -> int:
        return n_parameters(self.n_components, self.n_features_in_, self.covariance_type)

    def bic(self, X) -> float:
        """Bayesian information criterion (lower is better)."""
        return bic_score(self.score(X), int(X.shape[0]), self.n_parameters())

    def aic(self, X) -> float:
        return -2.0 * self.score(X) * int(X.shape[0]) + 2 * self.n_parameters()
