"""``xtec ae`` and ``xtec rankaae`` end to end through xtec.cli.main.main, with real files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from xtec.cli.main import main  # noqa: E402


def test_help_does_not_import_torch():
    # Only this module's CLI is checked, so that other plugins do not matter.
    code = (
        "import argparse, sys\n"
        "import xtec.autoencoder\n"
        "from xtec.autoencoder import cli\n"
        "parser = argparse.ArgumentParser()\n"
        "cli.register(parser.add_subparsers())\n"
        "parser.parse_args(['ae', 'embed', 'm', 'd'])\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_ae_commands_end_to_end(tmp_path, capsys):
    train, test, model = tmp_path / "train.csv", tmp_path / "test.nxs", tmp_path / "ae.safetensors"
    assert main(["ae", "synth", str(train), "--n", "150", "--seed", "1"]) == 0
    assert main(["ae", "synth", str(test), "--n", "20", "--seed", "2"]) == 0
    assert (
        main(
            [
                "ae",
                "train",
                str(train),
                "-o",
                str(model),
                "--epochs",
                "150",
                "--threads",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    assert model.exists()
    capsys.readouterr()
    assert (
        main(
            [
                "ae",
                "embed",
                str(model),
                str(test),
                "-o",
                str(tmp_path / "emb.csv"),
                "--plot",
                str(tmp_path / "latent.png"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    mae = float(out.split("composition estimates:")[1].split()[0])
    assert mae < 0.02
    header = (tmp_path / "emb.csv").read_text().splitlines()[0]
    assert "z0" in header and "composition_estimate" in header
    assert (
        main(
            [
                "ae",
                "relevance",
                str(model),
                str(test),
                "--index",
                "5",
                "--plot",
                str(tmp_path / "rel.png"),
                "-o",
                str(tmp_path / "rel.csv"),
            ]
        )
        == 0
    )
    assert (tmp_path / "rel.png").stat().st_size > 1000
    assert "rank" in capsys.readouterr().out
    gen = tmp_path / "gen.csv"
    assert (
        main(
            [
                "ae",
                "interpolate",
                str(model),
                str(test),
                "--from",
                "0",
                "--to",
                "-1",
                "--steps",
                "5",
                "-o",
                str(gen),
                "--plot",
                str(tmp_path / "gen.png"),
            ]
        )
        == 0
    )
    from xtec.autoencoder.data import load_curves

    assert load_curves(gen).shape[0] == 5


def test_ae_bad_inputs_are_one_line(tmp_path, capsys):
    missing = tmp_path / "missing.csv"
    assert main(["ae", "train", str(missing), "-o", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such file" in err[0]
    bad = tmp_path / "bad.csv"
    bad.write_text("composition,20.0,20.05\n0.1,1.0,oops\n")
    assert main(["ae", "train", str(bad), "-o", str(tmp_path / "m.safetensors")]) == 2
    assert "not a number" in capsys.readouterr().err
    assert main(["ae", "train", "-o", str(tmp_path / "m.safetensors")]) == 2
    # A model from a different grid, and a file that is no model.
    small = tmp_path / "small.csv"
    assert main(["ae", "synth", str(small), "--n", "10"]) == 0
    other = tmp_path / "other.txt"
    other.write_text("\n".join(f"{20 + i * 0.5} {1 + (i % 7)}" for i in range(50)))
    model = tmp_path / "m.safetensors"
    assert (
        main(["ae", "train", str(small), "-o", str(model), "--epochs", "2", "--no-progress"]) == 0
    )
    capsys.readouterr()
    assert main(["ae", "embed", str(model), str(other)]) == 2
    assert "grid" in capsys.readouterr().err
    assert main(["ae", "embed", str(small), str(small)]) == 2
    assert "not a model file" in capsys.readouterr().err
    assert main(["ae", "relevance", str(model), str(small), "--index", "99"]) == 2


def test_rankaae_commands_end_to_end(tmp_path, capsys):
    data, model = tmp_path / "spectra.nxs", tmp_path / "rk.safetensors"
    assert main(["rankaae", "synth", str(data), "--n", "600", "--seed", "3"]) == 0
    assert (
        main(
            [
                "rankaae",
                "train",
                str(data),
                "-o",
                str(model),
                "--epochs",
                "15",
                "--batch-size",
                "128",
                "--threads",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    constrained = out.split("constrained:")[1].splitlines()[0]
    assert (
        "Spearman(edge_shift" in out
        and "edge_shift" in constrained
        and "nuisance" not in constrained
    )
    report = tmp_path / "report.json"
    assert (
        main(
            [
                "rankaae",
                "report",
                str(model),
                str(data),
                "--plot",
                str(tmp_path / "sweep.png"),
                "--json",
                str(report),
            ]
        )
        == 0
    )
    rep = json.loads(report.read_text())
    assert rep["n_spectra"] == 120 and set(rep["spearman"]) == {
        "edge_shift",
        "white_line",
        "pre_edge",
        "bond_length",
    }
    assert (tmp_path / "sweep.png").stat().st_size > 1000
    # The test split needs the training file; other data need --split all.
    other = tmp_path / "other.csv"
    assert main(["rankaae", "synth", str(other), "--n", "30", "--seed", "9"]) == 0
    capsys.readouterr()
    assert main(["rankaae", "report", str(model), str(other)]) == 2
    assert "--split all" in capsys.readouterr().err
    assert main(["rankaae", "report", str(model), str(other), "--split", "all"]) == 0
    assert main(["rankaae", "train", str(data), "-o", str(model), "--descriptors", "nope"]) == 2
    assert main(["rankaae", "report", str(tmp_path / "none.safetensors"), str(data)]) == 2
