"""Indexing a powder pattern: lines, trial cells, refinement, figures of merit.

* Lines of a noise-free pattern (:func:`find_peaks`): local maxima above ``threshold``
  of the strongest, positions from a parabola through the log-intensity (exact for
  Gaussian peaks).  Measured patterns go through :mod:`xtec.classifier.intake` first.
* Trial cells (:func:`index_cells`): for cubic, tetragonal, hexagonal (trigonal groups on
  hexagonal axes) and orthorhombic cells, solved from a few low-angle lines assigned
  low Miller indices (the linear method of TREOR/ITO), kept if they index the first
  lines, refined by weighted least squares.
* Refinement with the instrument (:func:`refine_cell`): cell, zero shift and sample
  displacement by least squares in 2-theta.
* Figures of merit (:func:`figures_of_merit`): de Wolff's M20 and Smith & Snyder's F_N.

The space groups of an indexed cell come from :mod:`xtec.classifier.extinction`.
"""

from __future__ import annotations

import functools
import itertools
import logging
from dataclasses import dataclass

import numpy as np

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
    if system == "monoclinic":  # unique axis b: h^2 A + k^2 B + l^2 C + h l D
        return np.stack([h * h, k * k, ell * ell, h * ell], 1)
    if system == "triclinic":
        return triclinic_basis(hkl)
    raise ParameterError(f"no indexing basis for {system}")


def triclinic_basis(hkl: np.ndarray) -> np.ndarray:
    """(M, 6) rows ``(h^2, k^2, l^2, h k, h l, k l)``: ``Q = rows @ (A, B, C, D, E, F)``."""
    h, k, ell = (hkl[:, i].astype(float) for i in range(3))
    return np.stack([h * h, k * k, ell * ell, h * k, h * ell, k * ell], 1)


@functools.cache
def _hkl_grid(n: int) -> np.ndarray:
    r = np.arange(-n, n + 1)
    hkl = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    hkl = hkl[np.any(hkl != 0, axis=1)]
    hkl.flags.writeable = False
    return hkl


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


def _screen_tolerance(peaks: Peaks, n: int) -> np.ndarray:
    """Tolerance in Q of the first ``n`` lines against an unrefined trial cell.

    A trial cell is solved from low lines (the lowest always among them), so its error
    is a fraction of Q about that of the lowest line, the same at every angle, while a
    line's own tolerance (fixed in 2-theta) shrinks relative to Q as the angle grows:
    far lines get the trial's relative error (a zero shift of 0.05 degrees on the first
    line of a cubic cell moves its line at 120 degrees by a quarter of a degree).
    """
    q, tol = peaks.q[:n], peaks.tol[:n]
    return 3 * np.maximum(tol, q * tol[0] / q[0])


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

    # Low lines have low indices: screen with indices up to 5, refine with more.
    # (Long c axes, as in rhombohedral cells on hexagonal axes, get l up to 10.)
    f = np.unique(_basis(system, half_grid(system, 5, 10 if p == 2 else 5)), axis=0)
    f = f.astype(np.float32)
    cells32 = cells.astype(np.float32)
    # Screen on the first ten lines, widened tolerance (trial cells are not refined yet);
    # line by line, dropping a cell at its second unexplained line (most fail at once).
    n_screen = min(10, n_obs)
    strict_tol = 3 * peaks.tol[:n_screen]
    wide_tol = _screen_tolerance(peaks, n_screen)
    misses = np.zeros((len(cells), 2), int)  # at the strict and at the wide tolerance
    alive = np.arange(len(cells))
    calc = cells32 @ f.T
    for j in range(n_screen):
        d = np.abs(calc - np.float32(peaks.q[j]))
        misses[alive, 0] += ~(d <= np.float32(strict_tol[j])).any(1)
        misses[alive, 1] += ~(d <= np.float32(wide_tol[j])).any(1)
        ok = misses[alive, 1] <= 1
        alive, calc = alive[ok], calc[ok]
        if len(alive) == 0:
            return []
    strict = alive[misses[alive, 0] <= 1]
    # The smallest cells that pass at the strict tolerance and those that pass at the
    # wide one: either list alone can lose the right cell to smaller wrong ones.
    out = _refined(system, cells[strict], peaks, f, keep)
    extra = _refined(system, cells[alive], peaks, f, keep)
    return out + [r for r in extra if not any(np.allclose(r, o, rtol=1e-4) for o in out)]


def _refined(system: str, cand: np.ndarray, peaks: Peaks, f: np.ndarray, keep: int) -> list:
    """The ``keep`` refined cells with the fewest calculated lines up to the last observed
    one (the smallest cells that index), duplicates dropped."""
    if len(cand) == 0 or keep == 0:
        return []
    n_calc = ((cand @ f.T) <= peaks.q[-1] + peaks.tol[-1]).sum(1)
    order = np.argsort(n_calc, kind="stable")[: 2 * keep]
    hkl = half_grid(system, int(min(12, np.ceil(np.sqrt(peaks.q[-1] / cand[order].min())) + 1)))
    out = []
    for params in cand[order]:
        r = _refine(system, params, peaks, hkl)
        if not any(np.allclose(r, o, rtol=1e-4) for o in out):
            out.append(r)
    return out[:keep]


def _near(ratio: float, target: float, rtol: float) -> bool:
    return abs(ratio / target - 1) <= rtol


def _from_orthorhombic(p: np.ndarray, rtol: float) -> list[tuple[str, np.ndarray]]:
    """Two equal axes: tetragonal; one axis sqrt(3) times another: the C-centred
    orthohexagonal description of a hexagonal lattice (its lines are the hexagonal's)."""
    out = []
    for i, j in itertools.permutations(range(3), 2):
        k = 3 - i - j
        if i < j and _near(p[i] / p[j], 1.0, rtol):
            out.append(("tetragonal", np.array([(p[i] + p[j]) / 2, p[k]])))
        if _near(p[j] / p[i], 3.0, rtol):  # b = sqrt(3) a
            a2 = (3 * p[i] + p[j]) / 2  # 1/a^2 of the short axis, from both
            out.append(("hexagonal", np.array([4 / 3 * a2, p[k]])))
    return out


def _from_hexagonal(p: np.ndarray, rtol: float) -> list[tuple[str, np.ndarray]]:
    """A rhombohedral cell of a cubic lattice on hexagonal axes: c/a = sqrt(6) (face
    centred, cubic a = sqrt(2) a_h), sqrt(3/2) (primitive) or sqrt(6)/4 (body centred;
    both cubic a = a_h / sqrt(2))."""
    inv_a2 = 3 * p[0] / 4  # 1/a_h^2
    r2 = inv_a2 / p[1]  # (c/a)^2
    if _near(r2, 6.0, rtol):
        return [("cubic", np.array([inv_a2 / 2]))]
    if _near(r2, 1.5, rtol) or _near(r2, 6 / 16, rtol):
        return [("cubic", np.array([2 * inv_a2]))]
    return []


def _from_tetragonal(p: np.ndarray, rtol: float) -> list[tuple[str, np.ndarray]]:
    """c = a: cubic; a body-centred tetragonal cell of a cubic lattice has c/a = sqrt(2)
    (face centred, cubic a = c) or 1/sqrt(2) (body centred, cubic a = a)."""
    r2 = p[0] / p[1]  # (c/a)^2
    if _near(r2, 1.0, rtol):
        return [("cubic", np.array([(p[0] + p[1]) / 2]))]
    if _near(r2, 2.0, rtol):
        return [("cubic", np.array([p[1]]))]
    if _near(r2, 0.5, rtol):
        return [("cubic", np.array([p[0]]))]
    return []


_HIGHER = {
    "orthorhombic": _from_orthorhombic,
    "hexagonal": _from_hexagonal,
    "tetragonal": _from_tetragonal,
}


def higher_metric(
    system: str, params: np.ndarray, rtol: float = 2e-3
) -> list[tuple[str, np.ndarray]]:
    """Cells of higher symmetry whose lattice a cell of ``system`` (reciprocal metric
    ``params``) describes within ``rtol`` (on ratios of the parameters).

    Such a cell explains every line the higher one does, with more parameters, and an
    impurity line it happens to explain can make it win; the higher cell is scored
    beside it and the likelihood (with its Occam term) decides.
    """
    variant = _HIGHER.get(system)
    return [] if variant is None else variant(np.asarray(params, float), rtol)


def peaks_at(two_theta, intensity, wavelength: float, tol_two_theta) -> Peaks:
    """:class:`Peaks` of lines at ``two_theta`` (degrees), tolerance in degrees (scalar or
    per line) turned into Q."""
    tt = np.asarray(two_theta, float)
    theta = np.radians(tt / 2)
    q = (2 * np.sin(theta) / wavelength) ** 2
    tol = (
        2 * np.sin(2 * theta) / wavelength**2 * np.radians(np.broadcast_to(tol_two_theta, tt.shape))
    )
    return Peaks(tt, q, tol, np.asarray(intensity, float))


def shifted(peaks: Peaks, zero: float, wavelength: float) -> Peaks:
    """The lines as a zero shift of ``zero`` degrees moves them, tolerances kept."""
    if zero == 0:
        return peaks
    trial = peaks_at(peaks.two_theta - zero, peaks.intensity, wavelength, 0.0)
    trial.tol = peaks.tol
    return trial


def triclinic_metric(params: np.ndarray) -> np.ndarray:
    """Reciprocal metric tensors (..., 3, 3) of triclinic parameters (..., 6)
    ``(A, B, C, D, E, F)``, ``Q = h G h^T``."""
    a, b, c, d, e, f = np.moveaxis(np.asarray(params, float), -1, 0)
    return np.stack([np.stack([a, d / 2, e / 2], -1), np.stack([d / 2, b, f / 2], -1),
                     np.stack([e / 2, f / 2, c], -1)], -2)


@functools.cache
def half_grid(system: str, n: int, n_l: int | None = None) -> np.ndarray:
    """Miller indices up to ``n`` (``n_l`` for l) of one half of reciprocal space: every
    distinct Q of the system's metric occurs."""
    hkl = _hkl_grid(max(n, n_l or n))
    hkl = hkl[np.all(np.abs(hkl[:, :2]) <= n, axis=1) & (np.abs(hkl[:, 2]) <= (n_l or n))]
    if system == "hexagonal":
        hkl = hkl[hkl[:, 2] >= 0]
    elif system == "monoclinic":  # the sign of h matters (h l term)
        hkl = hkl[(hkl[:, 1] >= 0) & (hkl[:, 2] >= 0)]
    elif system == "triclinic":  # every sign matters; -h gives the same Q as h
        h, k, ell = hkl.T
        hkl = hkl[(ell > 0) | ((ell == 0) & (k > 0)) | ((ell == 0) & (k == 0) & (h > 0))]
    else:
        hkl = hkl[np.all(hkl >= 0, axis=1)]
    hkl.flags.writeable = False
    return hkl


@functools.cache
def _basis_of_grid(system: str, n: int) -> np.ndarray:
    f = _basis(system, half_grid(system, n))
    f.flags.writeable = False
    return f


@dataclass
class CellFit:
    """A cell refined with the zero shift (and sample displacement) of the pattern.

    ``peaks`` are the observed lines corrected by both: ``2theta - zero - displacement *
    cos(theta)``.  ``rms`` is the root-mean-square 2-theta misfit of the indexed lines.
    """

    system: str
    params: np.ndarray
    zero: float
    displacement: float
    peaks: Peaks
    n_indexed: int
    rms: float

    def lengths(self) -> list[float]:
        """Cell edges in angstrom (a, [b,] c as the system has them)."""
        p = np.asarray(self.params, float)
        if self.system == "hexagonal":
            return [float(np.sqrt(4 / (3 * p[0]))), float(1 / np.sqrt(p[1]))]
        if self.system == "monoclinic":  # a, b, c and beta (degrees)
            cos_bs = p[3] / (2 * np.sqrt(p[0] * p[2]))
            sin_bs = float(np.sqrt(max(1 - cos_bs**2, 1e-12)))
            beta = 180 - np.degrees(np.arccos(np.clip(cos_bs, -1, 1)))
            return [
                float(1 / (np.sqrt(p[0]) * sin_bs)),
                float(1 / np.sqrt(p[1])),
                float(1 / (np.sqrt(p[2]) * sin_bs)),
                float(beta),
            ]
        if self.system == "triclinic":  # a, b, c, alpha, beta, gamma (degrees)
            g = np.linalg.inv(triclinic_metric(p))
            edges = np.sqrt(np.diag(g))
            angles = [np.degrees(np.arccos(np.clip(g[i, j] / (edges[i] * edges[j]), -1, 1)))
                      for i, j in ((1, 2), (0, 2), (0, 1))]
            return [float(v) for v in (*edges, *angles)]
        return [float(1 / np.sqrt(v)) for v in p]


def refine_cell(
    system: str,
    params: np.ndarray,
    observed: Peaks,
    wavelength: float,
    max_zero: float = 0.15,
    displacement: bool = True,
    iterations: int = 4,
    zero: float = 0.0,
) -> CellFit:
    """Least squares in 2-theta of the cell, the zero shift and (with at least four more
    indexed lines than parameters) the sample displacement ``D cos(theta)``.

    Lines are assigned to their nearest calculated reflection (within twice their
    tolerance) at every iteration; a step that would put the zero shift or the
    displacement term beyond ``max_zero`` degrees, or make the cell unphysical, is not
    taken.  ``zero`` is the starting zero shift.
    """
    f = _basis_of_grid(system, 12)
    tt_obs = observed.two_theta
    p = np.asarray(params, float).copy()
    disp = 0.0
    best = None
    for _ in range(iterations):
        cos_t = np.cos(np.radians(tt_obs / 2))
        cur = peaks_at(tt_obs - zero - disp * cos_t, observed.intensity, wavelength, 0.0)
        cur.tol = observed.tol
        calc = f @ p
        d = np.abs(calc[None, :] - cur.q[:, None])
        pick = d.argmin(1)
        ok = d[np.arange(len(cur.q)), pick] <= 2 * observed.tol
        n_par = len(p)
        if ok.sum() < n_par + 2:
            break
        fq = f[pick[ok]]
        q = np.maximum(fq @ p, 1e-12)
        s = np.clip(wavelength * np.sqrt(q) / 2, -1, 1)
        tt_calc = np.degrees(2 * np.arcsin(s))
        theta = np.radians(tt_calc / 2)
        # d(2theta)/dQ in degrees.
        dtt = np.degrees(wavelength / (2 * np.sqrt(q) * np.cos(theta)))
        cols = [fq * dtt[:, None], np.ones(ok.sum())]
        use_disp = displacement and ok.sum() >= n_par + 6
        if use_disp:
            cols.append(np.cos(theta))
        a = np.column_stack(cols)
        resid = tt_obs[ok] - (tt_calc + zero + disp * np.cos(theta))
        rms = float(np.sqrt(np.mean(resid**2)))
        if best is None or ok.sum() > best[-2] or (ok.sum() == best[-2] and rms < best[-1]):
            best = (p.copy(), zero, disp, int(ok.sum()), rms)
        # Scale the columns for a well-conditioned solve.
        for with_disp in (use_disp, False) if use_disp else (False,):
            cols_used = a if with_disp else a[:, : n_par + 1]
            scale = np.maximum(np.abs(cols_used).max(0), 1e-30)
            step, *_ = np.linalg.lstsq(cols_used / scale, resid, rcond=None)
            step = step / scale
            new_p = p + step[:n_par]
            new_zero = zero + step[n_par]
            new_disp = disp + (step[n_par + 1] if with_disp else 0.0)
            # Zero shift and displacement are nearly collinear when the lines span a
            # narrow range of cos(theta): a step that runs off is retried without it.
            if abs(new_zero) <= max_zero and abs(new_disp) <= max_zero:
                break
        if np.any(new_p[:3] <= 0) or abs(new_zero) > max_zero or abs(new_disp) > max_zero:
            break
        p, zero, disp = new_p, new_zero, new_disp
    if best is None:
        return CellFit(system, np.asarray(params, float), 0.0, 0.0, observed, 0, np.inf)
    p, zero, disp, n_ok, rms = best
    cos_t = np.cos(np.radians(tt_obs / 2))
    corrected = peaks_at(tt_obs - zero - disp * cos_t, observed.intensity, wavelength, 0.0)
    corrected.tol = observed.tol
    return CellFit(system, p, float(zero), float(disp), corrected, n_ok, rms)


def figures_of_merit(calc_q: np.ndarray, peaks: Peaks, wavelength: float, n: int = 20) -> dict:
    """de Wolff's M_N and Smith & Snyder's F_N of a cell for the first ``n`` lines.

    ``calc_q`` are the cell's allowed reflections (Q = 1/d^2).  M_N = Q_N / (2 <dQ> N_calc)
    and F_N = N / (<|d 2theta|> N_calc), with N_calc the distinct calculated lines up to
    the N-th observed one and the mean discrepancies over the lines each indexes.
    """
    q_obs = peaks.q[:n]
    if len(q_obs) == 0:
        return {"n_lines": 0, "M": 0.0, "F": 0.0, "n_calc": 0}
    qn = q_obs[-1]
    # Up to the N-th line within its tolerance (its own reflection may lie just above it).
    c = np.unique(np.round(np.sort(calc_q[calc_q <= qn + peaks.tol[len(q_obs) - 1]]), 10))
    if len(c) == 0:
        return {"n_lines": int(len(q_obs)), "M": 0.0, "F": 0.0, "n_calc": 0}
    near = c[np.abs(c[None, :] - q_obs[:, None]).argmin(1)]
    dq = np.abs(near - q_obs)
    tt_c = np.degrees(2 * np.arcsin(np.clip(wavelength * np.sqrt(near) / 2, -1, 1)))
    dtt = np.abs(tt_c - peaks.two_theta[:n])
    m = qn / (2 * max(dq.mean(), 1e-12) * len(c))
    f = len(q_obs) / (max(dtt.mean(), 1e-6) * len(c))
    return {
        "n_lines": int(len(q_obs)),
        "M": float(m),
        "F": float(f),
        "n_calc": int(len(c)),
        "mean_abs_d2theta": float(dtt.mean()),
    }
