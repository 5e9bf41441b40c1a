"""Space groups from a powder pattern by indexing and systematic absences.

The classical crystallographer's route, made automatic: find the peaks, index them
(find a unit cell whose reciprocal metric puts a reflection at every observed line),
compare the lines each space-group setting allows with the lines observed, and rank the
space groups by that likelihood times their frequency in real crystals (a table counted
from real structures, :mod:`xtec.classifier.statistics`).

* Peaks: local maxima of the intensity above ``threshold`` of the strongest, positions
  refined by a parabola through the log-intensity (exact for Gaussian peaks).
* Indexing: for cubic, tetragonal, hexagonal (trigonal groups use hexagonal axes) and
  orthorhombic cells, trial cells are solved from a few low-angle lines assigned low
  Miller indices (the linear method of TREOR/ITO), kept if they index the first lines,
  refined by least squares and scored.  Monoclinic and triclinic cells are not indexed
  (four and six parameters are too many trials for this budget); those groups get a
  fixed "no cell needed" likelihood, so they win when no higher-symmetry cell explains
  the pattern.
* Extinctions: a reflection h is absent in a setting when an operation (R, t) of the
  setting has ``h R = h`` and ``h . t`` not an integer.  All settings (spglib's Hall
  numbers, hexagonal axes for R groups) are tried, so axis order does not matter.
* Likelihood: each allowed line is seen with probability ``1 - p_miss`` (weak or
  overlapped lines go missing), each observed line that no allowed reflection explains
  costs ``log p_unexplained``, and each free cell parameter costs ``occam`` nats so that
  a lower-symmetry cell that fits only as well as a higher one loses.

Space groups that share a lattice and an extinction symbol (e.g. P2/m, P2 and Pm, or
Pnma and Pna2_1) cannot be told apart by line positions; the frequency prior orders
them, which is also what a crystallographer does.
"""

from __future__ import annotations

import functools
import itertools
import logging
from dataclasses import dataclass

import numpy as np

from xtec.classifier.symmetry import CRYSTAL_SYSTEMS, crystal_system_index
from xtec.errors import InputError, ParameterError

log = logging.getLogger(__name__)

# Indexed systems, highest symmetry first, with their number of cell parameters.
INDEXED_SYSTEMS = {"cubic": 1, "hexagonal": 2, "tetragonal": 2, "orthorhombic": 3}


def _basis(system: str, hkl: np.ndarray) -> np.ndarray:
    """Reciprocal-metric basis functions (M, p): ``Q = 1/d^2 = basis @ params``."""
    h, k, ell = (hkl[:, i].astype(float) for i in range(3))
    if system == "cubic":
        return (h * h + k * k + ell * ell)[:, None]
    if system == "tetragonal":
        return np.stack([h * h + k * k, ell * ell], 1)
    if system == "hexagonal":
        return np.stack([h * h + h * k + k * k, ell * ell], 1)
    if system == "orthorhombic":
        return np.stack([h * h, k * k, ell * ell], 1)
    raise ParameterError(f"no indexing basis for {system}")


def _hkl_grid(n: int) -> np.ndarray:
    r = np.arange(-n, n + 1)
    hkl = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    return hkl[np.any(hkl != 0, axis=1)]


@functools.cache
def _settings(system: str) -> tuple[tuple[int, np.ndarray, np.ndarray], ...]:
    """(space group, rotations, translations) of every spglib setting of a system.

    Trigonal and hexagonal groups are both tried on hexagonal cells (rhombohedral
    groups in their hexagonal setting).
    """
    import spglib

    systems = ("trigonal", "hexagonal") if system == "hexagonal" else (system,)
    out = []
    for hall in range(1, 531):
        t = spglib.get_spacegroup_type(hall)
        if CRYSTAL_SYSTEMS[crystal_system_index(t.number)] not in systems or t.choice == "R":
            continue
        sym = spglib.get_symmetry_from_database(hall)
        out.append((int(t.number), np.asarray(sym["rotations"]), np.asarray(sym["translations"])))
    return tuple(out)


def allowed_mask(hkl: np.ndarray, rotations: np.ndarray, translations: np.ndarray) -> np.ndarray:
    """True where reflection ``hkl`` (M, 3) is not systematically absent, shape (M,)."""
    ok = np.ones(len(hkl), bool)
    for r, t in zip(rotations, translations, strict=True):
        fixed = np.all(hkl @ r == hkl, axis=1)
        phase = hkl @ t
        ok &= ~(fixed & (np.abs(phase - np.round(phase)) > 1e-6))
    return ok


@functools.cache
def _extinction_classes(system: str, n: int):
    """Distinct absence patterns of a system on the hkl grid of size ``n``.

    Returns the grid (M, 3), the masks (C, M) and for every class the space groups
    (a tuple of sorted numbers) whose settings produce it.
    """
    hkl = _hkl_grid(n)
    small = _hkl_grid(6)  # every reflection condition (up to 6n) shows on this grid
    classes: dict[bytes, tuple[int, set]] = {}
    settings = _settings(system)
    for i, (sg, rot, tr) in enumerate(settings):
        key = np.packbits(allowed_mask(small, rot, tr)).tobytes()
        classes.setdefault(key, (i, set()))[1].add(sg)
    ms = np.array([allowed_mask(hkl, *settings[i][1:]) for i, _ in classes.values()])
    groups = tuple(tuple(sorted(v[1])) for v in classes.values())
    return hkl, ms, groups


@dataclass
class Peaks:
    """Observed lines: 2-theta (deg), Q = 1/d^2 (1/A^2), tolerance in Q and intensity."""

    two_theta: np.ndarray
    q: np.ndarray
    tol: np.ndarray
    intensity: np.ndarray


def find_peaks(
    two_theta: np.ndarray,
    intensity: np.ndarray,
    wavelength: float = 1.5406,
    threshold: float = 0.002,
    tol_two_theta: float = 0.03,
    max_peaks: int = 20,
) -> Peaks:
    """The first ``max_peaks`` lines above ``threshold`` x the strongest (sorted by angle).

    ``intensity`` is linear (not square-root scaled).  Tolerances are ``tol_two_theta``
    degrees turned into Q.
    """
    x = np.asarray(two_theta, float)
    y = np.clip(np.asarray(intensity, float), 0, None)
    if x.ndim != 1 or x.shape != y.shape or len(x) < 5:
        raise InputError("a pattern needs matching 2-theta and intensity arrays of >= 5 points")
    top = y.max()
    if not np.isfinite(top) or top <= 0:
        raise InputError("the pattern is empty (no positive intensity)")
    i = np.flatnonzero((y[1:-1] > y[:-2]) & (y[1:-1] >= y[2:]) & (y[1:-1] > threshold * top)) + 1
    # Parabola through log-intensity: exact vertex for a Gaussian.
    lm, l0, lp = (np.log(np.maximum(y[j], 1e-300)) for j in (i - 1, i, i + 1))
    den = lm - 2 * l0 + lp
    shift = np.where(den < 0, 0.5 * (lm - lp) / np.where(den < 0, den, -1), 0.0)
    step = np.gradient(x)[i]
    tt = x[i] + np.clip(shift, -0.5, 0.5) * step
    tt, inten = tt[:max_peaks], y[i][:max_peaks] / top
    theta = np.radians(tt / 2)
    q = (2 * np.sin(theta) / wavelength) ** 2
    tol = 2 * np.sin(2 * theta) / wavelength**2 * np.radians(tol_two_theta)
    return Peaks(tt, q, tol, inten)


def _trial_cells(system: str, q: np.ndarray, n_lines: int, max_index: int) -> np.ndarray:
    """Cell parameters (n, p) solved from low lines assigned low Miller indices."""
    p = INDEXED_SYSTEMS[system]
    lines = q[:n_lines]
    f = np.unique(_basis(system, _hkl_grid(max_index)), axis=0)
    f = f[np.any(f != 0, axis=1)]
    if p == 1:
        return (lines[:, None] / f[None, :, 0]).reshape(-1, 1)
    sols = []
    # The lowest line is (nearly always) one of the basis reflections: TREOR's rule.
    combos = np.array([c for c in itertools.combinations(range(len(lines)), p) if c[0] == 0])
    tuples = np.array(list(itertools.permutations(range(len(f)), p)))
    mats = f[tuples]  # (T, p, p)
    if system == "orthorhombic":
        # Permuting the axes of every assigned index permutes the solution; the solutions
        # are sorted below, so one assignment per set of axis permutations suffices.
        perms = np.array(list(itertools.permutations(range(3))))
        keys = np.stack([mats[:, :, q].reshape(len(mats), -1) for q in perms], 1)
        flat = keys.astype(np.int64) @ (8 ** np.arange(9))[::-1]
        _, first = np.unique(flat.min(1), return_index=True)
        mats = mats[np.sort(first)]
    det = np.linalg.det(mats)
    mats = mats[np.abs(det) > 1e-9]
    for c in combos:
        rhs = np.broadcast_to(lines[c], (len(mats), p))
        sols.append(np.linalg.solve(mats, rhs[..., None])[..., 0])
    s = np.concatenate(sols)
    # Physical cells: every axis between 1.5 and 40 angstrom.
    s = s[np.all((s > 1 / 1600) & (s < 0.45), axis=1)]
    if system == "orthorhombic":
        s = np.sort(s, axis=1)  # every axis order is among the settings tried later
    key = np.round(np.log(s) * 2000).astype(np.int64)
    _, first = np.unique(key, axis=0, return_index=True)
    return s[np.sort(first)]


def _explained(calc: np.ndarray, q: np.ndarray, tol: np.ndarray) -> np.ndarray:
    """(n_cells, n_lines) bool: a calculated line (n_cells, M) lies within tol of each line."""
    out = np.zeros((len(calc), len(q)), bool)
    for j in range(len(q)):
        out[:, j] = (np.abs(calc - q[j]) <= tol[j]).any(1)
    return out


def _refine(system: str, params: np.ndarray, peaks: Peaks, hkl: np.ndarray) -> np.ndarray:
    """Least-squares cell parameters from the lines the cell indexes (two passes)."""
    f = _basis(system, hkl)
    for _ in range(2):
        calc = f @ params
        d = np.abs(calc[None, :] - peaks.q[:, None])
        best = d.argmin(1)
        ok = d[np.arange(len(peaks.q)), best] <= 2 * peaks.tol
        if ok.sum() < len(params) + 1:
            break
        w = 1 / peaks.tol[ok]
        sol, *_ = np.linalg.lstsq(f[best[ok]] * w[:, None], peaks.q[ok] * w, rcond=None)
        if np.all(sol > 0):
            params = sol
    return params


def index_cells(system: str, peaks: Peaks, keep: int = 4) -> list[np.ndarray]:
    """Best few cells (parameter vectors) of ``system`` for the observed lines."""
    n_obs = len(peaks.q)
    p = INDEXED_SYSTEMS[system]
    if n_obs < p + 1:
        return []
    n_lines = {1: 3, 2: 6, 3: 6}[p]
    max_index = {1: 4, 2: 3, 3: 2}[p]
    cells = _trial_cells(system, peaks.q, min(n_lines, n_obs), max_index)
    if len(cells) == 0:
        return []

    def half_grid(n, n_l=None):
        hkl = _hkl_grid(max(n, n_l or n))
        hkl = hkl[np.all(np.abs(hkl[:, :2]) <= n, axis=1) & (np.abs(hkl[:, 2]) <= (n_l or n))]
        if system != "hexagonal":
            return hkl[np.all(hkl >= 0, axis=1)]
        return hkl[hkl[:, 2] >= 0]

    # Low lines have low indices: screen with indices up to 5, refine with more.
    # (Long c axes, as in rhombohedral cells on hexagonal axes, get l up to 10.)
    f = np.unique(_basis(system, half_grid(5, 10 if p == 2 else 5)), axis=0)
    f = f.astype(np.float32)
    cells32 = cells.astype(np.float32)
    # Screen on the first ten lines, widened tolerance (trial cells are not refined yet);
    # line by line, dropping a cell at its second unexplained line (most fail at once).
    n_screen = min(10, n_obs)
    misses = np.zeros(len(cells), int)
    alive = np.arange(len(cells))
    calc = cells32 @ f.T
    for j in range(n_screen):
        hit = (np.abs(calc - np.float32(peaks.q[j])) <= np.float32(3 * peaks.tol[j])).any(1)
        misses[alive[~hit]] += 1
        ok = misses[alive] <= 1
        alive, calc = alive[ok], calc[ok]
        if len(alive) == 0:
            return []
    good = np.zeros(len(cells), bool)
    good[alive] = True
    cand = cells[good]
    # Fewest calculated lines up to the last observed one: the smallest cell that indexes.
    n_calc = ((cand @ f.T) <= peaks.q[-1] + peaks.tol[-1]).sum(1)
    order = np.argsort(n_calc, kind="stable")[: 2 * keep]
    hkl = half_grid(int(min(12, np.ceil(np.sqrt(peaks.q[-1] / cand[order].min())) + 1)))
    out = []
    for params in cand[order]:
        r = _refine(system, params, peaks, hkl)
        if not any(np.allclose(r, o, rtol=1e-4) for o in out):
            out.append(r)
    return out[:keep]


def _line_likelihood(
    calc_q: np.ndarray, peaks: Peaks, p_miss: float, p_unexplained: float
) -> float:
    """Log-likelihood of the observed lines given the allowed lines ``calc_q``."""
    q, tol = peaks.q, peaks.tol
    qmax = q[-1] + tol[-1]
    c = np.sort(calc_q[calc_q <= qmax])
    if len(c) == 0:
        return len(q) * np.log(p_unexplained)
    # Merge calculated lines closer than the tolerance at their position.
    tol_c = np.interp(c, q, tol)
    new = np.concatenate([[True], np.diff(c) > tol_c[1:]])
    lines = c[new]
    ltol = tol_c[new]
    d = np.abs(lines[:, None] - q[None, :])
    seen = (d <= np.maximum(ltol[:, None], tol[None, :])).any(1)
    explained = (d <= np.maximum(ltol[:, None], tol[None, :])).any(0)
    return float(
        seen.sum() * np.log(1 - p_miss)
        + (~seen).sum() * np.log(p_miss)
        + (~explained).sum() * np.log(p_unexplained)
    )


@dataclass
class ExtinctionParams:
    """Tunable constants of :class:`ExtinctionClassifier` (saved with the model)."""

    threshold: float = 0.002
    tol_two_theta: float = 0.03
    max_peaks: int = 20
    p_miss: float = 0.3
    p_unexplained: float = 1e-3
    occam: float = 3.0
    # Expected log-likelihood per observed line of an unindexed (monoclinic/triclinic) cell.
    low_symmetry_per_line: float = -1.2


class ExtinctionClassifier:
    """Ranks the 230 space groups of a powder pattern: indexing x extinctions x prior.

    Parameters
    ----------
    prior : ndarray, shape (230,)
        Probabilities of space groups 1..230 (e.g. counted from real structures).
    params : ExtinctionParams, optional
    wavelength : float
        Angstrom (Cu K-alpha1 by default).
    """

    space_groups = np.arange(1, 231)

    def __init__(self, prior, params: ExtinctionParams | None = None, wavelength: float = 1.5406):
        prior = np.asarray(prior, float)
        if prior.shape != (230,) or np.any(prior < 0) or prior.sum() <= 0:
            raise ParameterError("prior must hold 230 non-negative numbers with a positive sum")
        self.log_prior = np.log(np.maximum(prior / prior.sum(), 1e-12))
        self.params = params or ExtinctionParams()
        self.wavelength = float(wavelength)

    def log_scores(self, two_theta: np.ndarray, intensity: np.ndarray) -> np.ndarray:
        """Unnormalised log-probabilities of space groups 1..230, shape (230,)."""
        pr = self.params
        peaks = find_peaks(
            two_theta, intensity, self.wavelength, pr.threshold, pr.tol_two_theta, pr.max_peaks
        )
        n_obs = len(peaks.q)
        sg_ll = np.full(230, -np.inf)
        sys_idx = np.asarray(crystal_system_index(self.space_groups))
        low = np.isin(
            sys_idx, [CRYSTAL_SYSTEMS.index("triclinic"), CRYSTAL_SYSTEMS.index("monoclinic")]
        )
        sg_ll[low] = pr.low_symmetry_per_line * n_obs - pr.occam * 4
        # All lines explained, at most a third of the allowed lines missing.
        full_fit = n_obs * np.log(1 - pr.p_miss) + n_obs / 2 * np.log(pr.p_miss) - pr.occam * 2
        best = -np.inf
        if n_obs >= 2:
            for system, n_par in INDEXED_SYSTEMS.items():
                if best > full_fit:
                    # A higher-symmetry cell already explains every line: a lower one
                    # could only match it, and it pays for its extra parameters.
                    break
                hkl, masks, groups = _extinction_classes(system, 10 if n_par > 1 else 14)
                basis = _basis(system, hkl)
                for params in index_cells(system, peaks):
                    calc = basis @ params
                    for m, sgs in zip(masks, groups, strict=True):
                        ll = _line_likelihood(calc[m], peaks, pr.p_miss, pr.p_unexplained)
                        ll -= pr.occam * n_par
                        idx = np.asarray(sgs) - 1
                        sg_ll[idx] = np.maximum(sg_ll[idx], ll)
                        best = max(best, ll)
        if not np.isfinite(sg_ll).any():
            sg_ll[:] = 0.0
        return np.where(np.isfinite(sg_ll), sg_ll, -1e6) + self.log_prior

    def predict_proba(self, two_theta: np.ndarray, intensity: np.ndarray) -> np.ndarray:
        """Space-group probabilities (230,) of one pattern (linear intensity)."""
        s = self.log_scores(two_theta, intensity)
        s = np.exp(s - s.max())
        return s / s.sum()

    def predict_proba_many(self, two_theta: np.ndarray, patterns: np.ndarray) -> np.ndarray:
        """Probabilities (n, 230) of patterns (n, n_points) sharing one 2-theta grid."""
        return np.array([self.predict_proba(two_theta, p) for p in np.atleast_2d(patterns)])
