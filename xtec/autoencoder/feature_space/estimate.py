"""Composition (or phase-fraction) estimates from a place in the feature space (NumPy).

Reference patterns of known composition trace a path through the features;
:class:`ConcentrationEstimator` reads a new point on it.  :func:`fit_estimators`
builds the estimators a model keeps, one per descriptor its reference carries.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import xarray as xr

from xtec.errors import InputError, ParameterError

log = logging.getLogger(__name__)

#: Descriptors estimated beside the main one whenever the reference carries them.
EXTRA_DESCRIPTORS = ("phase_fraction",)


def project_on_paths(
    q: np.ndarray,
    path_latent: np.ndarray,
    path_values: np.ndarray,
    ref_latent: np.ndarray,
    ref_values: np.ndarray,
    n_neighbors: int,
    method: str = "path",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Estimate, distance and local slope (each (b,)) of points on reference paths.

    Point ``q[i]`` (b, k) is read on path ``i`` of ``path_latent`` (b, s, k)
    with values ``path_values`` (b, s), among references ``ref_latent``
    (b, r, k) with values ``ref_values`` (b, r); a leading size of 1 shares
    one path among all points.  See :class:`ConcentrationEstimator` for the
    method; with ``"knn"`` the slope is 0 and the paths are not used.
    """
    rows = np.arange(q.shape[0])
    d_ref = np.linalg.norm(q[:, None, :] - ref_latent, axis=-1)
    k = min(n_neighbors, d_ref.shape[1])
    nn = np.argsort(d_ref, axis=1)[:, :k]
    nn_values = np.take_along_axis(np.broadcast_to(ref_values, d_ref.shape), nn, axis=1)
    if method == "knn":
        dn = np.take_along_axis(d_ref, nn, axis=1)
        w = 1.0 / (dn + 1e-12)
        return (w * nn_values).sum(1) / w.sum(1), dn[:, 0], np.zeros(q.shape[0])
    a, b = path_latent[:, :-1], path_latent[:, 1:]
    seg = b - a
    seg2 = np.maximum((seg**2).sum(-1), 1e-30)
    t = ((q[:, None, :] - a) * seg).sum(-1) / seg2
    lo = np.zeros_like(t)
    hi = np.ones_like(t)
    lo[:, 0] = -np.inf  # extrapolate before the first and after the last vertex
    hi[:, -1] = np.inf
    t = np.clip(t, lo, hi)
    closest = a + t[..., None] * seg
    dist = np.linalg.norm(q[:, None, :] - closest, axis=-1)
    # Where the path folds back close to itself the nearest segment can be
    # on the wrong branch; only segments whose compositions overlap those of
    # the nearest references are candidates.
    vlo, vhi = nn_values.min(1, keepdims=True), nn_values.max(1, keepdims=True)
    smin = np.minimum(path_values[:, :-1], path_values[:, 1:])
    smax = np.maximum(path_values[:, :-1], path_values[:, 1:])
    allowed = (smax >= vlo) & (smin <= vhi)
    allowed[~allowed.any(1)] = True
    best = np.argmin(np.where(allowed, dist, np.inf), axis=1)
    tb = t[rows, best]
    pv = np.broadcast_to(path_values, (q.shape[0], path_values.shape[1]))
    v0, v1 = pv[rows, best], pv[rows, best + 1]
    slope = np.abs(v1 - v0) / np.sqrt(np.broadcast_to(seg2, t.shape)[rows, best])
    return v0 + tb * (v1 - v0), dist[rows, best], slope


class ConcentrationEstimator:
    """Composition from a position in the feature space, with an uncertainty.

    Reference points of known composition trace a path through the latent space.
    ``method="path"`` sorts them by composition, smooths the path with a running
    mean over ``smoothing`` references, and maps a new point to the composition
    of its orthogonal projection on that polyline (linearly extrapolated past
    the ends).  ``method="knn"`` takes the inverse-distance weighted mean of the
    ``n_neighbors`` nearest references instead.

    The uncertainty is the RMS leave-one-out residual of the references nearest
    the point (each reference estimated from the others, minus its known
    composition), combined in quadrature
    with, for points farther from the path than the references are, the extra
    distance times the local slope of composition along the path.

    Parameters
    ----------
    method
        ``"path"`` or ``"knn"``.
    n_neighbors
        References used for the local uncertainty (and for ``"knn"``).
    smoothing
        Running-mean window along the path; default ``max(3, n_ref // 25)``.
    columns
        Feature columns to use (default all).
    """

    def __init__(
        self,
        method: str = "path",
        n_neighbors: int = 8,
        smoothing: int | None = None,
        columns: Sequence[int] | None = None,
    ):
        if method not in ("path", "knn"):
            raise ParameterError(f"method must be 'path' or 'knn', not {method!r}")
        if n_neighbors < 1:
            raise ParameterError(f"n_neighbors must be at least 1, not {n_neighbors}")
        if smoothing is not None and smoothing < 1:
            raise ParameterError(f"smoothing must be at least 1, not {smoothing}")
        self.method = method
        self.n_neighbors = n_neighbors
        self.smoothing = smoothing
        self.columns = None if columns is None else tuple(int(c) for c in columns)

    def _select(self, latent: np.ndarray) -> np.ndarray:
        z = np.asarray(latent, dtype=float)
        if z.ndim == 1:
            z = z[None]
        return z if self.columns is None else z[:, list(self.columns)]

    def fit(
        self, latent: np.ndarray, values: np.ndarray, loo: bool = True
    ) -> ConcentrationEstimator:
        """Learn the reference path.  ``latent`` (n, k), ``values`` (n,).

        With ``loo`` (the default) the residuals behind the uncertainty are
        leave-one-out ones.
        """

        z = self._select(latent)
        v = np.asarray(values, dtype=float).ravel()
        if z.ndim != 2 or z.shape[0] != v.size:
            raise ParameterError(f"latent {z.shape} and values {v.shape} do not match")
        if v.size < 3:
            raise ParameterError("need at least 3 reference patterns of known composition")
        if not np.all(np.isfinite(v)):
            raise InputError("reference compositions must be finite numbers")
        self._fit_path(z, v)
        if not loo or v.size < 4:
            est, dist, _ = self._project(z)
            self.ref_residual_ = est - v
            self.ref_distance_ = dist
            return self
        # Leave-one-out: each reference estimated by the path of the others, as a
        # new pattern would be.  In-sample residuals sit on their own path and
        # understate the error of held-out compositions.
        self.ref_residual_, self.ref_distance_ = self._leave_one_out(z, v)
        return self

    def _smoothing_window(self, n: int) -> int:
        return min(self.smoothing or max(3, n // 25), n)

    def _fit_path(self, z: np.ndarray, v: np.ndarray) -> None:
        from scipy.ndimage import uniform_filter1d

        order = np.argsort(v, kind="stable")
        w = self._smoothing_window(v.size)
        self.ref_latent_ = z
        self.ref_values_ = v
        self.path_latent_ = uniform_filter1d(z[order], size=w, axis=0, mode="nearest")
        self.path_values_ = uniform_filter1d(v[order], size=w, mode="nearest")

    def _leave_one_out(
        self, z: np.ndarray, v: np.ndarray, block: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Residual and distance (n,) of each reference on the path of the others.

        All n paths are built at once, ``block`` held-out references at a time
        (by default as many as keep the work arrays near 16 MB): the stable
        sort of the others is the full sort with one entry removed, and
        ``uniform_filter1d`` smooths each path on its own line, so every path,
        and every estimate, equals fitting an estimator on the others.
        """
        from scipy.ndimage import uniform_filter1d

        n, k = z.shape
        order = np.argsort(v, kind="stable")
        position = np.empty(n, dtype=np.intp)
        position[order] = np.arange(n)
        w = self._smoothing_window(n - 1)
        others = np.arange(n - 1)[None]
        block = block or max(1, 2_000_000 // (n * (k + 1)))
        residual = np.empty(n)
        distance = np.empty(n)
        for b0 in range(0, n, block):
            held = np.arange(b0, min(b0 + block, n))
            # Row j of the others: j, or j + 1 past the held-out one (in the
            # sorted order for the path, in the original order for the references).
            in_order = order[others + (others >= position[held, None])]
            in_place = others + (others >= held[:, None])
            path = uniform_filter1d(z[in_order], size=w, axis=1, mode="nearest")
            path_v = uniform_filter1d(v[in_order], size=w, axis=1, mode="nearest")
            est, dist, _ = project_on_paths(
                z[held], path, path_v, z[in_place], v[in_place], self.n_neighbors, self.method
            )
            residual[held] = est - v[held]
            distance[held] = dist
        return residual, distance

    def loo_mae(self) -> float:
        """Mean absolute leave-one-out error of the references (after :meth:`fit`)."""
        return float(np.mean(np.abs(self.ref_residual_)))

    def _project(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return project_on_paths(
            q,
            self.path_latent_[None],
            self.path_values_[None],
            self.ref_latent_[None],
            self.ref_values_[None],
            self.n_neighbors,
            self.method,
        )

    def predict(
        self, latent: np.ndarray, sigma: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Estimate compositions.  ``latent`` (m, k) → (estimate (m,), uncertainty (m,)).

        ``sigma`` (m, k), optional: each point's own measurement error in the
        feature columns; the uncertainty then also holds its effect along the
        path, ``slope * |sigma|``, beside the references' residuals.
        """
        if not hasattr(self, "ref_latent_"):
            raise ParameterError("the estimator is not fitted")
        q = self._select(latent)
        est, dist, slope = self._project(q)
        d = np.linalg.norm(q[:, None, :] - self.ref_latent_[None], axis=-1)
        k = min(self.n_neighbors, d.shape[1])
        nn = np.argsort(d, axis=1)[:, :k]
        local = np.sqrt(np.mean(self.ref_residual_[nn] ** 2, axis=1))
        typical = np.sqrt(np.mean(self.ref_distance_[nn] ** 2, axis=1))
        excess = np.maximum(dist - 2 * typical, 0.0)
        own = 0.0 if sigma is None else np.linalg.norm(self._select(sigma), axis=1) * slope
        return est, np.sqrt(local**2 + (excess * slope) ** 2 + own**2)


def reference_values(patterns: xr.DataArray, name: str) -> np.ndarray:
    """The numeric values (n,) of coordinate ``name``, or one clear InputError."""
    first = patterns.dims[0]
    if name not in patterns.coords or patterns[name].dims != (first,):
        have = [n for n, c in patterns.coords.items() if c.dims == (first,) and n != first]
        raise InputError(
            f"the reference descriptor {name!r} is not a coordinate of the patterns "
            f"(they have: {', '.join(have) or 'none'}); name one with --descriptor"
        )
    raw = np.asarray(patterns[name].values)
    values = np.full(raw.shape, np.nan)
    for i, v in enumerate(raw.tolist()):
        try:
            values[i] = float(v)
        except (TypeError, ValueError):
            raise InputError(
                f"the {name!r} of pattern {i} is {v!r}, not a number; every reference "
                f"pattern needs a numeric {name}"
            ) from None
    if not np.all(np.isfinite(values)):
        i = int(np.flatnonzero(~np.isfinite(values))[0])
        raise InputError(f"the {name!r} of pattern {i} is {raw[i]!r}, not a finite number")
    return values


def best_estimator(
    features: np.ndarray, values: np.ndarray, candidates: Sequence[tuple[int, ...]]
) -> ConcentrationEstimator:
    """A path estimator on the feature columns with the smallest leave-one-out error.

    ``features`` (n, f), ``values`` (n,); ``candidates`` are column sets to try
    (a Vegard series is best read from the strain, a two-phase or ordering
    series from the latent or both).
    """
    best = None
    for cols in candidates:
        est = ConcentrationEstimator(columns=cols).fit(features, values)
        if best is None or est.loo_mae() < best.loo_mae() - 1e-12:
            best = est
    log.info("estimator columns %s, leave-one-out MAE %.4g", best.columns, best.loo_mae())
    return best


def fit_estimators(
    features: np.ndarray,
    patterns: xr.DataArray,
    descriptor: str,
    candidates: Sequence[tuple[int, ...]],
) -> dict[str, ConcentrationEstimator]:
    """One estimator for ``descriptor`` and one per :data:`EXTRA_DESCRIPTORS` the patterns carry.

    ``features`` (n, f) are the reference patterns' features, in their order.
    """
    estimators = {
        descriptor: best_estimator(features, reference_values(patterns, descriptor), candidates)
    }
    first = patterns.dims[0]
    for name in EXTRA_DESCRIPTORS:
        if name != descriptor and name in patterns.coords:
            if patterns[name].dims == (first,) and patterns[name].dtype.kind in "fiu":
                estimators[name] = best_estimator(
                    features, reference_values(patterns, name), candidates
                )
    return estimators
