"""Real structures from structure files: found, parsed and typed."""

import pytest

pytest.importorskip("pymatgen")
pytest.importorskip("pyxtal")
pytest.importorskip("spglib")

from xtec.classifier.structures import installed_structure_files, load_structures  # noqa: E402


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
