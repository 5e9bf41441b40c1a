"""Pattern preprocessing of the feature space (NumPy): scale, variance, grid, baseline, alignment.

Every function takes and returns arrays of patterns, rows on a common grid:
``x`` (n, m) for n patterns of m points.
"""

from __future__ import annotations

import numpy as np

from xtec.errors import InputError, ParameterError


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


def inverse_stabilize(t: np.ndarray, how: str) -> np.ndarray:
    """Undo :func:`variance_stabilize` on ``t`` (n, m) (signed square for ``"sqrt"``)."""
    return np.sign(t) * t**2 if how == "sqrt" else t


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


def thin_svd(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


# --------------------------------------------------------------------------- instrument


def instrument_basis(u: np.ndarray) -> np.ndarray:
    """How a lattice strain, a zero shift and a sample displacement move peaks on the
    log(sin theta) grid ``u`` (m,): columns (m, 3) ``[1, cot theta, cos theta cot theta]``.

    A strain ``e`` moves every peak by ``-log(1 + e)`` (a constant); a zero error
    ``z`` of 2-theta by ``(z / 2) cot theta``; a sample displacement ``s`` on a
    goniometer of radius ``R`` (2-theta moves by ``-2 s cos theta / R``) by
    ``-(s / R) cos theta cot theta``.  Over 20-100 deg the last two are nearly
    proportional to each other but not to the constant, which is what lets the
    strain be told from both.
    """
    s = np.clip(np.exp(np.asarray(u, dtype=float)), 1e-6, 1 - 1e-9)
    cot = np.sqrt(1 - s**2) / s
    return np.column_stack([np.ones_like(s), cot, np.sqrt(1 - s**2) * cot])


def peak_windows(template: np.ndarray, min_gap: int = 10) -> list[tuple[int, int]]:
    """Index ranges (a, b), one around each peak of ``template`` (m,).

    Peaks closer than ``min_gap`` points (a K-alpha doublet on the log-d grid)
    share a window; windows meet halfway between neighbouring peaks, so no
    peak is cut in two.
    """
    from scipy.signal import find_peaks as _find

    idx, _ = _find(template, prominence=0.02 * float(np.ptp(template)))
    groups: list[list[int]] = []
    for i in idx:
        if groups and i - groups[-1][-1] < min_gap:
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
    if not groups:
        return [(0, template.size)]
    centres = [(g[0] + g[-1]) / 2 for g in groups]
    cuts = [0, *[int(round((x + y) / 2)) for x, y in zip(centres[:-1], centres[1:], strict=True)]]
    cuts.append(template.size)
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def window_lags(
    t: np.ndarray, template: np.ndarray, windows: list[tuple[int, int]], max_lag: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lags of stretches of each profile against the template.

    ``t`` (n, m) roughly aligned profiles, ``template`` (m,), ``windows`` index
    ranges (:func:`peak_windows`).  Returns ``(lags (n, w), centres (w,),
    weights (w,))``: the sub-point lag of each window (as
    :func:`cross_correlation_shift`), the window's centre in points weighted by
    the template's slope, and the template's squared slope summed over the
    window (the inverse variance of a lag under white noise).
    """
    slope2 = np.gradient(template) ** 2
    lags, centres, weights = [], [], []
    for a, b in windows:
        seg = template[a:b] - template[a:b].mean()
        rows = t[:, a:b] - t[:, a:b].mean(axis=1, keepdims=True)
        lags.append(cross_correlation_shift(rows, seg, min(max_lag, max(1, (b - a) // 3))))
        w = slope2[a:b]
        centres.append(float((np.arange(a, b) * w).sum() / max(w.sum(), 1e-300)))
        weights.append(float(w.sum()))
    return np.stack(lags, axis=1), np.asarray(centres), np.asarray(weights)


def fit_instrument(
    lags: np.ndarray, basis: np.ndarray, weights: np.ndarray, prior: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pattern MAP fit of window lags (n, w) on the basis (w, 3), Gaussian priors.

    ``prior`` (3,) are the prior standard deviations of the coefficients
    (``inf``: free; the strain term is free, the zero shift and displacement
    terms have the spreads a laboratory series shows).  The lag noise of a
    window is ``sigma^2 / weight`` (weights normalised to a mean of 1), with
    ``sigma^2`` each pattern's own weighted residual scatter, re-estimated
    twice.  Returns ``(coefficients (n, 3), posterior standard deviations
    (n, 3))``: where the three terms cannot be told apart the priors decide,
    and the strain's deviation grows accordingly.
    """
    w = np.asarray(weights, dtype=float)
    w = w / max(float(w.mean()), 1e-300)
    precision = np.where(np.isfinite(prior), 1.0 / np.asarray(prior, dtype=float) ** 2, 0.0)
    gram = (basis * w[:, None]).T @ basis
    rhs = (lags * w) @ basis  # (n, 3)
    n, k = lags.shape[0], basis.shape[1]
    sigma2 = np.ones(n)
    dof = max(basis.shape[0] - 1, 1)
    for _ in range(3):
        coef = np.empty((n, k))
        cov = np.empty((n, k, k))
        for i in range(n):
            cov[i] = np.linalg.inv(gram / sigma2[i] + np.diag(precision))
            coef[i] = cov[i] @ rhs[i] / sigma2[i]
        resid = lags - coef @ basis.T
        sigma2 = np.maximum((resid**2 * w).sum(axis=1) / dof, 1e-6)
    return coef, np.sqrt(np.diagonal(cov, axis1=1, axis2=2))


def shift_rows_varying(t: np.ndarray, lag: np.ndarray) -> np.ndarray:
    """Rows moved by a lag that varies along them: ``out[i, j] = t[i, j + lag[i, j]]``
    (linear, edges held); ``t`` and ``lag`` (n, m)."""
    idx = np.arange(t.shape[-1], dtype=float)
    return np.stack([np.interp(idx + s, idx, row) for row, s in zip(t, lag, strict=True)])
