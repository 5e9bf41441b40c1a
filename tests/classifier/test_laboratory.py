"""Laboratory-pattern mode: counts, doublets, zero shift, and the model reading them."""

import numpy as np
import pytest

pytest.importorskip("pymatgen")
pytest.importorskip("pyxtal")
spglib = pytest.importorskip("spglib")

from xtec.classifier.intake import ANODES, radiation  # noqa: E402
from xtec.classifier.laboratory import LabSettings, LabSimulator  # noqa: E402
from xtec.classifier.predictor import load_classifier  # noqa: E402
from xtec.classifier.structures import installed_structure_files, load_structures  # noqa: E402


@pytest.fixture(scope="module")
def copper():
    (s,), _ = load_structures([f for f in installed_structure_files() if f.name == "Copper.cif"])
    return s


def test_counts_grid_and_reproducibility(copper):
    x, y, info = LabSimulator(seed=3).simulate(copper.crystal)
    x2, y2, _ = LabSimulator(seed=3).simulate(copper.crystal)
    np.testing.assert_array_equal(y, y2)
    assert np.all(y == np.round(y)) and y.min() >= 0
    assert info["start"] <= x[0] + 1e-9 and abs(np.diff(x).mean() - info["step"]) < 1e-9
    assert abs(info["zero_shift"]) <= 0.05
    assert 0.3 * info["peak_counts"] < y.max() < 2 * info["peak_counts"]


def test_doublet_and_zero_shift_are_where_expected(copper):
    s = LabSettings(
        start=(30, 30),
        stop=(100, 100),
        step=(0.01, 0.01),
        zero_shift=0.0,
        displacement_mm=0.0,
        preferred_orientation=0.0,
        impurity=0.0,
        background=(0.01, 0.01),
        caglioti_u=(0.001, 0.001),
        caglioti_v=(0, 0),
        caglioti_w=(0.001, 0.001),
        crystallite_nm=(1000, 1000),
    )
    x, y, _ = LabSimulator(s, seed=0).simulate(copper.crystal)
    a = np.linalg.norm(copper.crystal.lattice[0])
    k1, k2 = ANODES["Cu"]
    d311 = a / np.sqrt(11)
    for lam in (k1, k2):  # Cu (311) near 2-theta 90 degrees: a resolved doublet
        tt = 2 * np.degrees(np.arcsin(lam / (2 * d311)))
        window = np.abs(x - tt) < 0.03
        assert y[window].max() > 0.5 * y[np.abs(x - tt) < 0.5].max()


def test_the_shipped_model_reads_a_lab_pattern_of_copper(copper):
    x, y, _ = LabSimulator(seed=5).simulate(copper.crystal)
    probs, analysis, found = load_classifier().analyse_counts(x, y, radiation("Cu"))
    assert analysis.indexed and int(np.argmax(probs)) + 1 == 225
    assert analysis.fit.lengths()[0] == pytest.approx(3.615, abs=0.01)
    assert abs(analysis.fit.zero) <= 0.15
