"""Shared fixtures: synthetic series written to real NeXus files."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

# The suite runs the compiled kernels, as before the NumPy twins existed (a run on
# a cold cache would otherwise take the twins and start a background compile);
# tests/runtime/test_engine.py unsets it where it tests that choice.
os.environ.setdefault("XTEC_ENGINE", "numba")

from xtec.cli.main import main  # noqa: E402
from xtec.datasets import make_series, write_nxrefine, write_xtec  # noqa: E402


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


ROOT = Path(__file__).resolve().parents[1]




def leftovers(out: Path) -> list[str]:
    """Everything beside a store that belongs to a run (lock, private names)."""
    return sorted(p.name for p in out.parent.glob(out.name + ".*"))


def spawn(*argv, cwd=None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "xtec.cli.main", *map(str, argv)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended first: {proc.communicate()}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.02)


def read_until(proc: subprocess.Popen, text: str) -> list[str]:
    """stderr lines up to the first containing ``text`` (the stage messages)."""
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"{text!r} never appeared: {''.join(lines)}")


@pytest.fixture()
def tiny(small_series, tmp_path):
    return write_xtec(small_series, tmp_path / "tiny.nxs", chunks=(8, 4, 16, 16))


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
