"""Patterns onto the model's internal grid, lined up with its template (NumPy).

:class:`PatternAlignment` is a mixin of
:class:`~xtec.autoencoder.feature_space.FeatureSpaceAE`: variance
stabilisation, the log(sin theta) grid, background removal, the whole-pattern
lag (a lattice strain) and, with ``correct_instrument``, the per-pattern zero
shift and sample displacement separated from it (see :func:`instrument_basis`).
A lag is (n,) points, or (n, 4) ``[strain lag, zero term, displacement term,
strain lag's standard error]`` when the instrument terms are separated.
"""

from __future__ import annotations

import numpy as np

from xtec.autoencoder.feature_space.patterns import (
    cross_correlation_shift,
    fit_instrument,
    instrument_basis,
    peak_windows,
    remove_baseline,
    resample_rows,
    shift_rows,
    shift_rows_varying,
    variance_stabilize,
    window_lags,
)

# The largest lag looked for around each peak (points), after the
# whole-pattern alignment.
_LOCAL_LAG = 12


class PatternAlignment:
    """Internal profiles and their lags; needs ``config``, ``grid_``,
    ``internal_grid_`` and, after fitting, ``template_`` and ``lag_offset_``."""

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
            lag = np.asarray(lag, dtype=float)
            if lag.ndim == 2:  # instrument-corrected: coefficients per pattern
                return self._shift(t, lag), lag
            lag = np.broadcast_to(lag, t.shape[:1])
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
        if cfg.correct_instrument:
            lag = self._instrument_lags(probe, lag, fit)
            return self._shift(t, lag), lag
        return shift_rows(t, lag), lag

    def _instrument_lags(self, probe: np.ndarray, lag: np.ndarray, fit: bool) -> np.ndarray:
        """Per-pattern strain lag, zero-shift and displacement terms (n, 4).

        Columns ``[c0, c1, c2, sigma0]``: the lag at point j is
        ``c0 + c1 cot(theta_j) + c2 cos(theta_j) cot(theta_j)`` (see
        :func:`instrument_basis`); ``c0`` is the strain lag and ``sigma0`` its
        standard error.  The terms are fitted to the lags of stretches of the
        profile (``probe`` (n, m), already moved by the whole-pattern ``lag``
        (n,)) against the template; with ``fit`` the template is rebuilt from
        the corrected profiles twice first.
        """
        basis = instrument_basis(self.internal_grid_)
        whole = lag + self.lag_offset_

        cfg = self.config
        # Prior spreads of the three terms, in lag points: strain free; a zero
        # error z moves u by (z / 2) cot; a displacement s by (s / R) cos cot.
        prior = np.array(
            [
                np.inf,
                np.radians(cfg.zero_shift_prior) / 2 / self._step,
                cfg.displacement_prior / cfg.goniometer_radius / self._step,
            ]
        )

        def residual_terms():
            shifted = shift_rows(probe, whole)
            windows = peak_windows(self.template_)
            lags, centres, weights = window_lags(shifted, self.template_, windows, _LOCAL_LAG)
            at = np.column_stack(
                [np.interp(centres, np.arange(basis.shape[0]), b) for b in basis.T]
            )
            return fit_instrument(lags, at, weights, prior)

        if fit:
            for _ in range(2):
                coef, _ = residual_terms()
                self.template_ = shift_rows_varying(probe, whole[:, None] + coef @ basis.T).mean(0)
        coef, err = residual_terms()
        return np.column_stack([lag + coef[:, 0], coef[:, 1], coef[:, 2], err[:, 0]])

    def instrument_terms(self, lag: np.ndarray) -> dict[str, np.ndarray]:
        """The instrument terms of instrument-corrected lags (n, 4), each (n,).

        ``zero_shift_estimate`` (degrees of 2-theta) and ``displacement_estimate`` (mm, on a
        goniometer of ``goniometer_radius``), both relative to the template,
        and ``strain_uncertainty``, the standard deviation of the strain
        after the three terms were separated.
        """
        step = self._step
        return {
            "zero_shift_estimate": np.degrees(2 * lag[:, 1] * step),
            "displacement_estimate": -lag[:, 2] * step * self.config.goniometer_radius,
            "strain_uncertainty": np.exp(-step * lag[:, 0]) * step * lag[:, 3],
        }

    def _feature_sigma(self, lag: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
        """Each pattern's error in the estimator features (n, f): the strain's, where
        the instrument terms were separated from it (None otherwise)."""
        if not self.config.correct_instrument:
            return None
        # The references' residuals already hold a typical pattern's strain
        # error; only what a pattern has beyond most references' is added.
        own = self.instrument_terms(lag)["strain_uncertainty"]
        sigma = np.zeros(shape)
        sigma[:, -1] = np.sqrt(np.maximum(own**2 - self.strain_sigma_ref_**2, 0.0))
        return sigma / self.strain_scale_

    def _shift(self, t: np.ndarray, lag: np.ndarray) -> np.ndarray:
        """Profiles (n, m) moved by instrument-corrected lags (n, 4) of :meth:`_instrument_lags`."""
        basis = instrument_basis(self.internal_grid_)
        return shift_rows_varying(t, lag[:, :3] @ basis.T)

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
        lag = np.asarray(lag)
        if lag.ndim == 2:  # instrument-corrected: the strain lag is the first column
            lag = lag[:, 0]
        if self.config.grid == "log_d":
            return np.expm1(-self._step * lag)
        return np.asarray(lag) * float(np.median(np.diff(self.grid_)))
