"""What a trained feature space tells about patterns: peak relevance and interpolation.

:class:`FeatureSpaceAnalysis` is a mixin of
:class:`~xtec.autoencoder.feature_space.FeatureSpaceAE`: its methods use the
model's encoder, decoder and estimators and are reached as methods of the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from xtec.autoencoder.feature_space.peaks import Peak, find_peaks, mask_window
from xtec.errors import InputError, ParameterError


class FeatureSpaceAnalysis:
    """Peak relevance (Utimula et al.: mask a peak, measure the latent shift) and
    generation by interpolation in the feature space."""

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
