"""EM engines for Gaussian mixtures: parameters, sufficient statistics, M-step.

The EM is written as *sufficient statistics*: one pass over the data computes,
for the current parameters, per component the summed responsibilities N_k, the
responsibility-weighted sums of x and of x x^T (or x^2 for diagonal
covariances), and the log-likelihood.  Statistics of separate chunks add up, so
the same code fits an in-memory array in one pass per iteration or a Dask array
of any size by reducing per-chunk statistics (chunks stay on the workers; only
K x T numbers travel).

Three engines compute the statistics of one chunk:

* ``numba`` (NumPy input, diagonal or full covariances): one fused pass per
  point, float32 data read once, float64 arithmetic, no N x K temporaries,
  parallel over fixed blocks of rows (full: per component the Cholesky factor
  of the precision, the Mahalanobis terms and the outer-product sums);
* ``array-api``: matrix products against the array API (NumPy, CuPy,
  array-api-strict), float64, batched over components;
* ``auto`` picks ``numba`` where it applies.

All statistics accumulate in float64 over fixed row blocks, so the result does
not depend on the chunking or the number of workers.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np

from xtec.backend import is_numpy, namespace, to_numpy
from xtec.errors import ParameterError

log = logging.getLogger(__name__)

COVARIANCE_TYPES = ("diag", "full")
ENGINES = ("auto", "numba", "array-api")
_LOG_2PI = math.log(2.0 * math.pi)
_ROW_BLOCK = 128  # rows per kernel block: its scratch stays in L1/L2 (measured best)
_FULL_BLOCK = 64  # rows per block of the full-covariance kernel (T x 64 scratch rows in L1)
_FULL_GROUP = 32  # blocks per parallel task there: per-task K x T x T sums stay few
PARALLEL_MIN_ROWS = 20_000  # smaller chunks run on one thread
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


def set_numba_threads(threads: int | None, n_rows: int) -> None:
    import numba

    top = numba.config.NUMBA_NUM_THREADS
    if threads is None and n_rows < PARALLEL_MIN_ROWS:
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


def stats_numba(X: np.ndarray, params: MixtureParams, threads: int | None = None,
                work_dtype: type = np.float64) -> SufficientStats:
    """Sufficient statistics of a NumPy chunk (N, T), diagonal or full covariances.

    One fused pass: per point and component the Mahalanobis term (with the
    Cholesky factor of the precision for 'full'), the responsibilities, and
    their weighted sums of x and x x^T (x^2 for 'diag'), float64 throughout,
    parallel over fixed row blocks.

    threads : int, optional
        Numba threads for this call (thread-local); 1 inside Dask tasks that
        already run in parallel, so the two levels do not oversubscribe the cores.
    work_dtype : np.float64 or np.float32
        Precision of the per-point arithmetic (the sums over blocks and the
        log-likelihood stay float64).  float32 runs 1.45-1.6x faster (K=3-6,
        50,000 x 24) with statistics within about 3e-6 of float64's
        (relative to their largest) and a mean log-likelihood within 1e-7:
        enough to rank the start's restarts, not for the fit itself.
    """
    set_numba_threads(threads, X.shape[0])
    kern = _numba_kernels(params.covariance_type)["stats"]
    pc = params.precisions_cholesky()
    X = _float_rows(X)
    norm = params.log_norm(pc)
    if params.covariance_type == "diag":
        nk, sx, sxx, ll = kern(X, params.means.astype(work_dtype, copy=False),
                               (pc**2).astype(work_dtype, copy=False),
                               norm.astype(work_dtype, copy=False), _ROW_BLOCK)
        return SufficientStats(nk.sum(0), sx.sum(0), sxx.sum(0), float(ll.sum()), X.shape[0])
    nk, sx, sxx, ll = kern(X, params.means.astype(work_dtype, copy=False),
                           np.ascontiguousarray(pc, dtype=work_dtype),
                           norm.astype(work_dtype, copy=False), _FULL_BLOCK, _FULL_GROUP)
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
                threads: int | None = None, work_dtype: type = np.float64) -> SufficientStats:
    """Sufficient statistics of one in-memory chunk with the chosen engine
    (``threads`` and ``work_dtype``: see :func:`stats_numba`; the array-API
    engine computes in the data's own precision)."""
    if X.shape[0] == 0:
        k, t = params.means.shape
        sxx = np.zeros((k, t) if params.covariance_type == "diag" else (k, t, t))
        return SufficientStats(np.zeros(k), np.zeros((k, t)), sxx, 0.0, 0)
    if _use_numba(X, params, engine):
        return stats_numba(X, params, threads, work_dtype)
    return stats_array_api(X, params)


def chunk_predict(X, params: MixtureParams, engine: str = "auto") -> np.ndarray:
    """Hard labels (N,) int16 of one in-memory chunk (host NumPy)."""
    if X.shape[0] == 0:
        return np.zeros(0, np.int16)
    if _use_numba(X, params, engine):
        pc = params.precisions_cholesky()
        X, norm = _float_rows(X), params.log_norm(pc)
        set_numba_threads(None, X.shape[0])
        predict = _numba_kernels(params.covariance_type)["predict"]
        if params.covariance_type == "diag":
            return predict(X, params.means, pc**2, norm)
        return predict(X, params.means, np.ascontiguousarray(pc), norm, _FULL_BLOCK)
    xp = namespace(X)
    return to_numpy(xp.argmax(log_prob(X, params), axis=1)).astype(np.int16)


def _stats_of_chunks(params: MixtureParams, engine: str, *chunks) -> list:
    return [chunk_stats(c, params, engine, 1) for c in chunks]


def _stats_where_held(X: da.Array, params: MixtureParams, engine: str) -> list | None:
    """Per-chunk statistics of an array persisted on a Dask cluster, one task per
    worker thread over the chunks it holds (None if X is not held so)."""
    from xtec.chunks import chunks_by_thread, held_chunks

    futures = held_chunks(X)
    shares = chunks_by_thread(futures) if futures else None
    if shares is None:
        return None
    client = futures[0].client
    tasks = [client.submit(_stats_of_chunks, params, engine, *[futures[i] for i in idx],
                           workers=[addr], allow_other_workers=True, pure=False)
             for addr, idx in shares]
    parts = [None] * len(futures)
    for (_, idx), got in zip(shares, client.gather(tasks)):
        for i, st in zip(idx, got):
            parts[i] = st
    return parts


def data_stats(X, params: MixtureParams, engine: str = "auto") -> SufficientStats:
    """Statistics over a whole array: in one call, or reduced over Dask chunks
    (each chunk alone, summed in chunk order, however the tasks are cut)."""
    if isinstance(X, da.Array):
        parts = _stats_where_held(X, params, engine) if X.npartitions > 1 else None
        if parts is None:
            f = dask.delayed(chunk_stats, pure=True)
            blocks = X.to_delayed().ravel()
            threads = 1 if len(blocks) > 1 else None
            parts = dask.compute(*[f(b, params, engine, threads) for b in blocks])
        total = parts[0]
        for p in parts[1:]:  # fixed order: the sum does not depend on who finished first
            total = total + p
        return total
    return chunk_stats(X, params, engine)


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
def _as_vector(params: MixtureParams) -> np.ndarray:
    """The parameters as one unconstrained vector: log weights, means, and log
    variances (diag) or covariances (full)."""
    cov = params.covariances
    cov = np.log(cov) if cov.ndim == 2 else cov
    return np.concatenate([np.log(params.weights), params.means.ravel(), cov.ravel()])


def _from_vector(v: np.ndarray, like: MixtureParams) -> MixtureParams | None:
    """Inverse of :func:`_as_vector`; None where the point is not a valid mixture."""
    k, t = like.means.shape
    if not np.all(np.isfinite(v)):
        return None
    w = np.exp(v[:k] - v[:k].max())
    means = v[k:k + k * t].reshape(k, t)
    cov = v[k + k * t:].reshape(like.covariances.shape)
    if cov.ndim == 2:
        cov = np.exp(cov)
    else:
        cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))
        if np.any(np.linalg.eigvalsh(cov)[:, 0] <= 0.0):
            return None
    return MixtureParams(w / w.sum(), means, cov)


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
        v0, v1, v2 = _as_vector(params), _as_vector(theta1), _as_vector(theta2)
        r, v = v1 - v0, v2 - 2.0 * v1 + v0
        norm_v = math.sqrt(float(v @ v))
        alpha = min(-math.sqrt(float(r @ r)) / norm_v, -1.0) if norm_v > 0 else -1.0
        params = theta2
        if alpha < -1.0:
            jump = _from_vector(v0 - 2.0 * alpha * r + alpha * alpha * v, params)
            if jump is not None:
                stats_j = e_step(X, jump)
                passes += 1
                ll_j = stats_j.loglik / n
                if math.isfinite(ll_j) and ll_j >= ll1:
                    params = m_step(stats_j, reg_covar)


def warm_kernels(covariance_type: str = "diag") -> bool:
    """Compile (or load from the disk cache) the EM kernels of ``covariance_type``
    in this process now."""
    _numba_kernels(covariance_type)
    return True
