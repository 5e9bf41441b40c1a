"""Space groups of an indexed powder pattern: systematic absences times a prior.

The classical crystallographer's route, made automatic: the lines of a pattern
(:mod:`xtec.classifier.intake` for measured counts, :func:`.indexing.find_peaks` for
noise-free patterns) are indexed (:mod:`xtec.classifier.indexing`, cell refined with the
zero shift), the lines each space-group setting allows are compared with the lines
observed, and the space groups are ranked by that likelihood times their frequency in
real crystals (:mod:`xtec.classifier.statistics`).

* Extinctions: a reflection h is absent in a setting when an operation (R, t) of the
  setting has ``h R = h`` and ``h . t`` not an integer.  All settings (spglib's Hall
  numbers, hexagonal axes for R groups) are tried, so axis order does not matter.
* Likelihood: each allowed line is seen with probability ``1 - p_miss`` (weak or
  overlapped lines go missing), each observed line that no allowed reflection explains
  costs ``log p_unexplained``, and each free cell parameter costs ``occam`` nats so that
  a lower-symmetry cell that fits only as well as a higher one loses.
* Monoclinic and triclinic groups first get a fixed "no cell needed" likelihood.  When
  it beats every cubic to orthorhombic cell, the strong lines alone (a main phase,
  taken by likelihood or at M20 >= ``main_phase_min_m20``), the lines without the
  lowest one, monoclinic cells (:mod:`.monoclinic`, taken at M20 >=
  ``monoclinic_min_m20``) and monoclinic cells of the strong lines (M20 >=
  ``main_phase_monoclinic_m20``) and last triclinic cells (:mod:`.triclinic`, taken
  at M20 >= ``triclinic_min_m20``) are tried; when none indexes, the pattern is
  reported as **not indexed** (no space group given; a cell the search missed, or
  more than one phase).

Space groups that share a lattice and an extinction symbol (e.g. P2/m, P2 and Pm, or
Pnma and Pna2_1) cannot be told apart by line positions; the frequency prior orders
them, which is also what a crystallographer does.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

import numpy as np

from xtec.classifier.indexing import (
    INDEXED_SYSTEMS,
    CellFit,
    Peaks,
    _basis,
    _hkl_grid,
    figures_of_merit,
    find_peaks,
    higher_metric,
    index_cells,
    peaks_at,
    refine_cell,
    shifted,
)
from xtec.classifier.monoclinic import index_monoclinic, orthorhombic_of
from xtec.classifier.symmetry import CRYSTAL_SYSTEMS, crystal_system_index
from xtec.classifier.triclinic import index_triclinic
from xtec.errors import ParameterError

log = logging.getLogger(__name__)


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
        if system == "monoclinic" and not t.choice.lstrip("-").startswith("b"):
            continue  # cells are indexed with b unique
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


def _line_likelihood(
    calc_q: np.ndarray,
    peaks: Peaks,
    p_miss: float,
    p_unexplained: float,
    weak: np.ndarray | None = None,
    p_unexplained_weak: float = 0.05,
) -> float:
    """Log-likelihood of the observed lines given the allowed lines ``calc_q``.

    Unexplained lines flagged ``weak`` (satellites, impurities, noise that passed the
    search) cost ``log p_unexplained_weak`` instead of ``log p_unexplained``.
    """
    q, tol = peaks.q, peaks.tol
    qmax = q[-1] + tol[-1]
    c = np.sort(calc_q[calc_q <= qmax])
    cost = np.full(len(q), np.log(p_unexplained))
    if weak is not None:
        cost[weak] = np.log(p_unexplained_weak)
    if len(c) == 0:
        return float(cost.sum())
    # Merge calculated lines closer than the tolerance at their position.
    tol_c = np.interp(c, q, tol)
    new = np.concatenate([[True], np.diff(c) > tol_c[1:]])
    lines = c[new]
    ltol = tol_c[new]
    d = np.abs(lines[:, None] - q[None, :])
    seen = (d <= np.maximum(ltol[:, None], tol[None, :])).any(1)
    explained = (d <= np.maximum(ltol[:, None], tol[None, :])).any(0)
    return float(
        seen.sum() * np.log(1 - p_miss) + (~seen).sum() * np.log(p_miss) + cost[~explained].sum()
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
    # Zero shifts (degrees) tried before refining the cell with the zero shift; more
    # than one only when the first does not explain every line.
    zero_trials: tuple = (0.0,)
    max_zero: float = 0.0  # 0: no zero-shift refinement (the cell as index_cells gives it)
    displacement: bool = False
    # Lines weaker than this fraction of the strongest cost p_unexplained_weak when no
    # allowed reflection explains them.
    weak_fraction: float = 0.0
    p_unexplained_weak: float = 0.05
    # 1: when nothing indexes, try the strong lines alone (a main phase) and the lines
    # without the lowest one.
    retry_without_first: int = 0
    strong_fraction: float = 0.1
    # > 0: a main phase is also taken when its cell indexes every strong line with de
    # Wolff M20 (on those lines) of at least this, though the likelihood of the strong
    # lines alone prefers no cell (every weak line of the cell counts as missed there);
    # the strong lines are then those above each of ``main_phase_fractions`` in turn.
    main_phase_min_m20: float = 0.0
    main_phase_fractions: tuple = ()
    # > 0: last, a monoclinic cell of the strong lines (above ``strong_fraction``, at
    # least eight) that indexes every one with M20 of at least this (high: a monoclinic
    # cell has four parameters to fit a few lines with).
    main_phase_monoclinic_m20: float = 0.0
    # > 0: when nothing of higher symmetry indexes, search monoclinic cells
    # (:mod:`.monoclinic`) and take the best if it indexes all but at most one line with
    # de Wolff M20 of at least this.
    monoclinic_min_m20: float = 0.0
    # > 0: last of all, a triclinic cell (:mod:`.triclinic`) that indexes all but at
    # most one line with M20 of at least this (high: six parameters; cells found in
    # random line lists reach M20 2-6, real triclinic cells 55-230).
    triclinic_min_m20: float = 0.0


@dataclass
class Analysis:
    """What the classifier saw and concluded for one pattern."""

    log_scores: np.ndarray  # (230,), unnormalised, prior included
    peaks: Peaks  # the lines used (as observed)
    indexed: bool
    fit: CellFit | None = None  # the best cell (zero shift refined)
    groups: tuple = ()  # space groups sharing the best cell's absences
    log_likelihood: float = -np.inf
    low_symmetry_log_likelihood: float = -np.inf
    merit: dict = field(default_factory=dict)
    unexplained: list = field(default_factory=list)  # 2-theta of lines the cell leaves
    allowed_q: np.ndarray = field(default_factory=lambda: np.zeros(0))  # the cell's lines
    phases: int = 1  # 2: the strong lines index as one phase, the rest do not


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

    def analyse(self, peaks: Peaks, wavelength: float | None = None) -> Analysis:
        """Index ``peaks`` (sorted by angle) and score the 230 space groups.

        When no cell indexes the lines, the lowest line (most often a stray one: an
        impurity, a detector edge, a beam-stop shadow) is set aside and the rest tried;
        the line set aside then costs ``log p_unexplained``.
        """
        out = self._analyse(peaks, wavelength)
        n = len(peaks.q)
        if out.indexed or n < 6:
            return out
        if self.params.retry_without_first:
            for fraction in (self.params.strong_fraction, *self.params.main_phase_fractions):
                main = self._main_phase(peaks, wavelength, fraction)
                if main is not None:
                    return main
        alt = self._stray_line(peaks, wavelength, out) if self.params.retry_without_first else None
        if alt is not None:
            return alt
        # Higher symmetry first: monoclinic, then triclinic cells only when none of the
        # above indexes (each search switched on by its M20 threshold).
        pr = self.params
        for threshold, search in ((pr.monoclinic_min_m20, self._monoclinic),
                                  (pr.main_phase_monoclinic_m20, self._monoclinic_main_phase),
                                  (pr.triclinic_min_m20, self._triclinic)):
            if threshold > 0:
                alt = search(peaks, wavelength, out)
                if alt is not None:
                    return alt
        return out

    def _triclinic(self, peaks: Peaks, wavelength, out: Analysis) -> Analysis | None:
        """The best triclinic cell when it indexes all but at most one line with M20 >=
        ``triclinic_min_m20``: P1 and P-1 go on top of the ranking."""
        lam = self.wavelength if wavelength is None else float(wavelength)
        fit = self._indexed(index_triclinic, peaks, lam, 1, self.params.triclinic_min_m20)
        return None if fit is None else self._promote(fit, peaks, lam, out)

    def _indexed(self, search, peaks: Peaks, lam: float, misses: int,
                 min_m20: float) -> CellFit | None:
        """The best cell ``search`` (:func:`index_monoclinic`, :func:`index_triclinic`)
        finds, when it indexes all but at most ``misses`` lines with M20 >= ``min_m20``."""
        pr = self.params
        found = search(peaks, lam, pr.zero_trials, pr.max_zero, pr.displacement)
        if not found:
            return None
        fit, merit = found[0]
        if fit.n_indexed < len(peaks.q) - misses or merit["M"] < min_m20:
            return None
        return fit

    def _monoclinic_main_phase(self, peaks: Peaks, wavelength, out: Analysis):
        """A monoclinic main phase: a cell of the strong lines alone (at least eight) that
        indexes every one with M20 >= ``main_phase_monoclinic_m20``."""
        pr = self.params
        strong = peaks.intensity / max(peaks.intensity.max(), 1e-300) >= pr.strong_fraction
        if strong.sum() < 8 or strong.all():
            return None
        sub = Peaks(*(v[strong] for v in (peaks.two_theta, peaks.q, peaks.tol, peaks.intensity)))
        alt = self._monoclinic(sub, wavelength, out, pr.main_phase_monoclinic_m20, misses=0)
        if alt is None:
            return None
        lam = self.wavelength if wavelength is None else float(wavelength)
        return self._with_all_lines(alt, peaks, lam)

    def _main_phase_by_merit(self, sub: Peaks, wavelength) -> Analysis | None:
        """The best cell of the strong lines ``sub`` (every zero trial) when it indexes
        every one of them with M20 >= ``main_phase_min_m20``: its system's groups are put
        on top of the ranking (a strong-line subset leaves most of a cell's weak lines
        unobserved, so the likelihood alone would prefer "no cell")."""
        if len(sub.q) < 5:
            return None
        alt = self._analyse(sub, wavelength)
        if alt.indexed or alt.fit is None or alt.unexplained:
            return alt if alt.indexed else None
        if alt.merit.get("M", 0.0) < self.params.main_phase_min_m20:
            return None
        lam = self.wavelength if wavelength is None else float(wavelength)
        return self._promote(alt.fit, sub, lam, alt)

    def _stray_line(self, peaks: Peaks, wavelength, out: Analysis) -> Analysis | None:
        """The lines without the lowest one, when a cell indexes them and wins even with
        that line unexplained."""
        rest = Peaks(peaks.two_theta[1:], peaks.q[1:], peaks.tol[1:], peaks.intensity[1:])
        alt = self._analyse(rest, wavelength, first_trial_only=True)
        if not alt.indexed:
            return None
        # Every group's score with the first line unexplained, against the full set's.
        alt.log_scores = alt.log_scores + np.log(self.params.p_unexplained)
        if alt.log_scores.max() <= out.log_scores.max():
            return None
        alt.log_scores = np.maximum(alt.log_scores, out.log_scores)
        alt.peaks = peaks
        alt.unexplained = [float(peaks.two_theta[0]), *alt.unexplained]
        return alt

    def _main_phase(self, peaks: Peaks, wavelength, fraction: float) -> Analysis | None:
        """The strong lines alone (above ``fraction`` of the strongest): if a cell
        indexes every one of them while the full set indexes nothing, the pattern holds
        more than one phase and this is the main one."""
        pr = self.params
        rel = peaks.intensity / max(peaks.intensity.max(), 1e-300)
        strong = rel >= fraction
        if strong.sum() < 4 or strong.all():
            return None
        sub = Peaks(
            peaks.two_theta[strong], peaks.q[strong], peaks.tol[strong], peaks.intensity[strong]
        )
        alt = self._analyse(sub, wavelength, first_trial_only=True)
        if not (alt.indexed and not alt.unexplained) and pr.main_phase_min_m20 > 0:
            alt = self._main_phase_by_merit(sub, wavelength)
            if alt is None:
                return None
        if not alt.indexed or alt.unexplained:
            return None
        lam = self.wavelength if wavelength is None else float(wavelength)
        return self._with_all_lines(alt, peaks, lam)

    def _with_all_lines(self, alt: Analysis, peaks: Peaks, lam: float) -> Analysis:
        """The main phase ``alt`` of a strong-line subset reported on every line: the
        lines its cell leaves unexplained belong to another phase.

        Its cell's absence classes are scored again on every line: the weak lines of
        the main phase are what tells a class with fewer absences from one with more
        (on the strong lines alone, Pnma and Pmn2_1 fit alike); a line of the other
        phase costs every class the same unless one of them happens to explain it.
        """
        fit = alt.fit
        # Every line, corrected as the main phase's cell is.
        cos_t = np.cos(np.radians(peaks.two_theta / 2))
        corr = peaks_at(
            peaks.two_theta - fit.zero - fit.displacement * cos_t, peaks.intensity, lam, 0.0
        )
        corr.tol = peaks.tol
        whole = CellFit(
            fit.system, fit.params, fit.zero, fit.displacement, corr, fit.n_indexed, fit.rms
        )
        res = self._promote(whole, peaks, lam, alt)
        res.merit = alt.merit  # the figures of merit of the lines the cell was found on
        res.phases = 2
        return res

    def _analyse(
        self, peaks: Peaks, wavelength: float | None = None, first_trial_only: bool = False
    ) -> Analysis:
        pr = self.params
        lam = self.wavelength if wavelength is None else float(wavelength)
        n_obs = len(peaks.q)
        rel = peaks.intensity / max(peaks.intensity.max(), 1e-300) if n_obs else peaks.intensity
        weak = rel < pr.weak_fraction if pr.weak_fraction > 0 else None
        sg_ll = np.full(230, -np.inf)
        sys_idx = np.asarray(crystal_system_index(self.space_groups))
        low = np.isin(
            sys_idx, [CRYSTAL_SYSTEMS.index("triclinic"), CRYSTAL_SYSTEMS.index("monoclinic")]
        )
        low_ll = pr.low_symmetry_per_line * n_obs - pr.occam * 4
        sg_ll[low] = low_ll
        # All lines explained, at most a third of the allowed lines missing.
        full_fit = n_obs * np.log(1 - pr.p_miss) + n_obs / 2 * np.log(pr.p_miss) - pr.occam * 2
        best = -np.inf
        fits, sg_fit = [], np.full(230, -1)
        if n_obs >= 2:
            for zero in pr.zero_trials[:1] if first_trial_only else pr.zero_trials:
                if best > full_fit:
                    break
                trial = shifted(peaks, zero, lam)
                for system in INDEXED_SYSTEMS:
                    if best > full_fit:
                        # A higher-symmetry cell already explains every line: a lower one
                        # could only match it, and it pays for its extra parameters.
                        break
                    for params in index_cells(system, trial):
                        fit = self._fit(system, params, peaks, trial, zero, lam)
                        best = max(best, self._score_fit(fit, weak, sg_ll, sg_fit, fits))
                        for higher, hp in self._higher_metric(fit):
                            fit = self._fit(higher, hp, peaks, trial, zero, lam)
                            best = max(best, self._score_fit(fit, weak, sg_ll, sg_fit, fits))
        if not np.isfinite(sg_ll).any():
            sg_ll[:] = 0.0
        scores = np.where(np.isfinite(sg_ll), sg_ll, -1e6) + self.log_prior
        top = int(np.argmax(scores))
        # The cell behind the answer: the top group's, else the best indexed one.
        k = (
            sg_fit[top]
            if sg_fit[top] >= 0
            else (max(range(len(fits)), key=lambda i: fits[i][0]) if fits else -1)
        )
        out = Analysis(scores, peaks, bool(sg_fit[top] >= 0), low_symmetry_log_likelihood=low_ll)
        if k >= 0:
            ll, fit, allowed, sgs = fits[k]
            out.fit, out.groups, out.log_likelihood = fit, tuple(sgs), float(ll)
            out.merit = figures_of_merit(allowed, fit.peaks, lam)
            out.allowed_q = allowed
            q, tol = fit.peaks.q, fit.peaks.tol
            hit = (np.abs(allowed[None, :] - q[:, None]) <= tol[:, None]).any(1)
            out.unexplained = [float(t) for t in peaks.two_theta[~hit]]
        return out

    @staticmethod
    def _higher_metric(fit: CellFit) -> list:
        """The cells of higher symmetry a fit's metric is (scored beside it: they fit
        as well with fewer parameters)."""
        return higher_metric(fit.system, fit.params)

    def _score_fit(self, fit: CellFit, weak, sg_ll, sg_fit, fits) -> float:
        """Score every absence class of ``fit``'s system; update the best likelihood of
        each space group (``sg_ll``, in place), the fit behind it (``sg_fit``, an index
        into ``fits``, appended to).  Returns the best likelihood."""
        pr = self.params
        n_par = len(fit.params)
        hkl, masks, groups = _extinction_classes(fit.system, 10 if n_par > 1 else 14)
        calc = _basis(fit.system, hkl) @ fit.params
        best = -np.inf
        for m, sgs in zip(masks, groups, strict=True):
            ll = _line_likelihood(
                calc[m], fit.peaks, pr.p_miss, pr.p_unexplained, weak, pr.p_unexplained_weak
            )
            ll -= pr.occam * n_par
            idx = np.asarray(sgs) - 1
            better = idx[ll > sg_ll[idx]]
            if len(better):
                sg_ll[better] = ll
                sg_fit[better] = len(fits)
                fits.append((ll, fit, calc[m], sgs))
            best = max(best, ll)
        return best

    def _monoclinic(
        self, peaks: Peaks, wavelength, out: Analysis, min_m20: float = 0.0, misses: int = 1
    ) -> Analysis | None:
        """The best monoclinic cell (orthorhombic when beta is 90) when it indexes all but
        at most one line with M20 >= ``monoclinic_min_m20``: its system's groups go on top
        of the ranking (ordered by absences x prior), the rest keep their order below."""
        pr = self.params
        lam = self.wavelength if wavelength is None else float(wavelength)
        fit = self._indexed(index_monoclinic, peaks, lam, misses,
                            min_m20 or pr.monoclinic_min_m20)
        if fit is None:
            return None
        ortho_params = orthorhombic_of(fit.params)
        if ortho_params is not None:
            ortho = refine_cell(
                "orthorhombic",
                ortho_params,
                peaks,
                lam,
                pr.max_zero,
                pr.displacement,
                zero=fit.zero,
            )
            if ortho.n_indexed >= fit.n_indexed:
                fit = ortho
        return self._promote(fit, peaks, lam, out)

    def _promote(self, fit: CellFit, peaks: Peaks, lam: float, out: Analysis) -> Analysis:
        """``fit``'s system's groups (ordered by absences x prior) on top of ``out``'s
        ranking, the rest kept in their order below."""
        pr = self.params
        rel = peaks.intensity / max(peaks.intensity.max(), 1e-300)
        weak = rel < pr.weak_fraction if pr.weak_fraction > 0 else None
        sg_ll, sg_fit, fits = np.full(230, -np.inf), np.full(230, -1), []
        self._score_fit(fit, weak, sg_ll, sg_fit, fits)
        mine = np.isfinite(sg_ll)
        cand = sg_ll[mine] + self.log_prior[mine]
        scores = out.log_scores.copy()
        # The top group alone outweighs every other system's groups together, so that the
        # crystal system read from the summed probabilities is the cell's.
        rest = scores[~mine]
        rest_lse = rest.max() + np.log(np.exp(rest - rest.max()).sum()) if len(rest) else -np.inf
        scores[mine] = cand - cand.max() + max(out.log_scores.max(), rest_lse) + 1.0
        top = int(np.argmax(scores))
        ll, fit, allowed, sgs = fits[sg_fit[top]]
        res = Analysis(
            scores, peaks, True, fit, tuple(sgs), float(ll), out.low_symmetry_log_likelihood
        )
        res.merit = figures_of_merit(allowed, fit.peaks, lam)
        res.allowed_q = allowed
        hit = (np.abs(allowed[None, :] - fit.peaks.q[:, None]) <= fit.peaks.tol[:, None]).any(1)
        res.unexplained = [float(t) for t in peaks.two_theta[~hit]]
        return res

    def _fit(self, system, params, peaks, trial, zero, lam) -> CellFit:
        pr = self.params
        if pr.max_zero <= 0:
            return CellFit(system, params, 0.0, 0.0, trial, len(trial.q), 0.0)
        fit = refine_cell(system, params, peaks, lam, pr.max_zero, pr.displacement, zero=zero)
        if fit.n_indexed == 0:
            return CellFit(system, params, zero, 0.0, trial, len(trial.q), 0.0)
        return fit

    def lines(self, two_theta: np.ndarray, intensity: np.ndarray) -> Peaks:
        """Lines of a noise-free pattern (linear intensity) on this model's settings."""
        pr = self.params
        return find_peaks(
            two_theta, intensity, self.wavelength, pr.threshold, pr.tol_two_theta, pr.max_peaks
        )

    def log_scores(self, two_theta: np.ndarray, intensity: np.ndarray) -> np.ndarray:
        """Unnormalised log-probabilities of space groups 1..230, shape (230,)."""
        return self.analyse(self.lines(two_theta, intensity)).log_scores

    def predict_proba(self, two_theta: np.ndarray, intensity: np.ndarray) -> np.ndarray:
        """Space-group probabilities (230,) of one pattern (linear intensity)."""
        return probabilities(self.log_scores(two_theta, intensity))

    def predict_proba_many(self, two_theta: np.ndarray, patterns: np.ndarray) -> np.ndarray:
        """Probabilities (n, 230) of patterns (n, n_points) sharing one 2-theta grid."""
        return np.array([self.predict_proba(two_theta, p) for p in np.atleast_2d(patterns)])


def probabilities(log_scores: np.ndarray) -> np.ndarray:
    """Normalised probabilities of unnormalised log-scores."""
    s = np.exp(log_scores - log_scores.max())
    return s / s.sum()
