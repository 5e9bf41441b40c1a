"""Issue 28: a trial cell's error grows with the angle, an orthorhombic cell of a higher
metric is the higher cell, and a main phase's absences are read on every line."""

import numpy as np
import pytest

pytest.importorskip("spglib")

from xtec.classifier.extinction import ExtinctionClassifier, ExtinctionParams  # noqa: E402
from xtec.classifier.indexing import higher_metric, index_cells, peaks_at  # noqa: E402

LAM = 1.5406


def _cubic_lines(a, n2, zero=0.0, intensity=None):
    tt = 2 * np.degrees(np.arcsin(LAM * np.sqrt(np.asarray(n2, float)) / (2 * a)))
    keep = tt < 120
    inten = np.linspace(1, 0.2, len(tt)) if intensity is None else np.asarray(intensity, float)
    return peaks_at(tt[keep] + zero, inten[keep], LAM, 0.03)


def test_a_cubic_cell_of_shifted_lines_up_to_high_angles_is_found():
    # LiH-like fcc (a = 4.027 A) shifted by 0.08 degrees (zero shift and sample
    # displacement, as a lab pattern of the statistics half had it): the trial cell
    # solved from the first line is off by 0.4 degrees at 117 degrees.
    peaks = _cubic_lines(4.027, [3, 4, 8, 11, 12, 16, 19, 20], zero=0.08)
    cells = index_cells("cubic", peaks)
    assert any(abs(1 / np.sqrt(c[0]) - 4.027) < 0.02 for c in cells)


def test_orthohexagonal_and_square_orthorhombic_cells_are_higher():
    a, c = 3.249, 5.206
    hexa = higher_metric("orthorhombic", np.array([1 / (np.sqrt(3) * a) ** 2, 1 / c**2, 1 / a**2]))
    assert [s for s, _ in hexa] == ["hexagonal"]
    p = hexa[0][1]
    assert np.sqrt(4 / (3 * p[0])) == pytest.approx(a, rel=1e-6)
    assert 1 / np.sqrt(p[1]) == pytest.approx(c, rel=1e-6)
    tetra = higher_metric("orthorhombic", np.array([1 / 5.674**2, 1 / 4.507**2, 1 / 5.672**2]))
    assert [s for s, _ in tetra] == ["tetragonal"]
    assert higher_metric("orthorhombic", np.array([1 / 8.48**2, 1 / 6.96**2, 1 / 5.40**2])) == []


def test_an_orthohexagonal_fit_is_scored_as_hexagonal():
    # Zinc-like hexagonal lines (a 2.665, c 4.947 A), every hkl: the C-centred
    # orthorhombic cell (a, sqrt(3) a, c) explains them as well, with one more parameter.
    a, c = 2.665, 4.947
    hkl = [(h, k, m) for h in range(4) for k in range(4) for m in range(5) if h + k + m > 0]
    q = sorted({round(4 / 3 * (h * h + h * k + k * k) / a**2 + m * m / c**2, 6) for h, k, m in hkl})
    s = LAM * np.sqrt(np.array(q)) / 2
    tt = 2 * np.degrees(np.arcsin(s[s < np.sin(np.radians(50))]))
    peaks = peaks_at(tt, np.linspace(1, 0.3, len(tt)), LAM, 0.03)
    clf = ExtinctionClassifier(np.ones(230), ExtinctionParams(zero_trials=(0.0,), max_zero=0.1))
    fit = clf._fit(
        "orthorhombic", np.array([1 / a**2, 1 / (3 * a**2), 1 / c**2]), peaks, peaks, 0, LAM
    )
    systems = [s for s, _ in clf._higher_metric(fit)]
    assert systems == ["hexagonal"]
    an = clf.analyse(peaks)
    assert an.indexed and an.fit.system == "hexagonal"


def test_a_main_phase_reads_its_absences_on_every_line():
    # A primitive cubic cell (a = 4 A) whose strong lines all have h + k + l even (they
    # alone read as body-centred) and whose weak lines, h + k + l odd, lie among the
    # other phase's: on every line the primitive groups come first.
    n2 = np.arange(1, 23)
    n2 = n2[~np.isin(n2, [7, 15])]  # not sums of three squares
    odd = np.array([n in (1, 3, 5, 9, 11, 13, 17, 19, 21) for n in n2])  # h+k+l odd only
    inten = np.where(odd, 0.05, 1.0)
    all_lines = _cubic_lines(4.0, n2, intensity=inten)
    strong = all_lines.intensity >= 0.5
    sub = peaks_at(all_lines.two_theta[strong], all_lines.intensity[strong], LAM, 0.03)
    prior = np.ones(230)
    prior[[220, 228]] = 10.0, 50.0  # Pm-3m, Im-3m
    clf = ExtinctionClassifier(prior, ExtinctionParams(zero_trials=(0.0,), max_zero=0.1))
    alt = clf._analyse(sub)
    assert alt.indexed and 229 in alt.groups and 221 not in alt.groups
    res = clf._with_all_lines(alt, all_lines, LAM)
    assert res.phases == 2 and 221 in res.groups
    assert int(np.argmax(res.log_scores)) + 1 == 221


def test_rhombohedral_and_tetragonal_cells_of_a_cubic_lattice_are_cubic():
    a = 4.027  # fcc: rhombohedral primitive cell, a_h = a / sqrt(2), c_h = a sqrt(3)
    rhombo = higher_metric("hexagonal", np.array([4 / 3 / (a / np.sqrt(2)) ** 2, 1 / (3 * a**2)]))
    assert len(rhombo) == 1 and rhombo[0][0] == "cubic"
    assert 1 / np.sqrt(rhombo[0][1][0]) == pytest.approx(a, rel=1e-9)
    # fcc as a body-centred tetragonal cell: a_t = a / sqrt(2), c_t = a.
    tetra = higher_metric("tetragonal", np.array([2 / a**2, 1 / a**2]))
    assert [s for s, _ in tetra] == ["cubic"]
    assert 1 / np.sqrt(tetra[0][1][0]) == pytest.approx(a, rel=1e-9)
    assert higher_metric("hexagonal", np.array([4 / 3 / 2.665**2, 1 / 4.947**2])) == []
    assert higher_metric("cubic", np.array([1 / a**2])) == []
