"""Monoclinic indexing: cells of P2_1/c, C2/c and C2/m line lists with a zero shift are
found (any equivalent setting), and the classifier answers a monoclinic group."""

import numpy as np
import pytest

pytest.importorskip("spglib")

from xtec.classifier.extinction import ExtinctionClassifier, ExtinctionParams  # noqa: E402
from xtec.classifier.indexing import _basis, half_grid, peaks_at  # noqa: E402
from xtec.classifier.monoclinic import index_monoclinic, reduce_cells  # noqa: E402
from xtec.classifier.symmetry import crystal_system_index  # noqa: E402

LAM = 1.5406


def _reciprocal(a, b, c, beta):
    be = np.radians(beta)
    aa, cc = 1 / (a * np.sin(be)) ** 2, 1 / (c * np.sin(be)) ** 2
    return np.array([aa, 1 / b**2, cc, -2 * np.sqrt(aa * cc) * np.cos(be)])


def _lines(cell, condition, zero=0.03, n=20):
    hkl = half_grid("monoclinic", 10)
    h, k, ell = hkl.T
    if condition == "P21/c":
        ok = ~(((k == 0) & (ell % 2 == 1)) | ((h == 0) & (ell == 0) & (k % 2 == 1)))
    elif condition == "C2/c":
        ok = ((h + k) % 2 == 0) & ~((k == 0) & (ell % 2 == 1))
    else:  # C2/m
        ok = (h + k) % 2 == 0
    q = np.unique(np.round(_basis("monoclinic", hkl[ok]) @ _reciprocal(*cell), 8))
    s = LAM * np.sqrt(q[q > 0]) / 2
    tt = np.unique(np.round(np.degrees(2 * np.arcsin(s[s < 1])), 4))
    tt = tt[tt > 5][:n] + zero
    return peaks_at(tt, np.linspace(1, 0.1, len(tt)), LAM, 0.03)


def _volume(params):
    a, b, c, beta = _lengths(params)
    return a * b * c * np.sin(np.radians(beta))


def _lengths(p):
    cos_bs = p[3] / (2 * np.sqrt(p[0] * p[2]))
    sin_bs = np.sqrt(1 - cos_bs**2)
    beta = 180 - np.degrees(np.arccos(cos_bs))
    return 1 / (np.sqrt(p[0]) * sin_bs), 1 / np.sqrt(p[1]), 1 / (np.sqrt(p[2]) * sin_bs), beta


CELLS = [
    ((5.6, 7.9, 9.3, 103.0), "P21/c"),
    ((9.8, 8.9, 5.3, 105.7), "C2/c"),
    ((10.2, 3.4, 6.1, 115.0), "C2/m"),
]


@pytest.mark.parametrize("cell,condition", CELLS)
def test_monoclinic_cells_are_found_with_the_zero_shift(cell, condition):
    found = index_monoclinic(_lines(cell, condition), LAM)
    assert found
    fit, merit = found[0]
    assert fit.system == "monoclinic" and fit.n_indexed == 20 and merit["M"] > 10
    # The same lattice: b and the volume (the a-c setting may differ).
    assert fit.lengths()[1] == pytest.approx(cell[1], rel=2e-3)
    v = cell[0] * cell[1] * cell[2] * np.sin(np.radians(cell[3]))
    assert _volume(fit.params) == pytest.approx(v, rel=3e-3)


def test_reduction_keeps_the_lattice():
    p = _reciprocal(5.6, 7.9, 9.3, 103.0)
    # c* -> c* + 2 a*: another basis of the same net.
    other = np.array([p[0], p[1], p[2] + 2 * p[3] + 4 * p[0], p[3] + 4 * p[0]])
    r = reduce_cells(np.array([p, other]))
    assert np.allclose(r[0], r[1], rtol=1e-9)
    assert r[0, 3] >= 0 and r[0, 3] <= r[0, 0] <= r[0, 2]


def _params(m20):
    return ExtinctionParams(
        zero_trials=(0, -0.06, 0.06),
        max_zero=0.15,
        displacement=True,
        weak_fraction=0.02,
        retry_without_first=1,
        monoclinic_min_m20=m20,
    )


def test_classifier_answers_a_monoclinic_group_for_p21c_lines():
    peaks = _lines(*CELLS[0])
    off = ExtinctionClassifier(np.ones(230), _params(0)).analyse(peaks)
    assert not off.indexed
    an = ExtinctionClassifier(np.ones(230), _params(10)).analyse(peaks)
    assert an.indexed and an.fit.system == "monoclinic"
    top = int(np.argmax(an.log_scores)) + 1
    assert crystal_system_index(top) == 1  # monoclinic
    assert 14 in an.groups and top == 14  # P2_1/c: h0l l odd and 0k0 k odd absent
    assert an.merit["M"] > 20


def test_random_lines_stay_not_indexed_with_the_monoclinic_search():
    rng = np.random.default_rng(0)
    tt = np.sort(rng.uniform(15, 80, 20))
    an = ExtinctionClassifier(np.ones(230), _params(10)).analyse(
        peaks_at(tt, np.ones(20), LAM, 0.03)
    )
    assert not an.indexed


def test_a_pattern_no_cell_indexes_gives_no_space_group(tmp_path, capsys):
    from xtec.cli.main import main

    rng = np.random.default_rng(1)
    x = np.arange(10, 80, 0.02)
    y = np.full_like(x, 50.0)
    for t, h in zip(rng.uniform(15, 75, 18), rng.uniform(500, 5000, 18), strict=True):
        y += h * np.exp(-0.5 * ((x - t) / 0.05) ** 2)
    f = tmp_path / "random.xy"
    np.savetxt(f, np.column_stack([x, rng.poisson(y)]))
    from xtec.classifier.predictor import predict_files

    (r,) = predict_files([f])
    assert r["status"] == "not indexed" and r["answer"] is None
    assert main(["classify", "predict", str(f)]) == 0
    assert "not indexed, no space group given" in capsys.readouterr().out


def test_a_rhombic_monoclinic_net_is_c_centred_orthorhombic():
    from xtec.classifier.monoclinic import orthorhombic_of

    a, b, c = 5.26, 13.16, 21.58  # C-centred orthorhombic (h + k even)
    # Primitive cell with c unique: a' = (a + b) / 2, c' = (a - b) / 2 (equal lengths);
    # its reciprocal net (a*' = a* + b*, c*' = a* - b*) is rhombic.
    A, C = 1 / a**2 + 1 / b**2, 1 / a**2 + 1 / b**2
    D = 2 * (1 / a**2 - 1 / b**2)
    mono = reduce_cells(np.array([[A, 1 / c**2, C, D]]))[0]
    ortho = orthorhombic_of(mono)
    assert ortho is not None
    assert np.allclose(np.sort(1 / np.sqrt(ortho)), [a, b, c], rtol=1e-9)
    assert orthorhombic_of(_reciprocal(5.6, 7.9, 9.3, 103.0)) is None
    assert np.allclose(
        orthorhombic_of(_reciprocal(5.6, 7.9, 9.3, 90.0)), 1 / np.array([5.6, 7.9, 9.3]) ** 2
    )
    # The other reduced form: a rhombic net with an obtuse angle (A = C).
    a, b = 5.26, 6.0
    mono = reduce_cells(
        np.array([[1 / a**2 + 1 / b**2, 1 / c**2, 1 / a**2 + 1 / b**2, 2 * (1 / a**2 - 1 / b**2)]])
    )[0]
    assert np.allclose(np.sort(1 / np.sqrt(orthorhombic_of(mono))), [a, b, c], rtol=1e-9)


def test_a_monoclinic_main_phase_is_indexed_from_its_strong_lines():
    """P2_1/c lines (10-100 % of the strongest) with three weak impurity lines (4 %): no
    cell indexes every line but one; the strong lines alone give the cell (M20 >= 50) and
    the answer "more than one phase", the impurity lines unexplained."""
    main = _lines(*CELLS[0], n=16)
    # Two below the main phase's first line, one between its lines.
    extra = np.array([7.1, 8.3, main.two_theta[5] + 0.53])
    tt = np.concatenate([main.two_theta, extra])
    order = np.argsort(tt)
    inten = np.concatenate([main.intensity, np.full(3, 0.04)])[order]
    peaks = peaks_at(tt[order], inten, LAM, 0.03)
    params = _params(10)
    assert ExtinctionClassifier(np.ones(230), params).analyse(peaks).indexed is False
    params.main_phase_monoclinic_m20 = 50.0
    an = ExtinctionClassifier(np.ones(230), params).analyse(peaks)
    assert an.indexed and an.phases == 2 and an.fit.system == "monoclinic"
    assert int(np.argmax(an.log_scores)) + 1 == 14
    assert sorted(an.unexplained) == pytest.approx(sorted(extra), abs=0.01)
