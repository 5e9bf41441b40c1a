"""The feature-space autoencoder model: fit, encode, decode, estimate (see the package docstring)."""

from __future__ import annotations

import contextlib
import logging
import time

import numpy as np
import xarray as xr

from xtec.autoencoder.feature_space.alignment import PatternAlignment
from xtec.autoencoder.feature_space.analysis import FeatureSpaceAnalysis
from xtec.autoencoder.feature_space.estimate import (
    ConcentrationEstimator,
    fit_estimators,
    reference_values,
)
from xtec.autoencoder.feature_space.network import FeatureSpaceConfig, train_network
from xtec.autoencoder.feature_space.patterns import (
    inverse_stabilize,
    log_d_grid,
    normalize_patterns,
    resample_rows,
    shift_rows,
    signal_rank,
    thin_svd,
)
from xtec.autoencoder.feature_space.persistence import load_model, save_model
from xtec.errors import InputError, ParameterError
from xtec.io.curves import check_grid
from xtec.nn import decode_latent, require_torch

log = logging.getLogger(__name__)

# The references' residuals hold the strain error of all but their least separable
# quarter (the 75th percentile was chosen on the benchmark's laboratory series:
# the 90th left 1-sigma coverage at 0.59 on pymatgen CuAu, the median 0.8+).
_REF_PERCENTILE = 75


class FeatureSpaceAE(PatternAlignment, FeatureSpaceAnalysis):
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
                check_grid(x[x.dims[-1]].values, self.grid_, "the patterns' grid", "the model's")
            x = x.values
        x = np.asarray(x, dtype=float)
        if x.ndim == 1:
            x = x[None]
        if hasattr(self, "grid_") and x.shape[1] != self.grid_.size:
            raise InputError(
                f"patterns have {x.shape[1]} points, the model expects {self.grid_.size}"
            )
        return normalize_patterns(x, self.config.normalize) if normalize else x

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
            reference_values(patterns, descriptor)  # fail before training
        # Every matrix here is small (patterns x grid points at most), so more
        # BLAS or OpenMP threads than free cores only wait for each other: on
        # the shared 2-core machine a 150 x 150 eigh took 0.3 s instead of 6 ms
        # and k-means 0.15 s instead of 0.02 s.  n_threads bounds them all.
        from threadpoolctl import threadpool_limits

        with threadpool_limits(self.n_threads) if self.n_threads else contextlib.nullcontext():
            return self._fit(patterns, descriptor)

    def _fit(self, patterns: xr.DataArray, descriptor: str | None) -> FeatureSpaceAE:
        require_torch()
        for stale in ("grid_", "components_"):  # a refit starts from the new data
            self.__dict__.pop(stale, None)
        x = self._matrix(patterns)
        n, m = x.shape
        if n < 2:
            raise InputError(f"need at least 2 patterns to train, got {n}")
        self._fit_grid(patterns)
        t = self._fit_alignment(x)
        centred = self._fit_components(t)
        coeffs = centred @ self.components_.T
        start = time.perf_counter()
        self.net_, history = train_network(
            centred,
            coeffs,
            self.components_,
            self.scale_,
            self.config,
            n_threads=self.n_threads,
            progress=self.progress,
        )
        self.history_ = np.asarray(history)
        self.train_seconds_ = time.perf_counter() - start
        # The training patterns' own encoder input is ``coeffs``: _to_net(x)
        # would recompute it (alignment included) to the same bits.
        self._fit_latent(self._encode_input(coeffs), x)
        self._fit_references(patterns, descriptor)
        log.info(
            "trained feature-space AE on %d patterns x %d points in %.1f s (reconstruction MSE %.3g)",
            n,
            m,
            self.train_seconds_,
            self.reconstruction_mse_,
        )
        return self

    def _fit_grid(self, patterns: xr.DataArray) -> None:
        """The patterns' grid (m,) and the internal one (log(sin theta) or the same)."""
        self.grid_ = np.asarray(patterns[patterns.dims[-1]].values, dtype=float)
        self.grid_name_ = str(patterns.dims[-1])
        if self.config.grid == "log_d":
            if self.grid_.min() <= 0 or self.grid_.max() >= 180:
                raise InputError(
                    f"grid='log_d' needs a 2-theta axis in degrees inside (0, 180), "
                    f"got {self.grid_.min():g}..{self.grid_.max():g}; use grid='two_theta'"
                )
            self.internal_grid_ = log_d_grid(self.grid_)
        else:
            self.internal_grid_ = self.grid_.copy()

    def _fit_alignment(self, x: np.ndarray) -> np.ndarray:
        """Template and strains from normalised patterns (n, m); returns aligned profiles (n, m).

        On the log-d grid a Vegard shift is a translation: patterns are lined
        up with a template and the lag (a lattice strain) is kept as a feature
        beside the latent, so the network only models what else changes.
        """
        t, lag = self._internal(x, fit=True)
        self.train_strain_ = self._strain(lag)
        if self.config.correct_instrument:
            # What the references' residuals hold already: the strain error of
            # all but their least separable quarter (_REF_PERCENTILE).
            self.strain_sigma_ref_ = float(
                np.percentile(self.instrument_terms(lag)["strain_uncertainty"], _REF_PERCENTILE)
            )
        self.strain_scale_ = float(np.std(self.train_strain_)) or 1.0
        return t

    def _fit_components(self, t: np.ndarray) -> np.ndarray:
        """Mean profile, scale and principal components of profiles ``t`` (n, m).

        Returns the centred, scaled profiles (n, m).  One global scale (not one
        per point) keeps flat regions from being blown up into noise, and the
        centring keeps the net from settling on the mean pattern.  The encoder
        sees the patterns only through their leading principal components: a
        feature that never varies in the training set (a strong but constant
        peak) then barely reaches the latent when it is masked.
        """
        cfg = self.config
        n, m = t.shape
        self.mean_pattern_ = t.mean(axis=0)
        self.scale_ = float(np.std(t - self.mean_pattern_)) or 1.0
        sv, vt = thin_svd(t - self.mean_pattern_)
        if cfg.n_components == "auto":
            k = min(signal_rank(sv, n, m), cfg.max_components)
        else:
            k = min(cfg.n_components or m, sv.size)
        self.components_ = vt[: max(k, 1)]
        log.info("encoder input: %d principal components", self.components_.shape[0])
        return (t - self.mean_pattern_) / self.scale_

    def _fit_latent(self, z: np.ndarray, x: np.ndarray) -> None:
        """Latent summary of the training patterns: centre, spread, reconstruction, clusters."""
        self.latent_ = z
        self.latent_center_ = z.mean(0)
        self.latent_scale_ = float(np.sqrt(np.mean(np.sum((z - z.mean(0)) ** 2, axis=1)))) or 1.0
        self.reconstruction_mse_ = float(np.mean((self.decode(z) - x) ** 2))
        self._fit_clusters(self._features(z, self.train_strain_))

    def _fit_references(self, patterns: xr.DataArray, descriptor: str | None) -> None:
        """The training features as the reference of the estimators (none without a descriptor)."""
        self.descriptor = None
        self.estimators_ = {}
        self.ref_features_ = self._features(self.latent_, self.train_strain_)
        if descriptor is not None:
            self.descriptor = descriptor
            self.estimators_ = fit_estimators(
                self.ref_features_, patterns, descriptor, self._estimator_columns()
            )

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

    def _estimator_columns(self) -> list[tuple[int, ...]]:
        """Feature columns the estimators try: all, the latent only, the strain only."""
        k = self.config.latent_dim
        candidates = [tuple(range(k + (1 if self.config.align else 0)))]
        if self.config.align:
            candidates += [tuple(range(k)), (k,)]
        return candidates

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
        return inverse_stabilize(t, self.config.transform)

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
        x = self._matrix(patterns)
        lag = self._internal(x)[1]
        features = self._features(self._encode(x), self._strain(lag))
        return self.estimators_[name].predict(features, self._feature_sigma(lag, features.shape))

    def set_reference(self, patterns: xr.DataArray, descriptor: str = "composition") -> None:
        """Use ``patterns`` with known ``descriptor`` values as the reference path."""
        self._check_fitted()
        reference_values(patterns, descriptor)  # fail before encoding
        self.ref_features_ = self.features(patterns)
        self.descriptor = descriptor
        self.estimators_ = fit_estimators(
            self.ref_features_, patterns, descriptor, self._estimator_columns()
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
        lag = self._internal(x)[1]
        strain = self._strain(lag)
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
        if self.config.correct_instrument:
            for name, values in self.instrument_terms(lag).items():
                ds[name] = ((first,), values)
        features = self._features(z, strain)
        sigma = self._feature_sigma(lag, features.shape)
        for name, estimator in self.estimators_.items():
            est, unc = estimator.predict(features, sigma)
            ds[f"{name}_estimate"] = ((first,), est)
            ds[f"{name}_uncertainty"] = ((first,), unc)
        return ds

    # -- persistence
    def save(self, path) -> None:
        """Write weights, configuration, grid, clusters and reference to a safetensors file."""
        self._check_fitted()
        save_model(self, path)

    @classmethod
    def load(cls, path, **kwargs) -> FeatureSpaceAE:
        """Read a model written by :meth:`save` (no pickle involved)."""
        return load_model(cls, path, **kwargs)
