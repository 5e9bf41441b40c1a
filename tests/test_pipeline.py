"""End to end: NeXus in, Zarr out, on the synthetic ground truth; runtimes agree."""

from __future__ import annotations

import re

import numpy as np
import pytest
import xarray as xr
from sklearn.metrics import adjusted_rand_score

from xtec.errors import ParameterError
from xtec.io.store import open_result
from xtec.pipeline import ClusterConfig, run_cluster
from xtec.runtime.clusters import dask_runtime


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
    # Every array is Zstandard level 1 but float volumes, LZ4 on bit planes (fast
    # to write, see xtec.io.store), then a crc32c checksum of each chunk (issue 26).
    import zarr

    for name, arr in zarr.open_group(xtec_result.path, mode="r").arrays():
        codec, crc = arr.compressors
        if arr.dtype.kind == "f" and arr.ndim >= 3:
            assert (type(codec).__name__, codec.cname.value, codec.shuffle.value) == \
                ("BloscCodec", "lz4", "bitshuffle"), name
        else:
            assert (type(codec).__name__, codec.level) == ("ZstdCodec", 1), name
        assert type(crc).__name__ == "Crc32cCodec", name
    assert ds.mean_intensity.dtype == np.float32


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
        res = run_cluster(ClusterConfig(inputs=[str(xtec_file)], out=str(out2),
                                        chunks=(21, 40, 64)), runtime=rt)
    got, want = open_result(out2), open_result(xtec_result.path)
    np.testing.assert_array_equal(got.labels.values, ref)
    # The profiles, summed on the workers while the label volume was written,
    # agree with the in-process run's and with the labels.
    np.testing.assert_array_equal(got.cluster_count.values, want.cluster_count.values)
    np.testing.assert_array_equal(got.cluster_count.values, np.bincount(ref[ref >= 0]))
    np.testing.assert_allclose(got.cluster_mean.values, want.cluster_mean.values, atol=1e-6)
    np.testing.assert_allclose(got.cluster_std.values, want.cluster_std.values, atol=1e-6)
    assert res.summary["counts"] == got.cluster_count.values.tolist()


@pytest.mark.parametrize("method", ["smooth", "peaks"])
def test_xtec_s_methods_beat_or_match_xtec_d(method, series, xtec_file, xtec_result, tmp_path):
    _, ari_d, _ = _score(series, xtec_result.path)
    out = tmp_path / f"{method}.zarr"
    run_cluster(ClusterConfig(inputs=[str(xtec_file)], out=str(out), method=method))
    ds, ari, frac = _score(series, out)
    assert ari >= 0.95 and ari >= ari_d
    assert ds.attrs["method"] == method
    if method == "peaks":
        assert ds.component.dtype == np.int32 and ds.attrs["n_components"] > 100
        assert np.array_equal(ds.component.values > 0, ds.mask.values)
    else:
        assert ds.attrs["kernel"] == "local" and ds.attrs["unit_cell_pixels"] == [10, 20, 20]
        assert ds.attrs["parameters"]["length_scale"] == 1.0


def test_k_auto_and_the_bic_command(xtec_file, tmp_path, capsys):
    from xtec.cli.main import main

    png = tmp_path / "bic.png"
    code = main(["bic", str(xtec_file), "--ks", "2:7", "--seeds", "2", "--plot", str(png),
                 "--json", str(tmp_path / "bic.json")])
    out = capsys.readouterr().out
    assert code == 0 and png.stat().st_size > 10_000
    # The planted classes: four signal classes, and background voxels that pass
    # the threshold (see test_select.test_bic_scan_finds_the_planted_classes).
    chosen = re.search(r"chosen K = (\d+) \(elbow", out)
    assert chosen and int(chosen.group(1)) in (4, 5), out
    out_zarr = tmp_path / "auto.zarr"
    run_cluster(ClusterConfig(inputs=[str(xtec_file)], out=str(out_zarr), k="auto",
                              bic_ks=(2, 7), bic_seeds=2))
    ds = open_result(out_zarr)
    # the run chooses K as the command does
    assert ds.attrs["k"] == int(chosen.group(1)) and ds.attrs["k_requested"] == "auto"
    assert list(ds.bic_k.values) == [2, 3, 4, 5, 6, 7]


def test_peaks_with_k_auto_labels_components_once(small_file, tmp_path, monkeypatch):
    import xtec.spatial.peaks as peaks

    calls = []
    real = peaks.label_components
    monkeypatch.setattr(peaks, "label_components", lambda m: calls.append(1) or real(m))
    run_cluster(ClusterConfig(inputs=[str(small_file)], out=str(tmp_path / "p.zarr"),
                              method="peaks", k="auto", bic_ks=(2, 3), bic_seeds=1))
    assert len(calls) == 1
    assert "component" in open_result(tmp_path / "p.zarr")


def test_second_round_splits_one_cluster(xtec_file, xtec_result, tmp_path):
    parent = open_result(xtec_result.path)
    c = int(np.argmax(parent.cluster_count.values))
    out = tmp_path / "second.zarr"
    run_cluster(ClusterConfig(inputs=[], out=str(out), parent=str(xtec_result.path),
                              parent_cluster=c, k=2))
    ds = open_result(out)
    assert ds.attrs["parent"]["cluster"] == c
    assert ds.attrs["threshold"]["method"] == "parent"
    inside = parent.labels.values == c
    assert np.array_equal(ds.labels.values >= 0, inside)
    assert set(np.unique(ds.labels.values[inside])) == {0, 1}


def test_second_round_on_another_grid_is_refused(xtec_file, xtec_result, tmp_path):
    parent = open_result(xtec_result.path)
    qh = parent.Qh.values
    with pytest.raises(ParameterError, match="covers a different grid"):
        run_cluster(ClusterConfig(inputs=[str(xtec_file)], out=str(tmp_path / "s.zarr"),
                                  parent=str(xtec_result.path), parent_cluster=0, k=2,
                                  qh=(float(qh[1]), float(qh[-1]))))


def test_every_stage_kernel_warms():
    """What in-process runs load in a thread during the read (failures there are
    only logged, so they are checked here)."""
    from xtec.mixture.warm import warm_stage_kernels

    assert warm_stage_kernels("diag") and warm_stage_kernels("full")
