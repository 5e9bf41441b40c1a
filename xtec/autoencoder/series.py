"""Powder-pattern series from an independent simulator: pymatgen's ``XRDCalculator``.

The module's own generator (:func:`xtec.autoencoder.data.synthetic_alloy_series`)
is what the feature-space autoencoder was tuned on.  These series are computed
by pymatgen instead (its own structure factors, form factors and
Lorentz-polarisation), with the profile, background and counting noise added
here, so that the autoencoder can be judged on data it was not tuned on:

``"fcc"``
    disordered fcc solid solution A(1-x)B(x), Vegard's law between the end
    members' lattice parameters (default Cu-Au, 3.615 -> 4.078 A, +12.8 %);
``"bcc"``
    disordered bcc solid solution (default Fe-Nb, 2.866 -> 3.300 A, +15.1 %);
``"ordering"``
    bcc A(1-x)B(x) whose B2 (CsCl) long-range order switches on inside a
    composition window (order parameter ``1 - ((x - 0.5) / 0.2)^2`` where
    positive), so superlattice peaks appear and vanish along the series
    (Fe-Al, 2.866 -> 2.95 A);
``"two_phase"``
    an fcc phase (A-rich, 3.52 -> 3.57 A for x <= 0.3) and a bcc phase (B-rich,
    2.95 -> 3.00 A for x >= 0.7) coexisting in between with the lever-rule
    fraction of the bcc phase, ``phase_fraction = (x - 0.3) / 0.4``.

Instrument effects can be added to any series: a zero shift of 2-theta, a
change of peak width, a change of background level and slope, each drawn per
pattern.

Needs pymatgen (the ``classify`` extra); NumPy otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from xtec.autoencoder.synthetic import LabEffects
from xtec.errors import ParameterError

#: Series :func:`pymatgen_series` knows.
SERIES = ("fcc", "bcc", "ordering", "two_phase")

_FCC = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]


def _structure(kind: str, a: float, species: dict, second: dict | None = None):
    from pymatgen.core import Lattice, Structure

    lattice = Lattice.cubic(a)
    if kind == "fcc":
        return Structure(lattice, [species] * 4, _FCC)
    if kind == "bcc":
        return Structure(lattice, [species, species], [[0, 0, 0], [0.5, 0.5, 0.5]])
    if kind == "b2":
        return Structure(lattice, [species, second], [[0, 0, 0], [0.5, 0.5, 0.5]])
    raise ParameterError(f"unknown structure {kind!r}")


def _occupancy(a_el: str, b_el: str, x: float) -> dict:
    x = float(np.clip(x, 0.0, 1.0))
    if x <= 1e-9:
        return {a_el: 1.0}
    if x >= 1 - 1e-9:
        return {b_el: 1.0}
    return {a_el: 1.0 - x, b_el: x}


def _peaks(structure, calculator, two_theta: tuple[float, float]):
    pattern = calculator.get_pattern(structure, two_theta_range=two_theta, scaled=False)
    return np.asarray(pattern.x, dtype=float), np.asarray(pattern.y, dtype=float)


def _profile(
    tt: np.ndarray,
    centres: np.ndarray,
    heights: np.ndarray,
    caglioti: tuple[float, float, float],
    width_scale: float,
) -> np.ndarray:
    u, v, w = caglioti
    tan_t = np.tan(np.radians(centres / 2))
    fwhm = width_scale * np.sqrt(np.maximum(u * tan_t**2 + v * tan_t + w, 1e-6))
    sigma = fwhm / (2 * np.sqrt(2 * np.log(2)))
    y = np.zeros_like(tt)
    for c, h, s in zip(centres, heights, sigma, strict=True):
        lo, hi = np.searchsorted(tt, [c - 6 * s, c + 6 * s])
        y[lo:hi] += h / (s * np.sqrt(2 * np.pi)) * np.exp(-0.5 * ((tt[lo:hi] - c) / s) ** 2)
    return y


def pymatgen_series(
    kind: str,
    composition: Sequence[float] | np.ndarray,
    *,
    elements: tuple[str, str] | None = None,
    lattice: tuple[float, float] | None = None,
    two_theta: np.ndarray | None = None,
    caglioti: tuple[float, float, float] = (0.02, -0.01, 0.01),
    counts: float = 200000.0,
    background: float = 1.0,
    zero_shift: float = 0.0,
    width_change: float = 0.0,
    background_change: float = 0.0,
    seed: int | None = 0,
    lab: LabEffects | None = None,
) -> xr.DataArray:
    """Simulate a powder series with pymatgen's XRDCalculator (Cu K-alpha).

    Parameters
    ----------
    kind
        One of :data:`SERIES`.
    composition
        B fractions x in [0, 1], shape (n,).
    elements, lattice
        End members A and B and their lattice parameters (angstrom); defaults
        depend on ``kind`` (see the module docstring).
    two_theta
        Grid in degrees; default 20-100 deg on 4,001 points.
    caglioti
        (U, V, W) of the Gaussian FWHM ``sqrt(U tan^2 + V tan + W)`` in degrees.
    counts
        Total counts per pattern in the peaks (before background); Poisson
        noise follows from it.
    background
        Flat-plus-decaying background as a fraction of the mean peak signal.
    zero_shift, width_change, background_change
        Instrument effects drawn per pattern: a 2-theta zero offset with this
        standard deviation (degrees), a peak-width factor uniform in
        ``[1 - width_change, 1 + width_change]``, and a background level and
        slope each scaled by a factor uniform in
        ``[1 - background_change, 1 + background_change]`` (slope sign random).
    seed
        Seed of the noise and instrument draws.
    lab
        A laboratory diffractometer (:class:`~xtec.autoencoder.synthetic.LabEffects`):
        per-pattern sample displacement and zero shift, K-alpha1 and K-alpha2
        computed by pymatgen at their own wavelengths (``CuKa1``, ``CuKa2``,
        in place of the averaged ``CuKa``), a varying background and a
        lattice bowing; texture is not applied here (pymatgen returns no
        per-reflection hkl to weigh).  Drawn from a stream of their own; the
        ground truth is returned as coordinates.

    Returns
    -------
    DataArray (pattern, two_theta) of counts, with ``composition``,
    ``lattice_parameter`` and, for ``"two_phase"``, ``phase_fraction``
    coordinates.
    """
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    if kind not in SERIES:
        raise ParameterError(f"kind must be one of {SERIES}, not {kind!r}")
    x = np.asarray(composition, dtype=float).ravel()
    if x.size == 0 or np.any((x < 0) | (x > 1)):
        raise ParameterError("compositions must lie in [0, 1]")
    defaults = {
        "fcc": (("Cu", "Au"), (3.615, 4.078)),
        "bcc": (("Fe", "Nb"), (2.866, 3.300)),
        "ordering": (("Fe", "Al"), (2.866, 2.95)),
        "two_phase": (("Cu", "Zn"), (3.52, 3.00)),
    }
    els, lat = defaults[kind]
    elements = elements or els
    lattice = lattice or lat
    tt = np.linspace(20.0, 100.0, 4001) if two_theta is None else np.asarray(two_theta, float)
    calc = XRDCalculator("CuKa")
    # (calculator, weight): the averaged K-alpha, or K-alpha1 and K-alpha2.
    lines = [(calc, 1.0)]
    effects = lab.draw(x.size, seed) if lab is not None else None
    if lab is not None:
        lines = [(XRDCalculator("CuKa1"), 1.0)]
        if lab.kalpha2 > 0:
            lines.append((XRDCalculator("CuKa2"), lab.kalpha2))
    rng = np.random.default_rng(seed)
    a_el, b_el = elements
    out = np.empty((x.size, tt.size))
    a_of_x = np.empty(x.size)
    fraction = np.zeros(x.size)
    span = (tt.min() - 1.0, tt.max() + 1.0)
    for i, xi in enumerate(x):
        shift = zero_shift * rng.standard_normal() if zero_shift else 0.0
        width = 1.0 + width_change * rng.uniform(-1, 1)
        if kind in ("fcc", "bcc"):
            a = lattice[0] + (lattice[1] - lattice[0]) * xi
            if lab is not None:
                a += lab.bowing * xi * (1 - xi)
            parts = [(1.0, _structure(kind, a, _occupancy(a_el, b_el, xi)))]
        elif kind == "ordering":
            a = lattice[0] + (lattice[1] - lattice[0]) * xi
            s = max(0.0, 1.0 - ((xi - 0.5) / 0.2) ** 2)
            p_beta = xi + s * min(xi, 1 - xi)
            p_alpha = 2 * xi - p_beta
            parts = [
                (
                    1.0,
                    _structure(
                        "b2", a, _occupancy(a_el, b_el, p_alpha), _occupancy(a_el, b_el, p_beta)
                    ),
                )
            ]
        else:
            # fcc alpha up to x = 0.3, bcc beta from x = 0.7, both in between.
            xa, xb = min(xi, 0.3), max(xi, 0.7)
            a_alpha = 3.52 + (3.57 - 3.52) * xa / 0.3
            a_beta = 2.95 + (3.00 - 2.95) * (xb - 0.7) / 0.3
            f = float(np.clip((xi - 0.3) / 0.4, 0.0, 1.0))
            fraction[i] = f
            a = (1 - f) * a_alpha + f * a_beta
            parts = []
            if f < 1:
                parts.append((1 - f, _structure("fcc", a_alpha, _occupancy(a_el, b_el, xa))))
            if f > 0:
                parts.append((f, _structure("bcc", a_beta, _occupancy(a_el, b_el, xb))))
        a_of_x[i] = a
        y = np.zeros_like(tt)
        for weight, structure in parts:
            for line, line_weight in lines:
                centres, heights = _peaks(structure, line, span)
                # pymatgen's unscaled intensities are per cell; per unit volume
                # (what a phase fraction weighs) divide by the cell volume squared.
                heights = line_weight * heights / structure.volume**2
                if effects is not None:
                    centres = (
                        centres
                        + effects["zero_shift"][i]
                        - np.degrees(
                            2
                            * effects["displacement"][i]
                            * np.cos(np.radians(centres / 2))
                            / lab.radius
                        )
                    )
                y += weight * _profile(tt + shift, centres, heights, caglioti, width)
        y *= counts / max(y.sum(), 1e-300)
        level = background * counts / tt.size
        scale = 1.0 + background_change * rng.uniform(-1, 1)
        slope = background_change * rng.uniform(-1, 1)
        t = (tt - tt.min()) / np.ptp(tt)
        bg = level * scale * (1.0 + 2.0 * np.exp(-t * 5.0) + slope * (t - 0.5))
        if effects is not None:
            bg = lab.background_of(tt, bg, effects["background"][i])
        out[i] = rng.poisson(np.maximum(y + bg, 0.0))
    coords = {
        "pattern": np.arange(x.size),
        "two_theta": tt,
        "composition": ("pattern", x),
        "lattice_parameter": ("pattern", a_of_x),
    }
    if kind == "two_phase":
        coords["phase_fraction"] = ("pattern", fraction)
    if effects is not None:
        for name in ("displacement", "zero_shift"):
            coords[name] = ("pattern", effects[name])
    return xr.DataArray(
        out,
        dims=("pattern", "two_theta"),
        coords=coords,
        name="intensity",
        attrs={
            "description": f"pymatgen XRDCalculator {kind} series {a_el}(1-x){b_el}(x)",
            "units_two_theta": "degree",
            "wavelength": float(calc.wavelength),
        },
    )


def held_out_split(n: int, every: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) of an ordered series: every ``every``-th one held out.

    The first is held out, so is the last when ``n - 1`` is a multiple of ``every``:
    held-out compositions lie inside and at both ends of the range.
    """
    idx = np.arange(n)
    test = idx % every == 0
    return idx[~test], idx[test]
