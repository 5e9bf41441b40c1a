"""The main phase of a lab pattern with an impurity: the strong lines index (every one,
de Wolff M20 >= 20) although, on the strong lines alone, the likelihood prefers "no cell"
(the cell's weak lines all count as missed there)."""

import warnings

import numpy as np
import pytest

pytest.importorskip("pymatgen")
pytest.importorskip("spglib")

from xtec.classifier.generator import Crystal  # noqa: E402
from xtec.classifier.intake import radiation  # noqa: E402
from xtec.classifier.laboratory import LabSettings, LabSimulator  # noqa: E402
from xtec.classifier.predictor import load_classifier  # noqa: E402
from xtec.classifier.symmetry import system_scores  # noqa: E402


def _crystal(group, lattice, species, coords, number):
    from pymatgen.core import Lattice, Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = Structure.from_spacegroup(group, Lattice.from_parameters(*lattice), species, coords)
    return Crystal.from_pymatgen(s, number)


@pytest.fixture(scope="module")
def brookite_with_impurity():
    """TiO2 brookite (Pbca, 9.184 x 5.447 x 5.145 A; Meagher & Lager 1979) with 5-8 %
    of a 16 A diamond-type impurity whose weak lines fill the low angles."""
    brookite = _crystal(
        "Pbca",
        (9.184, 5.447, 5.145, 90, 90, 90),
        ["Ti", "O", "O"],
        [[0.1289, 0.0972, 0.8628], [0.0095, 0.1491, 0.1835], [0.2314, 0.1110, 0.5366]],
        61,
    )
    impurity = _crystal("Fd-3m", (16, 16, 16, 90, 90, 90), ["Si"], [[0.125] * 3], 227)
    settings = LabSettings(impurity=1.0, impurity_level=(0.05, 0.08))
    return LabSimulator(settings, seed=3).simulate(brookite, impurity)


def test_the_main_phase_is_indexed_by_its_figure_of_merit(brookite_with_impurity):
    x, y, _ = brookite_with_impurity
    model = load_classifier()
    probs, an, _ = model.analyse_counts(x, y, radiation("Cu"))
    assert an.indexed and an.phases == 2 and an.fit.system == "orthorhombic"
    assert np.allclose(sorted(an.fit.lengths()), [5.145, 5.447, 9.184], rtol=2e-3)
    assert int(np.argmax(probs)) + 1 == 61
    # The crystal system read from the summed probabilities is the cell's.
    assert system_scores(probs[None], np.arange(1, 231))[0].argmax() == 2  # orthorhombic


def test_without_the_merit_retry_the_pattern_is_not_indexed(brookite_with_impurity):
    x, y, _ = brookite_with_impurity
    model = load_classifier()
    pr = model.classifier.params
    pr.main_phase_min_m20 = 0.0
    # (The monoclinic searches take seconds.)
    pr.monoclinic_min_m20 = pr.main_phase_monoclinic_m20 = 0.0
    _, an, _ = model.analyse_counts(x, y, radiation("Cu"))
    assert not an.indexed
