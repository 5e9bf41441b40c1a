"""A measured powder pattern as an instrument gives it, turned into a list of lines.

* **Radiation** (:func:`radiation`): an anode name (Cu, Co, Mo, Ag, Cr, Fe: K-alpha1 and
  K-alpha2, ratio 0.5) or a wavelength in angstrom (monochromatic, e.g. synchrotron).
* **Background** (:func:`snip_background`): the SNIP clipping filter (Ryan et al. 1988,
  Morhac et al. 1997) on the log-log-square-root transformed counts, window in degrees,
  so a low-angle rise and an amorphous hump stay in the background and peaks do not.
* **K-alpha2**: by default each line is a K-alpha1 + K-alpha2 doublet (resolved
  K-alpha2 lines dropped by :func:`ka2_partners`, blended maxima moved to K-alpha1 by
  :func:`doublet_offset`); or Rachinger's correction (:func:`strip_ka2`), point by point
  from low angle, for any 2-theta grid.
* **Noise** (:func:`poisson_gain`): counts are Poisson, so the variance is a gain times the
  counts; the gain comes from the second differences of the data (1 for raw counts; any
  scaled intensity works).  Noise-free (simulated) patterns get a relative floor.
* **Peaks** (:func:`search_peaks`): ``scipy.signal.find_peaks`` on the smoothed net signal
  with a prominence of ``significance`` standard deviations of the local counting noise
  and a width of at least a third of the typical peak width; positions from a parabola
  through the log of the net signal's three top points (exact for Gaussian peaks).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from xtec.errors import InputError, ParameterError

log = logging.getLogger(__name__)

#: K-alpha1, K-alpha2 (angstrom) of common anodes (Hoelzer et al. 1997; International Tables C).
ANODES: dict[str, tuple[float, float]] = {
    "Cu": (1.540562, 1.544390),
    "Co": (1.788965, 1.792850),
    "Mo": (0.709300, 0.713590),
    "Ag": (0.559421, 0.563813),
    "Cr": (2.289700, 2.293606),
    "Fe": (1.936042, 1.939980),
}
KA2_RATIO = 0.5
#: K-beta1 of the anodes, and tungsten L-alpha1 (a worn tube's filament on the anode).
KBETA: dict[str, float] = {
    "Cu": 1.392218,
    "Co": 1.620790,
    "Mo": 0.632288,
    "Ag": 0.497069,
    "Cr": 2.084920,
    "Fe": 1.756610,
}
W_LALPHA = 1.47642


@dataclass(frozen=True)
class Radiation:
    """Wavelength (angstrom) of the line used for indexing, and K-alpha2 if present."""

    wavelength: float
    ka2: float | None = None
    ka2_ratio: float = KA2_RATIO
    name: str = ""
    satellites: tuple[float, ...] = ()  # K-beta and W L-alpha (lab tubes)


def radiation(spec: str | float | None = None) -> Radiation:
    """``"Cu"`` (default), ``"Mo"``, ... (K-alpha1 + K-alpha2), ``"CuKa1"`` (K-alpha1 only)
    or a number in angstrom (monochromatic)."""
    if spec is None:
        spec = "Cu"
    if isinstance(spec, (int, float)) or _is_number(spec):
        w = float(spec)
        if not 0.1 < w < 10:
            raise ParameterError(f"--wavelength {spec}: give angstrom between 0.1 and 10")
        return Radiation(w, None, name=f"{w:g} A")
    s = str(spec).strip()
    key = s[:2].capitalize()
    rest = s[2:].lower().replace("-", "").replace("_", "").replace("alpha", "a")
    if key not in ANODES or rest not in ("", "ka", "ka12", "ka1"):
        names = ", ".join(ANODES)
        raise ParameterError(
            f"--wavelength {spec!r}: give an anode ({names}; e.g. CuKa1 for K-alpha1 only) "
            "or a wavelength in angstrom"
        )
    k1, k2 = ANODES[key]
    sat = (KBETA[key], W_LALPHA)
    if rest == "ka1":
        return Radiation(k1, None, name=f"{key} K-alpha1", satellites=sat)
    return Radiation(k1, k2, name=f"{key} K-alpha1+2", satellites=sat)


def _is_number(s) -> bool:
    try:
        float(s)
    except (TypeError, ValueError):
        return False
    return True


#: Axes :func:`to_two_theta` converts (besides 2-theta in degrees).
AXES = ("2theta", "q", "d", "energy")
HC = 12.398420  # keV angstrom


def to_two_theta(x, y, axis: str, rad: Radiation, energy_angle: float | None = None):
    """A pattern on another axis as 2-theta (degrees) at ``rad``'s wavelength, resampled
    onto a uniform grid of as many points.

    ``axis``: ``"2theta"`` (unchanged), ``"q"`` (4 pi sin(theta) / lambda, 1/angstrom),
    ``"d"`` (angstrom) or ``"energy"`` (keV, energy-dispersive at the fixed scattering
    angle ``energy_angle`` degrees 2-theta; without it the angle is chosen so that the
    highest energy lands at 2-theta 120 degrees, and cell edges are then known only up
    to a common scale).  Returns (two_theta, counts, note).
    """
    if axis not in AXES:
        raise ParameterError(f"--axis must be one of {', '.join(AXES)}")
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    if axis == "2theta":
        return x, y, ""
    lam = rad.wavelength
    note = ""
    if axis == "q":
        s = x * lam / (4 * np.pi)
    elif axis == "d":
        s = lam / (2 * np.where(x > 0, x, np.nan))
    else:
        if energy_angle is None:
            sin0 = np.sin(np.radians(60.0)) * HC / (lam * x.max()) if x.max() > 0 else 1.0
            note = "energy axis at an assumed angle: cell edges known up to a common scale"
        else:
            sin0 = np.sin(np.radians(energy_angle / 2))
        # E d = HC / (2 sin theta0), and at lambda: sin theta = lam / (2 d).
        s = lam * x * sin0 / HC
    ok = np.isfinite(s) & (s > 0) & (s < 1)
    if ok.sum() < 10:
        raise InputError(f"fewer than 10 points of the {axis} axis reach a 2-theta below 180")
    tt = 2 * np.degrees(np.arcsin(s[ok]))
    yy = y[ok]
    order = np.argsort(tt)
    tt, yy = tt[order], yy[order]
    grid = np.linspace(tt[0], tt[-1], len(tt))
    return grid, np.interp(grid, tt, yy), note


def check_pattern(two_theta, intensity) -> tuple[np.ndarray, np.ndarray]:
    """Refuse what no instrument writes: fewer than 10 points, non-finite values, an axis
    that is not strictly increasing, negative counts, nothing above zero, 2-theta outside
    (0, 180)."""
    x = np.asarray(two_theta, float)
    y = np.asarray(intensity, float)
    if x.ndim != 1 or x.shape != y.shape or len(x) < 10:
        raise InputError("need two columns (2-theta, intensity) with at least 10 rows")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise InputError("contains values that are not finite numbers")
    dx = np.diff(x)
    if np.any(dx <= 0):
        i = int(np.flatnonzero(dx <= 0)[0])
        raise InputError(
            f"the 2-theta axis must increase; row {i + 2} ({x[i + 1]:g}) follows {x[i]:g}"
        )
    if x[0] <= 0 or x[-1] >= 180:
        raise InputError(f"2-theta {x[0]:g}..{x[-1]:g} is not within (0, 180) degrees")
    if y.min() < 0:
        raise InputError(
            f"negative counts ({y.min():g} at 2-theta {x[y.argmin()]:g}); give raw counts"
        )
    if not y.max() > y.min():
        raise InputError("the pattern is empty: every intensity is the same (e.g. all zero)")
    return x, y


def snip_background(two_theta, counts, width: float = 1.5) -> np.ndarray:
    """SNIP background of ``counts`` with a clipping window of ``width`` degrees."""
    x = np.asarray(two_theta, float)
    y = np.clip(np.asarray(counts, float), 0, None)
    step = (x[-1] - x[0]) / (len(x) - 1)
    m = int(np.clip(round(width / 2 / step), 1, len(x) // 2 - 1))
    # Scale so that the log-log-sqrt operator sees counts of order 1 or more.
    scale = max(np.percentile(y, 5), 1e-12)
    v = np.log(np.log(np.sqrt(y / scale + 1) + 1) + 1)
    for p in range(1, m + 1):
        mean = 0.5 * (v[: -2 * p] + v[2 * p :])
        np.minimum(v[p:-p], mean, out=v[p:-p])
    return scale * ((np.exp(np.exp(v) - 1) - 1) ** 2 - 1)


def strip_ka2(two_theta, net, rad: Radiation) -> np.ndarray:
    """Rachinger's K-alpha2 correction of a background-free signal (any increasing grid)."""
    if rad.ka2 is None:
        return np.asarray(net, float).copy()
    x = np.asarray(two_theta, float)
    y = np.asarray(net, float)
    # The K-alpha1 position whose K-alpha2 line falls at x.
    s = np.clip(rad.wavelength / rad.ka2 * np.sin(np.radians(x / 2)), -1, 1)
    x1 = 2 * np.degrees(np.arcsin(s))
    j = np.searchsorted(x, x1, side="right") - 1
    out = y.copy()
    r = rad.ka2_ratio
    xs = x.tolist()
    for i in range(len(x)):
        k = j[i]
        if k < 0:
            continue
        if k + 1 >= i:  # the source point lies between i-1 and i: solve for out[i]
            w = (x1[i] - xs[i - 1]) / (xs[i] - xs[i - 1]) if i > 0 else 0.0
            prev = out[i - 1] if i > 0 else 0.0
            out[i] = (y[i] - r * (1 - w) * prev) / (1 + r * w)
            continue
        w = (x1[i] - xs[k]) / (xs[k + 1] - xs[k])
        out[i] = y[i] - r * ((1 - w) * out[k] + w * out[k + 1])
    return out


def poisson_gain(counts, smooth) -> float:
    """Variance per count: the median of (second difference)^2 / 6 over the local level.

    1 for raw counts; a scaled pattern gives its scale.  0 for a noise-free pattern.
    """
    y = np.asarray(counts, float)
    d2 = y[:-2] - 2 * y[1:-1] + y[2:]
    level = np.maximum(np.asarray(smooth, float)[1:-1], 1e-12)
    ratio = d2**2 / 6 / level
    # The median of a chi-square with one degree of freedom is 0.455.
    return float(np.median(ratio) / 0.455)


def local_variance(counts, window: int, lag: int = 2) -> np.ndarray:
    """Noise variance per point from a running median of lagged second differences.

    Catches regions noisier than counting statistics (detector edges, rescaled ranges,
    correlated noise of rebinned data), where a global gain would call noise a peak.
    """
    from scipy.ndimage import median_filter

    y = np.asarray(counts, float)
    lag = max(1, min(lag, (len(y) - 1) // 2))
    d = np.zeros_like(y)
    d[lag:-lag] = (y[: -2 * lag] - 2 * y[lag:-lag] + y[2 * lag :]) ** 2 / 6
    d[:lag], d[-lag:] = d[lag], d[-lag - 1]
    return median_filter(d, size=max(3, window), mode="nearest") / 0.455


@dataclass
class IntakeParams:
    """Settings of :func:`search_peaks` and of the line list handed to indexing (saved
    with the model under ``"intake"``)."""

    background_width: float = 1.5
    significance: float = 5.0
    threshold: float = 0.002
    ka2: str = "auto"
    noise_floor: float = 1e-4
    # Tolerance of a line in 2-theta: max(the model's tol_two_theta, tol_fwhm * its FWHM).
    tol_fwhm: float = 0.0

    def search(self, two_theta, counts, rad: Radiation) -> FoundPeaks:
        return search_peaks(
            two_theta,
            counts,
            rad,
            background_width=self.background_width,
            significance=self.significance,
            threshold=self.threshold,
            ka2=self.ka2,
            noise_floor=self.noise_floor,
        )


@dataclass
class FoundPeaks:
    """Lines found in a measured pattern (sorted by angle), with what the search saw."""

    two_theta: np.ndarray
    height: np.ndarray  # net (background-free, K-alpha2-stripped) peak height
    fwhm: np.ndarray  # degrees
    significance: np.ndarray  # prominence / local counting-noise sigma
    background: np.ndarray  # per point of the pattern
    net: np.ndarray  # per point: stripped, background-free signal
    gain: float
    ka2_stripped: bool


def search_peaks(
    two_theta,
    counts,
    rad: Radiation | None = None,
    *,
    background_width: float = 1.5,
    significance: float = 5.0,
    threshold: float = 0.002,
    ka2: str = "auto",
    noise_floor: float = 1e-4,
) -> FoundPeaks:
    """Significant lines of a pattern of counts (see the module docstring).

    ``ka2``: ``"auto"`` (strip when the radiation has K-alpha2 and resolved doublets show
    it), ``"strip"`` or ``"none"``.  ``threshold``: lines weaker than this fraction of
    the strongest are dropped.  ``noise_floor``: relative noise assumed at least (for
    noise-free simulated patterns).
    """
    from scipy.signal import find_peaks, peak_widths, savgol_coeffs, savgol_filter

    rad = rad or radiation(None)
    x, y = check_pattern(two_theta, counts)
    step = (x[-1] - x[0]) / (len(x) - 1)
    bg = np.minimum(snip_background(x, y, background_width), y)
    net = y - bg
    top = net.max()
    if not top > 0:
        raise InputError("no peak above the background")
    # Typical width from the strongest lines (before smoothing); broad lines get a
    # wider background window (at least four widths) so that they are not clipped.
    strong, _ = find_peaks(net, prominence=0.1 * top)
    if len(strong) == 0:
        strong = np.array([int(net.argmax())])
    w_pts = max(float(np.median(peak_widths(net, strong, rel_height=0.5)[0])), 1.0)
    if 4 * w_pts * step > background_width:
        bg = np.minimum(snip_background(x, y, 4 * w_pts * step), y)
        net = y - bg
        top = net.max()
    # Smoothing: a quadratic Savitzky-Golay window of about half the typical width.
    win = int(max(5, 2 * (int(0.5 * w_pts) // 2) + 1))
    win = min(win, 2 * (len(x) // 4) + 1)
    smooth_all = savgol_filter(y, win, 2) if win >= 5 else y
    gain = poisson_gain(y, np.maximum(smooth_all, 0))
    if ka2 not in ("auto", "strip", "none"):
        raise ParameterError("ka2 must be 'auto', 'strip' or 'none'")
    do_strip = ka2 == "strip" and rad.ka2 is not None
    if do_strip:
        net = strip_ka2(x, net, rad)
    sm = savgol_filter(net, win, 2) if win >= 5 else net
    reduce = float(np.sqrt(np.sum(savgol_coeffs(win, 2) ** 2))) if win >= 5 else 1.0
    var = np.maximum(gain * np.maximum(y, 0), local_variance(y, int(round(2.0 / step))))
    sigma = np.sqrt(var + (noise_floor * top) ** 2) * reduce
    # The prominence is a difference of two noisy values.
    idx, props = find_peaks(
        sm,
        prominence=significance * np.sqrt(2) * sigma,
        width=max(w_pts / 3, 1.0),
        height=threshold * sm.max(),
    )
    if len(idx) == 0:
        return FoundPeaks(*(np.zeros(0) for _ in range(4)), bg, net, gain, do_strip)
    # Lines at the data's ends sit where the background is not clipped: dropped.
    edge = max(3 * w_pts, 5, background_width / 2 / step)
    keep = (idx > edge) & (idx < len(x) - 1 - edge)
    idx = idx[keep]
    props = {k: v[keep] for k, v in props.items()}
    if len(idx) == 0:
        return FoundPeaks(*(np.zeros(0) for _ in range(4)), bg, net, gain, do_strip)
    # Parabola through the log of the three top points of the smoothed net signal.
    sig = np.maximum(sm, 1e-300)
    i = np.clip(idx, 1, len(x) - 2)
    lm, l0, lp = (np.log(sig[k]) for k in (i - 1, i, i + 1))
    den = lm - 2 * l0 + lp
    shift = np.where(den < 0, 0.5 * (lm - lp) / np.where(den < 0, den, -1), 0.0)
    tt = x[i] + np.clip(shift, -0.5, 0.5) * (x[i + 1] - x[i - 1]) / 2
    fwhm = props["widths"] * step
    signif = props["prominences"] / (np.sqrt(2) * sigma[idx])
    h = sm[idx]
    keep = ~satellite_lines(tt, h, rad, np.maximum(fwhm, 2 * step))
    tt, h, fwhm, signif = tt[keep], h[keep], fwhm[keep], signif[keep]
    doublet = ka2 == "auto" and rad.ka2 is not None
    if doublet:
        # K-alpha1 + K-alpha2 as a doublet: resolved K-alpha2 lines are dropped, blended
        # maxima moved to their K-alpha1 position.
        partner = ka2_partners(tt, h, rad, np.maximum(0.3 * fwhm, 2 * step))
        tt, h, fwhm, signif = tt[~partner], h[~partner], fwhm[~partner], signif[~partner]
        tt = tt - doublet_offset(tt, fwhm, rad)
    return FoundPeaks(tt, h, fwhm, signif, bg, net, gain, do_strip or doublet)


def _ka2_separation(tt, rad: Radiation) -> np.ndarray:
    s = np.clip(rad.ka2 / rad.wavelength * np.sin(np.radians(np.asarray(tt) / 2)), -1, 1)
    return 2 * np.degrees(np.arcsin(s)) - tt


def ka2_partners(two_theta, height, rad: Radiation, tol) -> np.ndarray:
    """True for lines at the K-alpha2 position of a line 1.25 to 4 times stronger."""
    tt = np.asarray(two_theta, float)
    pos = tt + _ka2_separation(tt, rad)  # K-alpha2 of each line
    d = np.abs(tt[:, None] - pos[None, :])
    ratio = height[:, None] / np.maximum(height[None, :], 1e-300)
    hit = (d <= np.asarray(tol)[:, None]) & (ratio > 0.25) & (ratio < 0.8)
    return hit.any(1)


def doublet_offset(two_theta, fwhm, rad: Radiation) -> np.ndarray:
    """How far the maximum of a K-alpha1 + K-alpha2 blend lies above K-alpha1.

    Two Gaussians at the doublet's separation, ratio ``ka2_ratio``, each as wide as
    makes the blend's width the observed ``fwhm``: about ``r / (1 + r)`` of the
    separation when unresolved, 0 when resolved.
    """
    tt = np.asarray(two_theta, float)
    sep = _ka2_separation(tt, rad)
    out = np.zeros(len(tt))
    u = np.linspace(-3.0, 4.0, 3501)  # in units of the separation
    r = rad.ka2_ratio
    for i, (s, w) in enumerate(zip(sep, np.asarray(fwhm, float), strict=True)):
        if not (s > 0 and w > 0):
            continue
        best = None
        for w0 in np.linspace(0.3, 1.0, 36) * w:
            k = 4 * np.log(2) * (s / w0) ** 2
            blend = np.exp(-k * u**2) + r * np.exp(-k * (u - 1) ** 2)
            top = blend.argmax()
            above = np.flatnonzero(blend >= blend[top] / 2)
            width = (u[above[-1]] - u[above[0]]) * s
            if best is None or abs(width - w) < best[0]:
                best = (abs(width - w), s * u[top])
        out[i] = best[1]
    return out


def satellite_lines(two_theta, height, rad: Radiation, tol, max_ratio: float = 0.1):
    """True for lines that sit where K-beta or W L-alpha puts a copy of a line at least
    ``1 / max_ratio`` times stronger (lab tubes: a filter leaves a few percent)."""
    tt = np.asarray(two_theta, float)
    out = np.zeros(len(tt), bool)
    s = np.sin(np.radians(tt / 2))
    for lam in rad.satellites:
        pos = 2 * np.degrees(np.arcsin(np.clip(lam / rad.wavelength * s, -1, 1)))
        d = np.abs(tt[:, None] - pos[None, :])  # (line, parent's satellite)
        hit = (d <= np.asarray(tol)[:, None]) & (height[:, None] < max_ratio * height[None, :])
        out |= hit.any(1)
    return out
