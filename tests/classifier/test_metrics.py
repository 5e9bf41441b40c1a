"""Accuracy figures: top-1/top-5, per structure type, chance."""

import numpy as np
import pytest

from xtec.classifier.metrics import chance_level, summarise, top_class_systems


def test_summarise_counts_structure_types_once():
    true = np.array([225, 225, 225, 14])
    ranked = np.array([[225, 1, 2, 3, 4], [225, 1, 2, 3, 4], [225, 1, 2, 3, 4], [2, 3, 4, 5, 6]])
    rep = summarise(true, ranked, ["fcc", "fcc", "fcc", "other"], np.array([6, 6, 6, 0]))
    assert rep["top1"] == 0.75 and rep["by_type"]["top1"] == 0.5
    assert rep["per_space_group"][14]["top1"] == 0.0
    assert rep["per_crystal_system"]["cubic"]["n"] == 3
    assert rep["system_top1"] == 0.75
    assert chance_level(true, list(range(1, 231)))["top1"] == pytest.approx(1 / 230)


def test_top_class_systems_is_the_system_of_the_best_class():
    scores = np.array([[0.1, 0.9, 0.2], [0.8, 0.1, 0.0]])
    assert top_class_systems(scores, [2, 225, 14]).tolist() == [6, 0]
