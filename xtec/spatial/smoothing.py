"""Label smoothing (XTEC-s): EM whose E-step responsibilities are smoothed over neighbours.

The Gaussian-mixture EM runs with the E-step responsibilities replaced by
``W^s R`` before the M-step, W the row-normalised neighbour matrix of the kept
voxels.  The published code builds W with an O(N^2) loop over voxel pairs; here
W is built from the *stencil* of integer offsets whose kernel weight exceeds
the cut-off: for every offset the shifted flat indices are looked up in the
sorted kept indices, so the cost is O(N x stencil size) and memory O(nnz).

Kernels (d: offset in pixels per axis, L: length scale, n: unit cell in pixels)::

    local     w(d) = exp(-sum_i d_i^2 / L^2)
    periodic  w(d) = exp(-sum_i sin^2(pi d_i / n_i) / L^2)

pairs with w <= cutoff (0.01) are dropped, as in the published code.  With
``weights='uniform'`` (the published tutorial's choice) every kept pair weighs 1
before row normalisation.
"""

from __future__ import annotations

import logging
import math

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp

from xtec.backend import to_numpy
from xtec.errors import ParameterError
from xtec.mixture.engines import log_prob, logsumexp
from xtec.mixture.gaussian_mixture import GaussianMixture
from xtec.mixture.parameters import MixtureParams, SufficientStats

log = logging.getLogger(__name__)

KERNELS = ("local", "periodic")
WEIGHTS = ("uniform", "kernel")
# Largest stencil we are willing to enumerate (offsets, not voxels).
_MAX_STENCIL = 2_000_000


# ------------------------------------------------------------------ neighbours
def unit_cell_from_axes(*axes: np.ndarray) -> tuple[float, ...]:
    """Pixels per reciprocal-lattice unit along each axis, from its coordinates (r.l.u.)."""
    out = []
    for a in axes:
        a = np.asarray(a, dtype=np.float64)
        if a.size < 2:
            raise ParameterError("an axis needs at least two points to infer the unit cell")
        step = float(np.median(np.abs(np.diff(a))))
        if step <= 0:
            raise ParameterError("axis coordinates must change from point to point")
        out.append(round(1.0 / step, 6))
    return tuple(out)


def _log_cut(cutoff: float) -> float:
    if not 0.0 < cutoff < 1.0:
        raise ParameterError(f"cutoff must lie in (0, 1) (got {cutoff!r})")
    return -math.log(cutoff)


def neighbour_stencil(
    shape: tuple[int, ...],
    kernel: str = "local",
    length_scale: float = 1.0,
    unit_cell: tuple[float, ...] | None = None,
    cutoff: float = 0.01,
) -> tuple[np.ndarray, np.ndarray]:
    """Offsets whose kernel weight exceeds ``cutoff``, and those weights.

    shape : grid shape (L, K, H); offsets are limited to |d_i| < shape_i.
    Returns (offsets (S, ndim) int64, weights (S,) float64); the zero offset is
    always first.  For ``periodic`` the kernel returns to 1 at every multiple of
    the unit cell, so the stencil holds the images of the local neighbourhood in
    every Brillouin zone of the grid; each axis is filtered on its own first
    (every term of the sum is >= 0), so only the product of the per-axis
    survivors is enumerated.
    """
    if kernel not in KERNELS:
        raise ParameterError(f"kernel must be one of {KERNELS} (got {kernel!r})")
    if not length_scale > 0:
        raise ParameterError(f"the length scale must be > 0 (got {length_scale!r})")
    r = _log_cut(cutoff)  # w = exp(-sum_i e_i) > cutoff  <=>  sum_i e_i < r
    ndim = len(shape)
    if kernel == "local":
        per_axis = []
        for s in shape:
            m = min(int(math.floor(length_scale * math.sqrt(r))), s - 1)
            d = np.arange(-m, m + 1)
            per_axis.append((d, d.astype(np.float64) ** 2 / length_scale**2))
    else:
        if unit_cell is None or len(unit_cell) != ndim:
            raise ParameterError(
                f"the periodic kernel needs the unit cell in pixels along each "
                f"of the {ndim} axes (got {unit_cell!r})"
            )
        if not all(u > 0 for u in unit_cell):
            raise ParameterError(f"unit cell sizes must be > 0 (got {unit_cell!r})")
        per_axis = []
        for s, u in zip(shape, unit_cell):
            d = np.arange(-(s - 1), s)
            e = np.sin(np.pi * d / u) ** 2 / length_scale**2
            keep = e < r
            per_axis.append((d[keep], e[keep]))
    size = math.prod(len(d) for d, _ in per_axis)
    if size > _MAX_STENCIL:
        raise ParameterError(
            f"the {kernel} kernel with length scale {length_scale} reaches "
            f"{size} offsets; lower the length scale or raise the cutoff"
        )
    grids = np.meshgrid(*[d for d, _ in per_axis], indexing="ij")
    e = sum(np.meshgrid(*[e for _, e in per_axis], indexing="ij"))
    keep = e < r
    offsets = np.stack([g[keep] for g in grids], axis=1).astype(np.int64)
    w = np.exp(-e[keep])
    # Zero offset first; the rest in a fixed order.
    zero = np.all(offsets == 0, axis=1)
    offsets = np.concatenate([offsets[zero], offsets[~zero]])
    w = np.concatenate([w[zero], w[~zero]])
    return offsets, w


def _neighbour_finder(srt: np.ndarray, shape: tuple[int, ...]):
    """For sorted unique flat indices ``srt`` in a grid of ``shape``, a function of an
    offset d returning (rows a, rows b) of the kept voxel pairs with srt[b] = srt[a] + d."""
    n = srt.size
    coords = np.unravel_index(srt, shape)
    strides = np.array([math.prod(shape[i + 1 :]) for i in range(len(shape))], np.int64)
    # Row of each kept voxel by its flat index: a dense table over the span of
    # the indices makes every lookup O(1) (linear in N); spans too large for
    # memory fall back to binary search (O(N log N)).
    lut = None
    if n and srt[-1] - srt[0] < 64 * 2**20:
        base = int(srt[0])
        lut = np.full(int(srt[-1]) - base + 1, -1, np.int32 if n < 2**31 else np.int64)
        lut[srt - base] = np.arange(n)

    def find(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        valid = np.ones(n, bool)
        for c, di, s in zip(coords, d, shape):
            if di:
                valid &= (c + di >= 0) & (c + di < s)
        src = np.flatnonzero(valid)
        target = srt[src] + int(d @ strides)
        if lut is not None:
            # Targets stay inside the grid (checked above) but may leave the span.
            rel = np.clip(target - base, 0, lut.size - 1)
            pos = lut[rel]
            hit = (pos >= 0) & (srt[np.maximum(pos, 0)] == target)
        else:
            pos = np.searchsorted(srt, target)
            pos[pos == n] = 0
            hit = srt[pos] == target
        return src[hit], pos[hit]

    return find


def neighbour_matrix(
    index: np.ndarray,
    shape: tuple[int, ...],
    kernel: str = "local",
    length_scale: float = 1.0,
    unit_cell: tuple[float, ...] | None = None,
    cutoff: float = 0.01,
    weights: str = "uniform",
) -> sp.csr_matrix:
    """Row-normalised neighbour matrix of the kept voxels.

    index : (N,) global C-order flat indices of the kept voxels in ``shape``,
    in any order (e.g. the chunk order of :class:`xtec.preprocess.Trajectories`);
    rows and columns of the result follow that order.
    shape : (L, K, H) grid shape.  kernel, length_scale, unit_cell, cutoff: see
    :func:`neighbour_stencil`.  weights : 'uniform' (1 per kept pair, the
    published tutorial's choice) or 'kernel' (the kernel weight).

    Returns a scipy.sparse.csr_matrix (N, N), float64, rows summing to 1.  Cost
    O(N x S) time for S stencil offsets (O(N log N x S) when the kept indices
    span more than 64 M voxels); never O(N^2).  Logs a warning
    when only self-loops remain (smoothing would then do nothing); see
    :func:`only_self_loops`.
    """
    if weights not in WEIGHTS:
        raise ParameterError(f"weights must be one of {WEIGHTS} (got {weights!r})")
    index = np.asarray(index, dtype=np.int64).ravel()
    shape = tuple(int(s) for s in shape)
    n = index.size
    if n and (index.min() < 0 or index.max() >= math.prod(shape)):
        raise ParameterError("voxel indices lie outside the grid")
    offsets, w = neighbour_stencil(shape, kernel, length_scale, unit_cell, cutoff)
    if len(offsets) == 1:
        log.warning(
            "the %s kernel with length scale %g keeps no neighbour above the cutoff "
            "%g: only self-loops, label smoothing does nothing",
            kernel,
            length_scale,
            cutoff,
        )
    order = np.argsort(index, kind="stable")
    srt = index[order]
    if n > 1 and np.any(srt[1:] == srt[:-1]):
        raise ParameterError("voxel indices must be unique")
    find = _neighbour_finder(srt, shape)
    rows, cols, vals = (
        [np.arange(n)],
        [np.arange(n)],
        [np.full(n, 1.0 if weights == "uniform" else w[0])],
    )
    for d, wd in zip(offsets[1:], w[1:]):
        # The kernel is symmetric: look up half the offsets and add both directions.
        if d[np.flatnonzero(d)[0]] < 0:
            continue
        a, b = find(d)
        v = np.full(a.size, 1.0 if weights == "uniform" else wd)
        rows += [a, b]
        cols += [b, a]
        vals += [v, v]
    r = order[np.concatenate(rows)]  # back from sorted positions to the caller's order
    c = order[np.concatenate(cols)]
    v = np.concatenate(vals)
    # Every (row, column) pair occurs once (distinct offsets), so no duplicates to
    # sum: normalise the rows on the triplets and convert in O(nnz).
    v /= np.bincount(r, weights=v, minlength=n)[r]
    m = sp.coo_matrix((v, (r, c)), shape=(n, n)).tocsr()
    if len(offsets) > 1 and only_self_loops(m):
        log.warning(
            "no two kept voxels are neighbours under the %s kernel with length scale "
            "%g: only self-loops, label smoothing does nothing",
            kernel,
            length_scale,
        )
    return m


def only_self_loops(w: sp.spmatrix) -> bool:
    """True when a neighbour matrix links no voxel to another (smoothing is a no-op)."""
    return bool(w.nnz <= w.shape[0] and np.all(w.tocoo().row == w.tocoo().col))


# ------------------------------------------------------------------ label smoothing
def _one_blas_thread():
    # The products here have an inner dimension of T or K: multi-threaded BLAS
    # gains nothing and, on a shared or oversubscribed machine (Dask workers
    # already run in parallel), it is up to 100x slower.
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


def _resp_block(X, params: MixtureParams):
    """Responsibilities (n, K) float64 and summed log-likelihood of one block."""
    with _one_blas_thread():
        lp = np.asarray(to_numpy(log_prob(X, params)))
    ll = logsumexp(lp, np)
    return np.exp(lp - ll[:, None]), float(ll.sum())


def _weighted_squares_diag(x: np.ndarray, r: np.ndarray) -> np.ndarray:
    return r.T @ (x * x)


def _weighted_squares_full(x: np.ndarray, r: np.ndarray) -> np.ndarray:
    return np.einsum("nk,ni,nj->kij", r, x, x)


_WEIGHTED_SQUARES = {"diag": _weighted_squares_diag, "full": _weighted_squares_full}


def _stats_from_resp(X, r: np.ndarray, covariance_type: str) -> SufficientStats:
    x = np.asarray(to_numpy(X), dtype=np.float64)
    with _one_blas_thread():
        sx = r.T @ x
        sxx = _WEIGHTED_SQUARES[covariance_type](x, r)
    return SufficientStats(r.sum(0), sx, sxx, 0.0, x.shape[0])


def responsibilities(X, params: MixtureParams) -> tuple[np.ndarray, float]:
    """E-step over all rows: (N, K) responsibilities on the driver, total log-likelihood.

    For Dask X each chunk's (n_c, K) block comes back in chunk order (K numbers
    per voxel, T times less than the trajectories).
    """
    if isinstance(X, da.Array):
        f = dask.delayed(_resp_block, pure=True)
        parts = dask.compute(*[f(b, params) for b in X.to_delayed().ravel()])
        return np.concatenate([p[0] for p in parts]), float(sum(p[1] for p in parts))
    return _resp_block(X, params)


def resp_stats(X, r: np.ndarray, covariance_type: str) -> SufficientStats:
    """M-step statistics of X with given responsibilities r (N, K), chunk by chunk."""
    if isinstance(X, da.Array):
        f = dask.delayed(_stats_from_resp, pure=True)
        bounds = np.cumsum((0,) + X.chunks[0])
        parts = dask.compute(
            *[
                f(b, r[lo:hi], covariance_type)
                for b, lo, hi in zip(X.to_delayed().ravel(), bounds[:-1], bounds[1:])
            ]
        )
        total = parts[0]
        for p in parts[1:]:
            total = total + p
        return total
    return _stats_from_resp(X, r, covariance_type)


class SmoothedGaussianMixture(GaussianMixture):
    """Gaussian mixture with label smoothing (XTEC-s): E-step responsibilities
    R are replaced by ``W^n_smooth R`` before every M-step.

    Parameters
    ----------
    neighbours : scipy.sparse matrix (N, N)
        Row-normalised neighbour matrix whose rows/columns follow the rows of
        the X passed to ``fit`` (see :func:`neighbour_matrix`).
    n_smooth : int
        Times W is applied per iteration (the published code: 1).
    Other parameters as :class:`~xtec.mixture.gaussian_mixture.GaussianMixture`.

    Attributes
    ----------
    labels_ : (N,) int16, argmax of the smoothed responsibilities at the fitted
    parameters (the XTEC-s labels of the training rows); other attributes as
    GaussianMixture.  ``lower_bound_`` is the mean (unsmoothed) log-likelihood.

    Only the E-step differs from GaussianMixture (:meth:`_e_step`); the
    restarts that choose the start run the plain mixture on a subsample, where
    the neighbour matrix does not apply.  Works on NumPy and Dask X: each
    iteration gathers the (N, K) responsibilities to the driver (chunk order),
    smooths them there, and sends each chunk its slice back for the M-step
    statistics, so the result does not depend on the chunking.
    """

    def __init__(
        self,
        n_components: int = 4,
        *,
        neighbours=None,
        n_smooth: int = 1,
        covariance_type: str = "diag",
        tol: float = 1e-6,
        reg_covar: float = 1e-6,
        max_iter: int = 500,
        n_init: int = 3,
        init_sample: int = 50_000,
        random_state: int = 0,
        engine: str = "auto",
    ):
        super().__init__(
            n_components,
            covariance_type=covariance_type,
            tol=tol,
            reg_covar=reg_covar,
            max_iter=max_iter,
            n_init=n_init,
            init_sample=init_sample,
            random_state=random_state,
            engine=engine,
        )
        self.neighbours = neighbours
        self.n_smooth = n_smooth

    def _validate(self, X) -> None:
        super()._validate(X)
        n = X.shape[0]
        if self.neighbours is None or self.neighbours.shape != (n, n):
            shape = None if self.neighbours is None else self.neighbours.shape
            raise ParameterError(
                f"neighbours must be a sparse ({n}, {n}) matrix matching the "
                f"rows of X (got {shape})"
            )
        if not isinstance(self.n_smooth, (int, np.integer)) or self.n_smooth < 0:
            raise ParameterError(f"n_smooth must be an integer >= 0 (got {self.n_smooth!r})")

    # Smoothed EM does not climb the log-likelihood it reports (the unsmoothed
    # one), so SQUAREM's safeguard has nothing sound to check: plain steps.
    _accelerated = False

    def _smooth(self, r: np.ndarray) -> np.ndarray:
        for _ in range(self.n_smooth):
            r = self._w @ r
        return r

    def fit(self, X, index=None) -> SmoothedGaussianMixture:
        """Fit to X (N, T), NumPy or Dask; index as in GaussianMixture.fit."""
        self._w = sp.csr_matrix(self.neighbours) if self.neighbours is not None else None
        if self._w is not None and only_self_loops(self._w):
            log.warning(
                "the neighbour matrix holds only self-loops: label smoothing does "
                "nothing (increase the length scale)"
            )
        super().fit(X, index)
        r, _ = responsibilities(X, self.params_)
        self.labels_ = np.argmax(self._smooth(r), axis=1).astype(np.int16)
        return self

    def _e_step(self, X, params: MixtureParams) -> SufficientStats:
        """Responsibilities of every row, smoothed over the neighbours, then the
        M-step statistics from them; the log-likelihood is the unsmoothed one."""
        r, total = responsibilities(X, params)
        stats = resp_stats(X, self._smooth(r), self.covariance_type)
        stats.loglik = total
        return stats


def fit_smooth(
    X,
    index,
    shape: tuple[int, ...],
    k: int,
    *,
    kernel: str = "local",
    length_scale: float = 1.0,
    unit_cell: tuple[float, ...] | None = None,
    cutoff: float = 0.01,
    weights: str = "uniform",
    n_smooth: int = 1,
    **gmm_kwargs,
) -> SmoothedGaussianMixture:
    """Label smoothing driver: neighbour matrix of the kept voxels, then the smoothed EM.

    X : (N, T) rescaled trajectories (NumPy or Dask, rows in chunk order);
    index : (N,) their global flat voxel indices (NumPy or Dask) in the same order;
    shape : (L, K, H).  Returns the fitted model; ``model.labels_`` (N,) are the
    labels of the rows of X (paint them with :func:`xtec.preprocess.paint`).
    """
    idx = np.asarray(index.compute() if isinstance(index, da.Array) else to_numpy(index))
    w = neighbour_matrix(idx, shape, kernel, length_scale, unit_cell, cutoff, weights)
    model = SmoothedGaussianMixture(k, neighbours=w, n_smooth=n_smooth, **gmm_kwargs)
    return model.fit(
        X, idx if not isinstance(X, da.Array) else da.from_array(idx, chunks=(X.chunks[0],))
    )
