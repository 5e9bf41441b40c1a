"""The nearest-neighbour baseline and its synthetic bank."""

import numpy as np
import pytest

pytest.importorskip("pymatgen")
pytest.importorskip("pyxtal")
pytest.importorskip("spglib")

from xtec.classifier.baselines import NearestNeighbourBaseline, synthetic_bank  # noqa: E402
from xtec.classifier.data import SyntheticConfig  # noqa: E402


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
