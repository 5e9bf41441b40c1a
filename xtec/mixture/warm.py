"""Load (or compile, once per cache) every numba kernel an ``xtec cluster`` run
calls, with the argument types the run calls them with.

numba compiles a kernel per signature on its first call and keeps it in its disk
cache (:mod:`xtec.runtime.kernel_cache` says where); a later process only loads
it.  :func:`warm_stage_kernels` is what the pipeline runs while the first pass
reads (in a thread in-process, on every Dask worker), :func:`prepare_kernels` is
``xtec prepare``: both covariance types into the cache before the first run.
Calling a kernel on a few rows, not ``dispatcher.compile(signature)``, keeps the
types exactly those of a run (numba types a literal argument apart).
"""

from __future__ import annotations

import time

import numpy as np

from xtec.io.hdf5_chunks import warm_kernels as warm_reader
from xtec.mixture.engines import warm_kernels
from xtec.mixture.parameters import MixtureParams
from xtec.mixture.profiles import warm_kernels as warm_profiles
from xtec.mixture.start import init_sample, kmeans_plusplus, params_from_labels, restart_e_step
from xtec.preprocess.kernels import kernels
from xtec.preprocess.threshold import warm_kernels as warm_threshold
from xtec.preprocess.trajectories import flat_indices_block, summary_block, trajectories_block


def warm_first_pass() -> bool:
    """The HDF5 chunk reader, the first pass, the peak search, the kept
    trajectories' gather and the threshold's passes."""
    warm_reader()
    x = np.ones((2, 1, 1, 2), np.float32)
    summary_block(x)
    trajectories_block(x, np.ones((1, 1, 2), bool), "mean")
    flat_indices_block(np.ones((1, 1, 2), bool), (0, 0, 0), (1, 1, 2))
    # the lattice estimate's peak search (in the mean volume, float32)
    kernels().local_maxima_among(np.ones((1, 1, 2), np.float32), np.zeros(1, np.int64), 0.0)
    return warm_threshold()


def warm_sample() -> np.ndarray:
    """The hashed subsample's kernels (run per chunk, on the workers of a cluster)."""
    rows = np.arange(4, dtype=np.float32).reshape(2, 2)
    return init_sample(rows, np.arange(2), 2, 0)


def warm_in_memory_sample() -> np.ndarray:
    """The subsample of an in-memory fit without ids (``GaussianMixture.fit(X)``
    of a NumPy X), which no ``xtec cluster`` run takes: for ``xtec prepare``."""
    return init_sample(np.arange(4, dtype=np.float32).reshape(2, 2), None, 2, 0)


def warm_start(covariance_type: str) -> bool:
    """The EM start: k-means++ and Lloyd steps, parameters from labels, and the
    restarts' float32 E-step (on a cluster they run in the client)."""
    sample = warm_sample()
    labels = kmeans_plusplus(sample, 1, np.random.default_rng(0))
    params_from_labels(sample, labels, 1, covariance_type, 1e-6)
    identity = {"diag": np.ones((1, 2)), "full": np.eye(2)[None]}[covariance_type]
    params = MixtureParams(np.ones(1), np.zeros((1, 2)), identity)
    rows = np.zeros((2, 2), np.float32)
    restart_e_step(rows, "auto", covariance_type)(rows, params)
    return True


def warm_worker_kernels(covariance_type: str) -> bool:
    """The kernels a Dask worker calls: first pass, threshold, the sample's
    hash, the EM's passes and labels, profiles (not the start's: the client
    runs it, and on an empty cache each of them compiles for seconds)."""
    return (warm_first_pass() and warm_sample() is not None and warm_kernels(covariance_type)
            and warm_profiles())


def warm_stage_kernels(covariance_type: str) -> bool:
    """Every kernel of a run with ``covariance_type``: first pass, threshold, EM
    start and EM, profiles."""
    return warm_worker_kernels(covariance_type) and warm_start(covariance_type)


def prepare_kernels(covariance_types=("diag", "full")) -> dict[str, float]:
    """Load or compile every kernel of a run for each covariance type; seconds
    per stage (the first stage also pays numba's own start-up)."""
    seconds = {}
    tick = time.perf_counter()
    warm_first_pass()
    warm_profiles()
    warm_in_memory_sample()
    seconds["first pass, threshold, profiles"] = time.perf_counter() - tick
    for cov in covariance_types:
        tick = time.perf_counter()
        warm_start(cov)
        warm_kernels(cov)
        seconds[f"EM start and EM ({cov})"] = time.perf_counter() - tick
    return seconds
