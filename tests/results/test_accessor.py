"""The ``.xtec`` xarray accessors and the order-parameter fit."""

from __future__ import annotations

import shutil

import matplotlib

matplotlib.use("Agg")

import dask.array as da  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402
from browser import small_result  # noqa: E402

import xtec.results.accessor  # noqa: E402, F401  (registers .xtec)
from xtec.datasets import CDW, CRITICAL  # noqa: E402
from xtec.errors import InputError, ParameterError  # noqa: E402
from xtec.io.nexus import open_nexus  # noqa: E402
from xtec.io.store import open_result  # noqa: E402
from xtec.results.accessor import fit_order_parameter, order_parameter_model  # noqa: E402


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return small_result(tmp_path_factory)


@pytest.fixture()
def ds(made):
    return xr.open_zarr(made[2], consolidated=False)  # plain xarray, JSON attrs undecoded


def test_cluster_mask_and_voxels(ds):
    lab = ds.labels.values
    for c in ds.xtec.clusters:
        m = ds.xtec.cluster_mask(c)
        assert m.dims == ("Ql", "Qk", "Qh") and m.dtype == bool
        assert np.array_equal(m.values, lab == c)
        assert m.values.sum() == int(ds.cluster_count.values[c])
    both = ds.xtec.cluster_mask([0, 1]).values
    assert both.sum() == (lab == 0).sum() + (lab == 1).sum()
    v = ds.xtec.voxels(2)
    assert v.sizes["voxel"] == (lab == 2).sum()
    assert np.all(lab[v.il.values, v.ik.values, v.ih.values] == 2)
    assert np.allclose(v.Qh.values, ds.Qh.values[v.ih.values])
    with pytest.raises(ParameterError, match="no cluster 9"):
        ds.xtec.cluster_mask(9)


def test_trajectories_are_lazy_and_match_the_stored_means(ds):
    for c in ds.xtec.clusters:
        tr = ds.xtec.trajectories(c, rescale="result")
        assert isinstance(tr.data, da.Array)  # nothing read yet
        assert tr.dims == ("temperature", "voxel")
        assert tr.sizes["voxel"] == int(ds.cluster_count.values[c])
        assert {"Ql", "Qk", "Qh"} <= set(tr.coords)
        # the same rescaled trajectories the pipeline clustered
        np.testing.assert_allclose(
            tr.mean("voxel").values, ds.cluster_mean.values[c], rtol=1e-4, atol=1e-4
        )
        np.testing.assert_allclose(
            tr.std("voxel").values, ds.cluster_std.values[c], rtol=1e-3, atol=1e-3
        )
    raw = ds.xtec.trajectories(0).values
    assert raw.min() >= 0 and raw.max() > 10  # raw intensities


def test_dataarray_accessor(ds, made):
    arr = open_nexus(made[1])
    mask = ds.xtec.cluster_mask(1)
    tr = arr.xtec.trajectories(mask, rescale="mean")
    np.testing.assert_allclose(tr.mean("voxel").values, ds.cluster_mean.values[1], atol=1e-4)
    r = arr.xtec.rescale("mean")
    assert r.dims == arr.dims and isinstance(r.data, da.Array)
    assert abs(float(r.isel(Ql=5, Qk=20, Qh=20).mean())) < 1e-5
    assert arr.xtec.mean_intensity().dims == ("Ql", "Qk", "Qh")
    ax = arr.xtec.plot_slice(Ql=0, temperature=30)
    assert "T = " in ax.get_title()
    with pytest.raises(ParameterError):
        arr.xtec.rescale("bogus")
    with pytest.raises(ParameterError, match="does not fit"):
        arr.xtec.trajectories(np.zeros((2, 2, 2), bool))


def test_plots_use_the_palette(ds):
    import matplotlib.colors as mcolors

    ax = ds.xtec.plot_trajectories([0, 2])
    pal = ds.xtec.palette
    colours = [mcolors.to_rgb(line.get_color()) for line in ax.lines]
    assert np.allclose(colours, pal[[0, 2]], atol=1e-6)
    ax = ds.xtec.plot_trajectories(1, voxels=3)
    assert len(ax.lines) == 1 + 3
    ax = ds.xtec.plot_slice(Ql=0.0)
    assert ax.get_title() == "Ql = 0" and ax.images
    img = ax.images[0].get_array()
    got = {tuple(np.rint(np.asarray(px) * 255).astype(int)) for px in img.reshape(-1, 3)}
    for rgb in ds.palette.values:
        assert tuple(int(x) for x in rgb) in got
    assert ds.xtec.plot_bic() is None
    assert ds.xtec.plot_counts().patches


def test_order_parameter_cluster_is_the_cdw(ds, made):
    series = made[0]
    c = ds.xtec.order_parameter_cluster()
    planted = series.classes[ds.labels.values == c]
    # the cluster found by its trajectory's shape holds the CDW peaks (and their halo)
    assert np.mean(np.isin(planted, [CDW, CRITICAL])) > 0.95
    assert np.mean(planted == CDW) > 0.5


@pytest.mark.parametrize("source", ["mean", "raw"])
def test_fit_recovers_the_planted_tc(ds, made, source):
    series = made[0]
    fit = ds.xtec.fit_order_parameter(source=source)  # cluster chosen by shape
    assert fit.cluster == ds.xtec.order_parameter_cluster()
    assert abs(fit.tc - series.tc) / series.tc < 0.03, fit
    assert abs(fit.beta - series.params["beta"]) < 0.1, fit
    assert 0 < fit.tc_err < 0.1 * series.tc and 0 < fit.beta_err < 0.2
    assert "Tc = " in str(fit)
    ax = fit.plot()
    assert ax.lines


def test_fit_on_model_data():
    t = np.linspace(10, 300, 25)
    truth = dict(tc=150.0, beta=0.25, amplitude=3.0, background=0.5)
    rng = np.random.default_rng(0)
    y = order_parameter_model(t, **truth) + rng.normal(0, 0.01, t.size)
    fit = fit_order_parameter(t, y, np.full(t.size, 0.01), critical=False)
    assert abs(fit.tc - 150) < 1.5 and abs(fit.beta - 0.25) < 0.03
    assert abs(fit.tc - 150) < 4 * fit.tc_err + 0.5
    assert set(fit.params) == {"tc", "beta", "amplitude", "background"}
    # with a critical peak at Tc, and only a range of the data
    y2 = order_parameter_model(t, critical=2.0, gamma=10.0, **truth)
    fit2 = fit_order_parameter(t, y2, t_range=(10, 250))
    assert abs(fit2.tc - 150) < 0.5 and fit2.used.sum() == (t <= 250).sum()
    with pytest.raises(ParameterError, match="too few"):
        fit_order_parameter(t[:5], y[:5])


def test_bad_datasets(ds, made, tmp_path):
    with pytest.raises(InputError, match="not an xtec result"):
        xr.Dataset({"a": ("x", [1, 2])}).xtec.cluster_mask(0)
    moved = tmp_path / "moved.zarr"
    shutil.copytree(made[2], moved)
    res = open_result(moved)
    res.attrs["source_files"] = [str(tmp_path / "gone.nxs")]
    with pytest.raises(InputError, match="cannot re-open the source files"):
        res.xtec.trajectories(0)
    with pytest.raises(ParameterError, match="source must be"):
        ds.xtec.fit_order_parameter(0, source="nope")
