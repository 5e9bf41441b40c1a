"""Indexing, systematic absences and the extinction classifier on known structures."""

import numpy as np
import pytest

pytest.importorskip("pymatgen")
pytest.importorskip("pyxtal")
spglib = pytest.importorskip("spglib")

from xtec.classifier.extinction import ExtinctionClassifier, allowed_mask  # noqa: E402
from xtec.classifier.indexing import find_peaks, index_cells  # noqa: E402
from xtec.classifier.simulator import PowderSimulator  # noqa: E402
from xtec.classifier.statistics import FrequencyTable, count  # noqa: E402
from xtec.classifier.structures import installed_structure_files, load_structures  # noqa: E402
from xtec.errors import InputError  # noqa: E402


def _hall(sg):
    return next(h for h in range(1, 531) if spglib.get_spacegroup_type(h).number == sg)


def _ops(sg):
    sym = spglib.get_symmetry_from_database(_hall(sg))
    return sym["rotations"], sym["translations"]


def test_allowed_reflections_follow_the_tables():
    hkl = np.array([[1, 0, 0], [1, 1, 0], [1, 1, 1], [2, 0, 0], [0, 1, 0], [0, 2, 0], [1, 0, 1]])
    # Fm-3m: h, k, l all even or all odd.
    assert allowed_mask(hkl, *_ops(225)).tolist() == [0, 0, 1, 1, 0, 1, 0]
    # Im-3m: h + k + l even.
    assert allowed_mask(hkl, *_ops(229)).tolist() == [0, 1, 0, 1, 0, 1, 1]
    # P2_1/c (unique axis b, c glide): 0k0 with k odd and h0l with l odd are absent.
    assert allowed_mask(hkl, *_ops(14)).tolist() == [1, 1, 1, 1, 0, 1, 0]


@pytest.fixture(scope="module")
def patterns():
    names = ["Copper.cif", "Ruthenium.cif", "Ca2RuO4.cif", "He_BCC.json"]
    files = [f for f in installed_structure_files() if f.name in names]
    structures, skipped = load_structures(files)
    assert not skipped and len(structures) == 4
    sim = PowderSimulator(precision="double")
    x = sim.simulate([s.crystal for s in structures], np.full(4, 50.0))
    return {s.path.name: (s, p.astype(float) ** 2) for s, p in zip(structures, x, strict=True)}


def test_peaks_and_cubic_cell_of_copper(patterns):
    s, y = patterns["Copper.cif"]
    tt = PowderSimulator().grid.two_theta
    peaks = find_peaks(tt, y)
    a = np.linalg.norm(s.crystal.lattice[0])
    # fcc lines: h^2 + k^2 + l^2 = 3, 4, 8, 11 in 5..90 degrees 2-theta (Cu K-alpha1).
    np.testing.assert_allclose(peaks.q * a**2, [3, 4, 8, 11], atol=2e-3)
    (best, *_) = index_cells("cubic", peaks)
    assert 1 / np.sqrt(best[0]) == pytest.approx(a, rel=1e-4)


def test_orthorhombic_cell_is_indexed(patterns):
    s, y = patterns["Ca2RuO4.cif"]
    peaks = find_peaks(PowderSimulator().grid.two_theta, y)
    abc = np.sort(np.linalg.norm(s.crystal.lattice, axis=1))
    cells = [np.sort(1 / np.sqrt(c))[::-1] for c in index_cells("orthorhombic", peaks)]
    assert any(np.allclose(np.sort(c), abc, rtol=2e-3) for c in cells)


def test_classifier_ranks_the_true_group_and_refuses_empty_patterns(patterns):
    tt = PowderSimulator().grid.two_theta
    clf = ExtinctionClassifier(np.ones(230))  # no prior: extinctions alone
    for name, (s, y) in patterns.items():
        p = clf.predict_proba(tt, y)
        assert p.shape == (230,) and p.sum() == pytest.approx(1)
        top5 = np.argsort(-p)[:5] + 1
        assert s.space_group in top5, name
    with pytest.raises(InputError, match="empty"):
        clf.predict_proba(tt, np.zeros_like(tt))


def test_frequency_table_round_trip_and_generator_mode(tmp_path, patterns):
    from xtec.classifier.generator import CrystalGenerator

    table = count([s for s, _ in patterns.values()], "test")
    assert table.space_groups == {225: 1, 194: 1, 61: 1, 229: 1}
    table.to_json(tmp_path / "t.json")
    back = FrequencyTable.from_json(tmp_path / "t.json")
    assert back == table
    prior = back.prior()
    assert prior[224] > prior[0] and prior.sum() == pytest.approx(1)
    gen = CrystalGenerator(**back.generator_kwargs(smoothing=0.0, max_sites=4), seed=0)
    drawn = {gen.generate().space_group for _ in range(12)}
    assert drawn <= {225, 194, 61, 229}
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(InputError):
        FrequencyTable.from_json(tmp_path / "bad.json")
