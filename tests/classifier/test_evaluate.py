"""Evaluation on real structures: file collection, option checks, the report."""

import pytest

pytest.importorskip("pymatgen")
pytest.importorskip("pyxtal")
pytest.importorskip("spglib")

from xtec.classifier.evaluate import check_options, evaluate_files, structure_files  # noqa: E402
from xtec.classifier.predictor import load_classifier  # noqa: E402
from xtec.classifier.structures import installed_structure_files  # noqa: E402
from xtec.errors import InputError, ParameterError  # noqa: E402


def test_structure_files_and_option_checks(tmp_path):
    with pytest.raises(InputError, match="not a directory"):
        structure_files([tmp_path / "missing"])
    with pytest.raises(InputError, match="no .cif files"):
        structure_files([tmp_path])
    with pytest.raises(InputError, match="nothing to evaluate"):
        structure_files([])
    for bad in ((0, 10, 50.0), (1, -1, 50.0), (1, 10, 0.0)):
        with pytest.raises(ParameterError):
            check_options(*bad)


def test_evaluate_files_reports_model_and_baselines():
    files = [p for p in installed_structure_files() if p.name in ("Copper.cif", "KCl.cif")]
    rep = evaluate_files(load_classifier(), files, nn_baseline=16, seed=0)
    assert rep["files"] == 2 and rep["skipped"] == []
    assert rep["model"]["n_structures"] == 2 and rep["model"]["kind"] == "extinction"
    assert {"majority_class", "chance", "nearest_neighbour"} <= rep.keys()
