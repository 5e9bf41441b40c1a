"""Where EM starts: a chunking-independent subsample, k-means++ restarts, order.

The initial means come from a subsample chosen by a hash of each voxel's global
index (not its position in a chunk), and components are put in a canonical
order (by the slope of their mean trajectory), so a seed gives the same labels
whatever the chunking or the number of workers.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import dask.array as da
import numpy as np

from xtec.backend import to_numpy
from xtec.mixture.em import run_em
from xtec.mixture.engines import PARALLEL_MIN_ROWS, fixed_rows_stats, set_numba_threads
from xtec.mixture.kernels import start_kernels
from xtec.mixture.parameters import MixtureParams, SufficientStats, m_step
from xtec.runtime.chunks import per_block

log = logging.getLogger(__name__)


# ------------------------------------------------------------------- initialisation
def hash_uniform(index: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per integer id (splitmix64 of id and seed).

    Depends only on the id, so a subsample drawn with it is the same whatever
    order or chunking the ids come in.
    """
    ids = np.ascontiguousarray(index).astype(np.uint64, copy=False).ravel()
    return start_kernels().splitmix_uniform(ids, seed & 0xFFFFFFFF).reshape(np.shape(index))


def _sample_chunk(X, index, rate, seed):
    if index is None:  # the rows' positions are their ids
        return start_kernels().sample_range(np.ascontiguousarray(to_numpy(X)), rate,
                                            seed & 0xFFFFFFFF)
    idx = to_numpy(index)
    keep = np.flatnonzero(hash_uniform(idx, seed) < rate)
    return idx[keep], start_kernels().take_rows(np.ascontiguousarray(to_numpy(X)), keep)


def init_sample(X, index, size: int, seed: int) -> np.ndarray:
    """A subsample of about ``size`` rows of X, chosen by hashed ids, in id order.

    index : (N,) ids of X's rows, or None: the rows' positions 0..N-1.
    """
    n = X.shape[0]
    rate = min(1.0, size / max(n, 1))
    if isinstance(X, da.Array):
        if index is None:
            index = da.arange(n, chunks=(X.chunks[0],), dtype=np.int64)
        elif not isinstance(index, da.Array):
            index = da.from_array(np.asarray(index), chunks=(X.chunks[0],))
        parts = per_block(_sample_chunk, X, index, args=(rate, seed))
    else:
        parts = [_sample_chunk(X, index, rate, seed)]
    if len(parts) == 1:
        ids, rows = parts[0]
    else:
        ids = np.concatenate([p[0] for p in parts])
        rows = np.concatenate([p[1] for p in parts])
    if ids.size and np.any(ids[1:] < ids[:-1]):  # rows usually come in id order
        rows = rows[np.argsort(ids, kind="stable")]
    return rows


_LLOYD_BLOCK = 128  # rows per block of the Lloyd steps (as the E-step's)


def lloyd_blocks(X: np.ndarray) -> np.ndarray:
    """X (n, T) as the Lloyd steps read it: float32 blocks of rows transposed to
    columns, (n_blocks, T, rows).  Made once per sample, shared by its restarts."""
    return start_kernels().row_blocks(np.ascontiguousarray(X, dtype=np.float32), _LLOYD_BLOCK,
                                      np.zeros(0, np.float32))


def kmeans_plusplus(X: np.ndarray, k: int, rng: np.random.Generator,
                    n_lloyd: int = 8, blocks: np.ndarray | None = None) -> np.ndarray:
    """k-means++ seeding followed by a few Lloyd iterations; X (n, T) -> labels (n,).

    Eight Lloyd steps, not twenty: a step costs about an EM pass over the
    sample, and EM climbs faster from there.  On measured data
    (``benchmarks/bench_gmm_real.py``: scikit-learn's bundled real datasets,
    diagonal and full, K = 2-8, seeds 0-2, 168 fits) eight steps end at a
    mean log-likelihood 0.048 above twenty's (44 fits better, 29 worse: these
    small problems have many optima); four steps were 0.107 below (51
    better, 64 worse), so not four, though four were faster and never worse
    on this project's own synthetic data.  On that data (87 fits) eight
    steps took 13% less time than twenty in one set and the same in the
    other.  (Hamerly's bounds were tried for the Lloyd steps: on the
    overlapping clusters 30-100% of the rows still need every distance, and
    the steps were no faster.)  The seeding's distances are float64; the
    Lloyd steps read ``blocks`` (:func:`lloyd_blocks` of X, made here if not
    given) in float32, as the restarts' E-steps do: 1.8x faster, and what
    they start is an initialisation that EM then refines.
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    n = X.shape[0]
    first = rng.integers(n)
    centers = [X[first]]
    d2 = np.full(n, np.inf)
    start_kernels().lower_sq_dist(X, X[first], d2)
    for _ in range(1, k):
        total = d2.sum()
        i = rng.choice(n, p=d2 / total) if total > 0 else rng.integers(n)
        centers.append(X[i])
        start_kernels().lower_sq_dist(X, X[i], d2)
    c = np.array(centers)
    labels = np.zeros(n, np.int64)
    if blocks is None:
        blocks = lloyd_blocks(X)
    for it in range(n_lloyd):
        new, counts, sums = start_kernels().lloyd_step(blocks, n, c.astype(np.float32))
        if it > 0 and np.array_equal(new, labels):
            break
        labels = new
        filled = counts > 0
        c[filled] = sums[filled] / counts[filled, None]
    return labels


def params_from_labels(X: np.ndarray, labels: np.ndarray, k: int, covariance_type: str,
                       reg_covar: float) -> MixtureParams:
    """Initial parameters from a hard assignment of (a sample of) the data.

    Every point also gives every component a responsibility of 1e-6, so empty
    components start from the global spread and EM can still use them.  The
    sums come from one serial pass (no N x K x T x T temporaries, no threaded
    BLAS on small matrices, which is slow on a busy machine).
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    eps = 1e-6
    full = covariance_type != "diag"
    counts, sums, outer = start_kernels().label_sums(X, np.ascontiguousarray(labels, np.int64), k,
                                              full)
    if full:
        outer = outer + np.swapaxes(np.tril(outer, -1), 1, 2)
    else:
        outer = np.diagonal(outer, axis1=1, axis2=2)
    nk = counts + eps * X.shape[0]
    sx = sums + eps * sums.sum(0)
    sxx = outer + eps * outer.sum(0)
    return m_step(SufficientStats(nk, sx, sxx, 0.0, X.shape[0]), reg_covar)


def restart_rows(sample: np.ndarray, size: int) -> np.ndarray:
    """Every j-th row of the sample, about ``size`` rows: where restarts compete.

    The sample is in id order, so this sub-sample is as independent of the
    chunking as the sample is.
    """
    step = max(1, sample.shape[0] // max(size, 1))
    return sample[::step]


# The arithmetic of a restart's E-step, per covariance type.  Diagonal: float32
# gives each restart's mean log-likelihood within 1e-7 of float64's (optima
# that differ are 1e-4 and more apart here) in the same number of passes, and
# a pass is 1.45-1.6x faster (K = 3-6, 50,000 x 24).  Full: not float32.  A
# covariance is the outer-product sums less mu mu^T, and float32 sums leave
# it noisy enough that EM creeps: on the synthetic series (K = 4) the three
# restarts took 47, 53 and 59 passes in float32 against 11, 16 and 51 in
# float64 (the same optima), and the NumPy engine, whose float32 products sum
# 2048 rows at a time, hit the 500-pass limit at a lower optimum.  In float64
# both engines take the same passes to the same optima.
_RESTART_DTYPE = {"diag": np.float32, "full": np.float64}


def restart_e_step(rows: np.ndarray, engine: str, covariance_type: str, threads=lambda: 1,
                   blocks: np.ndarray | None = None):
    """The E-step of the restarts over ``rows`` (the rows they all share):
    ``e_step(rows, params)`` with ``threads()`` numba threads (one while the
    restarts are the parallel level) and the arithmetic of ``_RESTART_DTYPE``;
    ``blocks`` (:func:`lloyd_blocks` of rows) are reused where the kernel reads
    the same.

    A restart only has to rank its optimum against the others; the winner
    then converges in float64 on all the data.
    """
    stats = fixed_rows_stats(rows, covariance_type, engine, _RESTART_DTYPE[covariance_type],
                             blocks)

    def e_step(X, params):
        return stats(params, threads())

    return e_step


def _parallel_restarts(n_init: int) -> int:
    # All restarts at once (up to 4 per core): with 3 restarts on 2 cores the
    # OS shares the cores out, where 2 threads left one core idle while the
    # third restart ran (best_start 0.67 s against 0.82 s, median of 5).
    import numba

    return max(1, min(n_init, 4 * numba.config.NUMBA_NUM_THREADS))


def best_start(sample: np.ndarray, k: int, covariance_type: str, reg_covar: float,
               n_init: int, seed: int, *, tol: float = 1e-6, max_iter: int = 500,
               engine: str = "auto", restart_size: int | None = None) -> MixtureParams:
    """Starting parameters for EM on all data: the best of ``n_init`` restarts.

    Each restart seeds k-means++ and runs EM to convergence (``tol``) on the
    sample, so EM on all the data starts close to its optimum and needs few
    passes.  ``restart_size`` rows (every j-th row of the sample) instead make
    the restarts cheaper, the winner then converging on the whole sample; not
    the default: with 10,000 rows the BIC scan of the synthetic series found
    worse optima at K = 5-7 (and a better one at K = 2) than restarts on the
    whole sample, which moved its elbow.  (Stopping the restarts early, at a
    relative tolerance of 1e-4 or 1e-3, saved no measurable time here and once
    picked a worse optimum.)
    Restarts run side by side in threads (the kernels release the GIL), all
    at once up to 4 per numba thread; the winner is picked in restart order,
    so it does not depend on timing.
    """
    import numba

    small = sample if restart_size is None else restart_rows(sample, restart_size)
    small32 = small.astype(np.float32)  # as the kernels read the data (float32 blocks)
    blocks = lloyd_blocks(small32)
    em = dict(reg_covar=reg_covar, max_iter=max_iter, accelerate=True)
    # Restarts take unequal numbers of iterations (20, 29 and 56 for K=6 on
    # the overlapping benchmark data): the cores the finished ones leave go
    # to those still running.  The statistics do not depend on the threads.
    cores = numba.config.NUMBA_NUM_THREADS
    unfinished = [n_init]
    lock = threading.Lock()
    if small.shape[0] < PARALLEL_MIN_ROWS:
        cores = 1
    e_step = restart_e_step(small32, engine, covariance_type,
                            lambda: max(1, cores // max(1, unfinished[0])), blocks)

    def restart(init: int):
        try:
            set_numba_threads(1, 0)  # the restarts are the parallel level (thread-local)
            rng = np.random.default_rng([seed, init])
            labels = kmeans_plusplus(small, k, rng, blocks=blocks)
            params = params_from_labels(small, labels, k, covariance_type, reg_covar)
            params, ll, n_iter, _ = run_em(small32, params, small.shape[0], tol=tol,
                                           e_step=e_step, **em)
        finally:
            with lock:
                unfinished[0] -= 1
        log.info("init %d: mean log-likelihood %.6g on %d rows after %d iterations", init,
                 ll, small.shape[0], n_iter)
        return params, ll

    workers = _parallel_restarts(n_init)
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(restart, range(n_init)))
    else:
        results = [restart(i) for i in range(n_init)]
    best = None
    for params, ll in results:
        if best is None or ll > best[1]:
            best = (params, ll)
    params = best[0]
    if small.shape[0] < sample.shape[0]:
        params, ll, n_iter, _ = run_em(sample.astype(np.float32), params, sample.shape[0],
                                       tol=tol, engine=engine, **em)
        log.info("best start: mean log-likelihood %.6g on %d rows after %d iterations", ll,
                 sample.shape[0], n_iter)
    return params


def canonical_order(means: np.ndarray) -> np.ndarray:
    """Component order by the slope of the mean trajectory (falling first)."""
    t = means.shape[1]
    tt = np.arange(t) - (t - 1) / 2.0
    slope = means @ tt
    return np.lexsort((means[:, 0], slope))
