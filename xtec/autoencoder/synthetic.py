"""Synthetic series with ground truth for the autoencoders (NumPy only).

* :func:`synthetic_alloy_series`: powder patterns of a B2 alloy A(1-x)B(x)
  (Vegard's law, site order), with :func:`reflection_positions` for its peaks;
* :func:`synthetic_spectra` and :func:`synthetic_exafs_xanes`: XANES-like
  spectra whose shapes follow known descriptors.

Every generator returns a 2-D :class:`xarray.DataArray` in the layout of
:mod:`xtec.io.curves` (dims :data:`~xtec.io.curves.DIMS`), so what it makes can
be written with :func:`~xtec.io.curves.save_curves`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from xtec.errors import ParameterError
from xtec.io.curves import DIMS


def _cubic_reflections(two_theta_max: float, wavelength: float, a_min: float, hmax: int = 8):
    rng = np.arange(-hmax, hmax + 1)
    h, k, l = (g.ravel() for g in np.meshgrid(rng, rng, rng, indexing="ij"))  # noqa: E741
    keep = (h != 0) | (k != 0) | (l != 0)
    h, k, l = h[keep], k[keep], l[keep]  # noqa: E741
    # Keep every reflection that can fall inside the range for the smallest cell.
    s_max = np.sin(np.radians(two_theta_max / 2)) / wavelength
    g2 = h**2 + k**2 + l**2
    keep = np.sqrt(g2) / (2 * a_min) <= s_max * 1.02
    return h[keep], k[keep], l[keep]  # noqa: E741


def _form_factor(z: float, s: np.ndarray) -> np.ndarray:
    # A one-Gaussian stand-in for the tabulated atomic form factor: what matters
    # here is that it falls with sin(theta)/lambda and scales with Z.
    return z * (0.25 + 0.75 * np.exp(-10.0 * s**2))


def synthetic_alloy_series(
    n_patterns: int = 150,
    *,
    composition: Sequence[float] | np.ndarray | None = None,
    composition_range: tuple[float, float] = (0.0, 1.0),
    two_theta: np.ndarray | None = None,
    lattice: tuple[float, float] = (2.87, 3.01),
    z: tuple[float, float] = (26.0, 45.0),
    order: float = 0.8,
    wavelength: float = 1.5406,
    caglioti: tuple[float, float, float] = (0.04, -0.02, 0.04),
    size_broadening: float = 0.08,
    size_spread: float = 0.2,
    eta: float = 0.5,
    noise: float = 0.01,
    background: float = 0.02,
    seed: int | None = 0,
) -> xr.DataArray:
    """Simulate powder XRD of a B2 (CsCl-type) solid solution A(1-x)B(x).

    Physics kept, in the order it enters:

    * Vegard's law: cubic lattice parameter ``a(x) = a_A + (a_B - a_A) x``, so every
      peak shifts with composition, the high-angle ones most.
    * Site occupancies: B prefers the body-centre site; with long-range order
      ``order`` the B occupancies are ``p_beta = x + order*min(x, 1-x)`` and
      ``p_alpha = 2x - p_beta``.  Fundamental reflections (h+k+l even) scale as
      the mean scattering factor; superlattice reflections (h+k+l odd) as
      ``(p_beta - p_alpha)(f_B - f_A)``, so their relative intensity carries the
      composition even when the lattice parameter does not change.
    * Lorentz-polarisation factor, pseudo-Voigt peaks with a Caglioti width
      ``sqrt(U tan^2 + V tan + W)`` plus a random per-pattern size term
      (Scherrer-like, ``1/cos(theta)``), a decaying background and Gaussian noise
      of relative size ``noise``.

    Each pattern is scaled to a maximum of 1 before noise, as measured patterns
    usually are.

    Parameters
    ----------
    n_patterns
        Number of patterns; ignored when ``composition`` is given.
    composition
        Explicit B fractions, shape (n_patterns,); otherwise drawn uniformly from
        ``composition_range``.
    two_theta
        Grid in degrees, shape (n_grid,); default 20..100 deg in 0.05 deg steps.
    lattice, z
        Lattice parameters (angstrom) and atomic numbers of pure A and pure B.
        Equal lattice parameters switch Vegard's shifts off.
    order
        Long-range order in [0, 1]; 0 gives a random solid solution.
    seed
        Seed of the NumPy generator; the same seed gives the same series.

    Returns
    -------
    DataArray of shape (n_patterns, n_grid), dims ``("pattern", "two_theta")``,
    coordinates ``composition`` and ``lattice_parameter`` along ``pattern``.
    """
    rng = np.random.default_rng(seed)
    if composition is None:
        if n_patterns < 1:
            raise ParameterError(f"n_patterns must be at least 1, not {n_patterns}")
        lo, hi = composition_range
        if not 0.0 <= lo < hi <= 1.0:
            raise ParameterError(
                f"composition_range must satisfy 0 <= lo < hi <= 1, not {composition_range}"
            )
        x = np.sort(rng.uniform(lo, hi, n_patterns))
    else:
        x = np.asarray(composition, dtype=float).ravel()
        if x.size == 0 or np.any((x < 0) | (x > 1)):
            raise ParameterError("compositions must lie in [0, 1]")
    if not 0.0 <= order <= 1.0:
        raise ParameterError(f"order must lie in [0, 1], not {order}")
    if two_theta is None:
        two_theta = np.round(np.arange(20.0, 100.0 + 1e-9, 0.05), 6)
    tt = np.asarray(two_theta, dtype=float)
    h, k, l = _cubic_reflections(tt.max(), wavelength, min(lattice))  # noqa: E741
    g = np.sqrt(h**2 + k**2 + l**2)
    odd = (h + k + l) % 2 == 1
    u, v, w = caglioti
    out = np.empty((x.size, tt.size))
    a_of_x = lattice[0] + (lattice[1] - lattice[0]) * x
    for i, (xi, a) in enumerate(zip(x, a_of_x, strict=True)):
        s = g / (2 * a)  # sin(theta)/lambda
        sin_t = s * wavelength
        ok = sin_t < 1
        theta = np.arcsin(np.clip(sin_t, 0, 1))
        p_beta = xi + order * min(xi, 1 - xi)
        p_alpha = 2 * xi - p_beta
        fa, fb = _form_factor(z[0], s), _form_factor(z[1], s)
        f_alpha = (1 - p_alpha) * fa + p_alpha * fb
        f_beta = (1 - p_beta) * fa + p_beta * fb
        f = np.where(odd, f_alpha - f_beta, f_alpha + f_beta)
        lp = (1 + np.cos(2 * theta) ** 2) / (np.sin(theta) ** 2 * np.cos(theta) + 1e-12)
        dw = np.exp(-0.5 * s**2)
        intensity = np.where(ok, f**2 * lp * dw, 0.0)
        centre = np.degrees(2 * theta)
        inside = ok & (centre > tt.min() - 2) & (centre < tt.max() + 2) & (intensity > 0)
        tan_t = np.tan(theta[inside])
        size_term = (
            size_broadening * abs(1 + size_spread * rng.standard_normal()) / np.cos(theta[inside])
        )
        fwhm = np.sqrt(np.maximum(u * tan_t**2 + v * tan_t + w, 1e-6)) + size_term
        d = tt[None, :] - centre[inside, None]
        hw = fwhm[:, None] / 2
        gauss = np.exp(-np.log(2) * (d / hw) ** 2)
        lorentz = 1 / (1 + (d / hw) ** 2)
        y = (intensity[inside, None] * (eta * lorentz + (1 - eta) * gauss)).sum(axis=0)
        y /= y.max()
        bg = background * (1 + 2 * np.exp(-(tt - tt.min()) / 15.0))
        y = y + bg
        y = y + noise * np.sqrt(np.maximum(y, 0)) * rng.standard_normal(tt.size)
        out[i] = y
    return xr.DataArray(
        out,
        dims=DIMS["pattern"],
        coords={
            "pattern": np.arange(x.size),
            "two_theta": tt,
            "composition": ("pattern", x),
            "lattice_parameter": ("pattern", a_of_x),
        },
        name="intensity",
        attrs={
            "description": "synthetic B2 A(1-x)B(x) alloy series (Vegard's law, site order)",
            "units_two_theta": "degree",
            "wavelength": wavelength,
        },
    )


def reflection_positions(
    composition: float,
    *,
    lattice: tuple[float, float] = (2.87, 3.01),
    wavelength: float = 1.5406,
    two_theta_range: tuple[float, float] = (20.0, 100.0),
) -> list[tuple[tuple[int, int, int], float, bool]]:
    """Peak positions of the B2 series at one composition.

    Returns a list of ``((h, k, l), two_theta, is_superlattice)`` for the distinct
    reflection families inside the range, sorted by angle.
    """
    a = lattice[0] + (lattice[1] - lattice[0]) * composition
    h, k, l = _cubic_reflections(two_theta_range[1], wavelength, min(lattice))  # noqa: E741
    seen = {}
    for hh, kk, ll in zip(h, k, l, strict=True):
        key = tuple(
            sorted((abs(int(hh)), abs(int(kk)), abs(int(ll)))),
        )[::-1]
        if key in seen:
            continue
        sin_t = np.sqrt(hh**2 + kk**2 + ll**2) * wavelength / (2 * a)
        if sin_t >= 1:
            continue
        tt = float(np.degrees(2 * np.arcsin(sin_t)))
        if two_theta_range[0] <= tt <= two_theta_range[1]:
            seen[key] = (key, tt, (hh + kk + ll) % 2 == 1)
    return sorted(seen.values(), key=lambda r: r[1])


# --------------------------------------------------------------------------- synthetic spectra

#: Descriptors of :func:`synthetic_spectra`, in order.
SPECTRUM_DESCRIPTORS = ("edge_shift", "white_line", "pre_edge", "bond_length")


def synthetic_spectra(
    n_spectra: int = 2000,
    *,
    energy: np.ndarray | None = None,
    noise: float = 0.005,
    seed: int | None = 0,
) -> xr.DataArray:
    """Simulate XANES-like K-edge spectra whose shape follows known descriptors.

    Four descriptors, drawn independently and uniformly in [0, 1], each drive one
    feature (a stand-in for the local-structure descriptors of the RankAAE study):

    ``edge_shift``
        edge position, +0..6 eV (oxidation-state-like);
    ``white_line``
        height of the main absorption peak just above the edge (coordination-like);
    ``pre_edge``
        intensity of a pre-edge peak 8 eV below the edge (centrosymmetry-like);
    ``bond_length``
        frequency of the post-edge oscillation (an EXAFS-like ``sin(2 k R)``).

    A fifth, undescribed factor (the overall broadening) varies too, so that a
    free latent dimension has something to capture.

    Returns
    -------
    DataArray of shape (n_spectra, n_energy), dims ``("spectrum", "energy")``,
    with one coordinate per descriptor and ``nuisance_broadening`` (not a
    descriptor: the CLI leaves ``nuisance_*`` coordinates unconstrained) along ``spectrum``.
    Energies default to 256 points from -20 to 60 eV relative to the edge.
    """
    if n_spectra < 1:
        raise ParameterError(f"n_spectra must be at least 1, not {n_spectra}")
    rng = np.random.default_rng(seed)
    e = np.linspace(-20.0, 60.0, 256) if energy is None else np.asarray(energy, dtype=float)
    d = rng.uniform(0.0, 1.0, size=(n_spectra, len(SPECTRUM_DESCRIPTORS)))
    broad = rng.uniform(0.0, 1.0, size=n_spectra)
    e0 = 6.0 * d[:, 0:1]
    width = 1.2 + 1.0 * broad[:, None]
    ee = e[None, :] - e0
    from scipy.special import erf

    step = 0.5 * (1 + erf(ee / (width * np.sqrt(2))))
    white = (0.3 + 1.2 * d[:, 1:2]) * np.exp(-0.5 * ((ee - 3.0) / (1.5 * width)) ** 2)
    pre = (0.05 + 0.35 * d[:, 2:3]) * np.exp(-0.5 * ((ee + 8.0) / (0.6 * width)) ** 2)
    k = np.sqrt(np.clip(ee - 5.0, 0, None) / 3.81)  # 1/angstrom for energies in eV
    radius = 1.8 + 0.8 * d[:, 3:4]
    exafs = 0.15 * np.sin(2 * k * radius * 1.9) * np.exp(-0.08 * k**2 * 4) * (ee > 5.0) * step
    mu = step + white + pre + exafs
    mu = mu + noise * rng.standard_normal(mu.shape)
    coords = {
        "spectrum": np.arange(n_spectra),
        "energy": e,
        "nuisance_broadening": ("spectrum", broad),
    }
    for j, name in enumerate(SPECTRUM_DESCRIPTORS):
        coords[name] = ("spectrum", d[:, j])
    return xr.DataArray(
        mu,
        dims=DIMS["spectrum"],
        coords=coords,
        name="absorption",
        attrs={
            "description": "synthetic XANES-like spectra with known descriptors",
            "units_energy": "eV",
        },
    )


#: Descriptors of :func:`synthetic_exafs_xanes`, in order.
EXAFS_DESCRIPTORS = ("coordination", "bond_length", "bond_spread")


def synthetic_exafs_xanes(
    n_spectra: int = 2500,
    *,
    energy: np.ndarray | None = None,
    noise: float = 0.004,
    seed: int | None = 0,
) -> xr.DataArray:
    """Fe K-edge-like spectra from the EXAFS equation of one Fe-O shell.

    A second, differently built generator for judging RankAAE away from
    :func:`synthetic_spectra`.  Three descriptors, drawn independently:
    ``coordination`` N (4-6), mean Fe-O ``bond_length`` R (1.90-2.20 A) and its
    spread ``bond_spread`` sigma (0.02-0.12 A).  Above the edge,
    ``chi(k) = N S0^2 |f(k)| / (k R^2) exp(-2 k^2 sigma^2) exp(-2R/lambda)
    sin(2kR + phi(k))`` with ``k = sqrt(0.2625 (E - E0))``; a shape resonance
    at ``E0 + 150 / R^2`` eV (Natoli's rule) whose height grows with N; a
    pre-edge peak whose intensity falls with N (tetrahedral sites are not
    centrosymmetric).  An undescribed energy-calibration offset (+-0.7 eV,
    ``nuisance_calibration``) varies too.

    Returns
    -------
    DataArray (spectrum, energy), 199 points from -20 to 80 eV by default, with
    the descriptor coordinates and ``nuisance_calibration``.
    """
    from scipy.special import erf

    if n_spectra < 1:
        raise ParameterError(f"n_spectra must be at least 1, not {n_spectra}")
    rng = np.random.default_rng(seed)
    e = np.linspace(-20.0, 80.0, 199) if energy is None else np.asarray(energy, dtype=float)
    cn = rng.uniform(4.0, 6.0, n_spectra)[:, None]
    r = rng.uniform(1.90, 2.20, n_spectra)[:, None]
    sig = rng.uniform(0.02, 0.12, n_spectra)[:, None]
    cal = rng.uniform(-0.7, 0.7, n_spectra)[:, None]
    ee = e[None, :] - cal
    step = 0.5 * (1 + erf(ee / 1.5))
    k = np.sqrt(0.2625 * np.clip(ee, 0.0, None))
    amp = 0.9 * np.exp(-((k - 4.0) ** 2) / 18.0)  # |f(k)| of oxygen, roughly
    phase = -1.2 + 0.25 * k  # phi(k)
    chi = (
        cn
        * 0.8
        * amp
        / (np.maximum(k, 0.3) * r**2)
        * np.exp(-2 * k**2 * sig**2)
        * np.exp(-2 * r / 8.0)
        * np.sin(2 * k * r + phase)
    )
    onset = 0.5 * (1 + erf((ee - 4.0) / 3.0))  # EXAFS grows in past the XANES region
    resonance = 150.0 / r**2
    white = (0.25 * cn / 6.0 + 0.15) * np.exp(-0.5 * ((ee - resonance + 30.0) / 3.0) ** 2)
    pre = 0.25 * (6.0 - cn) / 2.0 * np.exp(-0.5 * ((ee + 12.0) / 0.8) ** 2)
    mu = step * (1 + 0.6 * chi * onset) + white + pre + 0.04
    mu = mu + noise * rng.standard_normal(mu.shape)
    coords = {
        "spectrum": np.arange(n_spectra),
        "energy": e,
        "coordination": ("spectrum", cn[:, 0]),
        "bond_length": ("spectrum", r[:, 0]),
        "bond_spread": ("spectrum", sig[:, 0]),
        "nuisance_calibration": ("spectrum", cal[:, 0]),
    }
    return xr.DataArray(
        mu,
        dims=DIMS["spectrum"],
        coords=coords,
        name="absorption",
        attrs={"description": "Fe K-edge-like spectra, EXAFS equation of one Fe-O shell"},
    )
