"""Shared fixtures: synthetic series written to real NeXus files."""

from __future__ import annotations

import numpy as np
import pytest

from xtec.cli.main import main
from xtec.datasets import make_series, write_nxrefine, write_xtec


def run(capsys, *argv):
    """``xtec ARGV...`` in this process: (exit status, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code, err, *patterns, status=2):
    """The command failed with ``status`` and one line on stderr holding every pattern."""
    assert code == status, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for p in patterns:
        assert p in lines[0], lines[0]


@pytest.fixture(scope="session")
def series():
    """The project's default synthetic series: 24 T x 21 x 121 x 121 (307,461 voxels)."""
    return make_series(seed=0)


@pytest.fixture(scope="session")
def xtec_file(series, tmp_path_factory):
    return write_xtec(series, tmp_path_factory.mktemp("xtec") / "series.nxs")


@pytest.fixture(scope="session")
def nxrefine_files(series, tmp_path_factory):
    """NXRefine wrappers (temperature order) followed by the VDS parent file."""
    return write_nxrefine(series, tmp_path_factory.mktemp("nxrefine"))


@pytest.fixture(scope="session")
def small_series():
    return make_series(h_range=(-1.5, 1.5), k_range=(-1.5, 1.5), l_range=(-0.5, 0.5),
                       temperatures=np.linspace(20, 300, 8), seed=1)


@pytest.fixture()
def small_file(small_series, tmp_path):
    return write_xtec(small_series, tmp_path / "small.nxs", chunks=(8, 4, 16, 16))


@pytest.fixture(scope="session")
def medium_file(tmp_path_factory):
    """24 x 8 x 160 x 160 float32 = 19.7 MB, chunked (24, 1, 64, 64) on disk."""
    from xtec.datasets import write_xtec_large

    path = tmp_path_factory.mktemp("medium") / "medium.nxs"
    return write_xtec_large(path, (8, 160, 160), chunks=(1, 64, 64), seed=3)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real single-node SLURM (tests/start_slurm.sh: installs slurm-wlm and munge with
    apt-get when missing); skipped with the reason when it cannot run here (not root)."""
    from slurm_cluster import start_slurm, stop_slurm

    started = start_slurm(tmp_path_factory.mktemp("slurm"))
    if isinstance(started, str):
        pytest.skip(started)
    yield started
    stop_slurm(started)
