"""Gaussian mixtures fitted by a distributed EM.

``gaussian_mixture`` (the estimator) -> ``start`` (k-means++, restarts) -> ``em``
(the loop, SQUAREM) over ``passes`` (Dask chunks) of ``engines`` (one chunk:
numba kernels or the array API) on ``parameters`` (one function per covariance
type); ``select`` chooses K by BIC, ``merge`` joins components, ``profiles``
labels voxels and summarises clusters.
"""

from xtec.mixture.em import run_em, run_squarem
from xtec.mixture.engines import (
    ENGINES,
    chunk_predict,
    chunk_stats,
    log_prob,
    logsumexp,
    stats_array_api,
    stats_numba,
    warm_kernels,
)
from xtec.mixture.gaussian_mixture import GaussianMixture, bic_score
from xtec.mixture.parameters import (
    COVARIANCE_TYPES,
    MixtureParams,
    SufficientStats,
    m_step,
    n_parameters,
)
from xtec.mixture.passes import data_stats
from xtec.mixture.start import (
    best_start,
    canonical_order,
    hash_uniform,
    init_sample,
    kmeans_plusplus,
    params_from_labels,
    restart_rows,
)

__all__ = [
    "COVARIANCE_TYPES", "ENGINES", "GaussianMixture", "MixtureParams", "SufficientStats",
    "best_start", "bic_score", "canonical_order", "chunk_predict", "chunk_stats", "data_stats",
    "hash_uniform", "init_sample", "kmeans_plusplus", "log_prob", "logsumexp", "m_step",
    "n_parameters", "params_from_labels", "restart_rows", "run_em", "run_squarem",
    "stats_array_api", "stats_numba", "warm_kernels",
]
