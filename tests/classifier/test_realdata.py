"""Real structures: bad CIFs through evaluate and predict, and the shipped model against
the majority-class and nearest-neighbour baselines on installed structures."""

import json
import pickle
import shutil

import numpy as np
import pytest

pytest.importorskip("pymatgen")
pytest.importorskip("pyxtal")
pytest.importorskip("spglib")

from xtec.classifier.predictor import DEFAULT_MODEL  # noqa: E402
from xtec.classifier.realdata import split_of  # noqa: E402
from xtec.classifier.structures import installed_structure_files, load_structures  # noqa: E402
from xtec.cli.main import main  # noqa: E402

CIF = """data_test
_symmetry_space_group_name_H-M 'P m -3 m'
_symmetry_Int_Tables_number 221
_cell_length_a 3.87
_cell_length_b 3.87
_cell_length_c 3.87
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
loop_
_symmetry_equiv_pos_as_xyz
x,y,z
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
{sites}
"""

BAD = {
    # an ammonium group written as a site: pymatgen reads element Nh (Z=113)
    "nh4cl.cif": ("NH4 NH4 0 0 0 1\nCl1 Cl 0.5 0.5 0.5 1", "Nh (Z=113)"),
    "dummy.cif": ("X1 X 0 0 0 1\nCl1 Cl 0.5 0.5 0.5 1", "dummy atom"),
    "overfull.cif": ("Fe1 Fe 0 0 0 1\nCo1 Co 0 0 0 1\nCl1 Cl 0.5 0.5 0.5 1", "nreadable"),
    "no_z.cif": (None, "nreadable"),
    "binary.cif": (None, "nreadable"),
}
GOOD = {
    "deuterium.cif": "D1 D 0 0 0 1\nCl1 Cl 0.5 0.5 0.5 1",
    "partial.cif": "Fe1 Fe 0 0 0 0.5\nCo1 Co 0 0 0 0.5\nCl1 Cl 0.5 0.5 0.5 1",
}


@pytest.fixture(scope="module")
def cif_dirs(tmp_path_factory):
    bad = tmp_path_factory.mktemp("bad")
    for name, (sites, _) in BAD.items():
        if sites:
            (bad / name).write_text(CIF.format(sites=sites))
    no_z = CIF.format(sites="Na1 Na 0 0 1\nCl1 Cl 0.5 0.5 1").replace("_atom_site_fract_z\n", "")
    (bad / "no_z.cif").write_text(no_z)
    (bad / "binary.cif").write_bytes(b"\x00\x01garbage" * 10)
    mixed = tmp_path_factory.mktemp("mixed")
    for p in bad.iterdir():
        shutil.copy(p, mixed)
    for name, sites in GOOD.items():
        (mixed / name).write_text(CIF.format(sites=sites))
    mag = [p for p in installed_structure_files() if p.parent.name == "Structures"]
    mcif = mag[0].parent / "MnO.mcif"
    if mcif.is_file():  # a magnetic CIF: simulated from its atoms
        shutil.copy(mcif, mixed / "MnO_magnetic.cif")
    return bad, mixed


def test_bad_cifs_are_skipped_with_one_line_each(cif_dirs):
    bad, _ = cif_dirs
    structures, skipped = load_structures(sorted(bad.iterdir()))
    assert structures == [] and len(skipped) == len(BAD)
    for line in skipped:
        name = line.split(":")[0]
        assert BAD[name][1] in line and "\n" not in line


def test_evaluate_counts_skips_and_simulates_partial_occupancy(cif_dirs, tmp_path, capsys):
    _, mixed = cif_dirs
    out = tmp_path / "e.json"
    args = ["classify", "evaluate", "--cif-dir", str(mixed), "--nn-baseline", "0"]
    assert main([*args, "--json", str(out)]) == 0
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    rep = json.loads(out.read_text())
    assert len(rep["skipped"]) == len(BAD) and f"({len(BAD)} files skipped)" in cap.out
    assert rep["model"]["n_structures"] == len(list(mixed.iterdir())) - len(BAD)
    assert "majority class" in cap.out


def test_evaluate_with_nothing_usable_is_one_line(cif_dirs, capsys):
    bad, _ = cif_dirs
    assert main(["classify", "evaluate", "--cif-dir", str(bad), "--nn-baseline", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Nh (Z=113)" in err and "Traceback" not in err


def test_predict_refuses_cifs_empty_patterns_and_pickled_models(cif_dirs, tmp_path, capsys):
    bad, mixed = cif_dirs
    tt = np.linspace(5, 90, 500)
    np.savetxt(tmp_path / "zero.xy", np.c_[tt, np.zeros_like(tt)])
    np.savetxt(tmp_path / "flat.xy", np.c_[tt, np.full_like(tt, 7.0)])
    (tmp_path / "empty.xy").write_text("# 2theta counts\n")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps({"model": {}}))
    (pickled / "model.safetensors").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    cases = [
        ([str(mixed / "partial.cif")], "no numeric"),
        ([str(bad / "binary.cif")], "no numeric"),
        ([str(tmp_path / "zero.xy")], "empty"),
        ([str(tmp_path / "flat.xy")], "empty"),
        ([str(tmp_path / "empty.xy")], "no numeric"),
        ([str(tmp_path / "flat.xy"), "--model", str(pickled)], "pickles are never loaded"),
        ([str(tmp_path / "flat.xy"), "--model", str(tmp_path / "zero.xy")], "not a file"),
    ]
    for args, message in cases:
        assert main(["classify", "predict", *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (args, err)


def test_resume_refuses_a_pickle(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "m"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(pickle.dumps({"step": 3}))
    args = ["classify", "train", "--out", str(out), "--resume", "--steps", "2", "--workers", "0"]
    assert main([*args, "--no-progress", "--val-size", "4", "--space-groups", "2,225"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a checkpoint" in err


@pytest.mark.slow
def test_shipped_model_beats_majority_and_nearest_neighbour(tmp_path, capsys):
    # Installed structures whose structure types were not counted into the shipped
    # prior (the evaluation half), at most 24 of them to keep the suite fast.
    structures, _ = load_structures(installed_structure_files())
    keep = [s for s in structures if split_of(s.structure_type) == "evaluation"]
    keep = {(s.structure_type, s.formula): s for s in keep}
    picked = sorted(keep.values(), key=lambda s: s.path.name)[:24]
    d = tmp_path / "cifs"
    d.mkdir()
    for i, s in enumerate(picked):
        target = d / f"{i:02d}_{s.path.stem}.cif"
        if s.path.suffix == ".json":  # pymatgen's JSON structures, written as CIF
            from pymatgen.core import Structure

            Structure.from_file(str(s.path)).to(filename=str(target))
        else:
            shutil.copy(s.path, target)
    out = tmp_path / "e.json"
    assert DEFAULT_MODEL.is_dir()
    args = ["classify", "evaluate", "--cif-dir", str(d), "--nn-baseline", "1000", "--workers", "2"]
    assert main([*args, "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    m, maj, nn = rep["model"], rep["majority_class"], rep["nearest_neighbour"]
    assert m["n_structures"] >= 15
    for key in ("top1", "top5", "system_top1"):
        assert m[key] > maj[key] and m[key] > nn[key], key


def test_predict_with_the_shipped_model_reads_a_measured_style_file(tmp_path, capsys):
    from xtec.classifier.simulator import PowderSimulator

    (s,), _ = load_structures([f for f in installed_structure_files() if f.name == "Copper.cif"])
    sim = PowderSimulator(precision="double")
    tt = sim.grid.two_theta[::2]
    y = 5000 * sim.simulate_one(s.crystal, 60.0)[::2] ** 2 + 120  # counts on a flat background
    np.savetxt(tmp_path / "cu.xy", np.c_[tt, y], header="2theta counts")
    assert main(["classify", "predict", str(tmp_path / "cu.xy"), "--json"]) == 0
    (res,) = json.loads(capsys.readouterr().out)
    assert res["space_groups"][0]["number"] == 225 and res["crystal_system"] == "cubic"
