"""Monoclinic cells of a powder pattern (unique axis b).

``Q = 1/d^2 = h^2 A + k^2 B + l^2 C + h l D`` with ``A = a*^2``, ``B = b*^2``,
``C = c*^2``, ``D = 2 a* c* cos(beta*)``.  The linear trial method of TREOR, made
exhaustive over low indices: the lowest line and three others among the first seven
are assigned every ordered choice of four low-index reflections (|h|, k, l <= 2,
|h| + k + l <= 3), the 4 x 4 systems are solved in one batch, unphysical and duplicate
cells dropped, the rest screened line by line on the first lines (at most one
unexplained, tolerance widened threefold for the unrefined trial cell), and the few
smallest cells that survive are refined with the zero shift
(:func:`.indexing.refine_cell`) and judged by de Wolff's M20.  A few CPU-seconds per
pattern (all ``zero`` trials).

A cell with ``|D|`` near 0 (beta within ``ortho_beta`` degrees of 90) is orthorhombic;
:func:`index_monoclinic` reports it as such (its A, B, C).
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
)


@functools.cache
def _trial_rows() -> np.ndarray:
    rows = set()
    for h, k, ell in itertools.product(range(-2, 3), range(3), range(3)):
        if (h, k, ell) == (0, 0, 0) or abs(h) + k + ell > 3:
            continue
        rows.add((h * h, k * k, ell * ell, h * ell))
    out = np.array(sorted(rows), float)
    out.flags.writeable = False
    return out


@functools.cache
def _index_tuples() -> np.ndarray:
    """Ordered choices of 4 trial rows whose 4 x 4 system is not singular."""
    f = _trial_rows()
    combos = np.array(list(itertools.combinations(range(len(f)), 4)))
    keep = np.abs(np.linalg.det(f[combos])) > 1e-9
    combos = combos[keep]
    perms = np.array(list(itertools.permutations(range(4))))
    out = combos[:, perms].reshape(-1, 4)
    out.flags.writeable = False
    return out


def _trial_cells(q: np.ndarray, n_lines: int) -> np.ndarray:
    """(n, 4) candidate (A, B, C, D), D >= 0, A <= C, duplicates removed."""
    f = _trial_rows()
    tuples = _index_tuples()
    mats = f[tuples]  # (T, 4, 4)
    inv = np.linalg.inv(mats)
    sols = []
    for c in itertools.combinations(range(1, n_lines), 3):
        rhs = q[[0, *c]]
        sols.append(inv @ rhs)
    s = np.concatenate(sols)
    a, b, c_, d = s.T
    ok = (
        (a > 1 / 1600)
        & (b > 1 / 1600)
        & (c_ > 1 / 1600)
        & (a < 0.45)
        & (b < 0.45)
        & (c_ < 0.45)
        & (np.abs(d) < 1.6 * np.sqrt(np.abs(a * c_)))
        & (np.abs(d) > 1e-9)
    )
    s = reduce_cells(s[ok])
    # Duplicates: edges to 0.1 %, cos(beta*) to 0.001 (one int64 key: np.unique on rows
    # is slow).
    k = np.round(-np.log(s[:, :3]) * 1000).astype(np.int64)  # 800 .. 7400
    kd = np.round(s[:, 3] / (2 * np.sqrt(s[:, 0] * s[:, 2])) * 1000).astype(np.int64)
    key = ((k[:, 0] * 20000 + k[:, 1]) * 20000 + k[:, 2]) * 4000 + kd
    _, first = np.unique(key, return_index=True)
    return s[np.sort(first)]


def reduce_cells(s: np.ndarray) -> np.ndarray:
    """(n, 4) parameters with the reciprocal a*-c* net Gauss-reduced: ``|D| <= A <= C``,
    ``D >= 0`` (the same lattice; the setting of the absences is found later)."""
    s = np.array(s, float)
    for _ in range(20):
        swap = s[:, 0] > s[:, 2]
        s[swap] = s[swap][:, [2, 1, 0, 3]]
        m = np.round(s[:, 3] / (2 * s[:, 0]))
        if not np.any(m):
            break
        # c* -> c* - m a*: C' = C - m D + m^2 A, D' = D - 2 m A.
        s[:, 2] = s[:, 2] - m * s[:, 3] + m * m * s[:, 0]
        s[:, 3] = s[:, 3] - 2 * m * s[:, 0]
    s[:, 3] = np.abs(s[:, 3])
    return s


@functools.cache
def _screen_basis(n: int) -> np.ndarray:
    hkl = half_grid("monoclinic", n)
    f = monoclinic_basis(hkl)
    f = np.unique(f, axis=0).astype(np.float32)
    f.flags.writeable = False
    return f


def monoclinic_basis(hkl: np.ndarray) -> np.ndarray:
    h, k, ell = (hkl[:, i].astype(float) for i in range(3))
    return np.stack([h * h, k * k, ell * ell, h * ell], 1)


def _screen(cells: np.ndarray, peaks: Peaks, n_screen: int, chunk: int = 20000) -> np.ndarray:
    """Cells that explain all but at most one of the first ``n_screen`` lines."""
    f = _screen_basis(5)
    keep = []
    q = peaks.q.astype(np.float32)
    tol = (3 * peaks.tol).astype(np.float32)
    for start in range(0, len(cells), chunk):
        cc = cells[start : start + chunk].astype(np.float32)
        calc = cc @ f.T
        alive = np.arange(len(cc))
        misses = np.zeros(len(cc), int)
        for j in range(n_screen):
            hit = (np.abs(calc - q[j]) <= tol[j]).any(1)
            misses[alive[~hit]] += 1
            ok = misses[alive] <= 1
            alive, calc = alive[ok], calc[ok]
            if len(alive) == 0:
                break
        keep.append(start + alive)
    return cells[np.concatenate(keep)] if keep else cells[:0]


def orthorhombic_of(params, beta_tol: float = 0.05, rel_tol: float = 3e-3):
    """Orthorhombic (A, B, C) of a reduced monoclinic cell whose lattice is orthorhombic,
    else None: beta within ``beta_tol`` degrees of 90 (primitive), or a centred
    rectangular a*-c* net, the lattice then C-centred orthorhombic: A = C (conventional
    reciprocal axes (a* +- c*) / 2) or |D| = A (a* / 2 and c* -+ a* / 2)."""
    a_, b_, c_, d_ = (float(v) for v in params)
    cos_bs = d_ / (2 * np.sqrt(a_ * c_))
    if abs(np.degrees(np.arcsin(np.clip(cos_bs, -1, 1)))) < beta_tol:
        return np.array([a_, b_, c_])
    if abs(a_ - c_) <= rel_tol * a_:
        return np.array([(a_ + c_ + d_) / 4, b_, (a_ + c_ - d_) / 4])
    if abs(abs(d_) - a_) <= rel_tol * a_:
        # 2 a*.c* = a*^2: a*/2 and c* - a*/2 (sign of D) are perpendicular.
        return np.array([a_ / 4, b_, c_ - abs(d_) / 2 + a_ / 4])
    return None


def index_monoclinic(
    peaks: Peaks,
    wavelength: float,
    zero_trials=(0.0,),
    max_zero: float = 0.15,
    displacement: bool = True,
    n_lines: int = 7,
    n_screen: int = 12,
    keep: int = 6,
) -> list[tuple[CellFit, dict]]:
    """Refined monoclinic cells with their figures of merit (all reflections), best M20
    first.  ``zero_trials`` are tried in turn until a cell indexes every line."""
    n_obs = len(peaks.q)
    if n_obs < 6:
        return []
    out = []
    f_all = monoclinic_basis(half_grid("monoclinic", 12))
    f5 = _screen_basis(5)
    for zero in zero_trials:
        if (
            out
            and max(m["M"] for _, m in out) >= 10
            and any(fit.n_indexed == n_obs for fit, _ in out)
        ):
            break
        trial = shifted(peaks, zero, wavelength)
        cells = _trial_cells(trial.q, min(n_lines, n_obs))
        cand = _screen(cells, trial, min(n_screen, n_obs))
        if len(cand) == 0:
            continue
        qmax = trial.q[-1] + trial.tol[-1]
        n_calc, n_expl = [], []
        for c in np.array_split(cand, 1 + len(cand) // 2000):
            calc = c.astype(np.float32) @ f5.T
            n_calc.append((calc <= qmax).sum(1))
            n_expl.append(
                sum((np.abs(calc - q) <= 2 * t).any(1) for q, t in zip(trial.q, trial.tol))
            )
        order = np.lexsort((np.concatenate(n_calc), -np.concatenate(n_expl)))
        for params in cand[order[:keep]]:
            fit = refine_cell(
                "monoclinic", params, peaks, wavelength, max_zero, displacement, zero=zero
            )
            if fit.n_indexed == 0:
                continue
            merit = figures_of_merit(f_all @ fit.params, fit.peaks, wavelength)
            if not any(np.allclose(fit.params, o.params, rtol=1e-3) for o, _ in out):
                out.append((fit, merit))
    out.sort(key=lambda fm: (-fm[0].n_indexed, -fm[1]["M"]))
    return out
