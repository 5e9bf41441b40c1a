"""Extinction model on line lists: zero shift refined with the cell, figures of merit,
"not indexed" when no cell explains the lines."""

import numpy as np
import pytest

pytest.importorskip("spglib")

from xtec.classifier.explain import describe  # noqa: E402
from xtec.classifier.extinction import ExtinctionClassifier, ExtinctionParams  # noqa: E402
from xtec.classifier.indexing import figures_of_merit, peaks_at, refine_cell  # noqa: E402

LAM = 1.5406
FCC = np.array([3, 4, 8, 11, 12, 16, 19, 20, 24, 27])  # h^2 + k^2 + l^2 of fcc


def _fcc_lines(a=4.0786, zero=0.0):
    tt = 2 * np.degrees(np.arcsin(LAM * np.sqrt(FCC) / (2 * a)))
    tt = tt[tt < 120] + zero
    return peaks_at(tt, np.linspace(1, 0.2, len(tt)), LAM, 0.03)


def _shipped_params():
    return ExtinctionParams(
        zero_trials=(0, -0.06, 0.06),
        max_zero=0.15,
        displacement=True,
        weak_fraction=0.02,
        retry_without_first=1,
    )


def test_zero_shift_is_refined_with_the_cell():
    peaks = _fcc_lines(zero=0.045)
    fit = refine_cell("cubic", np.array([1 / 4.078**2]), peaks, LAM, zero=0.0, displacement=False)
    assert fit.zero == pytest.approx(0.045, abs=2e-3)
    assert fit.lengths()[0] == pytest.approx(4.0786, abs=1e-3)
    assert fit.n_indexed == len(peaks.q) and fit.rms < 0.005


def test_classifier_reports_cell_merit_and_zero_shift():
    clf = ExtinctionClassifier(np.ones(230), _shipped_params())
    an = clf.analyse(_fcc_lines(zero=-0.05))
    assert an.indexed and an.fit.system == "cubic"
    assert an.fit.zero == pytest.approx(-0.05, abs=5e-3)
    assert 225 in an.groups and an.merit["M"] > 20
    top5 = np.argsort(-an.log_scores)[:5] + 1
    assert 225 in top5


def test_lines_no_cell_explains_are_not_indexed():
    rng = np.random.default_rng(0)
    tt = np.sort(rng.uniform(15, 80, 20))
    clf = ExtinctionClassifier(np.ones(230), _shipped_params())
    an = clf.analyse(peaks_at(tt, np.ones(20), LAM, 0.03))
    assert not an.indexed
    found = type("F", (), {})()
    found.two_theta, found.height = tt, np.ones(20)
    found.fwhm, found.significance = np.full(20, 0.1), np.full(20, 10.0)
    found.ka2_stripped, found.gain = False, 1.0
    d = describe(an, found, type("R", (), {"name": "Cu"})())
    assert d["status"] == "not indexed" and "not indexed" in d["reason"]


def test_figures_of_merit_of_a_perfect_cell():
    peaks = _fcc_lines()
    calc = FCC / 4.0786**2
    m = figures_of_merit(calc, peaks, LAM)
    assert m["n_lines"] == len(peaks.q) and m["n_calc"] == len(peaks.q)
    assert m["M"] > 1000 and m["F"] > 100


def test_a_not_indexed_answer_is_reported_with_a_low_probability():
    from xtec.classifier.predictor import temper_unindexed
    from xtec.classifier.symmetry import system_scores

    p = np.zeros(230)
    p[11], p[13] = 0.6, 0.3  # C2/m, P2_1/c
    p[0] = 0.1
    t = temper_unindexed(p)
    assert t.sum() == pytest.approx(1) and np.array_equal(
        np.argsort(-t, kind="stable"), np.argsort(-p, kind="stable")
    )
    assert t.max() < 0.31 and system_scores(t[None], np.arange(1, 231))[0].max() < 0.5
