"""Feature space of 1-D XRD patterns built by an autoencoder.

After Utimula, Hongo, Nakano, Maezono et al., "Feature Space of XRD Patterns
Constructed by an Autoencoder", Adv. Theory Simul. (2023): patterns on a common
2-theta grid are encoded to a low-dimensional latent (2-D by default) and decoded
back; the latent points are clustered.  On the trained model:

* :class:`ConcentrationEstimator` estimates a composition from a pattern's place
  on the path that reference patterns of known composition trace in the latent;
* :meth:`FeatureSpaceAE.peak_relevance` masks one peak (or any 2-theta window),
  re-encodes, and ranks peaks by how far the latent point moves;
* :meth:`FeatureSpaceAE.interpolate` decodes points on the segment between two
  patterns' latents into intermediate patterns.

Only :class:`FeatureSpaceAE` methods need PyTorch; the estimator and the masking
helpers are NumPy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import xarray as xr

from xtec.autoencoder._nn import (
    decode_latent,
    deterministic,
    load_model_file,
    require_torch,
    save_model_file,
    show_progress,
)
from xtec.errors import InputError, ParameterError

log = logging.getLogger(__name__)

MODEL_KIND = "feature_space_ae"


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


class ConcentrationEstimator:
    """Composition from a position in the feature space, with an uncertainty.

    Reference points of known composition trace a path through the latent space.
    ``method="path"`` sorts them by composition, smooths the path with a running
    mean over ``smoothing`` references, and maps a new point to the composition
    of its orthogonal projection on that polyline (linearly extrapolated past
    the ends).  ``method="knn"`` takes the inverse-distance weighted mean of the
    ``n_neighbors`` nearest references instead.

    The uncertainty is the RMS residual of the references nearest the point
    (their own estimate minus their known composition), combined in quadrature
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
    """

    def __init__(self, method: str = "path", n_neighbors: int = 8, smoothing: int | None = None):
        if method not in ("path", "knn"):
            raise ParameterError(f"method must be 'path' or 'knn', not {method!r}")
        if n_neighbors < 1:
            raise ParameterError(f"n_neighbors must be at least 1, not {n_neighbors}")
        if smoothing is not None and smoothing < 1:
            raise ParameterError(f"smoothing must be at least 1, not {smoothing}")
        self.method = method
        self.n_neighbors = n_neighbors
        self.smoothing = smoothing

    def fit(self, latent: np.ndarray, values: np.ndarray) -> ConcentrationEstimator:
        """Learn the reference path.  ``latent`` (n, k), ``values`` (n,)."""
        from scipy.ndimage import uniform_filter1d

        z = np.asarray(latent, dtype=float)
        v = np.asarray(values, dtype=float).ravel()
        if z.ndim != 2 or z.shape[0] != v.size:
            raise ParameterError(f"latent {z.shape} and values {v.shape} do not match")
        if v.size < 3:
            raise ParameterError("need at least 3 reference patterns of known composition")
        if not np.all(np.isfinite(v)):
            raise InputError("reference compositions must be finite numbers")
        order = np.argsort(v, kind="stable")
        w = self.smoothing or max(3, v.size // 25)
        w = min(w, v.size)
        self.ref_latent_ = z
        self.ref_values_ = v
        self.path_latent_ = uniform_filter1d(z[order], size=w, axis=0, mode="nearest")
        self.path_values_ = uniform_filter1d(v[order], size=w, mode="nearest")
        est, dist, _ = self._project(z)
        self.ref_residual_ = est - v
        self.ref_distance_ = dist
        return self

    def _project(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.method == "knn":
            d = np.linalg.norm(q[:, None, :] - self.ref_latent_[None], axis=-1)
            k = min(self.n_neighbors, d.shape[1])
            nn = np.argsort(d, axis=1)[:, :k]
            dn = np.take_along_axis(d, nn, axis=1)
            w = 1.0 / (dn + 1e-12)
            est = (w * self.ref_values_[nn]).sum(1) / w.sum(1)
            return est, dn[:, 0], np.zeros(q.shape[0])
        p = self.path_latent_
        a, b = p[:-1], p[1:]
        seg = b - a
        seg2 = np.maximum((seg**2).sum(-1), 1e-30)
        t = ((q[:, None, :] - a[None]) * seg[None]).sum(-1) / seg2[None]
        lo = np.zeros_like(t)
        hi = np.ones_like(t)
        lo[:, 0] = -np.inf  # extrapolate before the first and after the last vertex
        hi[:, -1] = np.inf
        t = np.clip(t, lo, hi)
        closest = a[None] + t[..., None] * seg[None]
        dist = np.linalg.norm(q[:, None, :] - closest, axis=-1)
        # Where the path folds back close to itself the nearest segment can be
        # on the wrong branch; only segments whose compositions overlap those of
        # the nearest references are candidates.
        d_ref = np.linalg.norm(q[:, None, :] - self.ref_latent_[None], axis=-1)
        k = min(self.n_neighbors, d_ref.shape[1])
        nn_values = self.ref_values_[np.argsort(d_ref, axis=1)[:, :k]]
        vlo, vhi = nn_values.min(1, keepdims=True), nn_values.max(1, keepdims=True)
        smin = np.minimum(self.path_values_[:-1], self.path_values_[1:])[None]
        smax = np.maximum(self.path_values_[:-1], self.path_values_[1:])[None]
        allowed = (smax >= vlo) & (smin <= vhi)
        allowed[~allowed.any(1)] = True
        best = np.argmin(np.where(allowed, dist, np.inf), axis=1)
        rows = np.arange(q.shape[0])
        tb = t[rows, best]
        v0, v1 = self.path_values_[best], self.path_values_[best + 1]
        slope = np.abs(v1 - v0) / np.sqrt(seg2[best])
        return v0 + tb * (v1 - v0), dist[rows, best], slope

    def predict(self, latent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Estimate compositions.  ``latent`` (m, k) → (estimate (m,), uncertainty (m,))."""
        if not hasattr(self, "ref_latent_"):
            raise ParameterError("the estimator is not fitted")
        q = np.asarray(latent, dtype=float)
        if q.ndim == 1:
            q = q[None]
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
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-5
    input_noise: float = 0.01
    normalize: str = "area"
    transform: str = "sqrt"
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
        if self.normalize not in ("area", "max", "none"):
            raise ParameterError(
                f"normalize must be 'area', 'max' or 'none', not {self.normalize!r}"
            )
        if self.transform not in ("sqrt", "none"):
            raise ParameterError(f"transform must be 'sqrt' or 'none', not {self.transform!r}")
        nc = self.n_components
        if not (nc is None or nc == "auto" or (isinstance(nc, int) and nc >= 1)):
            raise ParameterError(f"n_components must be 'auto', None or at least 1, not {nc!r}")
        if self.max_components < 1:
            raise ParameterError(f"max_components must be at least 1, not {self.max_components}")
        if self.n_clusters < 1:
            raise ParameterError(f"n_clusters must be at least 1, not {self.n_clusters}")


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
    ``progress`` only affect how training runs.

    Attributes (after :meth:`fit`)
    ------------------------------
    grid_ : (m,) the 2-theta grid
    latent_ : (n, latent_dim) latent points of the training patterns
    labels_ : (n,) k-means cluster of each training pattern
    cluster_centers_ : (n_clusters, latent_dim)
    latent_scale_ : RMS distance of training points to their centroid; latent
        shifts are reported in this unit
    estimator_ : :class:`ConcentrationEstimator` or None, fitted on the training
        latents when the training data carry the descriptor
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
        self.estimator_: ConcentrationEstimator | None = None
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

    def _to_net(self, x: np.ndarray) -> np.ndarray:
        t = variance_stabilize(x, self.config.transform)
        return ((t - self.mean_pattern_) / self.scale_) @ self.components_.T

    def _check_fitted(self) -> None:
        if self.net_ is None:
            raise ParameterError("the model is not trained; call fit() or load() first")

    # -- training
    def fit(self, patterns: xr.DataArray, descriptor: str | None = "composition") -> FeatureSpaceAE:
        """Train on patterns (n, m) with dims ``("pattern", "two_theta")``.

        If the patterns carry a numeric ``descriptor`` coordinate, the training
        latents and those values become the reference of the concentration
        estimator.
        """
        torch = require_torch()
        if not isinstance(patterns, xr.DataArray) or patterns.ndim != 2:
            raise InputError("fit() needs a 2-D DataArray (pattern, two_theta)")
        cfg = self.config
        for stale in ("grid_", "components_"):  # a refit starts from the new data
            self.__dict__.pop(stale, None)
        x = self._matrix(patterns)
        n, m = x.shape
        if n < 2:
            raise InputError(f"need at least 2 patterns to train, got {n}")
        self.grid_ = np.asarray(patterns[patterns.dims[-1]].values, dtype=float)
        self.grid_name_ = str(patterns.dims[-1])
        # Centre on the mean pattern and scale by one global factor: the small
        # variance of narrow peaks otherwise lets the net settle on the mean
        # pattern, and one factor (not one per point) keeps flat regions from
        # being blown up into noise.
        t = variance_stabilize(x, cfg.transform)
        self.mean_pattern_ = t.mean(axis=0)
        self.scale_ = float(np.std(t - self.mean_pattern_)) or 1.0
        # The encoder sees the patterns only through their leading principal
        # components.  A feature that never varies in the training set (a strong
        # but constant peak) then barely reaches the latent when it is masked,
        # instead of feeding an out-of-distribution input through weights that
        # training never had a reason to shape.
        _, sv, vt = np.linalg.svd(t - self.mean_pattern_, full_matrices=False)
        if cfg.n_components == "auto":
            k = min(signal_rank(sv, n, m), cfg.max_components)
        else:
            k = min(cfg.n_components or m, sv.size)
        self.components_ = vt[: max(k, 1)]
        log.info("encoder input: %d principal components", self.components_.shape[0])
        from tqdm.auto import tqdm

        start = time.perf_counter()
        with deterministic(cfg.seed, self.n_threads):
            net = _build_net(m, cfg.hidden, cfg.latent_dim, self.components_.shape[0])
            opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(
                opt, T_max=cfg.epochs, eta_min=cfg.lr * 0.05
            )
            gen = torch.Generator().manual_seed(cfg.seed)
            xt = torch.as_tensor((t - self.mean_pattern_) / self.scale_, dtype=torch.float32)
            basis = torch.as_tensor(self.components_.T, dtype=torch.float32)
            bs = min(cfg.batch_size, n)
            history = []
            bar = tqdm(
                range(cfg.epochs),
                desc="ae train",
                disable=not show_progress(self.progress),
                leave=False,
            )
            for _epoch in bar:
                perm = torch.randperm(n, generator=gen)
                total = 0.0
                for i in range(0, n, bs):
                    xb = xt[perm[i : i + bs]]
                    noisy = xb + (cfg.input_noise / self.scale_) * torch.randn(
                        xb.shape, generator=gen
                    )
                    rec = net["decoder"](net["encoder"](noisy @ basis))
                    loss = torch.mean((rec - xb) ** 2)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * xb.shape[0]
                sched.step()
                history.append(total / n * self.scale_**2)
                bar.set_postfix(loss=f"{history[-1]:.2e}", refresh=False)
        net.eval()
        self.net_ = net
        self.history_ = np.asarray(history)
        self.train_seconds_ = time.perf_counter() - start
        z = self.transform(x, normalize=False)
        self.latent_ = z
        self.latent_center_ = z.mean(0)
        self.latent_scale_ = float(np.sqrt(np.mean(np.sum((z - z.mean(0)) ** 2, axis=1)))) or 1.0
        self.reconstruction_mse_ = float(np.mean((self.decode(z) - x) ** 2))
        self._fit_clusters(z)
        self.descriptor = None
        self.estimator_ = None
        if descriptor and descriptor in patterns.coords:
            values = np.asarray(patterns[descriptor].values)
            if values.dtype.kind in "fiu" and values.ndim == 1:
                self.descriptor = descriptor
                self.estimator_ = ConcentrationEstimator().fit(z, values.astype(float))
        log.info(
            "trained feature-space AE on %d patterns x %d points in %.1f s (reconstruction MSE %.3g)",
            n,
            m,
            self.train_seconds_,
            self.reconstruction_mse_,
        )
        return self

    def _fit_clusters(self, z: np.ndarray) -> None:
        from sklearn.cluster import KMeans

        k = min(self.config.n_clusters, z.shape[0])
        km = KMeans(n_clusters=k, n_init=10, random_state=self.config.seed).fit(z)
        # Number clusters along the first latent axis so labels are stable to read.
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
        torch = require_torch()
        self._check_fitted()
        x = self._matrix(patterns, normalize=normalize)
        with torch.no_grad():
            z = self.net_["encoder"](torch.as_tensor(self._to_net(x), dtype=torch.float32))
        return z.numpy().astype(float)

    def decode(self, latent: np.ndarray) -> np.ndarray:
        """Normalised patterns (n, m) decoded from latent points (n, latent_dim)."""
        self._check_fitted()
        y = decode_latent(self.net_["decoder"], latent, self.config.latent_dim)
        t = y * self.scale_ + self.mean_pattern_
        return _inverse_stabilize(t, self.config.transform)

    def predict_cluster(self, latent: np.ndarray) -> np.ndarray:
        """Index of the nearest cluster centre for latent points (n, latent_dim)."""
        d = np.linalg.norm(np.atleast_2d(latent)[:, None, :] - self.cluster_centers_[None], axis=-1)
        return np.argmin(d, axis=1)

    def estimate(self, patterns) -> tuple[np.ndarray, np.ndarray]:
        """Composition estimates and uncertainties, each (n,), of patterns (n, m)."""
        if self.estimator_ is None:
            raise ParameterError(
                "the model has no reference compositions: train on patterns with a "
                "composition coordinate, or call set_reference()"
            )
        return self.estimator_.predict(self.transform(patterns))

    def set_reference(
        self, patterns: xr.DataArray, descriptor: str = "composition", **kwargs
    ) -> None:
        """Use ``patterns`` with known ``descriptor`` values as the reference path."""
        if descriptor not in patterns.coords:
            raise InputError(f"the reference patterns have no {descriptor!r} coordinate")
        self.descriptor = descriptor
        self.estimator_ = ConcentrationEstimator(**kwargs).fit(
            self.transform(patterns), np.asarray(patterns[descriptor].values, dtype=float)
        )

    def embed(self, patterns: xr.DataArray) -> xr.Dataset:
        """Latent coordinates, cluster, and (when possible) composition estimates.

        Returns a Dataset along the patterns' first dim with ``latent``
        (pattern, latent_dim), ``cluster`` and, with a reference, ``estimate`` and
        ``uncertainty`` of the descriptor; the patterns' coordinates are kept.
        """
        first = patterns.dims[0] if isinstance(patterns, xr.DataArray) else "pattern"
        z = self.transform(patterns)
        coords = {}
        if isinstance(patterns, xr.DataArray):
            coords = {n: c for n, c in patterns.coords.items() if c.dims == (first,)}
        ds = xr.Dataset(
            {
                "latent": ((first, "latent_dim"), z),
                "cluster": ((first,), self.predict_cluster(z)),
            },
            coords=coords,
        )
        if self.estimator_ is not None:
            est, unc = self.estimator_.predict(z)
            ds[f"{self.descriptor}_estimate"] = ((first,), est)
            ds[f"{self.descriptor}_uncertainty"] = ((first,), unc)
        return ds

    # -- peak relevance
    def window_shifts(
        self, pattern, windows: Sequence[tuple[float, float]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Latent shift from masking each (lo, hi) window of one pattern.

        Returns ``(shift (w,), masked_latent (w, latent_dim))``; shifts are in
        units of :attr:`latent_scale_` (the spread of the training set).
        """
        x = self._matrix(pattern)[0]
        base = self.transform(x[None], normalize=False)[0]
        masked = (
            np.stack([mask_window(x, self.grid_, lo, hi) for lo, hi in windows])
            if windows
            else np.empty((0, x.size))
        )
        if not len(masked):
            return np.empty(0), np.empty((0, base.size))
        z = self.transform(masked, normalize=False)
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

        def as_latent(p):
            arr = p.values if isinstance(p, xr.DataArray) else np.asarray(p, dtype=float)
            if arr.ndim == 1 and arr.size == self.config.latent_dim:
                return arr.astype(float)
            return self.transform(p)[0]

        za, zb = as_latent(start), as_latent(end)
        t = np.linspace(0.0, 1.0, n_steps)
        if along == "line":
            z = za[None] + t[:, None] * (zb - za)[None]
        elif along == "path":
            if self.estimator_ is None:
                raise ParameterError("interpolating along the path needs reference compositions")
            est = self.estimator_
            (va, vb), _ = est.predict(np.stack([za, zb]))
            values = va + t * (vb - va)
            # path_values_ is a running mean of sorted values, so non-decreasing.
            z = np.stack(
                [
                    np.interp(values, est.path_values_, est.path_latent_[:, j])
                    for j in range(za.size)
                ],
                axis=1,
            )
            z[0], z[-1] = za, zb
        else:
            raise ParameterError(f"along must be 'line' or 'path', not {along!r}")
        y = self.decode(z)
        coords = {"step": np.arange(n_steps), self.grid_name_: self.grid_, "t": ("step", t)}
        for j in range(z.shape[1]):
            coords[f"z{j}"] = ("step", z[:, j])
        if self.estimator_ is not None:
            est, unc = self.estimator_.predict(z)
            coords[self.descriptor] = ("step", est)
            coords[f"{self.descriptor}_uncertainty"] = ("step", unc)
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
        if self.estimator_ is not None:
            arrays["ref_latent"] = self.estimator_.ref_latent_
            arrays["ref_values"] = self.estimator_.ref_values_
            extras["estimator"] = {
                "method": self.estimator_.method,
                "n_neighbors": self.estimator_.n_neighbors,
                "smoothing": self.estimator_.smoothing,
            }
        save_model_file(
            path, MODEL_KIND, asdict(self.config), self.net_.state_dict(), arrays, extras
        )

    @classmethod
    def load(cls, path, **kwargs) -> FeatureSpaceAE:
        """Read a model written by :meth:`save` (no pickle involved)."""
        config, state, arrays, extras = load_model_file(path, MODEL_KIND)
        try:
            config["hidden"] = tuple(config["hidden"])
            model = cls(**config, **kwargs)
            grid = arrays["grid"]
            net = _build_net(
                grid.size,
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
        model.labels_ = model.predict_cluster(model.latent_)
        model.descriptor = extras.get("descriptor")
        if "ref_latent" in arrays:
            model.estimator_ = ConcentrationEstimator(**extras["estimator"]).fit(
                arrays["ref_latent"], arrays["ref_values"]
            )
        return model
