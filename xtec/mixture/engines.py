"""Engines that compute the E-step's sufficient statistics (and hard labels) of one
in-memory chunk, with one private function per covariance type.

* ``numba`` (NumPy input, diagonal or full covariances): one fused pass per
  point, float32 data read once, float64 arithmetic, no N x K temporaries,
  parallel over fixed blocks of rows (full: per component the Cholesky factor
  of the precision, the Mahalanobis terms and the outer-product sums);
* ``array-api``: matrix products against the array API (NumPy, CuPy,
  array-api-strict), float64, batched over components;
* ``numpy`` (NumPy input): the same sums with NumPy alone over fixed row
  blocks, nothing to compile (what a run uses until the numba kernels are in
  the cache, :func:`xtec.backend.compiled_kernels`);
* ``auto`` picks ``numba`` for NumPy input (``numpy`` where the run uses no
  compiled kernels), the array API for anything else.

All statistics accumulate in float64 over fixed row blocks, so the result does
not depend on the chunking or the number of workers.
"""

from __future__ import annotations

import functools

import numpy as np

from xtec.backend import compiled_kernels, is_numpy, namespace, to_numpy
from xtec.errors import ParameterError
from xtec.mixture.parameters import MixtureParams, SufficientStats, empty_stats

ENGINES = ("auto", "numba", "numpy", "array-api")
_ROW_BLOCK = 128  # rows per kernel block: its scratch stays in L1/L2 (measured best)
_FULL_BLOCK = 64  # rows per block of the full-covariance kernel (T x 64 scratch rows in L1)
_FULL_GROUP = 32  # blocks per parallel task there: per-task K x T x T sums stay few
PARALLEL_MIN_ROWS = 20_000  # smaller chunks run on one thread
_ARRAY_API_ROWS = 65_536  # rows per batched product of the array-API full path
_NUMPY_BLOCK = 2048  # rows per block of the NumPy engine


# ------------------------------------------------------------------ array-API engine
def _quadratic_diag(X, means, pc, norm, xp):
    prec = xp.asarray(pc**2, dtype=xp.float64)
    quad = (X * X) @ xp.permute_dims(prec, (1, 0)) \
        - 2.0 * X @ xp.permute_dims(means * prec, (1, 0)) \
        + xp.sum(means * means * prec, axis=1)
    return norm - 0.5 * quad


def _quadratic_full(X, means, pc, norm, xp):
    # All components in one batched product, (K, rows, T) @ (K, T, T), over
    # slices of rows so the temporary stays K x 64k x T whatever N is.
    pc = xp.asarray(pc, dtype=xp.float64)
    n, rows = X.shape[0], _ARRAY_API_ROWS
    parts = []
    for lo in range(0, n, rows):
        y = (X[None, lo:min(n, lo + rows), :] - means[:, None, :]) @ pc
        parts.append(norm - 0.5 * xp.permute_dims(xp.sum(y * y, axis=2), (1, 0)))
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)


def log_prob(X, params: MixtureParams):
    """Weighted log densities log(w_k N(x; mu_k, Sigma_k)), shape (N, K), float64.

    X : array (N, T) of any array-API library; the result is of the same library.
    """
    xp = namespace(X)
    X = xp.astype(X, xp.float64)
    pc = params.precisions_cholesky()
    norm = xp.asarray(params.log_norm(pc), dtype=xp.float64)
    means = xp.asarray(params.means, dtype=xp.float64)
    return _QUADRATIC[params.covariance_type](X, means, pc, norm, xp)


def logsumexp(a, xp):
    """log sum_k exp(a[:, k]) of an (N, K) array of namespace ``xp``, stably: (N,)."""
    m = xp.max(a, axis=1, keepdims=True)
    return xp.reshape(m, (-1,)) + xp.log(xp.sum(xp.exp(a - m), axis=1))


def _sxx_array_api_diag(X, rt, xp):
    return rt @ (X * X)


def _sxx_array_api_full(X, rt, xp):
    # (K, T, rows) @ (rows, T) per slice of rows, summed: (K, T, T)
    n, step = X.shape[0], _ARRAY_API_ROWS
    sxx = 0.0
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        xs = X[lo:hi, :]
        sxx = sxx + xp.permute_dims(rt[:, lo:hi, None] * xs[None, :, :], (0, 2, 1)) @ xs
    return sxx


def stats_array_api(X, params: MixtureParams) -> SufficientStats:
    """Sufficient statistics of a chunk (N, T) by matrix products (any array API)."""
    xp = namespace(X)
    lp = log_prob(X, params)
    ll = logsumexp(lp, xp)
    r = xp.exp(lp - ll[:, None])
    X = xp.astype(X, xp.float64)
    rt = xp.permute_dims(r, (1, 0))
    nk = xp.sum(r, axis=0)
    sx = rt @ X
    sxx = _SXX_ARRAY_API[params.covariance_type](X, rt, xp)
    return SufficientStats(to_numpy(nk), to_numpy(sx), to_numpy(sxx),
                           float(to_numpy(xp.sum(ll))), int(X.shape[0]))


# ---------------------------------------------------------------------- NumPy engine
def _quad_numpy_diag(xb, means, pc):
    # (x - mu)^2 directly, not x^2 - 2 x mu + mu^2: no cancellation in float32
    d = xb[:, None, :] - means[None, :, :]
    return np.einsum("nkt,kt->nk", d * d, pc * pc)


def _quad_numpy_full(xb, means, pc):
    out = np.empty((xb.shape[0], means.shape[0]), xb.dtype)
    for k in range(means.shape[0]):
        y = (xb - means[k]) @ pc[k]
        out[:, k] = np.einsum("ij,ij->i", y, y)
    return out


def _sxx_numpy_diag(xb, rt):
    return rt @ (xb * xb)


def _sxx_numpy_full(xb, rt):
    return np.stack([(xb * r[:, None]).T @ xb for r in rt])


def _log_prob_numpy(xb, params, means, pc, norm) -> np.ndarray:
    quad = _QUAD_NUMPY[params.covariance_type](xb, means, pc)
    return norm - 0.5 * quad.astype(np.float64)


def _numpy_blocks(X, params: MixtureParams, work_dtype):
    """(block of rows in ``work_dtype``, its weighted log densities (rows, K) float64)
    over fixed blocks of ``_NUMPY_BLOCK`` rows."""
    pc = params.precisions_cholesky()
    norm = params.log_norm(pc)
    means, pc = params.means.astype(work_dtype), pc.astype(work_dtype)
    for lo in range(0, X.shape[0], _NUMPY_BLOCK):
        xb = X[lo:lo + _NUMPY_BLOCK].astype(work_dtype, copy=False)
        yield xb, _log_prob_numpy(xb, params, means, pc, norm)


def stats_numpy(X: np.ndarray, params: MixtureParams,
                work_dtype: type = np.float64) -> SufficientStats:
    """Sufficient statistics of a NumPy chunk (N, T) with NumPy alone, nothing to
    compile: what a run uses until the numba kernels are in the cache.  Fixed
    blocks of rows (their temporaries stay in cache), matrix products within a
    block, float64 responsibilities and sums.  Expects single-threaded BLAS
    (the run's parallel level is its Dask tasks and restarts; threaded BLAS on
    these small products was 50-100x slower on a shared 2-core host)."""
    k, t = params.means.shape
    full = params.covariance_type == "full"
    nk, sx = np.zeros(k), np.zeros((k, t))
    sxx = np.zeros((k, t, t) if full else (k, t))
    ll = 0.0
    for xb, lp in _numpy_blocks(X, params, work_dtype):
        m = lp.max(axis=1, keepdims=True)
        e = np.exp(lp - m)
        s = e.sum(axis=1, keepdims=True)
        ll += float((m[:, 0] + np.log(s[:, 0])).sum())
        r = e / s
        nk += r.sum(axis=0)
        rt = r.T.astype(work_dtype)
        sx += rt @ xb
        sxx += _SXX_NUMPY[params.covariance_type](xb, rt)
    return SufficientStats(nk, sx, sxx, ll, X.shape[0])


def predict_numpy(X: np.ndarray, params: MixtureParams) -> np.ndarray:
    """Hard labels (N,) int16 of a NumPy chunk, with NumPy alone (see :func:`stats_numpy`)."""
    out = [np.argmax(lp, axis=1) for _, lp in _numpy_blocks(X, params, np.float64)]
    return (np.concatenate(out) if out else np.zeros(0)).astype(np.int16)


# ---------------------------------------------------------------------- numba engine
def _kernels_diag() -> dict:
    from xtec.mixture import _kernels

    return {"stats": _kernels.diag_stats, "predict": _kernels.diag_predict}


def _kernels_full() -> dict:
    from xtec.mixture import _kernels

    return {"stats": _kernels.full_stats, "predict": _kernels.full_predict}


def _diag_arguments(params, pc, norm, work_dtype) -> tuple:
    return (params.means.astype(work_dtype, copy=False), (pc**2).astype(work_dtype, copy=False),
            norm.astype(work_dtype, copy=False))


def _block_sums(nk, sx, sxx, ll, n: int) -> SufficientStats:
    return SufficientStats(nk.sum(0), sx.sum(0), sxx.sum(0), float(ll.sum()), n)


def _stats_numba_diag(kern, X, params, pc, norm, work_dtype) -> SufficientStats:
    args = _diag_arguments(params, pc, norm, work_dtype)
    return _block_sums(*kern(X, *args, _ROW_BLOCK), X.shape[0])


def _stats_numba_full(kern, X, params, pc, norm, work_dtype) -> SufficientStats:
    nk, sx, sxx, ll = kern(X, params.means.astype(work_dtype, copy=False),
                           np.ascontiguousarray(pc, dtype=work_dtype),
                           norm.astype(work_dtype, copy=False), _FULL_BLOCK, _FULL_GROUP)
    low = sxx.sum(0)  # the kernel fills the lower triangles only
    sxx = low + np.swapaxes(np.tril(low, -1), 1, 2)
    return SufficientStats(nk.sum(0), sx.sum(0), sxx, float(ll.sum()), X.shape[0])


def _predict_numba_diag(predict, X, means, pc, norm) -> np.ndarray:
    return predict(X, means, pc**2, norm)


def _predict_numba_full(predict, X, means, pc, norm) -> np.ndarray:
    return predict(X, means, np.ascontiguousarray(pc), norm, _FULL_BLOCK)


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
    kern = _KERNELS[covariance_type]()
    identity = {"diag": np.ones((1, 2)), "full": np.eye(2)[None]}[covariance_type]
    params = MixtureParams(np.ones(1), np.zeros((1, 2)), identity)
    x = np.zeros((2, 2), np.float32)
    pc = params.precisions_cholesky()
    norm = np.zeros(1)
    _STATS_NUMBA[covariance_type](kern["stats"], x, params, pc, norm, np.float64)
    _PREDICT_NUMBA[covariance_type](kern["predict"], x, params.means, pc, norm)
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
    return _STATS_NUMBA[params.covariance_type](kern, X, params, pc, norm, work_dtype)


def fixed_rows_stats(X, covariance_type: str, engine: str = "auto",
                     work_dtype: type = np.float64, blocks: np.ndarray | None = None):
    """``stats(params, threads)``: the sufficient statistics of the rows X (N, T)
    at ``params``, for many E-steps over the same rows (the start's restarts
    pass over one sample some fifty times).

    The numba engine's diagonal kernel reads X once cut into blocks of rows
    transposed to columns (:func:`xtec.mixture._kernels.row_blocks`), which a
    pass would otherwise do per block: 0.85 against 1.2 ms per pass on
    50,000 x 24 in float32 on one thread, the same sums bit for bit.  Other
    engines and covariance types read X as :func:`chunk_stats` does.

    blocks : X already cut so (``row_blocks(X, block, work_dtype)``), as the
        start's Lloyd steps read it: used where the block size is this
        kernel's, saving the copy (2-7 ms for 50,000 x 24 before the restarts).
    """
    X = _float_rows(X) if is_numpy(X) else X
    variant = _FIXED_ROWS.get((_pick_engine(X, engine), covariance_type), _fixed_rows_as_chunk)
    return variant(X, engine, work_dtype, blocks)


def _fixed_rows_as_chunk(X, engine, work_dtype, blocks):
    return lambda params, threads=None: chunk_stats(X, params, engine, threads, work_dtype)


def _fixed_rows_numba_diag(X, engine, work_dtype, blocks):
    from xtec.mixture import _kernels

    n = X.shape[0]
    if n == 0:
        return _fixed_rows_as_chunk(X, engine, work_dtype, None)
    fits = (blocks is not None and blocks.dtype == work_dtype
            and blocks.shape == (-(-n // _ROW_BLOCK), X.shape[1], _ROW_BLOCK))
    if not fits:
        blocks = _kernels.row_blocks(X, _ROW_BLOCK, np.zeros(0, work_dtype))

    def stats(params, threads=None):
        set_numba_threads(threads, n)
        pc = params.precisions_cholesky()
        args = _diag_arguments(params, pc, params.log_norm(pc), work_dtype)
        return _block_sums(*_kernels.diag_stats_blocked(blocks, n, *args), n)

    return stats


def _pick_engine(X, engine: str) -> str:
    """The engine that computes this chunk: ``auto`` is numba on NumPy input where
    the run uses the compiled kernels, NumPy where it does not, else the array API."""
    if engine == "auto":
        if not is_numpy(X):
            return "array-api"
        return "numba" if compiled_kernels() else "numpy"
    if engine in ("numba", "numpy") and not is_numpy(X):
        raise ParameterError(f"engine {engine!r} needs NumPy input")
    return engine


def _stats_numba_engine(X, params, threads, work_dtype) -> SufficientStats:
    return stats_numba(X, params, threads, work_dtype)


def _stats_numpy_engine(X, params, threads, work_dtype) -> SufficientStats:
    return stats_numpy(_float_rows(X), params, work_dtype)


def _stats_array_api_engine(X, params, threads, work_dtype) -> SufficientStats:
    return stats_array_api(X, params)


def chunk_stats(X, params: MixtureParams, engine: str = "auto",
                threads: int | None = None, work_dtype: type = np.float64) -> SufficientStats:
    """Sufficient statistics of one in-memory chunk with the chosen engine
    (``threads`` and ``work_dtype``: see :func:`stats_numba`; the array-API
    engine computes in float64)."""
    if X.shape[0] == 0:
        return empty_stats(*params.means.shape, params.covariance_type)
    return _STATS[_pick_engine(X, engine)](X, params, threads, work_dtype)


def _predict_numba_engine(X, params) -> np.ndarray:
    pc = params.precisions_cholesky()
    X, norm = _float_rows(X), params.log_norm(pc)
    set_numba_threads(None, X.shape[0])
    predict = _numba_kernels(params.covariance_type)["predict"]
    return _PREDICT_NUMBA[params.covariance_type](predict, X, params.means, pc, norm)


def _predict_numpy_engine(X, params) -> np.ndarray:
    return predict_numpy(_float_rows(X), params)


def _predict_array_api_engine(X, params) -> np.ndarray:
    xp = namespace(X)
    return to_numpy(xp.argmax(log_prob(X, params), axis=1)).astype(np.int16)


def chunk_predict(X, params: MixtureParams, engine: str = "auto") -> np.ndarray:
    """Hard labels (N,) int16 of one in-memory chunk (host NumPy)."""
    if X.shape[0] == 0:
        return np.zeros(0, np.int16)
    return _PREDICT[_pick_engine(X, engine)](X, params)


def warm_kernels(covariance_type: str = "diag") -> bool:
    """Compile (or load from the disk cache) the EM kernels of ``covariance_type``
    in this process now."""
    _numba_kernels(covariance_type)
    return True


_QUADRATIC = {"diag": _quadratic_diag, "full": _quadratic_full}
_QUAD_NUMPY = {"diag": _quad_numpy_diag, "full": _quad_numpy_full}
_SXX_NUMPY = {"diag": _sxx_numpy_diag, "full": _sxx_numpy_full}
_SXX_ARRAY_API = {"diag": _sxx_array_api_diag, "full": _sxx_array_api_full}
_KERNELS = {"diag": _kernels_diag, "full": _kernels_full}
_FIXED_ROWS = {("numba", "diag"): _fixed_rows_numba_diag}
_STATS_NUMBA = {"diag": _stats_numba_diag, "full": _stats_numba_full}
_PREDICT_NUMBA = {"diag": _predict_numba_diag, "full": _predict_numba_full}
_STATS = {"numba": _stats_numba_engine, "numpy": _stats_numpy_engine,
          "array-api": _stats_array_api_engine}
_PREDICT = {"numba": _predict_numba_engine, "numpy": _predict_numpy_engine,
            "array-api": _predict_array_api_engine}
