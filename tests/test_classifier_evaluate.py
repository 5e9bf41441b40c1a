"""Evaluation helpers: real structures, summaries, the nearest-neighbour baseline."""

import numpy as np
import pytest

pytest.importorskip("pymatgen")
pytest.importorskip("pyxtal")
pytest.importorskip("spglib")

from xtec.classifier.data import SyntheticConfig  # noqa: E402
from xtec.classifier.evaluate import (  # noqa: E402
    NearestNeighbourBaseline,
    chance_level,
    installed_structure_files,
    load_structures,
    summarise,
    synthetic_bank,
)


def test_installed_structures_are_found_and_typed():
    files = installed_structure_files()
    assert len(files) >= 50
    names = {"Copper.cif", "Gold.cif", "Silver.cif", "Aluminium.cif", "KCl.cif"}
    structures, skipped = load_structures([f for f in files if f.name in names])
    assert not skipped
    sg = {s.path.name: s.space_group for s in structures}
    assert sg == {n: 225 for n in names}
    types = {s.path.name: s.structure_type for s in structures}
    # The four fcc metals share one prototype; rock-salt KCl is another.
    assert len({types[n] for n in names - {"KCl.cif"}}) == 1
    assert types["KCl.cif"] != types["Copper.cif"]


def test_summarise_counts_structure_types_once():
    true = np.array([225, 225, 225, 14])
    ranked = np.array([[225, 1, 2, 3, 4], [225, 1, 2, 3, 4], [225, 1, 2, 3, 4], [2, 3, 4, 5, 6]])
    rep = summarise(true, ranked, ["fcc", "fcc", "fcc", "other"], np.array([6, 6, 6, 0]))
    assert rep["top1"] == 0.75 and rep["by_type"]["top1"] == 0.5
    assert rep["per_space_group"][14]["top1"] == 0.0
    assert rep["per_crystal_system"]["cubic"]["n"] == 3
    assert rep["system_top1"] == 0.75
    assert chance_level(true, list(range(1, 231)))["top1"] == pytest.approx(1 / 230)


def test_bank_is_independent_of_workers_and_baseline_finds_its_own_patterns():
    data = SyntheticConfig(space_groups=[2, 62, 194, 225], max_sites=3, max_atoms=40)
    f1, l1 = synthetic_bank(data, 40, seed=1, workers=1, chunk=16)
    f2, l2 = synthetic_bank(data, 40, seed=1, workers=2, chunk=16)
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(l1, l2)
    nn = NearestNeighbourBaseline([2, 62, 194, 225]).fit_features(f1, l1)
    # Querying with stored features (pool=1 keeps them as they are) returns their own labels.
    nn.pool = 1
    scores = nn.scores(f1[:10])
    assert np.array_equal(np.array([2, 62, 194, 225])[scores.argmax(1)], l1[:10])
