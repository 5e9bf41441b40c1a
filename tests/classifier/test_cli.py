"""``xtec classify`` train / predict / evaluate through the real command line."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
pytest.importorskip("pymatgen")
pytest.importorskip("pyxtal")
pytest.importorskip("spglib")

from xtec.classifier.cli import PRETRAINED, parse_space_groups  # noqa: E402
from xtec.classifier.model import ModelConfig, ResNet1D, save_model  # noqa: E402
from xtec.classifier.simulator import PowderSimulator  # noqa: E402
from xtec.classifier.structures import installed_structure_files, load_structures  # noqa: E402
from xtec.cli.main import main  # noqa: E402
from xtec.errors import ParameterError  # noqa: E402


def _dans_cifs(n):
    return [p for p in installed_structure_files() if p.parent.name == "Structures"][:n]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    save_model(ResNet1D(ModelConfig(width=8, blocks=[1, 1])), d)
    return d


@pytest.fixture(scope="module")
def pattern_files(tmp_path_factory):
    """A real structure's simulated pattern as text, CSV and NeXus files."""
    import h5py

    d = tmp_path_factory.mktemp("patterns")
    (s,), _ = load_structures(_dans_cifs(1))
    sim = PowderSimulator(seed=0)
    tt = sim.grid.two_theta[::4]
    y = 1000 * sim.simulate_one(s.crystal, 40.0)[::4] ** 2 + 50  # counts with a flat background
    np.savetxt(d / "p.xy", np.c_[tt, y], header="2theta counts")
    np.savetxt(d / "p.csv", np.c_[tt, y], delimiter=",", header="two_theta,intensity", comments="")
    with h5py.File(d / "p.nxs", "w") as f:
        f.attrs["default"] = "entry"
        e = f.create_group("entry")
        e.attrs["NX_class"] = "NXentry"
        e.attrs["default"] = "data"
        g = e.create_group("data")
        g.attrs.update({"NX_class": "NXdata", "signal": "counts", "axes": ["two_theta"]})
        g["counts"], g["two_theta"] = y, tt
    (d / "one_column.txt").write_text("\n".join(str(v) for v in y))
    (d / "words.txt").write_text("2theta counts\n10 5\n11 five\n")
    (d / "binary.dat").write_bytes(bytes(range(256)) * 4)
    np.savetxt(d / "far.xy", np.c_[np.linspace(100, 120, 50), np.linspace(1, 2, 50)])
    return d


def test_cli_module_does_not_import_torch():
    code = "import sys, xtec.cli.main; xtec.cli.main.build_parser(); print('torch' in sys.modules, 'pyxtal' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_parse_space_groups():
    assert parse_space_groups("1-3,225") == [1, 2, 3, 225]
    with pytest.raises(ParameterError):
        parse_space_groups("0-5")
    with pytest.raises(ParameterError):
        parse_space_groups("cubic")


def test_predict_reads_text_csv_and_nexus(tiny_model, pattern_files, capsys):
    files = [str(pattern_files / n) for n in ("p.xy", "p.csv", "p.nxs")]
    assert (
        main(["classify", "predict", *files, "--model", str(tiny_model), "--json", "--top", "3"])
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in res] == files
    probs = [[c["probability"] for c in r["space_groups"]] for r in res]
    assert all(len(p) == 3 and p == sorted(p, reverse=True) for p in probs)
    # The three files hold the same pattern, so the model sees the same input.
    assert probs[0] == probs[1] == probs[2]


@pytest.mark.parametrize(
    "name, message",
    [
        ("missing.xy", "no such file"),
        ("one_column.txt", "no numeric data"),
        ("words.txt", "expected two numeric columns"),
        ("binary.dat", "cannot read"),
        ("far.xy", "outside"),
    ],
)
def test_predict_bad_input_is_one_line(tiny_model, pattern_files, capsys, name, message):
    rc = main(["classify", "predict", str(pattern_files / name), "--model", str(tiny_model)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err


def test_bad_model_directory(tmp_path, pattern_files, capsys):
    assert main(["classify", "predict", str(pattern_files / "p.xy"), "--model", str(tmp_path)]) == 2
    assert "not a classifier model" in capsys.readouterr().err


def test_evaluate_cif_dir(tiny_model, tmp_path, capsys):
    for p in _dans_cifs(4):
        shutil.copy(p, tmp_path)
    out_json = tmp_path / "eval.json"
    args = ["classify", "evaluate", "--cif-dir", str(tmp_path), "--model", str(tiny_model)]
    rc = main([*args, "--json", str(out_json), "--nn-baseline", "40"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "structures" in text and "chance" in text
    rep = json.loads(out_json.read_text())
    assert rep["model"]["n_structures"] == 4
    assert rep["nearest_neighbour"]["bank_size"] == 40 and "nearest neighbour" in text
    assert main([*args, "--workers", "0", "--nn-baseline", "4"]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["classify", "evaluate", "--cif-dir", str(empty), "--model", str(tiny_model)]) == 2
    assert main(["classify", "evaluate", "--model", str(tiny_model)]) == 2


def test_train_command_writes_a_loadable_model(tmp_path, capsys):
    out = tmp_path / "m"
    args = [
        "classify",
        "train",
        "--out",
        str(out),
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--width",
        "8",
    ]
    args += ["--blocks", "1", "--space-groups", "2,225", "--n-points", "1001", "--workers", "0"]
    args += ["--val-size", "8", "--checkpoint-every", "2", "--max-sites", "2", "--no-progress"]
    assert main(args) == 0
    assert "model saved" in capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["space_groups"] == [2, 225] and cfg["step"] == 2
    assert main(args[:-1] + ["--resume", "--steps", "3", "--no-progress"]) == 0


@pytest.mark.slow
@pytest.mark.skipif(not (PRETRAINED / "model.safetensors").is_file(), reason="no shipped network")
def test_shipped_network_beats_chance_on_installed_structures(tmp_path, capsys):
    # The ResNet shipped beside the default (extinction) model, as a network example.
    out_json = tmp_path / "eval.json"
    args = ["classify", "evaluate", "--installed", "--model", str(PRETRAINED)]
    assert main([*args, "--nn-baseline", "0", "--json", str(out_json)]) == 0
    rep = json.loads(out_json.read_text())
    m, chance = rep["model"], rep["chance"]
    assert m["n_structures"] >= 100
    # "Much better than chance": at least five times the chance level, per structure type.
    assert m["by_type"]["top5"] > 5 * chance["top5"]
    assert m["by_type"]["top1"] > 5 * chance["top1"]
    assert m["by_type"]["system_top1"] > 1.5 * chance["system_top1"]
