"""Fitting an order parameter to a cluster's mean trajectory: Tc and beta.

Below a second-order transition the superlattice intensity grows as the order
parameter squared, ``(1 - T/Tc)^(2 beta)``; the fit adds the critical
scattering that peaks at Tc and a linear background (see
:func:`order_parameter_model`).  ``ds.xtec.fit_order_parameter`` calls it on a
result store's cluster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from xtec.errors import ParameterError


def order_parameter_model(t, tc, beta, amplitude, background, critical=0.0, gamma=1.0, slope=0.0):
    """Order parameter squared plus critical scattering and background.

    ``amplitude * (1 - T/Tc)^(2 beta)`` below Tc (zero above), plus a critical
    peak ``critical * gamma^2 / ((T - Tc)^2 + gamma^2)`` centred at Tc (the
    fluctuations that make a superlattice peak's intensity spike at the
    transition), plus ``background + slope * T``.
    """
    t = np.asarray(t, dtype=np.float64)
    reduced = np.clip(1.0 - t / tc, 0.0, None)
    out = amplitude * reduced ** (2.0 * beta) + background + slope * t
    if critical:
        out = out + critical * gamma**2 / ((t - tc) ** 2 + gamma**2)
    return out


@dataclass
class OrderParameterFit:
    """Result of :func:`fit_order_parameter` / ``ds.xtec.fit_order_parameter``.

    ``tc`` and ``beta`` with one-sigma uncertainties from the covariance of the
    least-squares fit (scaled by the reduced chi-square); ``params`` holds every
    fitted parameter of :func:`order_parameter_model`, ``errors`` their
    uncertainties.
    """

    tc: float
    tc_err: float
    beta: float
    beta_err: float
    params: dict
    errors: dict
    temperature: np.ndarray = field(repr=False)
    data: np.ndarray = field(repr=False)
    sigma: np.ndarray | None = field(repr=False, default=None)
    used: np.ndarray | None = field(repr=False, default=None)
    cluster: int | None = None
    source: str = "mean"
    chi2_red: float = math.nan

    def model(self, t) -> np.ndarray:
        return order_parameter_model(t, **self.params)

    def __str__(self) -> str:
        return (
            f"Tc = {self.tc:.4g} \u00b1 {self.tc_err:.2g} K, "
            f"beta = {self.beta:.3g} \u00b1 {self.beta_err:.2g}"
            + (f" (cluster {self.cluster}, {self.source})" if self.cluster is not None else "")
        )

    def plot(self, ax=None, color=None):
        """Data, fitted curve and Tc on ``ax`` (a new pyplot figure if None)."""
        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(6, 4), layout="constrained")
        used = np.ones(self.data.shape, bool) if self.used is None else self.used
        ax.errorbar(
            self.temperature[used],
            self.data[used],
            yerr=None if self.sigma is None else self.sigma[used],
            fmt="o",
            ms=4,
            capsize=2,
            color=color or "#0072B2",
            label="data",
        )
        if (~used).any():
            ax.plot(
                self.temperature[~used], self.data[~used], "x", color="#999999", label="not fitted"
            )
        tt = np.linspace(self.temperature.min(), self.temperature.max(), 600)
        ax.plot(
            tt,
            self.model(tt),
            color="#D55E00",
            lw=2,
            label=f"fit: Tc = {self.tc:.1f}\u00b1{self.tc_err:.1f} K, "
            f"\u03b2 = {self.beta:.2f}\u00b1{self.beta_err:.2f}",
        )
        ax.axvline(self.tc, color="#D55E00", ls=":", lw=1)
        ax.set_xlabel("temperature (K)")
        ax.set_ylabel("intensity" if self.source == "raw" else "rescaled intensity")
        ax.legend(fontsize="small", frameon=False)
        return ax


def fit_order_parameter(
    temperature,
    y,
    sigma=None,
    *,
    tc=None,
    beta=None,
    critical: bool = True,
    slope: bool = False,
    t_range: tuple[float, float] | None = None,
    loss: str = "linear",
) -> OrderParameterFit:
    """Fit :func:`order_parameter_model` to a trajectory.

    Parameters
    ----------
    temperature, y : arrays of shape (T,)
    sigma : array of shape (T,), optional
        Uncertainty of each point (e.g. the standard error of a cluster mean).
    tc, beta : float, optional
        Starting values; the fit also starts from a grid of Tc over the range
        and keeps the best.
    critical : bool
        Include the critical-scattering peak at Tc (recommended: the intensity of
        a superlattice peak spikes at the transition, and a bare power law then
        overestimates Tc).  Without it, leave the points near Tc out with ``t_range``.
    slope : bool
        Add a linear background term.
    t_range : (min, max), optional
        Only fit the points in this temperature range.
    loss : str
        ``scipy.optimize.least_squares`` loss ("linear", "soft_l1", "huber", ...).
    """
    t = np.asarray(temperature, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    s = None if sigma is None else np.asarray(sigma, dtype=np.float64)
    if t.shape != y.shape or t.ndim != 1:
        raise ParameterError("temperature and data must be 1-D arrays of the same length")
    used = np.isfinite(y) & np.isfinite(t)
    if t_range is not None:
        used &= (t >= t_range[0]) & (t <= t_range[1])
    names = ["tc", "beta", "amplitude", "background"]
    names += ["critical", "gamma"] if critical else []
    names += ["slope"] if slope else []
    if used.sum() <= len(names):
        raise ParameterError(f"{int(used.sum())} points are too few to fit {len(names)} parameters")
    order = np.argsort(t[used])
    tu, yu = t[used][order], y[used][order]
    w = _weights(None if s is None else s[used][order], yu)
    lo_b, hi_b = _bounds(names, tu)
    x0s = _starts(names, tu, yu, lo_b, hi_b, tc=tc, beta=beta, critical=critical)

    def resid(p, weights=w):
        return (order_parameter_model(tu, **dict(zip(names, p))) - yu) * weights

    best = _best_fit(resid, x0s, w, (lo_b, hi_b), loss)
    p = best.x
    err, chi2 = _uncertainties(best, resid(p))
    params = dict(zip(names, map(float, p)))
    errors = dict(zip(names, map(float, err)))
    return OrderParameterFit(
        params["tc"],
        errors["tc"],
        params["beta"],
        errors["beta"],
        params,
        errors,
        t,
        y,
        s,
        used,
        chi2_red=chi2,
    )


def _weights(su, yu) -> np.ndarray:
    """Least-squares weights 1/sigma of the used points (ones without sigma)."""
    w = np.ones_like(yu)
    if su is not None:
        good = np.isfinite(su) & (su > 0)
        if good.any():
            floor = 0.05 * float(np.median(su[good]))  # no point may dominate the fit
            w = 1.0 / np.where(good, np.maximum(su, floor), float(np.median(su[good])))
    return w


def _bounds(names, tu) -> tuple[list, list]:
    """Lower and upper bounds of the parameters ``names`` for temperatures ``tu``."""
    tmin, tmax = float(tu.min()), float(tu.max())
    span = tmax - tmin
    lo = {
        "tc": tmin + 1e-3 * span,
        "beta": 0.01,
        "amplitude": -np.inf,
        "background": -np.inf,
        "critical": 0.0,
        "gamma": span / (4 * len(tu)),
        "slope": -np.inf,
    }
    hi = {
        "tc": tmax + 0.5 * span,
        "beta": 3.0,
        "amplitude": np.inf,
        "background": np.inf,
        "critical": np.inf,
        "gamma": span,
        "slope": np.inf,
    }
    return [lo[n] for n in names], [hi[n] for n in names]


def _starts(names, tu, yu, lo_b, hi_b, *, tc, beta, critical) -> list[list[float]]:
    """Starting points: a grid of Tc over the range (plus ``tc``), two widths of
    the critical peak, the other parameters guessed from the data."""
    tmin, tmax = float(tu.min()), float(tu.max())
    span = tmax - tmin
    b0 = float(np.median(yu[-max(2, len(yu) // 4) :]))  # warmest quarter
    a0 = float(yu[0] - b0) or 1.0
    peak0 = max(float(yu.max() - max(yu[0], b0)), 0.0)
    beta0 = 1.0 / 3.0 if beta is None else float(beta)
    starts = list(np.linspace(tmin + 0.1 * span, tmax, 10)) + ([tc] if tc is not None else [])
    gammas = (0.02 * span, 0.08 * span) if critical else (None,)
    x0s = []
    for tc0 in starts:
        for g0 in gammas:
            p0 = {
                "tc": tc0,
                "beta": beta0,
                "amplitude": a0,
                "background": b0,
                "critical": peak0,
                "gamma": g0,
                "slope": 0.0,
            }
            x0s.append([_inside(p0[n], a, b) for n, a, b in zip(names, lo_b, hi_b)])
    return x0s


def _best_fit(resid, x0s, w, bounds, loss):
    """The lowest-cost ``least_squares`` result over the starts ``x0s``.

    Unweighted starts first (weights that vary by orders of magnitude over the
    range trap the fit in local minima), then the weighted fit from the best.
    """
    from scipy.optimize import least_squares

    def fit(x0, weights):
        try:
            return least_squares(resid, x0, bounds=bounds, loss=loss, x_scale="jac",
                                 kwargs={"weights": weights})
        except ValueError:
            return None

    best = None
    for weights in (np.ones_like(w),) if np.allclose(w, w[0]) else (np.ones_like(w), w):
        cands = x0s if best is None else [best.x, *x0s]
        best = None
        for x0 in cands:
            r = fit(x0, weights)
            if r is not None and (best is None or r.cost < best.cost):
                best = r
        if best is None:
            break
    if best is None:
        raise ParameterError("the order-parameter fit failed")
    return best


def _uncertainties(best, res) -> tuple[np.ndarray, float]:
    """One-sigma errors of the fitted parameters from the Jacobian, scaled by the
    reduced chi-square of the residuals ``res``; and that chi-square."""
    p = best.x
    chi2 = float(res @ res) / max(len(res) - len(p), 1)
    try:
        cov = np.linalg.pinv(best.jac.T @ best.jac) * chi2
        err = np.sqrt(np.clip(np.diag(cov), 0, None))
    except np.linalg.LinAlgError:
        err = np.full(len(p), np.nan)
    return err, chi2


def _inside(v: float, a: float, b: float) -> float:
    """``v`` moved strictly inside the bounds (a, b), which may be infinite."""
    eps = 1e-6 * (b - a) if np.isfinite(a) and np.isfinite(b) else 1e-6
    if np.isfinite(a):
        v = max(v, a + eps * max(1.0, abs(a)) if not np.isfinite(b) else a + eps)
    if np.isfinite(b):
        v = min(v, b - eps * max(1.0, abs(b)) if not np.isfinite(a) else b - eps)
    return float(v)


