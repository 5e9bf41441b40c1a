"""Intensities as evidence between space groups that share their absences (issue 28).

Groups of one absence class (Fm-3m / F-43m / F432, Pnma / Pna2_1, P2/m / P2 / Pm, ...)
index a pattern equally well; the frequency prior orders them.  The one thing line
intensities can add is whether the structure is centrosymmetric: Wilson's statistics
of normalised intensities E^2 differ (acentric: exponential, <E^4> = 2; centric:
chi-squared with one degree of freedom, <E^4> = 3).

:func:`centric_log_ratio` turns the indexed lines of an :class:`~.extinction.Analysis`
into normalised intensities (divided by the Lorentz-polarisation factor, the number of
reflections under the line and a Wilson falloff fitted to the lines themselves) and
returns the log-likelihood ratio centric / acentric.  A line holding ``k`` independent
reflections (distinct up to the lattice's holohedry) is a mean of ``k`` draws: a Gamma
distribution of shape ``k`` (acentric) or ``k / 2`` (centric), mean 1.

Allowed lines that were not seen count as weaker than the weakest seen line (without
that, the missing weak reflections, which make a centric distribution, bias the ratio
towards acentric).

Measured on the statistics half (``benchmarks/tie_intensity.py``, results in
``benchmarks/results/classifier_ties.json``), it does not beat the prior: the ratio's
sign is right for 66 of 163 lab-pattern ties and 112 of 208 clean ones, and the
re-ordering (:func:`reorder_by_centricity`, the one the measurement applies) puts the
true group first 143 / 135 / 121 times at weights 0.25 / 0.5 / 1 against 141 for the
prior alone (clean: 182 / 179 / 165 against 181).  Real structures put heavy atoms on
special positions and hold few independent reflections per line, far from Wilson's
random atoms.  The shipped ranking does not use it.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.special import gammainc, gammaln

from xtec.classifier.indexing import _basis


@functools.cache
def centrosymmetric() -> np.ndarray:
    """(230,) bool: space group n+1 holds the inversion."""
    import spglib

    out = np.zeros(230, bool)
    for hall in range(1, 531):
        number = int(spglib.get_spacegroup_type(hall).number)
        rot = np.asarray(spglib.get_symmetry_from_database(hall)["rotations"])
        out[number - 1] |= bool(np.any(np.all(rot == -np.eye(3, dtype=int), axis=(1, 2))))
    return out


def _family_keys(system: str, hkl: np.ndarray) -> np.ndarray:
    """One row per reflection that equals the row of every reflection related to it by
    the lattice's holohedry (cubic: sorted |h|, |k|, |l|; else the metric's basis)."""
    if system == "cubic":
        return np.sort(np.abs(hkl), axis=1).astype(float)
    return _basis(system, hkl)


def _gamma_logpdf(x: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """log density of a Gamma of ``shape`` and mean 1 at ``x``."""
    return shape * np.log(shape) + (shape - 1) * np.log(x) - shape * x - gammaln(shape)


def _line_factor(q: float, wavelength: float) -> float:
    """Peak height per unit |F|^2 at ``q``: Lorentz-polarisation over a width that grows
    as 1 / cos(theta) (heights, not areas, are what the line search reports)."""
    theta = np.arcsin(min(wavelength * np.sqrt(q) / 2, 1.0))
    lp = (1 + np.cos(2 * theta) ** 2) / (np.sin(theta) ** 2 * np.cos(theta))
    return float(lp * np.cos(theta))


def _lines_of(q_calc: np.ndarray, keys: np.ndarray, peaks):
    """Observed lines' (index, reflections under it, independent ones) and the allowed
    lines no observed one explains, within the observed range: (Q, count, independent)."""
    seen = np.zeros(len(q_calc), bool)
    observed = []
    for j, (q, tol) in enumerate(zip(peaks.q, peaks.tol, strict=True)):
        under = np.abs(q_calc - q) <= tol
        seen |= under
        if under.any() and peaks.intensity[j] > 0:
            observed.append((j, int(under.sum()), len(np.unique(keys[under], axis=0))))
    rest = ~seen & (q_calc <= peaks.q[-1])
    qs, inverse = np.unique(np.round(q_calc[rest], 7), return_inverse=True)
    missing = [
        (float(qv), int(np.sum(inverse == i)), len(np.unique(keys[rest][inverse == i], axis=0)))
        for i, qv in enumerate(qs)
    ]
    return observed, missing


def normalised_intensities(analysis, wavelength: float, min_lines: int = 6):
    """Normalised intensities of the lines an analysis's cell indexes, or None.

    Returns (E^2 of the observed lines, their independent reflections, the E^2 below
    which an allowed line that was not seen must lie, its independent reflections);
    E^2 has mean 1 over the observed lines.  ``analysis.fit`` and ``analysis.groups``
    name the cell and its absence class; the class's allowed reflections under each
    line give its multiplicity.
    """
    from xtec.classifier.extinction import _extinction_classes

    fit = analysis.fit
    if fit is None or not analysis.groups:
        return None
    n_par = len(fit.params)
    hkl, masks, groups = _extinction_classes(fit.system, 10 if n_par > 1 else 14)
    if tuple(analysis.groups) not in groups:
        return None
    allowed = hkl[masks[groups.index(tuple(analysis.groups))]]
    q_calc = _basis(fit.system, allowed) @ fit.params
    peaks = fit.peaks
    observed, missing = _lines_of(q_calc, _family_keys(fit.system, allowed), peaks)
    if len(observed) < min_lines:
        return None
    j = np.array([o[0] for o in observed])
    q = peaks.q[j]
    y = peaks.intensity[j] / np.array(
        [_line_factor(v, wavelength) * o[1] for v, o in zip(q, observed, strict=True)]
    )
    # Wilson plot: log <I> falls linearly in s^2 (form factors, displacements).
    slope, icpt = np.polyfit(q / 4, np.log(y), 1)
    scale = np.exp(icpt + slope * q / 4)
    e2 = y / scale
    norm = e2.mean()
    k = np.array([o[2] for o in observed], float)
    # A line not seen was weaker than the weakest seen line.
    floor = peaks.intensity[j].min()
    e_miss = np.array(
        [
            floor / (_line_factor(v, wavelength) * m * np.exp(icpt + slope * v / 4))
            for v, m, _ in missing
        ]
    )
    k_miss = np.array([m[2] for m in missing], float)
    return e2 / norm, k, e_miss / norm, k_miss


def _profile(e2, k, e_miss, k_miss, centric: bool) -> float:
    """Log-likelihood of the lines, maximised over the (unknown) mean intensity."""
    shape, shape_miss = (k / 2, k_miss / 2) if centric else (k, k_miss)
    best = -np.inf
    for c in np.exp(np.linspace(-1.5, 1.5, 61)):
        ll = np.sum(_gamma_logpdf(e2 / c, shape) - np.log(c))
        if len(e_miss):
            ll += np.sum(np.log(np.maximum(gammainc(shape_miss, shape_miss * e_miss / c), 1e-300)))
        best = max(best, float(ll))
    return best


def centric_log_ratio(analysis, wavelength: float, censored: bool = True) -> float:
    """Log-likelihood ratio centric / acentric of an analysis's indexed lines (0 when
    too few lines are indexed to tell).  ``censored``: allowed lines that were not seen
    count as weaker than the weakest seen (truncation would otherwise favour acentric:
    the weak reflections that make a centric distribution are the ones not observed)."""
    got = normalised_intensities(analysis, wavelength)
    if got is None:
        return 0.0
    e2, k, e_miss, k_miss = got
    e2 = np.maximum(e2, 1e-6)
    if not censored:
        e_miss, k_miss = e_miss[:0], k_miss[:0]
    return _profile(e2, k, e_miss, k_miss, True) - _profile(e2, k, e_miss, k_miss, False)


def reorder_by_centricity(
    log_prior: np.ndarray, groups, log_ratio: float, weight: float = 1.0
) -> list[int]:
    """The groups of one absence class, best first, by prior plus ``weight`` x the
    centric log-likelihood ratio for the centrosymmetric ones."""
    g = np.asarray(groups)
    score = log_prior[g - 1] + weight * log_ratio * centrosymmetric()[g - 1]
    return [int(v) for v in g[np.argsort(-score, kind="stable")]]
