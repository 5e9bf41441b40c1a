"""The command line: synth, info, cluster (TOML job files), demo, and bad input."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import assert_one_line_error, run

from xtec.cli.main import main
from xtec.datasets import write_nxrefine, write_xtec
from xtec.io.store import open_result


def test_synth_info_cluster_roundtrip(tmp_path, capsys):
    f = tmp_path / "s.nxs"
    code, out, _ = run(capsys, "synth", f, "--shape", "6,40,40", "--temperatures", "10")
    assert code == 0 and f.exists()
    code, out, _ = run(capsys, "info", f)
    assert code == 0 and "temperatures: 10" in out and "Qh: 40 points" in out
    job = tmp_path / "job.toml"
    job.write_text(f'inputs = ["{f}"]\nout = "{tmp_path / "r.zarr"}"\nk = 3\nseed = 5\n'
                   'threshold = "simple"\n')
    code, out, _ = run(capsys, "cluster", "--config", job, "-k", "4", "--no-progress")
    assert code == 0, out
    ds = open_result(tmp_path / "r.zarr")
    assert ds.attrs["k"] == 4 and ds.attrs["seed"] == 5  # flags override the job file
    assert ds.attrs["threshold"]["method"] == "simple"
    assert "wrote" in out and "cluster" in out


def test_bad_input_gives_one_line_and_no_output(tmp_path, capsys, small_series):
    out = tmp_path / "o.zarr"
    code, _, err = run(capsys, "cluster", tmp_path / "missing.nxs", "-o", out)
    assert_one_line_error(code, err, "no such file")
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as fh:
        fh["x"] = np.zeros(4)
    code, _, err = run(capsys, "cluster", plain, "-o", out)
    assert_one_line_error(code, err, "no NXdata")
    good = write_xtec(small_series, tmp_path / "good.nxs")
    code, _, err = run(capsys, "cluster", good, "-o", out, "--threshold", "1e12")
    assert_one_line_error(code, err, "keeps no voxel")
    code, _, err = run(capsys, "cluster", good, "-o", out, "--threshold", "otsu")
    assert_one_line_error(code, err, "threshold must be")
    code, _, err = run(capsys, "cluster", good, "-o", out, "-k", "50000")
    assert_one_line_error(code, err, "fewer than K=50000")
    code, _, err = run(capsys, "cluster", good, "-o", tmp_path / "o.txt")
    assert_one_line_error(code, err, "must be a .zarr")
    code, _, err = run(capsys, "cluster", good, "-o", out, "--qh=5:6")
    assert_one_line_error(code, err, "selects nothing")
    w = write_nxrefine(small_series, tmp_path / "dup", parent=False)
    code, _, err = run(capsys, "cluster", w[0], w[1], w[0], "-o", out)
    assert_one_line_error(code, err, "duplicate temperatures")
    code, _, err = run(capsys, "cluster", good, "-o", good / "o.zarr")
    assert_one_line_error(code, err, "does not exist")
    # The file system refusing (here: a directory where the lock file goes)
    # is one line too, with no output left behind.
    (tmp_path / "o.zarr.lock").mkdir()
    code, _, err = run(capsys, "cluster", good, "-o", out, "--persist", "disk")
    assert_one_line_error(code, err, "check the path")
    assert not out.exists()
    assert not list(tmp_path.glob("*.partial*"))


def test_nan_and_negative_intensities_are_reported(tmp_path, capsys, small_series):
    bad = small_series.intensity.copy()
    bad[3, 2, 5, 5] = np.nan
    bad[:, 1, 2, 3] = -1.0
    from dataclasses import replace

    f = write_xtec(replace(small_series, intensity=bad), tmp_path / "bad.nxs")
    code, out, _ = run(capsys, "cluster", f, "-o", tmp_path / "r.zarr", "-k", "3")
    assert code == 0
    assert "1 voxels with NaN or infinite intensities were dropped" in out
    assert "negative intensities were set to 0" in out
    ds = open_result(tmp_path / "r.zarr")
    assert not ds.mask.values[2, 5, 5]


def test_existing_output_needs_overwrite(tmp_path, capsys, small_file):
    out = tmp_path / "r.zarr"
    assert run(capsys, "cluster", small_file, "-o", out, "-k", "3")[0] == 0
    code, _, err = run(capsys, "cluster", small_file, "-o", out, "-k", "3")
    assert_one_line_error(code, err, "exists; pass --overwrite")
    assert run(capsys, "cluster", small_file, "-o", out, "-k", "2", "--overwrite")[0] == 0
    assert open_result(out).attrs["k"] == 2


def test_incomplete_store_is_refused(tmp_path, small_file, capsys):
    import zarr

    out = tmp_path / "r.zarr"
    assert run(capsys, "cluster", small_file, "-o", out, "-k", "3")[0] == 0
    zarr.open_group(out, mode="r+").attrs["complete"] = False
    from xtec.errors import InputError

    with pytest.raises(InputError, match="incomplete"):
        open_result(out)


def test_console_script_demo(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "xtec.cli.main", "demo", "--dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "adjusted Rand index" in proc.stdout
    ari = float(proc.stdout.split("planted classes:")[1].split()[0])
    assert ari >= 0.9
    proc = subprocess.run([sys.executable, "-m", "xtec.cli.main", "info", str(tmp_path / "nope")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_missing_optional_package_is_one_line(monkeypatch, capsys, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # as on a core-only install
    for mod in [m for m in sys.modules if m.startswith("xtec.classifier.") and
                m != "xtec.classifier.cli"]:
        monkeypatch.delitem(sys.modules, mod)
    # The shipped predictor needs no network; training one does.
    code = main(["classify", "train", "--out", str(tmp_path / "model")])
    err = capsys.readouterr().err
    assert_one_line_error(code, err, "needs the optional package 'torch'")
