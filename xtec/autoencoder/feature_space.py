"""Feature space of 1-D XRD patterns built by an autoencoder.

After Utimula, Hongo, Nakano, Maezono et al., "Feature Space of XRD Patterns
Constructed by an Autoencoder", Adv. Theory Simul. (2023): patterns on a common
2-theta grid are encoded to a low-dimensional latent (2-D by default) and decoded
back; the latent points are clustered.  Before encoding, patterns are resampled
onto a log(sin theta) grid, where Vegard's shifts are translations, and lined up
with a template; the lag is kept as a whole-pattern lattice strain beside the
latent.  On the trained model:

* :class:`ConcentrationEstimator` estimates a composition (or a phase fraction)
  from a pattern's place on the path that reference patterns of known
  composition trace in the features (latent and strain);
* :meth:`FeatureSpaceAE.peak_relevance` masks one peak (or any 2-theta window),
  re-encodes, and ranks peaks by how far the latent point moves;
* :meth:`FeatureSpaceAE.interpolate` decodes points on the segment between two
  patterns' latents into intermediate patterns.

Only :class:`FeatureSpaceAE` methods need PyTorch; the estimator and the masking
helpers are NumPy.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import xarray as xr

from xtec.errors import InputError, ParameterError
from xtec.nn import (
    adam,
    decode_latent,
    deterministic,
    load_model_file,
    require_torch,
    save_model_file,
    show_progress,
    warmup_cosine,
)

log = logging.getLogger(__name__)

MODEL_KIND = "feature_space_ae"

#: Descriptors estimated beside the main one whenever the reference carries them.
EXTRA_DESCRIPTORS = ("phase_fraction",)


# --------------------------------------------------------------------------- pure helpers


def normalize_patterns(x: np.ndarray, how: str = "area") -> np.ndarray:
    """Scale each row of ``x`` (n, m) to remove the counting time.

    ``"area"`` divides by the mean intensity (the default: it averages the noise
    of every point, so the scale itself is nearly noise-free); ``"max"`` divides
    by the maximum of the pattern smoothed over about one point, so that the
    noise of a single point does not set the scale of the whole pattern;
    ``"none"`` leaves the data as they are.
    """
    x = np.asarray(x, dtype=float)
    if how == "none":
        return x.copy()
    if how == "area":
        scale = np.mean(x, axis=-1, keepdims=True)
    elif how == "max":
        from scipy.ndimage import gaussian_filter1d

        scale = np.max(gaussian_filter1d(x, 1.0, axis=-1, mode="nearest"), axis=-1, keepdims=True)
    else:
        raise ParameterError(f"normalize must be 'area', 'max' or 'none', not {how!r}")
    if np.any(scale <= 0):
        raise InputError("a pattern has no positive intensity; cannot normalise it")
    return x / scale


def variance_stabilize(x: np.ndarray, how: str = "sqrt") -> np.ndarray:
    """``"sqrt"``: the square root of intensities (clipped at 0); ``"none"``: unchanged.

    Counting noise grows as the square root of the intensity, so without this
    the strongest peaks carry most of the noise, and noise components localised
    on them pass for signal in the principal components.
    """
    if how == "sqrt":
        return np.sqrt(np.clip(x, 0.0, None))
    if how == "none":
        return np.asarray(x, dtype=float)
    raise ParameterError(f"transform must be 'sqrt' or 'none', not {how!r}")


def _inverse_stabilize(t: np.ndarray, how: str) -> np.ndarray:
    return np.sign(t) * t**2 if how == "sqrt" else t


def mask_window(
    pattern: np.ndarray, grid: np.ndarray, lo: float, hi: float, edge: int = 3
) -> np.ndarray:
    """Replace ``pattern`` on ``lo <= grid <= hi`` by a straight background line.

    The line joins the medians of ``edge`` points just outside each end, so a
    peak is removed without leaving a step, whatever the background.

    Parameters
    ----------
    pattern, grid
        Shape (m,).
    lo, hi
        Window limits in grid units.

    Returns
    -------
    A masked copy, shape (m,).
    """
    y = np.array(pattern, dtype=float, copy=True)
    inside = (grid >= lo) & (grid <= hi)
    if not inside.any():
        return y
    idx = np.flatnonzero(inside)
    i0, i1 = idx[0], idx[-1]
    left = y[max(i0 - edge, 0) : i0] if i0 > 0 else y[i0 : i0 + 1]
    right = y[i1 + 1 : i1 + 1 + edge] if i1 + 1 < y.size else y[i1 : i1 + 1]
    yl, yr = float(np.median(left)), float(np.median(right))
    xl, xr_ = grid[max(i0 - 1, 0)], grid[min(i1 + 1, y.size - 1)]
    t = (grid[idx] - xl) / (xr_ - xl) if xr_ > xl else np.zeros(idx.size)
    y[idx] = yl + t * (yr - yl)
    return y


def signal_rank(singular_values: np.ndarray, n: int, m: int) -> int:
    """Number of singular values above the noise floor (Gavish & Donoho 2014).

    The optimal hard threshold for a matrix (n, m) with white noise of unknown
    level is ``omega(beta) * median(singular_values)``, ``beta = min/max`` of
    the shape, with omega approximated by a cubic.
    """
    sv = np.asarray(singular_values, dtype=float)
    beta = min(n, m) / max(n, m)
    omega = 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43
    return int(np.sum(sv > omega * np.median(sv)))


def log_d_grid(two_theta: np.ndarray) -> np.ndarray:
    """A grid uniform in ``log(sin(theta))`` spanning ``two_theta`` (degrees), same size.

    ``d = lambda / (2 sin(theta))``, so on this grid a change of the lattice
    parameter by a factor ``1 + e`` moves every peak by the same ``-log(1 + e)``:
    Vegard's shifts become translations.
    """
    u = np.log(np.sin(np.radians(np.asarray(two_theta, dtype=float) / 2)))
    return np.linspace(u[0], u[-1], u.size)


def resample_rows(x: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Linear interpolation of each row of ``x`` (n, len(src)) onto ``dst``."""
    return np.stack([np.interp(dst, src, row) for row in np.atleast_2d(x)])


def remove_baseline(t: np.ndarray, width: int = 101) -> np.ndarray:
    """Rows of ``t`` minus a smooth lower envelope (rolling minimum, then mean).

    ``width`` points should span several peak widths; what is left are the
    peaks, whatever the background's level and slope.
    """
    from scipy.ndimage import minimum_filter1d, uniform_filter1d

    width = max(3, min(width, t.shape[-1] // 3 * 2 + 1))
    base = uniform_filter1d(minimum_filter1d(t, width, axis=-1, mode="nearest"), width, axis=-1)
    return t - base


def cross_correlation_shift(t: np.ndarray, template: np.ndarray, max_lag: int) -> np.ndarray:
    """Sub-point lag (n,) that best lines each row of ``t`` (n, m) up with ``template`` (m,).

    ``t[i, j + lag_i]`` matches ``template[j]``: the circular cross-correlation
    (FFT, zero-padded so nothing wraps) is maximised over ``|lag| <= max_lag``
    and refined by a parabola through the best point and its neighbours.
    """
    from scipy.fft import irfft, next_fast_len, rfft

    t = np.atleast_2d(t)
    m = t.shape[1]
    max_lag = int(max(1, min(max_lag, m - 2)))
    # Padding to m + max_lag points keeps every lag searched free of wrap-around;
    # a length with small prime factors keeps the FFT fast (2 m was 2 x a
    # prime for the 1,601- and 4,001-point grids here: 10x slower).
    size = next_fast_len(m + max_lag, real=True)
    c = irfft(rfft(t, size) * np.conj(rfft(template, size)), size)
    cc = np.concatenate([c[:, -max_lag:], c[:, : max_lag + 1]], axis=1)  # lags -L..L
    j = np.clip(np.argmax(cc, axis=1), 1, cc.shape[1] - 2)
    rows = np.arange(t.shape[0])
    a, b, d = cc[rows, j - 1], cc[rows, j], cc[rows, j + 1]
    den = a - 2 * b + d
    frac = np.where(den < 0, 0.5 * (a - d) / np.where(den < 0, den, 1.0), 0.0)
    return (j - max_lag) + np.clip(frac, -0.5, 0.5)


def shift_rows(t: np.ndarray, lag: np.ndarray) -> np.ndarray:
    """Rows moved by ``-lag`` points: ``out[i, j] = t[i, j + lag_i]`` (linear, edges held)."""
    idx = np.arange(t.shape[-1], dtype=float)
    return np.stack([np.interp(idx + s, idx, row) for row, s in zip(t, lag, strict=True)])


def _thin_svd(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Singular values (r,) and right singular vectors (r, m) of ``a`` (n, m).

    With fewer rows than columns (patterns << grid points) through the small
    Gram matrix ``a a^T``: an (n, n) eigenproblem instead of an SVD of the
    whole matrix.
    """
    n, m = a.shape
    if n >= m:
        _, sv, vt = np.linalg.svd(a, full_matrices=False)
        return sv, vt
    w, u = np.linalg.eigh(a @ a.T)
    order = np.argsort(w)[::-1]
    w, u = np.clip(w[order], 0.0, None), u[:, order]
    sv = np.sqrt(w)
    keep = sv > sv[0] * 1e-10 if sv.size and sv[0] > 0 else np.zeros(sv.size, bool)
    vt = (u[:, keep].T @ a) / sv[keep, None]
    return np.concatenate([sv[keep], np.zeros(int((~keep).sum()))]), vt


@dataclass
class Peak:
    """One peak found in a pattern; ``lo``/``hi`` bound the masking window."""

    position: float
    height: float
    lo: float
    hi: float


def find_peaks(
    pattern: np.ndarray,
    grid: np.ndarray,
    *,
    prominence: float = 0.02,
    window: float | None = None,
    width_factor: float = 1.5,
    max_peaks: int | None = None,
) -> list[Peak]:
    """Peaks of a (normalised) pattern and the window to mask for each.

    Parameters
    ----------
    pattern, grid
        Shape (m,).
    prominence
        Minimum prominence as a fraction of the pattern maximum.
    window
        Full width of the masking window in grid units; by default
        ``2 * width_factor`` times the peak's full width at half maximum.
    max_peaks
        Keep only the most prominent ones.

    Returns
    -------
    Peaks sorted by position.
    """
    from scipy.signal import find_peaks as _find
    from scipy.signal import peak_widths

    y = np.asarray(pattern, dtype=float)
    scale = float(np.max(y) - np.min(y)) or 1.0
    idx, props = _find(y, prominence=prominence * scale)
    if max_peaks is not None and idx.size > max_peaks:
        keep = np.sort(np.argsort(props["prominences"])[::-1][:max_peaks])
        idx = idx[keep]
    if idx.size == 0:
        return []
    step = float(np.median(np.diff(grid)))
    widths = peak_widths(y, idx, rel_height=0.5)[0] * step
    peaks = []
    for i, w in zip(idx, widths, strict=True):
        half = window / 2 if window is not None else max(width_factor * w, 2 * step)
        peaks.append(
            Peak(float(grid[i]), float(y[i]), float(grid[i] - half), float(grid[i] + half))
        )
    return peaks


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

    def predict(self, latent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Estimate compositions.  ``latent`` (m, k) → (estimate (m,), uncertainty (m,))."""
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
        return est, np.sqrt(local**2 + (excess * slope) ** 2)


# --------------------------------------------------------------------------- the model


@dataclass
class FeatureSpaceConfig:
    """Hyper-parameters of :class:`FeatureSpaceAE` (saved with the model)."""

    latent_dim: int = 2
    n_components: int | str | None = "auto"
    max_components: int = 32
    hidden: Sequence[int] = field(default_factory=lambda: (256, 64))
    epochs: int = 300
    # A whole set of up to 256 patterns per step, with a warm-up and a larger
    # rate, in place of batches of 32 at lr 2e-3 (5x fewer steps on 150
    # patterns; the same or better composition estimates, docs/autoencoder.md).
    batch_size: int = 256
    lr: float = 1e-2
    warmup: float = 0.1
    weight_decay: float = 1e-5
    input_noise: float = 0.01
    normalize: str = "area"
    transform: str = "sqrt"
    grid: str = "log_d"
    align: bool = True
    max_strain: float = 0.2
    subtract_background: bool = True
    decode_components: bool = True
    n_clusters: int = 3
    seed: int = 0

    def validate(self) -> None:
        if self.latent_dim < 1:
            raise ParameterError(f"latent_dim must be at least 1, not {self.latent_dim}")
        if not self.hidden or any(int(h) < 1 for h in self.hidden):
            raise ParameterError(f"hidden sizes must be positive, not {self.hidden}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ParameterError("epochs and batch_size must be at least 1")
        if self.lr <= 0 or self.weight_decay < 0 or self.input_noise < 0:
            raise ParameterError("lr must be positive; weight_decay and input_noise non-negative")
        if not 0.0 <= self.warmup < 1.0:
            raise ParameterError(f"warmup must lie in [0, 1), not {self.warmup}")
        if self.normalize not in ("area", "max", "none"):
            raise ParameterError(
                f"normalize must be 'area', 'max' or 'none', not {self.normalize!r}"
            )
        if self.grid not in ("log_d", "two_theta"):
            raise ParameterError(f"grid must be 'log_d' or 'two_theta', not {self.grid!r}")
        if not 0 < self.max_strain < 1:
            raise ParameterError(f"max_strain must lie in (0, 1), not {self.max_strain}")
        if self.transform not in ("sqrt", "none"):
            raise ParameterError(f"transform must be 'sqrt' or 'none', not {self.transform!r}")
        nc = self.n_components
        if not (nc is None or nc == "auto" or (isinstance(nc, int) and nc >= 1)):
            raise ParameterError(f"n_components must be 'auto', None or at least 1, not {nc!r}")
        if self.max_components < 1:
            raise ParameterError(f"max_components must be at least 1, not {self.max_components}")
        if self.n_clusters < 1:
            raise ParameterError(f"n_clusters must be at least 1, not {self.n_clusters}")


def learning_rates(lr: float, epochs: int, warmup: float = 0.0, final: float = 0.05) -> list[float]:
    """Learning rate of each epoch: a cosine from ``lr`` to ``lr * final``, ramped up
    linearly over the first ``warmup`` share of the epochs.

    The cosine is torch's ``CosineAnnealingLR(T_max=epochs)`` in its recursive
    form (:func:`xtec.nn.warmup_cosine` with ``chained``), so that without a
    warm-up the rates, and the trained weights, are those of that scheduler to
    the bit, without its wrapper around every optimizer step.
    """
    return warmup_cosine(
        epochs, lr=lr, warmup=round(warmup * epochs) + 1, final=final, chained=True
    )


def _build_net(n_in: int, hidden: Sequence[int], latent: int, n_components: int):
    torch = require_torch()
    nn = torch.nn

    def mlp(sizes):
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.SiLU())
        return nn.Sequential(*layers)

    sizes = [*[int(h) for h in hidden], latent]
    return nn.ModuleDict(
        {"encoder": mlp([n_components, *sizes]), "decoder": mlp([*sizes[::-1], n_in])}
    )


class FeatureSpaceAE:
    """Autoencoder feature space of 1-D patterns on a common grid.

    Parameters are those of :class:`FeatureSpaceConfig`; ``n_threads`` and
    ``progress`` only affect how training runs (``n_threads`` bounds the
    PyTorch, BLAS and OpenMP threads of :meth:`fit`).

    Attributes (after :meth:`fit`)
    ------------------------------
    grid_ : (m,) the 2-theta grid
    latent_ : (n, latent_dim) latent points of the training patterns
    labels_ : (n,) k-means cluster of each training pattern
    cluster_centers_ : (n_clusters, n_features) in the space of :meth:`features`
    latent_scale_ : RMS distance of training points to their centroid; latent
        shifts are reported in this unit
    estimators_ : dict of :class:`ConcentrationEstimator`, one per descriptor with
        a reference (composition, phase_fraction); ``estimator_`` is that of
        :attr:`descriptor`
    template_ : (m,) aligned mean training profile on the internal grid
    train_strain_ : (n,) lattice strain of each training pattern against it
    history_ : mean training loss per epoch (MSE of the variance-stabilised patterns)
    """

    def __init__(self, *, n_threads: int | None = None, progress: bool | None = None, **params):
        unknown = set(params) - set(FeatureSpaceConfig.__dataclass_fields__)
        if unknown:
            raise ParameterError(f"unknown parameters: {sorted(unknown)}")
        self.config = FeatureSpaceConfig(**params)
        self.config.validate()
        self.n_threads = n_threads
        self.progress = progress
        self.descriptor: str | None = None
        self.estimators_: dict[str, ConcentrationEstimator] = {}
        self.net_ = None

    # -- data plumbing
    def _matrix(self, x, normalize: bool = True) -> np.ndarray:
        if isinstance(x, xr.DataArray):
            if x.ndim == 1:
                x = x.expand_dims("pattern")
            if hasattr(self, "grid_"):
                grid = np.asarray(x[x.dims[-1]].values, dtype=float)
                if grid.shape != self.grid_.shape or not np.allclose(
                    grid, self.grid_, rtol=1e-6, atol=1e-9
                ):
                    raise InputError(
                        f"the patterns' grid ({grid.size} points, {grid[0]:g}..{grid[-1]:g}) differs "
                        f"from the model's ({self.grid_.size} points, {self.grid_[0]:g}..{self.grid_[-1]:g})"
                    )
            x = x.values
        x = np.asarray(x, dtype=float)
        if x.ndim == 1:
            x = x[None]
        if hasattr(self, "grid_") and x.shape[1] != self.grid_.size:
            raise InputError(
                f"patterns have {x.shape[1]} points, the model expects {self.grid_.size}"
            )
        return normalize_patterns(x, self.config.normalize) if normalize else x

    def _internal(
        self, x: np.ndarray, fit: bool = False, lag: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Normalised patterns (n, m) -> (aligned internal profiles (n, m), lag (n,)).

        Variance-stabilised, resampled onto the log-d grid, background removed,
        and moved by the lag (in internal grid points) that lines each up with
        the template, or by the given ``lag``.  ``fit=True`` builds the template
        from ``x`` first.
        """
        cfg = self.config
        t = variance_stabilize(x, cfg.transform)
        if cfg.grid == "log_d":
            t = resample_rows(t, self._u_src, self.internal_grid_)
        if cfg.subtract_background:
            t = remove_baseline(t, self._baseline_width)
        if not cfg.align:
            return t, np.zeros(t.shape[0])
        if lag is not None:
            lag = np.broadcast_to(np.asarray(lag, dtype=float), t.shape[:1])
            return shift_rows(t, lag), lag
        probe = t - t.mean(axis=1, keepdims=True)
        if fit:
            # Template: start from the pattern most like the others, then twice
            # align everything to the current template and average.
            template = probe[np.argmax(probe @ probe.mean(0))]
            for _ in range(3):
                lag = cross_correlation_shift(probe, template, self._max_lag)
                template = shift_rows(probe, lag).mean(0)
            lag = cross_correlation_shift(probe, template, self._max_lag)
            self.template_ = template
            self.lag_offset_ = float(np.mean(lag))
            lag = lag - self.lag_offset_
        else:
            lag = cross_correlation_shift(probe, self.template_, self._max_lag) - self.lag_offset_
        return shift_rows(t, lag), lag

    @property
    def _u_src(self) -> np.ndarray:
        return np.log(np.sin(np.radians(self.grid_ / 2)))

    @property
    def _step(self) -> float:
        g = self.internal_grid_
        return float((g[-1] - g[0]) / (g.size - 1))

    @property
    def _max_lag(self) -> int:
        if self.config.grid == "log_d":
            return int(np.ceil(np.log1p(self.config.max_strain) / self._step))
        return int(np.ceil(self.config.max_strain * self.grid_.size / 4))

    @property
    def _baseline_width(self) -> int:
        return max(15, self.grid_.size // 40 * 2 + 1)

    def _strain(self, lag: np.ndarray) -> np.ndarray:
        """Relative lattice change against the template, ``a / a_template - 1``.

        A lag of ``+1`` point on the log(sin theta) grid means peaks at larger
        sin(theta), smaller d: ``a`` scales by ``exp(-step * lag)``.  On the
        two-theta grid the lag is returned in degrees instead.
        """
        if self.config.grid == "log_d":
            return np.expm1(-self._step * np.asarray(lag))
        return np.asarray(lag) * float(np.median(np.diff(self.grid_)))

    def _to_net(self, x: np.ndarray, lag: np.ndarray | None = None) -> np.ndarray:
        t, _ = self._internal(x, lag=lag)
        return ((t - self.mean_pattern_) / self.scale_) @ self.components_.T

    def _check_fitted(self) -> None:
        if self.net_ is None:
            raise ParameterError("the model is not trained; call fit() or load() first")

    # -- training
    def fit(self, patterns: xr.DataArray, descriptor: str | None = "auto") -> FeatureSpaceAE:
        """Train on patterns (n, m) with dims ``("pattern", "two_theta")``.

        The training features and the values of the ``descriptor`` coordinate
        become the reference of the composition estimator (and of a phase
        fraction, when the patterns carry ``phase_fraction`` too).
        ``"auto"`` uses ``composition`` when present and no reference
        otherwise; ``None`` none; a name that is missing or not numeric raises
        :class:`~xtec.errors.InputError`.
        """
        require_torch()
        if not isinstance(patterns, xr.DataArray) or patterns.ndim != 2:
            raise InputError("fit() needs a 2-D DataArray (pattern, two_theta)")
        if descriptor == "auto":
            descriptor = "composition" if "composition" in patterns.coords else None
        if descriptor is not None:
            self._reference_values(patterns, descriptor)  # fail before training
        # Every matrix here is small (patterns x grid points at most), so more
        # BLAS or OpenMP threads than free cores only wait for each other: on
        # the shared 2-core machine a 150 x 150 eigh took 0.3 s instead of 6 ms
        # and k-means 0.15 s instead of 0.02 s.  n_threads bounds them all.
        from threadpoolctl import threadpool_limits

        with threadpool_limits(self.n_threads) if self.n_threads else contextlib.nullcontext():
            return self._fit(patterns, descriptor)

    def _fit(self, patterns: xr.DataArray, descriptor: str | None) -> FeatureSpaceAE:
        torch = require_torch()
        cfg = self.config
        for stale in ("grid_", "components_"):  # a refit starts from the new data
            self.__dict__.pop(stale, None)
        x = self._matrix(patterns)
        n, m = x.shape
        if n < 2:
            raise InputError(f"need at least 2 patterns to train, got {n}")
        self.grid_ = np.asarray(patterns[patterns.dims[-1]].values, dtype=float)
        self.grid_name_ = str(patterns.dims[-1])
        if cfg.grid == "log_d":
            if self.grid_.min() <= 0 or self.grid_.max() >= 180:
                raise InputError(
                    f"grid='log_d' needs a 2-theta axis in degrees inside (0, 180), "
                    f"got {self.grid_.min():g}..{self.grid_.max():g}; use grid='two_theta'"
                )
            self.internal_grid_ = log_d_grid(self.grid_)
        else:
            self.internal_grid_ = self.grid_.copy()
        # On the log-d grid a Vegard shift is a translation: patterns are lined
        # up with a template and the lag (a lattice strain) is kept as a feature
        # beside the latent, so the network only models what else changes.
        t, lag = self._internal(x, fit=True)
        self.train_strain_ = self._strain(lag)
        self.strain_scale_ = float(np.std(self.train_strain_)) or 1.0
        # Centre on the mean pattern and scale by one global factor: the small
        # variance of narrow peaks otherwise lets the net settle on the mean
        # pattern, and one factor (not one per point) keeps flat regions from
        # being blown up into noise.
        self.mean_pattern_ = t.mean(axis=0)
        self.scale_ = float(np.std(t - self.mean_pattern_)) or 1.0
        # The encoder sees the patterns only through their leading principal
        # components.  A feature that never varies in the training set (a strong
        # but constant peak) then barely reaches the latent when it is masked,
        # instead of feeding an out-of-distribution input through weights that
        # training never had a reason to shape.
        sv, vt = _thin_svd(t - self.mean_pattern_)
        if cfg.n_components == "auto":
            k = min(signal_rank(sv, n, m), cfg.max_components)
        else:
            k = min(cfg.n_components or m, sv.size)
        self.components_ = vt[: max(k, 1)]
        log.info("encoder input: %d principal components", self.components_.shape[0])
        from tqdm.auto import tqdm

        start = time.perf_counter()
        with deterministic(cfg.seed, self.n_threads):
            n_comp = self.components_.shape[0]
            net = _build_net(
                n_comp if cfg.decode_components else m, cfg.hidden, cfg.latent_dim, n_comp
            )
            opt = adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            lrs = learning_rates(cfg.lr, cfg.epochs, cfg.warmup)
            gen = torch.Generator().manual_seed(cfg.seed)
            centred = (t - self.mean_pattern_) / self.scale_
            coeffs = centred @ self.components_.T
            xt = torch.as_tensor(centred, dtype=torch.float32)
            ct = torch.as_tensor(coeffs, dtype=torch.float32)
            basis = torch.as_tensor(self.components_.T, dtype=torch.float32)
            # With decode_components the decoder outputs principal-component
            # coefficients: the components are orthonormal, so the squared error
            # over the grid is that over the coefficients plus what lies outside
            # the signal subspace (a constant, noise), and the input noise
            # projected on them is white noise of the same sigma.  Every step
            # then works on k numbers per pattern instead of the whole grid.
            outside = float(np.mean((centred - coeffs @ self.components_) ** 2))
            bs = min(cfg.batch_size, n)
            history = []
            bar = tqdm(
                range(cfg.epochs),
                desc="ae train",
                disable=not show_progress(self.progress),
                leave=False,
            )
            for epoch in bar:
                for group in opt.param_groups:
                    group["lr"] = lrs[epoch]
                perm = torch.randperm(n, generator=gen)
                total = 0.0
                for i in range(0, n, bs):
                    idx = perm[i : i + bs]
                    if cfg.decode_components:
                        cb = ct[idx]
                        noisy = cb + (cfg.input_noise / self.scale_) * torch.randn(
                            cb.shape, generator=gen
                        )
                        rec = net["decoder"](net["encoder"](noisy))
                        loss = torch.sum((rec - cb) ** 2) / (cb.shape[0] * m)
                    else:
                        xb = xt[idx]
                        noisy = xb + (cfg.input_noise / self.scale_) * torch.randn(
                            xb.shape, generator=gen
                        )
                        rec = net["decoder"](net["encoder"](noisy @ basis))
                        loss = torch.mean((rec - xb) ** 2)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * idx.numel()
                extra = outside if cfg.decode_components else 0.0
                history.append((total / n + extra) * self.scale_**2)
                bar.set_postfix(loss=f"{history[-1]:.2e}", refresh=False)
        net.eval()
        self.net_ = net
        self.history_ = np.asarray(history)
        self.train_seconds_ = time.perf_counter() - start
        # The training patterns' own encoder input is ``coeffs``: _to_net(x)
        # would recompute it (alignment included) to the same bits.
        z = self._encode_input(coeffs)
        self.latent_ = z
        self.latent_center_ = z.mean(0)
        self.latent_scale_ = float(np.sqrt(np.mean(np.sum((z - z.mean(0)) ** 2, axis=1)))) or 1.0
        self.reconstruction_mse_ = float(np.mean((self.decode(z) - x) ** 2))
        self._fit_clusters(self._features(z, self.train_strain_))
        self.descriptor = None
        self.estimators_ = {}
        features = self._features(z, self.train_strain_)
        self.ref_features_ = features
        first = patterns.dims[0]
        if descriptor is not None:
            values = self._reference_values(patterns, descriptor)
            self.descriptor = descriptor
            self.estimators_[descriptor] = self._fit_estimator(features, values)
            # Other numeric descriptors that a reference may carry (a phase
            # fraction) are estimated too.
            for name in EXTRA_DESCRIPTORS:
                if name != descriptor and name in patterns.coords:
                    if patterns[name].dims == (first,) and patterns[name].dtype.kind in "fiu":
                        self.estimators_[name] = self._fit_estimator(
                            features, self._reference_values(patterns, name)
                        )
        log.info(
            "trained feature-space AE on %d patterns x %d points in %.1f s (reconstruction MSE %.3g)",
            n,
            m,
            self.train_seconds_,
            self.reconstruction_mse_,
        )
        return self

    @staticmethod
    def _reference_values(patterns: xr.DataArray, name: str) -> np.ndarray:
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

    def _features(self, z: np.ndarray, strain: np.ndarray) -> np.ndarray:
        """Estimator features: latent / latent spread, strain / strain spread."""
        f = np.asarray(z, dtype=float) / self.latent_scale_
        if self.config.align:
            f = np.column_stack([f, np.asarray(strain, dtype=float) / self.strain_scale_])
        return f

    def features(self, patterns) -> np.ndarray:
        """What the estimators read (n, latent_dim [+ 1]): the latent and the strain."""
        x = self._matrix(patterns)
        return self._features(self._encode(x), self._strain(self._internal(x)[1]))

    def _fit_estimator(self, features: np.ndarray, values: np.ndarray) -> ConcentrationEstimator:
        """A path estimator on the feature columns with the smallest leave-one-out error.

        Candidates: every column, the latent only and (when aligned) the strain
        only; a Vegard series is best read from the strain, a two-phase or
        ordering series from the latent or both.
        """
        k = self.config.latent_dim
        candidates = [tuple(range(features.shape[1]))]
        if self.config.align:
            candidates += [tuple(range(k)), (k,)]
        best = None
        for cols in candidates:
            est = ConcentrationEstimator(columns=cols).fit(features, values)
            if best is None or est.loo_mae() < best.loo_mae() - 1e-12:
                best = est
        log.info("estimator columns %s, leave-one-out MAE %.4g", best.columns, best.loo_mae())
        return best

    @property
    def estimator_(self) -> ConcentrationEstimator | None:
        """The estimator of :attr:`descriptor` (None without a reference)."""
        return getattr(self, "estimators_", {}).get(self.descriptor)

    def _fit_clusters(self, z: np.ndarray) -> None:
        """k-means on the estimator features (latent and strain, in training spreads)."""
        from sklearn.cluster import KMeans

        k = min(self.config.n_clusters, z.shape[0])
        km = KMeans(n_clusters=k, n_init=10, random_state=self.config.seed).fit(z)
        # Number clusters along the first feature axis so labels are stable to read.
        order = np.argsort(km.cluster_centers_[:, 0])
        self.cluster_centers_ = km.cluster_centers_[order]
        self.labels_ = self.predict_cluster(z)

    # -- inference
    def transform(self, patterns, normalize: bool = True) -> np.ndarray:
        """Latent points (n, latent_dim) of patterns (n, m).

        With ``normalize=False`` the patterns are taken as already normalised
        (used when masking, so that removing the strongest peak does not
        rescale the rest).
        """
        self._check_fitted()
        return self._encode(self._matrix(patterns, normalize=normalize))

    def _encode(self, x: np.ndarray, lag: np.ndarray | None = None) -> np.ndarray:
        return self._encode_input(self._to_net(x, lag))

    def _encode_input(self, coeffs: np.ndarray) -> np.ndarray:
        """Latent points (n, latent_dim) of principal-component coefficients (n, k)."""
        torch = require_torch()
        with torch.inference_mode():
            z = self.net_["encoder"](torch.as_tensor(coeffs, dtype=torch.float32))
        return z.numpy().astype(float)

    def decode(self, latent: np.ndarray, strain: np.ndarray | float | None = None) -> np.ndarray:
        """Normalised patterns (n, m) on the model's grid decoded from latent points.

        ``latent`` (n, latent_dim); ``strain`` (n,) or a number moves the peaks
        back by that lattice strain (default 0: the template's lattice).  With
        ``subtract_background`` the decoded patterns have no background.
        """
        self._check_fitted()
        y = decode_latent(self.net_["decoder"], latent, self.config.latent_dim)
        if self.config.decode_components:
            y = y @ self.components_
        t = y * self.scale_ + self.mean_pattern_
        if self.config.align:
            strain = np.broadcast_to(np.asarray(0.0 if strain is None else strain), t.shape[:1])
            if self.config.grid == "log_d":
                lag = -np.log1p(strain) / self._step
            else:
                lag = strain / float(np.median(np.diff(self.grid_)))
            t = shift_rows(t, -lag)
        if self.config.grid == "log_d":
            t = resample_rows(t, self.internal_grid_, self._u_src)
        return _inverse_stabilize(t, self.config.transform)

    def predict_cluster(self, features: np.ndarray) -> np.ndarray:
        """Index of the nearest cluster centre for feature points (see :meth:`features`)."""
        d = np.linalg.norm(
            np.atleast_2d(features)[:, None, :] - self.cluster_centers_[None], axis=-1
        )
        return np.argmin(d, axis=1)

    def estimate(self, patterns, descriptor: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Estimates and uncertainties, each (n,), of ``descriptor`` (default the main one)."""
        name = descriptor or self.descriptor
        if name not in self.estimators_:
            raise ParameterError(
                f"the model has no reference for {name!r}: train on patterns with that "
                "coordinate, or call set_reference()"
                if name
                else "the model has no reference compositions: train on patterns with a "
                "composition coordinate, or call set_reference()"
            )
        return self.estimators_[name].predict(self.features(patterns))

    def set_reference(self, patterns: xr.DataArray, descriptor: str = "composition") -> None:
        """Use ``patterns`` with known ``descriptor`` values as the reference path."""
        self._check_fitted()
        values = self._reference_values(patterns, descriptor)
        features = self.features(patterns)
        self.ref_features_ = features
        self.descriptor = descriptor
        self.estimators_ = {descriptor: self._fit_estimator(features, values)}
        first = patterns.dims[0]
        for name in EXTRA_DESCRIPTORS:
            if name != descriptor and name in patterns.coords:
                if patterns[name].dims == (first,) and patterns[name].dtype.kind in "fiu":
                    self.estimators_[name] = self._fit_estimator(
                        features, self._reference_values(patterns, name)
                    )

    def embed(self, patterns: xr.DataArray) -> xr.Dataset:
        """Latent coordinates, strain, cluster, and (with a reference) estimates.

        Returns a Dataset along the patterns' first dim with ``latent``
        (pattern, latent_dim), ``strain`` (lattice strain against the template,
        when aligned), ``cluster`` and, for every descriptor with a reference
        (composition, phase_fraction), ``<name>_estimate`` and
        ``<name>_uncertainty``; the patterns' coordinates are kept.
        """
        first = patterns.dims[0] if isinstance(patterns, xr.DataArray) else "pattern"
        self._check_fitted()
        x = self._matrix(patterns)
        z = self._encode(x)
        strain = self._strain(self._internal(x)[1])
        coords = {}
        if isinstance(patterns, xr.DataArray):
            coords = {n: c for n, c in patterns.coords.items() if c.dims == (first,)}
        ds = xr.Dataset(
            {
                "latent": ((first, "latent_dim"), z),
                "cluster": ((first,), self.predict_cluster(self._features(z, strain))),
            },
            coords=coords,
        )
        if self.config.align:
            ds["strain"] = ((first,), strain)
        features = self._features(z, strain)
        for name, estimator in self.estimators_.items():
            est, unc = estimator.predict(features)
            ds[f"{name}_estimate"] = ((first,), est)
            ds[f"{name}_uncertainty"] = ((first,), unc)
        return ds

    # -- peak relevance
    def window_shifts(
        self, pattern, windows: Sequence[tuple[float, float]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Latent shift from masking each (lo, hi) window of one pattern.

        Returns ``(shift (w,), masked_latent (w, latent_dim))``; shifts are in
        units of :attr:`latent_scale_` (the spread of the training set).
        """
        self._check_fitted()
        x = self._matrix(pattern)[0]
        # The alignment of the unmasked pattern is kept: masking a strong peak
        # would otherwise move the lag, and with it every other peak.
        lag = self._internal(x[None])[1]
        base = self._encode(x[None], lag)[0]
        masked = (
            np.stack([mask_window(x, self.grid_, lo, hi) for lo, hi in windows])
            if windows
            else np.empty((0, x.size))
        )
        if not len(masked):
            return np.empty(0), np.empty((0, base.size))
        z = self._encode(masked, lag)
        return np.linalg.norm(z - base, axis=1) / self.latent_scale_, z

    def peak_relevance(
        self,
        pattern,
        *,
        peaks: Sequence[Peak] | None = None,
        prominence: float = 0.02,
        window: float | None = None,
        max_peaks: int | None = None,
    ) -> xr.Dataset:
        """Rank the peaks of one pattern by how far masking each moves its latent point.

        Parameters
        ----------
        pattern
            One pattern, shape (m,) (DataArray or array on the model grid).
        peaks
            Peaks to test; default :func:`find_peaks` with ``prominence``,
            ``window`` and ``max_peaks``.

        Returns
        -------
        Dataset along ``peak`` (sorted by position) with ``position``,
        ``height`` (normalised), ``lo``/``hi`` (masked window), ``latent_shift`` (latent
        shift in units of the training spread), ``rank`` (1 = most relevant) and
        ``relevance`` (shift / largest shift).
        """
        self._check_fitted()
        x = self._matrix(pattern)[0]
        if peaks is None:
            peaks = find_peaks(
                x, self.grid_, prominence=prominence, window=window, max_peaks=max_peaks
            )
        if not peaks:
            raise InputError("no peaks found in the pattern; lower the prominence threshold")
        shift, z = self.window_shifts(x, [(p.lo, p.hi) for p in peaks])
        rank = np.empty(len(peaks), dtype=int)
        rank[np.argsort(-shift, kind="stable")] = np.arange(1, len(peaks) + 1)
        top = shift.max() or 1.0
        return xr.Dataset(
            {
                "position": ("peak", [p.position for p in peaks]),
                "height": ("peak", [p.height for p in peaks]),
                "lo": ("peak", [p.lo for p in peaks]),
                "hi": ("peak", [p.hi for p in peaks]),
                "latent_shift": ("peak", shift),
                "relevance": ("peak", shift / top),
                "rank": ("peak", rank),
                "masked_latent": (("peak", "latent_dim"), z),
            },
            coords={"peak": np.arange(len(peaks))},
            attrs={"shift_unit": "RMS spread of the training latents"},
        )

    # -- generation
    def interpolate(self, start, end, n_steps: int = 7, along: str = "line") -> xr.DataArray:
        """Decode ``n_steps`` points between ``start``'s latent and ``end``'s.

        ``start`` and ``end`` are patterns (m,) or latent points (latent_dim,).
        ``along="line"`` spaces the points evenly on the straight segment (the
        published method); ``along="path"`` follows the reference path instead,
        evenly in the descriptor, which stays among realistic patterns where the
        path is curved (needs a reference).

        Returns
        -------
        DataArray (step, two_theta) of normalised patterns, with coordinates
        ``t`` (0..1), the latent coordinates ``z0``, ``z1``, ... and, with a reference,
        the estimated descriptor and its uncertainty.
        """
        self._check_fitted()
        if n_steps < 2:
            raise ParameterError(f"n_steps must be at least 2, not {n_steps}")

        k = self.config.latent_dim
        width = k + (1 if self.config.align else 0)

        def as_features(p):
            arr = p.values if isinstance(p, xr.DataArray) else np.asarray(p, dtype=float)
            if arr.ndim == 1 and arr.size == k:
                return self._features(arr[None], np.zeros(1))[0]
            if arr.ndim == 1 and arr.size == width:
                return arr.astype(float)
            return self.features(p)[0]

        fa, fb = as_features(start), as_features(end)
        t = np.linspace(0.0, 1.0, n_steps)
        if along == "line":
            f = fa[None] + t[:, None] * (fb - fa)[None]
        elif along == "path":
            if self.estimator_ is None:
                raise ParameterError("interpolating along the path needs reference compositions")
            from scipy.ndimage import uniform_filter1d

            (va, vb), _ = self.estimator_.predict(np.stack([fa, fb]))
            values = va + t * (vb - va)
            ref_v = self.estimator_.ref_values_
            order = np.argsort(ref_v, kind="stable")
            w = min(max(3, ref_v.size // 25), ref_v.size)
            path_v = uniform_filter1d(ref_v[order], size=w, mode="nearest")
            path_f = uniform_filter1d(self.ref_features_[order], size=w, axis=0, mode="nearest")
            f = np.stack(
                [np.interp(values, path_v, path_f[:, j]) for j in range(width)],
                axis=1,
            )
            f[0], f[-1] = fa, fb
        else:
            raise ParameterError(f"along must be 'line' or 'path', not {along!r}")
        z = f[:, :k] * self.latent_scale_
        strain = f[:, k] * self.strain_scale_ if self.config.align else None
        y = self.decode(z, strain)
        coords = {"step": np.arange(n_steps), self.grid_name_: self.grid_, "t": ("step", t)}
        for j in range(k):
            coords[f"z{j}"] = ("step", z[:, j])
        if strain is not None:
            coords["strain"] = ("step", strain)
        for name, estimator in self.estimators_.items():
            est, unc = estimator.predict(f)
            coords[name] = ("step", est)
            coords[f"{name}_uncertainty"] = ("step", unc)
        return xr.DataArray(y, dims=("step", self.grid_name_), coords=coords, name="intensity")

    # -- persistence
    def save(self, path) -> None:
        """Write weights, configuration, grid, clusters and reference to a safetensors file."""
        self._check_fitted()
        arrays = {
            "grid": self.grid_,
            "latent": self.latent_,
            "cluster_centers": self.cluster_centers_,
            "latent_center": self.latent_center_,
            "mean_pattern": self.mean_pattern_,
            "components": self.components_,
            "history": self.history_,
        }
        extras = {
            "grid_name": self.grid_name_,
            "latent_scale": self.latent_scale_,
            "scale": self.scale_,
            "reconstruction_mse": self.reconstruction_mse_,
            "train_seconds": self.train_seconds_,
            "descriptor": self.descriptor,
        }
        if self.config.align:
            arrays["template"] = self.template_
            arrays["train_strain"] = self.train_strain_
            extras["lag_offset"] = self.lag_offset_
            extras["strain_scale"] = self.strain_scale_
        if self.estimators_:
            arrays["ref_features"] = self.ref_features_
            extras["estimators"] = {}
            for name, est in self.estimators_.items():
                arrays[f"ref_values/{name}"] = est.ref_values_
                extras["estimators"][name] = {
                    "method": est.method,
                    "n_neighbors": est.n_neighbors,
                    "smoothing": est.smoothing,
                    "columns": list(est.columns) if est.columns is not None else None,
                }
        save_model_file(
            path, MODEL_KIND, asdict(self.config), self.net_.state_dict(), arrays, extras
        )

    @classmethod
    def load(cls, path, **kwargs) -> FeatureSpaceAE:
        """Read a model written by :meth:`save` (no pickle involved)."""
        config, state, arrays, extras = load_model_file(path, MODEL_KIND)
        if "grid" not in config:  # written before log-d alignment existed
            config.update(
                grid="two_theta", align=False, subtract_background=False, decode_components=False
            )
        try:
            config["hidden"] = tuple(config["hidden"])
            model = cls(**config, **kwargs)
            grid = arrays["grid"]
            net = _build_net(
                arrays["components"].shape[0] if model.config.decode_components else grid.size,
                model.config.hidden,
                model.config.latent_dim,
                arrays["components"].shape[0],
            )
            net.load_state_dict(state)
        except (KeyError, TypeError, RuntimeError) as exc:
            raise InputError(
                f"{path}: model file does not match its configuration ({exc})"
            ) from None
        net.eval()
        model.net_ = net
        model.grid_ = grid
        model.grid_name_ = extras.get("grid_name", "two_theta")
        model.latent_ = arrays["latent"]
        model.cluster_centers_ = arrays["cluster_centers"]
        model.latent_center_ = arrays["latent_center"]
        model.history_ = arrays.get("history", np.empty(0))
        model.latent_scale_ = float(extras["latent_scale"])
        model.mean_pattern_ = arrays["mean_pattern"]
        model.components_ = arrays["components"]
        model.scale_ = float(extras["scale"])
        model.reconstruction_mse_ = float(extras.get("reconstruction_mse", np.nan))
        model.train_seconds_ = float(extras.get("train_seconds", np.nan))
        model.train_strain_ = arrays.get("train_strain", np.zeros(model.latent_.shape[0]))
        model.descriptor = extras.get("descriptor")
        model.internal_grid_ = log_d_grid(grid) if model.config.grid == "log_d" else grid.copy()
        try:
            if model.config.align:
                model.template_ = arrays["template"]
                model.train_strain_ = arrays["train_strain"]
                model.lag_offset_ = float(extras["lag_offset"])
                model.strain_scale_ = float(extras["strain_scale"])
            model.estimators_ = {}
            if "ref_latent" in arrays:  # older files: one estimator on the latent
                model.ref_features_ = arrays["ref_latent"]
                model.estimators_[model.descriptor] = ConcentrationEstimator(
                    **extras["estimator"]
                ).fit(arrays["ref_latent"], arrays["ref_values"])
            for name, params in extras.get("estimators", {}).items():
                model.ref_features_ = arrays["ref_features"]
                model.estimators_[name] = ConcentrationEstimator(**params).fit(
                    arrays["ref_features"], arrays[f"ref_values/{name}"]
                )
        except (KeyError, TypeError) as exc:
            raise InputError(f"{path}: model file lacks part of its reference ({exc})") from None
        model.labels_ = model.predict_cluster(model._features(model.latent_, model.train_strain_))
        return model
