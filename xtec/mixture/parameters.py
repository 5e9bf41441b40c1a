"""Mixture parameters and sufficient statistics, with one private function per
covariance type (as scikit-learn's ``_gaussian_mixture``), chosen from the
tables at the end of this module instead of by ``if`` on array shapes.

Shapes: ``weights`` (K,); ``means`` (K, T); ``covariances`` (K, T) for
'diag', (K, T, T) for 'full'; sufficient statistics ``nk`` (K,), ``sx`` (K, T),
``sxx`` (K, T) for 'diag', (K, T, T) for 'full'.  Host float64 throughout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from xtec.errors import ParameterError

COVARIANCE_TYPES = ("diag", "full")
_LOG_2PI = math.log(2.0 * math.pi)


# ------------------------------------------------------- one function per covariance type
def _precisions_cholesky_diag(cov: np.ndarray) -> np.ndarray:
    return 1.0 / np.sqrt(cov)


def _precisions_cholesky_full(cov: np.ndarray) -> np.ndarray:
    t = cov.shape[1]
    out = np.empty_like(cov)
    for k, c in enumerate(cov):
        try:
            chol = np.linalg.cholesky(c)
        except np.linalg.LinAlgError:
            raise ParameterError(
                "a covariance became singular; increase reg_covar or use diag covariances"
            ) from None
        out[k] = np.linalg.solve(chol, np.eye(t)).T
    return out


def _log_det_cholesky_diag(prec_chol: np.ndarray) -> np.ndarray:
    return np.sum(np.log(prec_chol), axis=1)


def _log_det_cholesky_full(prec_chol: np.ndarray) -> np.ndarray:
    return np.sum(np.log(np.diagonal(prec_chol, axis1=1, axis2=2)), axis=1)


def _covariances_diag(sxx: np.ndarray, nk: np.ndarray, means: np.ndarray,
                      reg_covar: float) -> np.ndarray:
    cov = sxx / nk[:, None] - means**2
    return np.maximum(cov, 0.0) + reg_covar


def _covariances_full(sxx: np.ndarray, nk: np.ndarray, means: np.ndarray,
                      reg_covar: float) -> np.ndarray:
    cov = sxx / nk[:, None, None] - means[:, :, None] * means[:, None, :]
    cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))
    cov += reg_covar * np.eye(means.shape[1])[None]
    return cov


def _unconstrained_diag(cov: np.ndarray) -> np.ndarray:
    return np.log(cov)


def _unconstrained_full(cov: np.ndarray) -> np.ndarray:
    return cov


def _constrained_diag(v: np.ndarray) -> np.ndarray | None:
    return np.exp(v)


def _constrained_full(v: np.ndarray) -> np.ndarray | None:
    cov = 0.5 * (v + np.swapaxes(v, 1, 2))
    return None if np.any(np.linalg.eigvalsh(cov)[:, 0] <= 0.0) else cov


def _sxx_shape_diag(k: int, t: int) -> tuple[int, ...]:
    return (k, t)


def _sxx_shape_full(k: int, t: int) -> tuple[int, ...]:
    return (k, t, t)


def _n_covariance_parameters_diag(k: int, t: int) -> int:
    return k * t


def _n_covariance_parameters_full(k: int, t: int) -> int:
    return k * t * (t + 1) // 2


# ----------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class MixtureParams:
    """Mixture parameters, host float64.

    weights : (K,); means : (K, T); covariances : (K, T) for 'diag', (K, T, T) for 'full'.
    """

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray

    @property
    def covariance_type(self) -> str:
        return COVARIANCE_TYPES[self.covariances.ndim - 2]

    def precisions_cholesky(self) -> np.ndarray:
        """(K, T) 1/sqrt(var) for 'diag'; (K, T, T) upper-triangular U with
        U U^T = Sigma^{-1} for 'full' (scikit-learn's convention)."""
        return PRECISIONS_CHOLESKY[self.covariance_type](self.covariances)

    def log_norm(self, prec_chol: np.ndarray) -> np.ndarray:
        """(K,) log weight + log det of the precision Cholesky - T/2 log 2 pi."""
        t = self.means.shape[1]
        logdet = _LOG_DET_CHOLESKY[self.covariance_type](prec_chol)
        return np.log(self.weights) + logdet - 0.5 * t * _LOG_2PI

    def as_vector(self) -> np.ndarray:
        """The parameters as one unconstrained vector: log weights, means, and log
        variances (diag) or covariances (full)."""
        cov = _UNCONSTRAINED[self.covariance_type](self.covariances)
        return np.concatenate([np.log(self.weights), self.means.ravel(), cov.ravel()])

    def from_vector(self, v: np.ndarray) -> MixtureParams | None:
        """Inverse of :meth:`as_vector`, shaped like ``self``; None where the point
        is not a valid mixture."""
        k, t = self.means.shape
        if not np.all(np.isfinite(v)):
            return None
        w = np.exp(v[:k] - v[:k].max())
        means = v[k:k + k * t].reshape(k, t)
        cov = _CONSTRAINED[self.covariance_type](v[k + k * t:].reshape(self.covariances.shape))
        if cov is None:
            return None
        return MixtureParams(w / w.sum(), means, cov)


@dataclass
class SufficientStats:
    """Per-component sums over a set of points (host float64).

    nk (K,); sx (K, T); sxx (K, T) diag or (K, T, T) full; loglik, n: totals.
    """

    nk: np.ndarray
    sx: np.ndarray
    sxx: np.ndarray
    loglik: float
    n: int

    @property
    def covariance_type(self) -> str:
        return COVARIANCE_TYPES[self.sxx.ndim - 2]

    def __add__(self, other: SufficientStats) -> SufficientStats:
        return SufficientStats(self.nk + other.nk, self.sx + other.sx, self.sxx + other.sxx,
                               self.loglik + other.loglik, self.n + other.n)


def empty_stats(k: int, t: int, covariance_type: str) -> SufficientStats:
    """Statistics of no points: zeros of the right shapes."""
    return SufficientStats(np.zeros(k), np.zeros((k, t)),
                           np.zeros(SXX_SHAPE[covariance_type](k, t)), 0.0, 0)


def m_step(stats: SufficientStats, reg_covar: float) -> MixtureParams:
    """Maximum-likelihood parameters from sufficient statistics."""
    nk = stats.nk + 10 * np.finfo(np.float64).eps
    means = stats.sx / nk[:, None]
    cov = _COVARIANCES[stats.covariance_type](stats.sxx, nk, means, reg_covar)
    return MixtureParams(nk / nk.sum(), means, cov)


def n_parameters(n_components: int, n_features: int, covariance_type: str) -> int:
    """Free parameters of a mixture over T features: weights, means and covariances
    (for the BIC)."""
    k, t = int(n_components), int(n_features)
    return N_COVARIANCE_PARAMETERS[covariance_type](k, t) + k * t + k - 1


PRECISIONS_CHOLESKY = {"diag": _precisions_cholesky_diag, "full": _precisions_cholesky_full}
_LOG_DET_CHOLESKY = {"diag": _log_det_cholesky_diag, "full": _log_det_cholesky_full}
_COVARIANCES = {"diag": _covariances_diag, "full": _covariances_full}
_UNCONSTRAINED = {"diag": _unconstrained_diag, "full": _unconstrained_full}
_CONSTRAINED = {"diag": _constrained_diag, "full": _constrained_full}
SXX_SHAPE = {"diag": _sxx_shape_diag, "full": _sxx_shape_full}
N_COVARIANCE_PARAMETERS = {"diag": _n_covariance_parameters_diag,
                           "full": _n_covariance_parameters_full}
