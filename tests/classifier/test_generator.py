"""Synthetic crystals: every space group 1..230 passes an independent spglib check."""

import datetime

import numpy as np
import pytest

spglib = pytest.importorskip("spglib")
pytest.importorskip("pyxtal")
pytest.importorskip("ase")

from xtec.classifier import generator as gen_mod  # noqa: E402
from xtec.classifier.generator import CrystalGenerator, random_lattice  # noqa: E402
from xtec.classifier.symmetry import CRYSTAL_SYSTEMS, crystal_system, crystal_system_index  # noqa: E402
from xtec.errors import ParameterError, XtecError  # noqa: E402


def _spglib_number(c, symprec):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return spglib.get_symmetry_dataset(
            (c.lattice, c.frac_coords, c.numbers), symprec=symprec
        ).number


def test_all_230_space_groups_pass_spglib():
    # All groups every run (cheap), with a seed that changes daily so that the
    # random draws differ from run to run while any failure is reproducible.
    seed = datetime.date.today().toordinal()
    gen = CrystalGenerator(seed=seed)
    failures = []
    for sg in range(1, 231):
        for _ in range(2):
            c = gen.generate(sg)
            if c.space_group != sg or _spglib_number(c, 1e-4) != sg:
                failures.append(sg)
    assert not failures, f"seed {seed}: {failures}"


def test_lattice_follows_crystal_system():
    gen = CrystalGenerator(seed=1)
    for sg in (1, 14, 62, 139, 166, 194, 225):
        c = gen.generate(sg)
        a, b, cc = np.linalg.norm(c.lattice, axis=1)
        system = crystal_system(sg)
        if system == "cubic":
            assert a == pytest.approx(b) == pytest.approx(cc)
        if system in ("tetragonal", "trigonal", "hexagonal"):
            assert a == pytest.approx(b)
        if system in ("trigonal", "hexagonal"):
            cosg = c.lattice[0] @ c.lattice[1] / (a * b)
            assert cosg == pytest.approx(-0.5)
        assert len(c.numbers) <= gen.max_atoms
        assert np.all((c.frac_coords >= 0) & (c.frac_coords < 1))


def test_volume_follows_atom_sizes():
    from ase.data import covalent_radii

    gen = CrystalGenerator(density_factor=(2.0, 2.0), seed=2)
    for c in gen.generate_many(5):
        spheres = np.sum(4 / 3 * np.pi * covalent_radii[c.numbers] ** 3)
        assert c.volume == pytest.approx(2.0 * spheres, rel=1e-9)


def test_seeded_generation_is_deterministic_and_weights_are_used():
    a = CrystalGenerator(seed=7).generate_many(5)
    b = CrystalGenerator(seed=7).generate_many(5)
    for x, y in zip(a, b, strict=False):
        np.testing.assert_array_equal(x.frac_coords, y.frac_coords)
        np.testing.assert_array_equal(x.numbers, y.numbers)
    gen = CrystalGenerator(
        space_groups=[2, 225], space_group_weights=[0, 1], elements=[8, 26], seed=0
    )
    for c in gen.generate_many(4):
        assert c.space_group == 225
        assert set(c.numbers.tolist()) <= {8, 26}


def test_mismatches_are_rejected(monkeypatch):
    monkeypatch.setattr(gen_mod, "spglib_space_group", lambda *a, **k: 1)
    with pytest.raises(XtecError, match="spglib"):
        CrystalGenerator(max_tries=3, seed=0).generate(225)


def test_parameters_are_validated():
    with pytest.raises(ParameterError):
        CrystalGenerator(space_groups=[0, 5])
    with pytest.raises(ParameterError):
        CrystalGenerator(space_groups=[1, 2], space_group_weights=[1.0])
    with pytest.raises(ParameterError):
        CrystalGenerator(elements=[120])
    with pytest.raises(ParameterError):
        crystal_system_index(231)


def test_crystal_systems():
    assert [crystal_system(n) for n in (1, 3, 16, 75, 143, 168, 195)] == list(CRYSTAL_SYSTEMS)
    assert crystal_system(230) == "cubic" and crystal_system(167) == "trigonal"
    lat = random_lattice("monoclinic", 500.0, np.random.default_rng(0))
    assert abs(np.linalg.det(lat)) == pytest.approx(500.0)
