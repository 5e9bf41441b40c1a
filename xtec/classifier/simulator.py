"""Fast powder X-ray diffraction patterns of many crystals.

Kinematic structure factors with the atomic scattering factors of pymatgen's table
(the one its ``XRDCalculator`` uses, read from the installed package), computed for
all reflections and atoms at once; every reflection of the sphere is enumerated (one
Friedel half, doubled), so multiplicities come out of the enumeration itself.
Intensities get the Lorentz-polarisation factor and no Debye-Waller factor.

Peaks are Gaussians of Scherrer width.  In ``u = sin(theta)`` the Scherrer width
``K lambda / (2 L)`` is the same for every reflection, so a batch of patterns is
rendered by depositing the reflections on a fine ``u`` grid and convolving every row
with its own Gaussian in one batched FFT, then resampling onto the 2-theta grid.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from xtec.errors import ParameterError, XtecError

log = logging.getLogger(__name__)

CU_KA1 = 1.5406
_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


@functools.lru_cache(maxsize=1)
def scattering_table() -> tuple[np.ndarray, np.ndarray]:
    """Form-factor coefficients indexed by atomic number.

    Returns ``coeffs`` (95, 4, 2) holding (a_k, b_k) of
    ``f(s) = Z - 41.78214 s^2 sum_k a_k exp(-b_k s^2)`` and ``known`` (95,) bool.
    """
    spec = find_spec("pymatgen")
    if spec is None or not spec.submodule_search_locations:
        raise XtecError(
            "the classifier needs pymatgen's scattering table: pip install 'xtec[classify]'"
        )
    path = (
        Path(next(iter(spec.submodule_search_locations)))
        / "analysis/diffraction/atomic_scattering_params.json"
    )
    table = json.loads(path.read_text())
    from ase.data import atomic_numbers

    coeffs = np.zeros((95, 4, 2))
    known = np.zeros(95, bool)
    for sym, c in table.items():
        z = atomic_numbers.get(sym)
        if z is not None and z < 95:
            coeffs[z, : len(c)] = c
            known[z] = True
    return coeffs, known


def form_factors(numbers: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """Atomic scattering factors, shape (n_elements, n_reflections), at ``s2 = (sin(theta)/lambda)^2``."""
    coeffs, known = scattering_table()
    numbers = np.asarray(numbers)
    outside = (numbers < 0) | (numbers >= len(known))
    if outside.any():
        raise ParameterError(
            f"no X-ray form factors for atomic numbers {sorted(set(numbers[outside].tolist()))}"
        )
    if not known[numbers].all():
        missing = sorted(set(numbers[~known[numbers]].tolist()))
        raise ParameterError(f"no X-ray form factors for atomic numbers {missing}")
    c = coeffs[numbers]  # (E, 4, 2)
    gauss = np.einsum("ek,ekm->em", c[:, :, 0], np.exp(-c[:, :, 1, None] * s2[None, None, :]))
    return numbers[:, None] - 41.78214 * s2[None, :] * gauss


def reflections(lattice: np.ndarray, g_min: float, g_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Miller indices (M, 3) of one Friedel half of ``g_min <= |g| <= g_max``, and |g| (M,).

    ``g = h a* + k b* + l c*`` in 1/angstrom without the 2 pi.
    """
    recip = np.linalg.inv(lattice).T  # rows a*, b*, c*
    # |h| <= g_max |a| because h = g . a.
    hmax = np.floor(g_max * np.linalg.norm(lattice, axis=1)).astype(int)
    h = np.arange(0, hmax[0] + 1)
    k = np.arange(-hmax[1], hmax[1] + 1)
    ell = np.arange(-hmax[2], hmax[2] + 1)
    hkl = np.stack(np.meshgrid(h, k, ell, indexing="ij"), -1).reshape(-1, 3)
    hh, kk, ll = hkl.T
    half = (hh > 0) | ((hh == 0) & (kk > 0)) | ((hh == 0) & (kk == 0) & (ll > 0))
    hkl = hkl[half]
    g = np.linalg.norm(hkl @ recip, axis=1)
    keep = (g >= g_min) & (g <= g_max)
    return hkl[keep], g[keep]


def equivalent_classes(hkl: np.ndarray, rotations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group reflections that symmetry makes equally intense.

    ``|F(h R)| = |F(h)|`` for every rotation R of the space group (and Friedel's law adds
    -h), so one structure factor per class suffices.  Returns the index (K,) of one
    representative per class and the class sizes (K,).
    """
    ops = np.asarray(rotations, dtype=float)
    # Float matmul (BLAS) is much faster than integer einsum; the values are small integers.
    img = np.rint(hkl.astype(float)[None] @ ops).astype(np.int64)  # (O, M, 3) row vectors h R
    span = int(np.abs(img).max()) + 1
    base = 2 * span + 1
    code = ((img[..., 0] + span) * base + (img[..., 1] + span)) * base + (img[..., 2] + span)
    neg = ((span - img[..., 0]) * base + (span - img[..., 1])) * base + (span - img[..., 2])
    key = np.maximum(code.max(axis=0), neg.max(axis=0))
    _, first, counts = np.unique(key, return_index=True, return_counts=True)
    return first, counts


def reflection_intensities(
    crystal,
    wavelength: float,
    two_theta_range: tuple[float, float],
    dtype=np.float64,
    return_hkl: bool = False,
):
    """Two-theta (deg) and Lorentz-polarised intensities |F|^2 LP of the reflections.

    Returns two arrays of shape (M,).  Without ``crystal.rotations`` there is one entry
    per reflection of a Friedel half-sphere (intensity doubled for the mate); with
    them one entry per class of equivalent reflections, intensity times class size.
    ``dtype=np.float32`` computes the phase factors in single precision (faster; the
    phases are reduced modulo 1 first so that nothing is lost to large arguments).
    ``return_hkl`` adds the Miller indices (M, 3) as a third array.
    """
    lo, hi = two_theta_range
    g_min = 2 * np.sin(np.radians(lo / 2)) / wavelength
    g_max = 2 * np.sin(np.radians(hi / 2)) / wavelength
    hkl, g = reflections(crystal.lattice, g_min, g_max)
    if len(g) == 0:
        return (np.zeros(0), np.zeros(0)) + ((np.zeros((0, 3), int),) if return_hkl else ())
    counts = np.ones(len(g))
    if getattr(crystal, "rotations", None) is not None:
        first, counts = equivalent_classes(hkl, crystal.rotations)
        hkl, g = hkl[first], g[first]
    s2 = (g / 2) ** 2
    elements, inverse = np.unique(crystal.numbers, return_inverse=True)
    f = form_factors(elements, s2)  # (E, M)
    # Occupancy-weighted one-hot of atoms to elements: the phase sums become one matmul.
    w = np.zeros((len(crystal.numbers), len(elements)), dtype=dtype)
    w[np.arange(len(crystal.numbers)), inverse] = crystal.occupancies
    phase = hkl @ crystal.frac_coords.T  # (M, N), in turns
    phase = (2 * np.pi * (phase - np.round(phase))).astype(dtype, copy=False)
    re = np.einsum("me,em->m", np.cos(phase) @ w, f)
    im = np.einsum("me,em->m", np.sin(phase) @ w, f)
    theta = np.arcsin(np.clip(wavelength * g / 2, -1, 1))
    lp = (1 + np.cos(2 * theta) ** 2) / (np.sin(theta) ** 2 * np.cos(theta))
    out = np.degrees(2 * theta), 2 * counts * (re**2 + im**2) * lp
    return out + (hkl,) if return_hkl else out


def peak_list(crystal, wavelength: float = CU_KA1, two_theta_range=(5.0, 90.0), tol: float = 1e-5):
    """Merged peak positions (deg) and intensities scaled to a maximum of 100.

    Reflections closer than ``tol`` degrees are summed (as pymatgen does).
    """
    tt, inten = reflection_intensities(crystal, wavelength, two_theta_range)
    if len(tt) == 0:
        return tt, inten
    key = np.round(tt / tol).astype(np.int64)
    uniq, inv = np.unique(key, return_inverse=True)
    summed = np.bincount(inv, weights=inten)
    pos = np.zeros(len(uniq))
    pos[inv] = tt  # any member's position; they agree to tol
    return pos, 100 * summed / summed.max()


@dataclass(frozen=True)
class PatternGrid:
    """The 2-theta grid of simulated and model patterns."""

    two_theta_min: float = 5.0
    two_theta_max: float = 90.0
    n_points: int = 8501
    wavelength: float = CU_KA1

    def __post_init__(self) -> None:
        if not 0 < self.two_theta_min < self.two_theta_max < 180:
            raise ParameterError("need 0 < two_theta_min < two_theta_max < 180")
        if self.n_points < 16:
            raise ParameterError("n_points must be at least 16")
        if not 0.1 < self.wavelength < 10:
            raise ParameterError("wavelength must be in angstrom, between 0.1 and 10")

    @property
    def two_theta(self) -> np.ndarray:
        return np.linspace(self.two_theta_min, self.two_theta_max, self.n_points)


class PowderSimulator:
    """Powder patterns of crystals on a fixed 2-theta grid, normalised and sqrt-scaled.

    Parameters
    ----------
    grid : PatternGrid
        Output grid (default Cu K-alpha1, 5..90 deg, 8501 points).
    crystallite_size : (float, float)
        Range (nm) of the crystallite size L, drawn uniformly per pattern.
    scherrer_k : float
        Scherrer shape factor K.
    n_fine : int
        Points of the internal sin(theta) grid (a power of two keeps the FFT fast).
    sqrt_scale : bool
        Return sqrt of the max-normalised intensity (as in the paper).
    precision : {"single", "double"}
        Floating-point precision of the phase factors.
    seed : int or numpy Generator, optional
    """

    def __init__(
        self,
        grid: PatternGrid | None = None,
        crystallite_size: tuple[float, float] = (20.0, 100.0),
        scherrer_k: float = 0.9,
        n_fine: int = 32768,
        sqrt_scale: bool = True,
        precision: str = "single",
        seed=None,
    ) -> None:
        if precision not in ("single", "double"):
            raise ParameterError("precision must be 'single' or 'double'")
        self.dtype = np.float32 if precision == "single" else np.float64
        self.grid = grid or PatternGrid()
        if not 0 < crystallite_size[0] <= crystallite_size[1]:
            raise ParameterError(
                "crystallite_size must be an increasing pair of positive sizes (nm)"
            )
        if scherrer_k <= 0 or n_fine < 1024:
            raise ParameterError("scherrer_k must be positive and n_fine at least 1024")
        self.crystallite_size = tuple(crystallite_size)
        self.scherrer_k = float(scherrer_k)
        self.sqrt_scale = bool(sqrt_scale)
        self.rng = np.random.default_rng(seed)
        g = self.grid
        # The fine grid extends past the output range so that tails of edge peaks count.
        margin = 1.5
        self._tt_range = (max(g.two_theta_min - margin, 0.5), min(g.two_theta_max + margin, 179.0))
        self._u0, u1 = np.sin(np.radians(np.array(self._tt_range) / 2))
        self._du = (u1 - self._u0) / (n_fine - 1)
        self._n_fine = int(n_fine)
        # Resampling weights from the fine u grid to the 2-theta grid, and the Jacobian
        # du / d(2theta) that turns density in u into density in 2-theta.
        theta = np.radians(g.two_theta / 2)
        pos = (np.sin(theta) - self._u0) / self._du
        self._i0 = np.floor(pos).astype(int)
        self._w1 = pos - self._i0
        self._jac = np.cos(theta) / 2
        self._freq = np.fft.rfftfreq(self._n_fine, d=self._du)

    def simulate(self, crystals, crystallite_sizes=None) -> np.ndarray:
        """Patterns of a batch of crystals, shape (n_crystals, n_points), float32.

        ``crystallite_sizes`` (nm, shape (n_crystals,)) are drawn at random if None.
        """
        crystals = list(crystals)
        n = len(crystals)
        if crystallite_sizes is None:
            crystallite_sizes = self.rng.uniform(*self.crystallite_size, n)
        sizes = np.asarray(crystallite_sizes, dtype=float).reshape(-1)
        if sizes.shape != (n,) or np.any(sizes <= 0):
            raise ParameterError("crystallite_sizes must be one positive size (nm) per crystal")
        fine = np.zeros((n, self._n_fine))
        for row, c in enumerate(crystals):
            tt, inten = reflection_intensities(c, self.grid.wavelength, self._tt_range, self.dtype)
            pos = (np.sin(np.radians(tt / 2)) - self._u0) / self._du
            i0 = np.clip(np.floor(pos).astype(int), 0, self._n_fine - 2)
            w1 = pos - i0
            # Linear deposit keeps each peak's sub-bin position.
            fine[row] += np.bincount(i0, inten * (1 - w1), self._n_fine)
            fine[row] += np.bincount(i0 + 1, inten * w1, self._n_fine)
        # Scherrer: FWHM in u is K lambda / (2 L), the same for every peak of a pattern.
        sigma_u = self.scherrer_k * self.grid.wavelength / (2 * sizes * 10.0) * _FWHM_TO_SIGMA
        kernel = np.exp(-2 * (np.pi * sigma_u[:, None] * self._freq[None, :]) ** 2)
        dens = np.fft.irfft(np.fft.rfft(fine, axis=1) * kernel, n=self._n_fine, axis=1)
        out = (dens[:, self._i0] * (1 - self._w1) + dens[:, self._i0 + 1] * self._w1) * self._jac
        return normalise(out, self.sqrt_scale)

    def simulate_one(self, crystal, crystallite_size: float | None = None) -> np.ndarray:
        sizes = None if crystallite_size is None else [crystallite_size]
        return self.simulate([crystal], sizes)[0]


def normalise(patterns: np.ndarray, sqrt_scale: bool = True) -> np.ndarray:
    """Scale each row (..., n_points) to a maximum of 1 (clip negatives) and optionally sqrt."""
    p = np.clip(np.asarray(patterns, dtype=float), 0, None)
    peak = p.max(axis=-1, keepdims=True)
    p = np.divide(p, peak, out=np.zeros_like(p), where=peak > 0)
    if sqrt_scale:
        p = np.sqrt(p)
    return p.astype(np.float32)
