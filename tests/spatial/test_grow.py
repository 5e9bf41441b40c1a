"""Hysteresis for peak averaging (issue 27): components grown below the cutoff,
painted only where a grown voxel's own trajectory agrees, chunk-independent."""

from __future__ import annotations

import math

import dask
import dask.array as da
import numpy as np
import pytest
from conftest import assert_one_line_error, run

from xtec.datasets import make_measured_series, write_xtec
from xtec.io.store import open_result
from xtec.preprocess.threshold import Threshold
from xtec.spatial.grow import grow_components, lower_level
from xtec.spatial.peaks import label_components


def _volume():
    """Mean intensities: cutoff 100, lower level 50 (Gaussian mean 25, sigma ln 2)."""
    m = np.full((6, 12, 12), 10.0)
    m[2:4, 2:4, 2:4] = 500  # core A
    m[2:4, 4:7, 2:4] = 70  # flank face-connected to A: grown
    m[2:4, 2:4, 9:11] = 70  # a patch of the same intensity alone: not grown
    m[2:4, 9:11, 2:4] = 500  # core B ...
    m[2:4, 9:11, 7:9] = 500  # ... core C, and a bridge touching both: grown into neither
    m[2:4, 9:11, 4:7] = 70
    m[5, 5, 5] = 500  # core D; a voxel touching it only along an edge: not grown
    m[4, 4, 5] = 70
    m[0, 2:4, 2:4] = 30  # face-connected to A but below the lower level: not grown
    return m


def _threshold():
    return Threshold("kl", math.log(100.0), 1, gaussian=(math.log(25.0), math.log(2.0)))


@pytest.mark.parametrize("chunks", [(6, 12, 12), (2, 5, 3)])
def test_grown_components_keep_connected_voxels_only(chunks):
    m = _volume()
    th = _threshold()
    level = lower_level(th, 1.0)
    assert math.exp(level) == pytest.approx(50.0)
    mean = da.from_array(m, chunks=chunks)
    with dask.config.set(scheduler="threads"):
        core, n = label_components(mean > 100)
        grown = grow_components(core, mean, level).compute()
        core = core.compute()
    assert n == 4
    a = core[2, 2, 2]
    assert (grown[2:4, 4:7, 2:4] == a).all()  # connected flank joins A
    assert (grown[2:4, 2:4, 9:11] == 0).all()  # unconnected patch stays out
    assert (grown[2:4, 9:11, 4:7] == 0).all()  # bridge between two peaks stays out
    assert grown[4, 4, 5] == 0  # edge contact is not a face
    assert (grown[0, 2:4, 2:4] == 0).all()  # below the lower level
    np.testing.assert_array_equal(grown[core > 0], core[core > 0])
    assert int(((grown > 0) & (core == 0)).sum()) == 12


def test_lower_level_needs_a_gaussian_below_the_cutoff():
    assert lower_level(Threshold("value", math.log(100.0), 1), 1.0) is None
    assert lower_level(_threshold(), 3.0) is None  # 25 * 8 = 200 > 100


def _series_file(tmp_path):
    s = make_measured_series(seed=1, h_range=(4.0, 6.0), k_range=(-1.0, 1.0),
                             l_range=(-0.3, 0.3))
    return write_xtec(s, tmp_path / "s.nxs")


def test_cli_peak_grow_labels_do_not_depend_on_the_chunking(tmp_path, capsys):
    f = _series_file(tmp_path)
    out = {}
    for name, extra in (("off", ["--peak-grow", "off"]), ("a", ["--chunks", "50,50,50"]),
                        ("b", ["--peak-grow", "1", "--chunks", "3,7,11"])):
        code, _, err = run(capsys, "cluster", f, "-o", tmp_path / f"{name}.zarr",
                           "--method", "peaks", "-k", "4", *extra)
        assert code == 0, err
        out[name] = open_result(tmp_path / f"{name}.zarr")
    a, b, off = (out[n]["labels"].values for n in ("a", "b", "off"))
    np.testing.assert_array_equal(a, b)
    mask = out["off"]["mask"].values
    # Inside the threshold mask nothing changes; outside it some voxels are painted.
    np.testing.assert_array_equal(a[mask], off[mask])
    assert (off[~mask] == -1).all() and (a[~mask] >= 0).sum() > 0
    assert out["a"].attrs["peak_grow"] == 1.0 and out["a"].attrs["peak_grow_level"] > 0
    np.testing.assert_array_equal(out["a"]["cluster_mean"].values, out["off"]["cluster_mean"].values)


def test_bad_peak_grow_values_exit_2_with_one_line(tmp_path, capsys):
    s = make_measured_series(seed=0, h_range=(-1, 1), k_range=(-1, 1), l_range=(-0.1, 0.1))
    f = write_xtec(s, tmp_path / "t.nxs")
    for bad in ("lots", "-1", "nan"):
        code, _, err = run(capsys, "cluster", f, "-o", tmp_path / "r.zarr", "--method", "peaks",
                           "--peak-grow", bad)
        assert_one_line_error(code, err, "peak_grow")
    job = tmp_path / "job.toml"
    job.write_text(f'inputs = ["{f}"]\nout = "{tmp_path / "j.zarr"}"\npeak_grow = true\n')
    code, _, err = run(capsys, "cluster", "--config", job)
    assert_one_line_error(code, err, "peak_grow must be")
    assert not (tmp_path / "r.zarr").exists() and not (tmp_path / "j.zarr").exists()
