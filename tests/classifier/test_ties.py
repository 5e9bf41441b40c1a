"""Issue 28 item 3: the Wilson centric/acentric statistic of tied groups (measured, not
shipped: benchmarks/tie_intensity.py)."""

import numpy as np
import pytest

pytest.importorskip("spglib")

from xtec.classifier.extinction import ExtinctionClassifier, ExtinctionParams  # noqa: E402
from xtec.classifier.indexing import peaks_at  # noqa: E402
from xtec.classifier.ties import (  # noqa: E402
    centric_log_ratio,
    centrosymmetric,
    normalised_intensities,
    reorder_by_centricity,
)

LAM = 1.5406


def test_centrosymmetric_groups():
    cs = centrosymmetric()
    assert cs.shape == (230,) and cs.sum() == 92  # the 92 centrosymmetric groups
    assert cs[225 - 1] and cs[62 - 1] and cs[14 - 1]
    assert not cs[216 - 1] and not cs[33 - 1] and not cs[1 - 1]


def test_reorder_by_centricity_follows_the_prior_then_the_ratio():
    prior = np.log(np.full(230, 1 / 230))
    prior[[224, 215]] = np.log([0.3, 0.1])  # Fm-3m, F-43m
    assert reorder_by_centricity(prior, (216, 225), 0.0)[0] == 225
    assert reorder_by_centricity(prior, (216, 225), -5.0)[0] == 216
    assert reorder_by_centricity(prior, (216, 225), -0.5)[0] == 225


def test_the_ratio_of_an_indexed_pattern_and_of_too_few_lines():
    # fcc lines (a = 5.64 A), intensities drawn from an acentric (exponential) law.
    n2 = np.array([3, 4, 8, 11, 12, 16, 19, 20, 24, 27, 32, 35, 36, 40])
    tt = 2 * np.degrees(np.arcsin(LAM * np.sqrt(n2) / (2 * 5.64)))
    rng = np.random.default_rng(1)
    peaks = peaks_at(tt, rng.exponential(1.0, len(tt)) + 0.05, LAM, 0.03)
    clf = ExtinctionClassifier(np.ones(230), ExtinctionParams(zero_trials=(0.0,), max_zero=0.1))
    an = clf.analyse(peaks)
    assert an.indexed and 225 in an.groups
    e2, k, e_miss, k_miss = normalised_intensities(an, LAM)
    assert len(e2) == len(tt) and e2.mean() == pytest.approx(1.0)
    assert np.all(k >= 1) and len(e_miss) == len(k_miss)
    assert np.isfinite(centric_log_ratio(an, LAM))
    few = clf.analyse(peaks_at(tt[:4], np.ones(4), LAM, 0.03))
    assert centric_log_ratio(few, LAM) == 0.0
