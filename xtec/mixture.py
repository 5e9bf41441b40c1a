"""Gaussian mixtures of temperature trajectories, fitted by EM on arrays or Dask.

The EM is written as *sufficient statistics*: one pass over the data computes,
for the current parameters, per component the summed responsibilities N_k, the
responsibility-weighted sums of x and of x x^T (or x^2 for diagonal
covariances), and the log-likelihood.  Statistics of separate chunks add up, so
the same estimator fits an in-memory array in one pass per iteration or a Dask
array of any size by reducing per-chunk statistics (chunks stay on the
workers; only K x T numbers travel).

Three engines compute the statistics of one chunk:

* ``numba`` (NumPy input, diagonal or full covariances): one fused pass per
  point, float32 data read once, float64 arithmetic, no N x K temporaries,
  parallel over fixed blocks of rows (full: per component the Cholesky factor
  of the precision, the Mahalanobis terms and the outer-product sums);
* ``array-api``: matrix products against the array API (NumPy, CuPy,
  array-api-strict), float64, batched over components;
* ``auto`` picks ``numba`` where it applies.

Determinism: the initial means come from a subsample chosen by a hash of each
voxel's global index (not its position in a chunk), all statistics accumulate
in float64, and components are put in a canonical order (by the slope of their
mean trajectory), so a seed gives the same labels whatever the chunking or the
number of workers.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np

from xtec.backend import is_numpy, namespace, to_numpy
from xtec.errors import ParameterError, check_choice

log = logging.getLogger(__name__)

COVARIANCE_TYPES = ("diag", "full")
ENGINES = ("auto", "numba", "array-api")
_LOG_2PI = math.log(2.0 * math.pi)
_ROW_BLOCK = 128  # rows per kernel block: its scratch stays in L1/L2 (measured best)
_FULL_BLOCK = 64  # rows per block of the full-covariance kernel (T x 64 scratch rows in L1)
_FULL_GROUP = 32  # blocks per parallel task there: per-task K x T x T sums stay few
_PARALLEL_MIN_ROWS = 20_000  # smaller chunks run on one thread
_ARRAY_API_ROWS = 65_536  # rows per batched product of the array-API full path


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
        return "diag" if self.covariances.ndim == 2 else "full"

    def precisions_cholesky(self) -> np.ndarray:
        """(K, T) 1/sqrt(var) for 'diag'; (K, T, T) upper-triangular U with
        U U^T = Sigma^{-1} for 'full' (scikit-learn's convention)."""
        if self.covariance_type == "diag":
            return 1.0 / np.sqrt(self.covariances)
        t = self.means.shape[1]
        out = np.empty_like(self.covariances)
        for k, cov in enumerate(self.covariances):
            try:
                chol = np.linalg.cholesky(cov)
            except np.linalg.LinAlgError:
                raise ParameterError(
                    "a covariance became singular; increase reg_covar or use diag covariances"
                ) from None
            out[k] = np.linalg.solve(chol, np.eye(t)).T
        return out

    def log_norm(self, prec_chol: np.ndarray) -> np.ndarray:
        """(K,) log weight + log det of the precision Cholesky - T/2 log 2 pi."""
        t = self.means.shape[1]
        if prec_chol.ndim == 2:
            logdet = np.sum(np.log(prec_chol), axis=1)
        else:
            logdet = np.sum(np.log(np.diagonal(prec_chol, axis1=1, axis2=2)), axis=1)
        return np.log(self.weights) + logdet - 0.5 * t * _LOG_2PI


@dataclass
class SufficientStats:
    """Per-component sums over a set of points (host float64)."""

    nk: np.ndarray  # (K,)
    sx: np.ndarray  # (K, T)
    sxx: np.ndarray  # (K, T) diag, (K, T, T) full
    loglik: float
    n: int

    def __add__(self, other: SufficientStats) -> SufficientStats:
        return SufficientStats(self.nk + other.nk, self.sx + other.sx, self.sxx + other.sxx,
                               self.loglik + other.loglik, self.n + other.n)


def m_step(stats: SufficientStats, reg_covar: float) -> MixtureParams:
    """Maximum-likelihood parameters from sufficient statistics."""
    nk = stats.nk + 10 * np.finfo(np.float64).eps
    means = stats.sx / nk[:, None]
    if stats.sxx.ndim == 2:
        cov = stats.sxx / nk[:, None] - means**2
        cov = np.maximum(cov, 0.0) + reg_covar
    else:
        cov = stats.sxx / nk[:, None, None] - means[:, :, None] * means[:, None, :]
        cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))
        cov += reg_covar * np.eye(means.shape[1])[None]
    return MixtureParams(nk / nk.sum(), means, cov)


# ------------------------------------------------------------------ array-API engine
def log_prob(X, params: MixtureParams):
    """Weighted log densities log(w_k N(x; mu_k, Sigma_k)), shape (N, K), float64.

    X : array (N, T) of any array-API library; the result is of the same library.
    """
    xp = namespace(X)
    X = xp.astype(X, xp.float64)
    pc = params.precisions_cholesky()
    norm = xp.asarray(params.log_norm(pc), dtype=xp.float64)
    means = xp.asarray(params.means, dtype=xp.float64)
    if pc.ndim == 2:
        prec = xp.asarray(pc**2, dtype=xp.float64)
        quad = (X * X) @ xp.permute_dims(prec, (1, 0)) \
            - 2.0 * X @ xp.permute_dims(means * prec, (1, 0)) \
            + xp.sum(means * means * prec, axis=1)
        return norm - 0.5 * quad
    # All components in one batched product, (K, rows, T) @ (K, T, T), over
    # slices of rows so the temporary stays K x 64k x T whatever N is.
    pc = xp.asarray(pc, dtype=xp.float64)
    n, rows = X.shape[0], _ARRAY_API_ROWS
    parts = []
    for lo in range(0, n, rows):
        y = (X[None, lo:min(n, lo + rows), :] - means[:, None, :]) @ pc
        parts.append(norm - 0.5 * xp.permute_dims(xp.sum(y * y, axis=2), (1, 0)))
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)


def logsumexp(a, xp):
    """log sum_k exp(a[:, k]) of an (N, K) array of namespace ``xp``, stably: (N,)."""
    m = xp.max(a, axis=1, keepdims=True)
    return xp.reshape(m, (-1,)) + xp.log(xp.sum(xp.exp(a - m), axis=1))


_logsumexp = logsumexp  # the engines' name for it


def stats_array_api(X, params: MixtureParams) -> SufficientStats:
    """Sufficient statistics of a chunk (N, T) by matrix products (any array API)."""
    xp = namespace(X)
    lp = log_prob(X, params)
    ll = _logsumexp(lp, xp)
    r = xp.exp(lp - ll[:, None])
    X = xp.astype(X, xp.float64)
    rt = xp.permute_dims(r, (1, 0))
    nk = xp.sum(r, axis=0)
    sx = rt @ X
    if params.covariance_type == "diag":
        sxx = rt @ (X * X)
    else:
        # (K, T, rows) @ (rows, T) per slice of rows, summed: (K, T, T)
        n, step = X.shape[0], _ARRAY_API_ROWS
        sxx = 0.0
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            xs = X[lo:hi, :]
            sxx = sxx + xp.permute_dims(rt[:, lo:hi, None] * xs[None, :, :], (0, 2, 1)) @ xs
    return SufficientStats(to_numpy(nk), to_numpy(sx), to_numpy(sxx),
                           float(to_numpy(xp.sum(ll))), int(X.shape[0]))


# ---------------------------------------------------------------------- numba engine
@functools.cache
def _numba_kernels(covariance_type: str = "diag") -> dict:
    """The fused kernels of one covariance type, loaded for float32 rows.

    numba compiles once per installation (its disk cache) but still loads the
    machine code per process on a kernel's first call (measured 5.7-6.9 s for
    all four EM kernels on a 2-core machine at load 15, after an 11 s import).
    Calling each on a few float32 rows here makes that happen when the caller
    chooses: the pipeline has the Dask workers do it (diagonal, the default)
    while they read the first pass; the other type loads on first use.
    """
    from xtec import _kernels

    x = np.zeros((2, 2), np.float32)
    means, norm = np.zeros((1, 2)), np.zeros(1)
    if covariance_type == "diag":
        kern = {"stats": _kernels.diag_stats, "predict": _kernels.diag_predict}
        kern["stats"](x, means, np.ones((1, 2)), norm, _ROW_BLOCK)
        kern["predict"](x, means, np.ones((1, 2)), norm)
    else:
        kern = {"stats": _kernels.full_stats, "predict": _kernels.full_predict}
        kern["stats"](x, means, np.eye(2)[None], norm, _FULL_BLOCK, _FULL_GROUP)
        kern["predict"](x, means, np.eye(2)[None], norm, _FULL_BLOCK)
    return kern


def _set_numba_threads(threads: int | None, n_rows: int) -> None:
    import numba

    top = numba.config.NUMBA_NUM_THREADS
    if threads is None and n_rows < _PARALLEL_MIN_ROWS:
        # A few milliseconds of work: waking the other threads costs more than
        # it saves, far more on a busy machine (measured 15x slower at 12k rows
        # with two threads on two shared cores).
        threads = 1
    numba.set_num_threads(max(1, min(threads or top, top)))


def _float_rows(X: np.ndarray) -> np.ndarray:
    X = np.ascontiguousarray(X)
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    return X


def stats_numba(X: np.ndarray, params: MixtureParams, threads: int | None = None
                ) -> SufficientStats:
    """Sufficient statistics of a NumPy chunk (N, T), diagonal or full covariances.

    One fused pass: per point and component the Mahalanobis term (with the
    Cholesky factor of the precision for 'full'), the responsibilities, and
    their weighted sums of x and x x^T (x^2 for 'diag'), float64 throughout,
    parallel over fixed row blocks.

    threads : int, optional
        Numba threads for this call (thread-local); 1 inside Dask tasks that
        already run in parallel, so the two levels do not oversubscribe the cores.
    """
    _set_numba_threads(threads, X.shape[0])
    kern = _numba_kernels(params.covariance_type)["stats"]
    pc = params.precisions_cholesky()
    X = _float_rows(X)
    norm = params.log_norm(pc)
    if params.covariance_type == "diag":
        nk, sx, sxx, ll = kern(X, params.means, pc**2, norm, _ROW_BLOCK)
        return SufficientStats(nk.sum(0), sx.sum(0), sxx.sum(0), float(ll.sum()), X.shape[0])
    nk, sx, sxx, ll = kern(X, params.means, np.ascontiguousarray(pc), norm, _FULL_BLOCK,
                           _FULL_GROUP)
    low = sxx.sum(0)  # the kernel fills the lower triangles only
    sxx = low + np.swapaxes(np.tril(low, -1), 1, 2)
    return SufficientStats(nk.sum(0), sx.sum(0), sxx, float(ll.sum()), X.shape[0])


def _use_numba(X, params: MixtureParams, engine: str) -> bool:
    if engine == "array-api":
        return False
    ok = is_numpy(X)
    if engine == "numba" and not ok:
        raise ParameterError("engine 'numba' needs NumPy input")
    return ok


def chunk_stats(X, params: MixtureParams, engine: str = "auto",
                threads: int | None = None) -> SufficientStats:
    """Sufficient statistics of one in-memory chunk with the chosen engine."""
    if X.shape[0] == 0:
        k, t = params.means.shape
        sxx = np.zeros((k, t) if params.covariance_type == "diag" else (k, t, t))
        return SufficientStats(np.zeros(k), np.zeros((k, t)), sxx, 0.0, 0)
    if _use_numba(X, params, engine):
        return stats_numba(X, params, threads)
    return stats_array_api(X, params)


def chunk_predict(X, params: MixtureParams, engine: str = "auto") -> np.ndarray:
    """Hard labels (N,) int16 of one in-memory chunk (host NumPy)."""
    if X.shape[0] == 0:
        return np.zeros(0, np.int16)
    if _use_numba(X, params, engine):
        pc = params.precisions_cholesky()
        X, norm = _float_rows(X), params.log_norm(pc)
        _set_numba_threads(None, X.shape[0])
        predict = _numba_kernels(params.covariance_type)["predict"]
        if params.covariance_type == "diag":
            return predict(X, params.means, pc**2, norm)
        return predict(X, params.means, np.ascontiguousarray(pc), norm, _FULL_BLOCK)
    xp = namespace(X)
    return to_numpy(xp.argmax(log_prob(X, params), axis=1)).astype(np.int16)


def data_stats(X, params: MixtureParams, engine: str = "auto") -> SufficientStats:
    """Statistics over a whole array: in one call, or reduced over Dask chunks."""
    if isinstance(X, da.Array):
        f = dask.delayed(chunk_stats, pure=True)
        blocks = X.to_delayed().ravel()
        threads = 1 if len(blocks) > 1 else None
        parts = dask.compute(*[f(b, params, engine, threads) for b in blocks])
        total = parts[0]
        for p in parts[1:]:  # fixed order: the sum does not depend on who finished first
            total = total + p
        return total
    return chunk_stats(X, params, engine)


# ------------------------------------------------------------------- initialisation
def hash_uniform(index: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per integer id (splitmix64 of id and seed).

    Depends only on the id, so a subsample drawn with it is the same whatever
    order or chunking the ids come in.
    """
    with np.errstate(over="ignore"):
        z = index.astype(np.uint64) + np.uint64(seed & 0xFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _sample_chunk(X, index, rate, seed):
    idx = to_numpy(index)
    keep = hash_uniform(idx, seed) < rate
    return idx[keep], to_numpy(X)[keep].astype(np.float64)


def init_sample(X, index, size: int, seed: int) -> np.ndarray:
    """A subsample of about ``size`` rows of X, chosen by hashed ids, in id order."""
    n = X.shape[0]
    rate = min(1.0, size / max(n, 1))
    if isinstance(X, da.Array):
        if not isinstance(index, da.Array):
            index = da.from_array(np.asarray(index), chunks=(X.chunks[0],))
        f = dask.delayed(_sample_chunk, pure=True)
        parts = dask.compute(*[f(x, i, rate, seed) for x, i in
                               zip(X.to_delayed().ravel(), index.to_delayed().ravel())])
    else:
        parts = [_sample_chunk(X, index, rate, seed)]
    ids = np.concatenate([p[0] for p in parts])
    rows = np.concatenate([p[1] for p in parts])
    order = np.argsort(ids, kind="stable")
    return rows[order]


def kmeans_plusplus(X: np.ndarray, k: int, rng: np.random.Generator,
                    n_lloyd: int = 20) -> np.ndarray:
    """k-means++ seeding followed by a few Lloyd iterations; X (n, T) -> labels (n,)."""
    from xtec import _kernels

    X = np.ascontiguousarray(X, dtype=np.float64)
    n = X.shape[0]
    centers = [X[rng.integers(n)]]
    d2 = np.sum((X - centers[0]) ** 2, axis=1)
    for _ in range(1, k):
        total = d2.sum()
        i = rng.choice(n, p=d2 / total) if total > 0 else rng.integers(n)
        centers.append(X[i])
        d2 = np.minimum(d2, np.sum((X - X[i]) ** 2, axis=1))
    c = np.array(centers)
    labels = np.zeros(n, np.int64)
    for it in range(n_lloyd):
        new, counts, sums = _kernels.lloyd_step(X, c, 1024)
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
    from xtec import _kernels

    X = np.ascontiguousarray(X, dtype=np.float64)
    eps = 1e-6
    full = covariance_type != "diag"
    counts, sums, outer = _kernels.label_sums(X, np.ascontiguousarray(labels, np.int64), k,
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


def run_em(X, params: MixtureParams, n: int, *, reg_covar: float, tol: float, max_iter: int,
           engine: str = "auto", e_step=None):
    """EM from ``params`` until the mean log-likelihood changes by at most
    ``tol * |mean log-likelihood|``: (params, mean loglik, n_iter, converged).

    ``e_step(X, params)`` gives the M-step's sufficient statistics (default: the
    plain mixture's, :func:`data_stats` with ``engine``); estimators with a
    different E-step (label smoothing) pass their own.
    """
    if e_step is None:
        e_step = functools.partial(data_stats, engine=engine)
    prev = -math.inf
    converged = False
    ll = -math.inf
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 (it is reported)
        stats = e_step(X, params)
        ll = stats.loglik / n
        if not math.isfinite(ll):
            raise ParameterError("the log-likelihood is not finite: X holds NaN or inf, "
                                 "or reg_covar is 0 with a constant feature")
        params = m_step(stats, reg_covar)
        log.debug("EM iteration %d on %d points: mean log-likelihood %.8g", it, n, ll)
        if abs(ll - prev) <= tol * abs(ll):
            converged = True
            break
        prev = ll
    return params, ll, it, converged


def _parallel_restarts(n_init: int) -> int:
    import numba

    return max(1, min(n_init, numba.config.NUMBA_NUM_THREADS))


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
    Restarts run side by side in threads (the kernels release the GIL), at
    most NUMBA_NUM_THREADS at once; the winner is picked in restart order, so
    it does not depend on timing.
    """
    small = sample if restart_size is None else restart_rows(sample, restart_size)
    small32 = small.astype(np.float32)  # as the kernels read the data (float32 blocks)
    em = dict(reg_covar=reg_covar, max_iter=max_iter, engine=engine)

    def restart(init: int):
        _set_numba_threads(1, 0)  # the restarts are the parallel level (thread-local)
        rng = np.random.default_rng([seed, init])
        labels = kmeans_plusplus(small, k, rng)
        params = params_from_labels(small, labels, k, covariance_type, reg_covar)
        params, ll, n_iter, _ = run_em(small32, params, small.shape[0], tol=tol, **em)
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
                                       tol=tol, **em)
        log.info("best start: mean log-likelihood %.6g on %d rows after %d iterations", ll,
                 sample.shape[0], n_iter)
    return params


# ------------------------------------------------------------------------- estimator
def canonical_order(means: np.ndarray) -> np.ndarray:
    """Component order by the slope of the mean trajectory (falling first)."""
    t = means.shape[1]
    tt = np.arange(t) - (t - 1) / 2.0
    slope = means @ tt
    return np.lexsort((means[:, 0], slope))


def warm_kernels() -> bool:
    """Compile (or load from the disk cache) the EM kernels in this process now."""
    _numba_kernels()
    return True


def n_parameters(n_components: int, n_features: int, covariance_type: str) -> int:
    """Free parameters of a mixture: weights, means and covariances."""
    k, t = n_components, n_features
    cov = k * t if covariance_type == "diag" else k * t * (t + 1) // 2
    return int(cov + k * t + k - 1)


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
    engine : {'auto', 'numba', 'array-api'}

    Attributes
    ----------
    weights_ : (K,); means_ : (K, T); covariances_ : (K, T) or (K, T, T)
    converged_ : bool; n_iter_ : int; lower_bound_ : float (mean log-likelihood)

    ``get_params``/``set_params`` as scikit-learn's, so ``sklearn.base.clone`` works.  Subclasses change the model through the
    E-step hook :meth:`_e_step` (see :class:`xtec.smoothing.SmoothedGaussianMixture`).
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
        if index is None:
            index = np.arange(n, dtype=np.int64)
            if isinstance(X, da.Array):
                index = da.from_array(index, chunks=(X.chunks[0],))
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

    def _e_step(self, X, params: MixtureParams) -> SufficientStats:
        """E-step over the data given to ``fit``: the M-step's sufficient statistics
        and the log-likelihood at ``params``.  The hook subclasses override."""
        return data_stats(X, params, self.engine)

    def _em(self, X, params: MixtureParams, n: int, e_step):
        """EM from ``params`` with this model's ``e_step(X, params)`` hook: see :func:`run_em`."""
        return run_em(X, params, n, reg_covar=self.reg_covar, tol=self.tol,
                      max_iter=self.max_iter, e_step=e_step)

    # -- inference
    def _check_fitted(self):
        if not hasattr(self, "means_"):
            raise ParameterError("this GaussianMixture is not fitted yet; call fit first")

    def predict(self, X):
        """Component of each row: (N,) int16 (a Dask array for Dask input)."""
        self._check_fitted()
        p = self.params_
        if isinstance(X, da.Array):
            return X.map_blocks(chunk_predict, p, self.engine, drop_axis=1, dtype=np.int16,
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
