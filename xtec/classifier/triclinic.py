"""Triclinic cells of a powder pattern: zones first, then the cells they span.

``Q = 1/d^2 = h^2 A + k^2 B + l^2 C + h k D + h l E + k l F`` (``A = a*^2``,
``D = 2 a*.b*``, ...).  Ito's method, as Visser's ITO uses it: with no
systematic absences (P1, P-1) the lowest lines are the shortest reciprocal
vectors, so

1. **zones**: two low lines are taken as ``A`` and ``B`` and the zone's
   ``D`` from a pair of lines ``A + B +- D`` (their sum is ``2 (A + B)``) or
   from one such line; each zone ``(A, B, D)`` is scored by the lines it
   explains with ``|h|, |k| <= 3`` and the best are kept;
2. **cells**: a zone and a third axis ``C``, a low line the zone leaves
   unexplained, with ``E`` and ``F`` read from lines ``A + C +- E`` and
   ``B + C +- F`` (``D, E >= 0`` by the choice of the axes' signs, ``F`` of
   either sign); the cells are screened on the first lines and the few that
   explain the most are refined with the zero shift
   (:func:`.indexing.refine_cell`) and judged by de Wolff's M20.

The cell found is one of many equivalent settings (the same lattice); only its
volume and figures of merit mean anything.  A triclinic cell has six
parameters to fit a pattern's twenty lines with, so a caller takes it only at
a high M20.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

from xtec.classifier.indexing import (
    CellFit,
    Peaks,
    figures_of_merit,
    half_grid,
    refine_cell,
    shifted,
    triclinic_basis,
    triclinic_metric,
)

_N_LINES = 14  # lines the zones and the third axis are drawn from
_N_AXES = 7  # lines tried as the zone axes A and B
_KEEP_ZONES = 24
_N_SCREEN = 20


@functools.cache
def _zone_basis(n: int = 3) -> np.ndarray:
    """(M, 3) rows (h^2, k^2, h k) of the distinct reflections of a zone."""
    rows = {(h * h, k * k, h * k) for h, k in itertools.product(range(-n, n + 1), repeat=2)
            if (h, k) != (0, 0)}
    out = np.array(sorted(rows), float)
    out.flags.writeable = False
    return out


@functools.cache
def _screen_basis(n: int = 3) -> np.ndarray:
    f = np.unique(triclinic_basis(half_grid("triclinic", n)), axis=0)
    f.flags.writeable = False
    return f


def _hits(calc: np.ndarray, q: np.ndarray, tol: np.ndarray) -> np.ndarray:
    """(cells, lines) bool: some calculated line of each cell within tol of each line."""
    return np.stack([(np.abs(calc - qj) <= tj).any(1) for qj, tj in zip(q, tol)], 1)


def _zones(q: np.ndarray, tol: np.ndarray) -> np.ndarray:
    """The best zones (A, B, D), D >= 0, by the number of lines each explains."""
    cand = []
    n_ax = min(_N_AXES, len(q))
    for i, j in itertools.combinations(range(n_ax), 2):
        a, b = q[i], q[j]
        if any(abs(b - m * m * a) <= 2 * tol[j] for m in (1, 2, 3)):
            continue  # b* on a* (a harmonic), not a second axis
        s = 2 * (a + b)
        ds = {abs(q[k] - a - b) for k in range(len(q)) if k not in (i, j)}
        ds |= {abs(q[k] - q[m]) / 2 for k, m in itertools.combinations(range(len(q)), 2)
               if abs(q[k] + q[m] - s) <= tol[k] + tol[m]}
        cand += [(a, b, d) for d in ds if d <= min(a, b) * 1.0001]
        cand.append((a, b, 0.0))
    if not cand:
        return np.zeros((0, 3))
    z = np.unique(np.round(np.array(cand), 9), axis=0)
    score = _hits(z @ _zone_basis().T, q, 1.5 * tol).sum(1)
    order = np.argsort(-score, kind="stable")
    return z[order[:_KEEP_ZONES]][score[order[:_KEEP_ZONES]] >= 3]


def _cells(zone: np.ndarray, q: np.ndarray, tol: np.ndarray) -> np.ndarray:
    """(n, 6) cells (A, B, C, D, E, F) of a zone and a third axis from the lines."""
    a, b, d = zone
    zq = _zone_basis() @ zone
    outside = [k for k in range(len(q)) if not (np.abs(zq - q[k]) <= 1.5 * tol[k]).any()]
    out = []
    for k in outside[:3]:
        c = q[k]
        es = {0.0} | {abs(v - a - c) for v in q if abs(v - a - c) <= min(a, c)}
        fs = {0.0} | {abs(v - b - c) for v in q if abs(v - b - c) <= min(b, c)}
        for e, f in itertools.product(es, fs):
            out += [(a, b, c, d, e, f), (a, b, c, d, e, -f)]
    if not out:
        return np.zeros((0, 6))
    cells = np.unique(np.round(np.array(out), 9), axis=0)
    return cells[_positive_definite(cells)]


def _positive_definite(p: np.ndarray) -> np.ndarray:
    g = triclinic_metric(p)
    minors = (g[:, 0, 0] * g[:, 1, 1] - g[:, 0, 1] ** 2, np.linalg.det(g))
    # Edges between 1.5 and 40 angstrom, a volume above 10 A^3.
    return (minors[0] > 0) & (minors[1] > 0) & (minors[1] < 1e-2) \
        & np.all((p[:, :3] > 1 / 1600) & (p[:, :3] < 0.45), axis=1)


def _params_of(g: np.ndarray) -> np.ndarray:
    return np.array([g[0, 0], g[1, 1], g[2, 2], 2 * g[0, 1], 2 * g[0, 2], 2 * g[1, 2]])


def doubled_cells(params) -> list[np.ndarray]:
    """The seven cells of twice the volume whose lattice holds this one's: the reciprocal
    lattice with ``(v1 a* + v2 b* + v3 c*) / 2`` added, v in {0, 1}^3 less 0.

    Where a pattern's lowest lines (the shortest reciprocal vectors) are weak or
    missing, the zones span a sub-lattice of the true one (on the statistics half's
    lab patterns of triclinic.cif: 164 A^3, 16 of 20 lines, against the true 329
    A^3); one of these then indexes every line."""
    g = triclinic_metric(params)
    out = []
    for v in itertools.product((0, 1), repeat=3):
        if any(v):
            t = np.eye(3)
            t[next(j for j in range(3) if v[j])] = np.asarray(v) / 2
            out.append(_params_of(t @ g @ t.T))
    return out


def cell_volume(params) -> float:
    """Volume (A^3) of the direct cell of triclinic parameters (6,)."""
    return float(1 / np.sqrt(np.linalg.det(triclinic_metric(params))))


def _doubled_fits(fits, peaks, wavelength, max_zero, displacement, f_all):
    """Refined :func:`doubled_cells` of ``fits`` (fit, merit) that index more lines than
    their parent, or as many at a higher M20."""
    new = []
    for parent, parent_merit in fits:
        for params in doubled_cells(parent.params):
            fit = refine_cell("triclinic", params, peaks, wavelength, max_zero, displacement,
                              zero=parent.zero)
            if fit.n_indexed < parent.n_indexed or not _positive_definite(fit.params[None])[0]:
                continue
            merit = figures_of_merit(f_all @ fit.params, fit.peaks, wavelength)
            if fit.n_indexed == parent.n_indexed and merit["M"] <= parent_merit["M"]:
                continue
            new.append((fit, merit))
    return new


def _best_first(found: list) -> list:
    """Fits, most lines indexed then best M20 first, one per cell volume (the best)."""
    found = sorted(found, key=lambda fm: (-fm[0].n_indexed, -fm[1]["M"]))
    out, volumes = [], []
    for fit, merit in found:
        v = cell_volume(fit.params)
        if not any(abs(v - w) <= 1e-3 * v for w in volumes):
            out.append((fit, merit))
            volumes.append(v)
    return out


def index_triclinic(peaks: Peaks, wavelength: float, zero_trials=(0.0,),
                    max_zero: float = 0.15, displacement: bool = True,
                    keep: int = 4) -> list[tuple[CellFit, dict]]:
    """Refined triclinic cells with their figures of merit, most lines indexed then
    best M20 first (module docstring).  ``zero_trials`` are tried in turn until a
    cell indexes every line."""
    n_obs = len(peaks.q)
    if n_obs < 8:
        return []
    out = []
    f_all = triclinic_basis(half_grid("triclinic", 8))
    for zero in zero_trials:
        if out and any(fit.n_indexed == n_obs for fit, _ in out):
            break
        trial = shifted(peaks, zero, wavelength)
        q, tol = trial.q[:_N_LINES], trial.tol[:_N_LINES]
        cells = [_cells(z, q, tol) for z in _zones(q, tol)]
        cells = np.concatenate(cells) if cells else np.zeros((0, 6))
        if len(cells) == 0:
            continue
        n = min(_N_SCREEN, n_obs)
        calc = cells @ _screen_basis().T
        explained = _hits(calc, trial.q[:n], 2 * trial.tol[:n]).sum(1)
        n_calc = (calc <= trial.q[n - 1] + trial.tol[n - 1]).sum(1)
        order = np.lexsort((n_calc, -explained))
        found = 0
        for params in cells[order[:keep * 4]]:
            if found >= keep:
                break
            fit = refine_cell("triclinic", params, peaks, wavelength, max_zero, displacement,
                              zero=zero)
            if fit.n_indexed < 8 or not _positive_definite(fit.params[None])[0]:
                continue
            out.append((fit, figures_of_merit(f_all @ fit.params, fit.peaks, wavelength)))
            found += 1
        out += _doubled_fits(out[len(out) - found:], peaks, wavelength,
                             max_zero, displacement, f_all)
    return _best_first(out)
