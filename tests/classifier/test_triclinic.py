"""Triclinic cells indexed (issue 28, item 2): Ito's zones on patterns pymatgen
simulates from triclinic lattices, none from random line lists, and P1 / P-1 on
top where nothing of higher symmetry indexes."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

pytest.importorskip("pymatgen")

from pymatgen.analysis.diffraction.xrd import XRDCalculator  # noqa: E402
from pymatgen.core import Lattice, Structure  # noqa: E402

from xtec.classifier import triclinic  # noqa: E402
from xtec.classifier.explain import describe  # noqa: E402
from xtec.classifier.indexing import half_grid, peaks_at, triclinic_basis  # noqa: E402
from xtec.classifier.predictor import DEFAULT_MODEL, load_classifier  # noqa: E402
from xtec.classifier.triclinic import cell_volume, doubled_cells, index_triclinic  # noqa: E402

CU = 1.5406


def _pattern(seed: int, zero: float = 0.02):
    """The first 20 lines (above 1% of the strongest) of a random P1 crystal, with a zero
    shift and 0.005 degree of scatter on the positions: (peaks, cell volume)."""
    rng = np.random.default_rng(seed)
    lattice = Lattice.from_parameters(*rng.uniform(4, 9, 3), *rng.uniform(75, 110, 3))
    species = ["Si", "O", "Na", "Cl", "Ca"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = XRDCalculator().get_pattern(Structure(lattice, species, rng.random((5, 3))),
                                        two_theta_range=(5, 70))
    keep = p.y > 1.0
    tt, y = p.x[keep][:20], p.y[keep][:20]
    tt = tt + zero + rng.normal(0, 0.005, len(tt))
    return peaks_at(tt, y / y.max(), CU, 0.03), lattice.volume


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_triclinic_cell_is_found(seed):
    peaks, volume = _pattern(seed)
    found = index_triclinic(peaks, CU, zero_trials=(0.0, -0.06, 0.06))
    fit, merit = found[0]
    assert fit.system == "triclinic" and fit.n_indexed == len(peaks.q)
    assert cell_volume(fit.params) == pytest.approx(volume, rel=0.01)
    assert merit["M"] > 50
    a, b, c, *angles = fit.lengths()
    assert a * b * c > 0 and all(0 < x < 180 for x in angles)


def test_random_lines_give_no_convincing_cell():
    rng = np.random.default_rng(5)
    for _ in range(4):
        peaks = peaks_at(np.sort(rng.uniform(10, 60, 20)), rng.random(20), CU, 0.03)
        found = index_triclinic(peaks, CU)
        assert not found or found[0][1]["M"] < 10


def test_the_classifier_answers_p1_or_p_1_for_a_triclinic_pattern():
    model = load_classifier(DEFAULT_MODEL).classifier
    peaks, _ = _pattern(1)
    an = model.analyse(peaks, CU)
    assert an.indexed and an.fit.system == "triclinic"
    assert set(np.argsort(-an.log_scores)[:2] + 1) == {1, 2}
    # what predict --json shows of it: six cell parameters and the figures of merit
    found = type("F", (), {})()
    found.two_theta, found.height = peaks.two_theta, peaks.intensity
    found.fwhm, found.significance = np.full(len(peaks.q), 0.1), np.full(len(peaks.q), 10.0)
    found.ka2_stripped, found.gain = False, 1.0
    cell = describe(an, found, type("R", (), {"name": "Cu"})())["cell"]
    assert cell["system"] == "triclinic" and cell["M20"] > 50
    assert {"a", "b", "c", "alpha", "beta", "gamma"} <= set(cell)
    assert cell["a"] * cell["b"] * cell["c"] > 0
    # Without the triclinic search the same lines index nothing.
    off = dataclasses.replace(model.params, triclinic_min_m20=0.0)
    saved, model.params = model.params, off
    try:
        assert not model.analyse(peaks, CU).indexed
    finally:
        model.params = saved


def _pseudo_translated(seed: int):
    """A P1 crystal whose atoms nearly repeat at c/2: its odd-l lines are weak, most
    below the 1.5% cut, so the lowest lines span half the reciprocal lattice."""
    rng = np.random.default_rng(seed)
    lattice = Lattice.from_parameters(*rng.uniform(4, 8, 2), rng.uniform(9, 14),
                                      *rng.uniform(75, 110, 3))
    base = rng.random((3, 3))
    coords = np.concatenate([base, (base + [0.03, 0.02, 0.5]) % 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = XRDCalculator().get_pattern(Structure(lattice, ["Ca", "Si", "O"] * 2, coords),
                                        two_theta_range=(5, 70))
    keep = p.y > 1.5
    tt, y = p.x[keep][:20], p.y[keep][:20]
    tt = tt + 0.02 + rng.normal(0, 0.005, len(tt))
    return peaks_at(tt, y / y.max(), CU, 0.03), lattice.volume


@pytest.mark.parametrize("seed", [0, 2])
def test_a_cell_of_twice_the_zones_volume_is_found(seed, monkeypatch):
    peaks, volume = _pseudo_translated(seed)
    fit, merit = index_triclinic(peaks, CU, zero_trials=(0.0, -0.06, 0.06))[0]
    assert cell_volume(fit.params) == pytest.approx(volume, rel=0.01)
    assert fit.n_indexed == len(peaks.q) and merit["M"] > 50
    # The zones alone give the half cell, which leaves a line unexplained.
    monkeypatch.setattr(triclinic, "_doubled_fits", lambda *a, **k: [])
    half, _ = index_triclinic(peaks, CU, zero_trials=(0.0, -0.06, 0.06))[0]
    assert cell_volume(half.params) == pytest.approx(volume / 2, rel=0.01)
    assert half.n_indexed < len(peaks.q)


def test_doubled_cells_hold_the_lattice():
    params = np.array([0.04, 0.03, 0.02, 0.01, -0.005, 0.004])
    cells = doubled_cells(params)
    assert len(cells) == 7
    for c in cells:
        assert cell_volume(c) == pytest.approx(2 * cell_volume(params), rel=1e-9)
        # every reflection of the original cell is one of the doubled cell's
        q = triclinic_basis(half_grid("triclinic", 3)) @ params
        qd = triclinic_basis(half_grid("triclinic", 6)) @ c
        assert np.all(np.abs(qd[None, :] - q[:, None]).min(1) < 1e-12)
