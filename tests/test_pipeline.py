"""End to end: NeXus in, Zarr out, on the synthetic ground truth; runtimes agree."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from sklearn.metrics import adjusted_rand_score

from xtec.io.store import open_result
from xtec.pipeline import ClusterConfig, run_cluster
from xtec.runtime import dask_runtime


def _score(series, path):
    ds = open_result(path)
    labels, mask = ds.labels.values, ds.mask.values
    kept_signal = series.signal & mask
    frac_kept = kept_signal.sum() / series.signal.sum()
    ari = adjusted_rand_score(series.classes[kept_signal], labels[kept_signal])
    return ds, ari, frac_kept


@pytest.fixture(scope="module")
def xtec_result(series, xtec_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("res") / "xtec.zarr"
    return run_cluster(ClusterConfig(inputs=[str(xtec_file)], out=str(out), k=4, seed=0))


def test_xtec_layout_separates_planted_classes(series, xtec_result):
    ds, ari, frac = _score(series, xtec_result.path)
    assert series.intensity[0].size > 300_000 and series.intensity.shape[0] == 24
    assert frac >= 0.95
    assert ari >= 0.9
    # The store holds the documented contract.
    assert ds.labels.dtype == np.int16 and ds.labels.dims == ("Ql", "Qk", "Qh")
    assert ds.color.dtype == np.uint8 and ds.color.dims == ("Ql", "Qk", "Qh", "rgb")
    assert ds.palette.shape == (4, 3)
    assert ds.cluster_mean.dims == ("cluster", "temperature")
    assert set(np.unique(ds.labels.values)) == {-1, 0, 1, 2, 3}
    assert (ds.labels.values >= 0).sum() == ds.mask.values.sum()
    assert ds.attrs["complete"] is True
    for key in ("method", "k", "seed", "threshold", "rescale", "covariance_type",
                "source_files", "versions", "started", "ended"):
        assert key in ds.attrs
    # Colours: each cluster's voxels carry its palette colour; dropped voxels black.
    lab, col, pal = ds.labels.values, ds.color.values, ds.palette.values
    for c in range(4):
        assert np.all(col[lab == c] == pal[c])
    assert np.all(col[~ds.mask.values] == 0)
    # Plain xarray reads it too (the notebook path).
    assert xr.open_zarr(xtec_result.path, consolidated=False).labels.shape == lab.shape


def test_nxrefine_layout_gives_the_same_result(series, nxrefine_files, xtec_result, tmp_path):
    out = tmp_path / "nxr.zarr"
    run_cluster(ClusterConfig(inputs=[str(p) for p in nxrefine_files[:-1]], out=str(out)))
    ds, ari, frac = _score(series, out)
    assert frac >= 0.95 and ari >= 0.9
    ref = open_result(xtec_result.path)
    np.testing.assert_array_equal(ds.labels.values, ref.labels.values)


def test_same_labels_across_chunkings_and_local_cluster(xtec_file, xtec_result, tmp_path):
    ref = open_result(xtec_result.path).labels.values
    out = tmp_path / "chunked.zarr"
    run_cluster(ClusterConfig(inputs=[str(xtec_file)], out=str(out), chunks=(8, 40, 48)))
    np.testing.assert_array_equal(open_result(out).labels.values, ref)
    out2 = tmp_path / "cluster.zarr"
    with dask_runtime(workers=2, dashboard_address=None) as rt:
        assert rt.n_workers == 2
        run_cluster(ClusterConfig(inputs=[str(xtec_file)], out=str(out2), chunks=(21, 40, 64)),
                    runtime=rt)
    np.testing.assert_array_equal(open_result(out2).labels.values, ref)
