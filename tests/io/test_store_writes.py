"""The result store's write: one task per block of the volumes' grid, the same
store as xarray's own write."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from conftest import leftovers

import xtec.io.store as store
from xtec.io.store import write_result


def _dataset(chunks=(1, 4, 6)) -> xr.Dataset:
    rng = np.random.default_rng(0)
    shape = (3, 8, 6)
    labels = da.from_array(rng.integers(-1, 4, shape).astype(np.int16), chunks=chunks)
    mean = da.from_array(rng.gamma(2.0, 1.0, shape).astype(np.float32), chunks=chunks)
    mask = labels >= 0
    pal = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]], np.uint8)
    color = da.map_blocks(lambda lab: pal[np.maximum(lab, 0)] * (lab >= 0)[..., None],
                          labels, new_axis=3, chunks=labels.chunks + ((3,),), dtype=np.uint8)
    profile = da.from_array(rng.normal(size=(4, 5)).astype(np.float32), chunks=-1)
    return xr.Dataset({
        "labels": (("Ql", "Qk", "Qh"), labels), "color": (("Ql", "Qk", "Qh", "rgb"), color),
        "mask": (("Ql", "Qk", "Qh"), mask), "mean_intensity": (("Ql", "Qk", "Qh"), mean),
        "cluster_mean": (("cluster", "temperature"), profile),
        "palette": (("cluster", "rgb"), pal)},
        coords={"Ql": np.arange(3.0), "Qk": np.arange(8.0), "Qh": np.arange(6.0)})


def _tasks_run(ds, path) -> list:
    names = []

    from dask.callbacks import Callback

    class Names(Callback):
        def _pretask(self, key, dsk, state):
            names.append(key[0] if isinstance(key, tuple) else key)

    with Names(), dask.config.set(scheduler="threads"):
        write_result(ds, path)
    return names


@pytest.mark.parametrize("chunks", [(1, 4, 6), (2, 8, 3)])
def test_block_writes_give_xarrays_store_one_task_a_block(tmp_path, monkeypatch, chunks):
    ds = _dataset(chunks)
    ours = _tasks_run(ds, tmp_path / "ours.zarr")
    monkeypatch.setattr(store, "_block_writes", lambda ds, path: None)  # xarray's write
    theirs = _tasks_run(ds, tmp_path / "theirs.zarr")
    a, b = xr.open_zarr(tmp_path / "ours.zarr"), xr.open_zarr(tmp_path / "theirs.zarr")
    assert sorted(a.variables) == sorted(b.variables)
    for name in a.variables:
        np.testing.assert_array_equal(a[name].values, b[name].values)
        assert a[name].encoding["chunks"] == b[name].encoding["chunks"], name
        assert a[name].encoding["compressors"] == b[name].encoding["compressors"], name
        # every chunk a file, as xarray writes them (the store's inventory relies on it)
        files = [sorted(p.name for p in (tmp_path / s / name).iterdir()) for s in
                 ("ours.zarr", "theirs.zarr")]
        assert files[0] == files[1], name
        # and each chunk's file byte for byte Zarr's (the volumes' are written
        # by xtec.io.zarr_chunks, edge chunks filled as Zarr fills them)
        for f in (f for f in files[0] if f.startswith("c")):
            assert (tmp_path / "ours.zarr" / name / f).read_bytes() == \
                (tmp_path / "theirs.zarr" / name / f).read_bytes(), (name, f)
    assert a.attrs["complete"] is True
    n_blocks = int(np.prod(ds.labels.data.numblocks))
    writes = [n for n in ours if "write_block" in str(n)]
    # One task a block writes every volume (the colours computed in it), one the
    # profile; xarray's makes one a variable and block.
    assert len(writes) == n_blocks
    assert not any("lambda" in str(n) for n in ours)
    assert len(theirs) > len(ours)


def test_a_variable_in_pieces_off_the_grid_is_written_as_xarray_writes_it(tmp_path,
                                                                          monkeypatch):
    ds = _dataset()
    ds["cluster_mean"] = ds.cluster_mean.chunk({"temperature": 3})  # two pieces
    got = []
    real = store._block_writes
    monkeypatch.setattr(store, "_block_writes", lambda d, p: got.append(real(d, p)) or got[-1])
    write_result(ds, tmp_path / "r.zarr")
    assert got == [None]
    back = xr.open_zarr(tmp_path / "r.zarr")
    for name in ("mean_intensity", "color", "labels", "cluster_mean"):
        np.testing.assert_array_equal(back[name].values, ds[name].values)


@pytest.mark.parametrize(("chunks", "even"), [(((1, 2), (4, 4), (6,)), ((2, 1), (4, 4), (6,))),
                                               (((2, 1), (3, 5), (6,)), ((2, 1), (5, 3), (6,)))])
def test_volumes_in_uneven_chunks_are_stored_in_even_ones(tmp_path, chunks, even):
    # A sub-volume's first chunk can be short; Zarr takes equal chunks but the
    # last (which must not be the longest).  Variables already even keep their graph.
    ds = _dataset((2, 4, 6))
    before = ds.mean_intensity.data.name
    ds["labels"] = ds.labels.chunk(dict(zip(("Ql", "Qk", "Qh"), chunks)))
    fixed = store._uniform_chunks(ds)
    assert fixed.labels.chunks == fixed.mean_intensity.chunks == even
    assert (fixed.mean_intensity.data.name == before) == (even == ((2, 1), (4, 4), (6,)))
    write_result(ds, tmp_path / "r.zarr")
    back = xr.open_zarr(tmp_path / "r.zarr")
    assert back.labels.encoding["chunks"] == tuple(c[0] for c in even)
    np.testing.assert_array_equal(back.labels.values, ds.labels.values)
    np.testing.assert_array_equal(back.mean_intensity.values, ds.mean_intensity.values)


@pytest.mark.parametrize("dtype", [np.int16, np.int32])
@pytest.mark.parametrize("k", [4, 20])
def test_colours_follow_labels_and_mask(dtype, k):
    """Each voxel's colour: its cluster's palette entry, grey where kept but not
    clustered, black where dropped (int16 labels as painted, int32 as others)."""
    from xtec.io.result import DROPPED, KEPT_UNCLUSTERED, color_block, palette

    rng = np.random.default_rng(k)
    labels = rng.integers(-1, k, (3, 20, 30)).astype(dtype)
    mask = (labels >= 0) | (rng.random(labels.shape) < 0.4)
    pal = palette(k)
    got = color_block(labels, mask, pal)
    assert got.shape == labels.shape + (3,) and got.dtype == np.uint8
    want = np.where(mask[..., None], np.uint8(KEPT_UNCLUSTERED), np.uint8(DROPPED))
    want[labels >= 0] = pal[labels[labels >= 0]]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("fails", ["volumes", "the rest"])
def test_a_failure_on_either_side_of_the_write_leaves_no_store(tmp_path, monkeypatch, fails):
    """The volumes' blocks are written while the small arrays are added beside
    them (a thread of its own): an error on either side ends the write with that
    error, after both sides stopped, and nothing is left at the output."""
    ds = _dataset()
    if fails == "volumes":
        def broken(block, *args, **kwargs):
            raise OSError("disk full")

        monkeypatch.setattr(store, "_write_block", broken)
    else:
        real = store._to_zarr

        def broken(ds, path, mode):
            if mode == "a":
                raise OSError("disk full")
            return real(ds, path, mode)

        monkeypatch.setattr(store, "_to_zarr", broken)
    out = tmp_path / "out.zarr"
    with dask.config.set(scheduler="threads"), pytest.raises(OSError, match="disk full"):
        write_result(ds, out)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def _volumes(ds: xr.Dataset) -> xr.Dataset:
    return ds[["labels", "color", "mask", "mean_intensity"]]


@pytest.mark.parametrize("template", ["same", "other chunks", "fails"])
def test_arrays_made_ahead_are_used_only_when_they_are_the_results(tmp_path, monkeypatch,
                                                                   template):
    """A run makes its volumes' arrays while it fits (start_layout); the write
    uses them where they are the ones it needs, and makes them again where not
    (or where making them failed): the store is the same either way."""
    from xtec.io.output import claim_output

    ds = _dataset()
    # Lazy along a dimension of the volumes too (as the lattice's strain is).
    ds["strain"] = ("Qh", da.linspace(0.0, 1.0, 6, chunks=6))
    want = tmp_path / "plain.zarr"
    with dask.config.set(scheduler="threads"):
        write_result(ds, want)
    made = {"same": _volumes(ds), "other chunks": _volumes(_dataset((1, 8, 6))),
            "fails": _volumes(ds)}[template]
    real = store._to_zarr
    calls = []

    def counted(d, path, mode):
        calls.append((sorted(d.data_vars), mode))
        if template == "fails" and "made ahead" in d.attrs.get("note", ""):
            raise OSError("disk full")
        return real(d, path, mode)

    monkeypatch.setattr(store, "_to_zarr", counted)
    out = tmp_path / "out.zarr"
    with claim_output(out), dask.config.set(scheduler="threads"):
        layout = store.start_layout(made.assign_attrs(note="made ahead"), out)
        store.wait_layout(layout)
        calls.clear()
        write_result(ds, out, layout=layout)
    assert store.start_layout(made, out) is None  # no run's claim: nothing made
    every = (["cluster_mean", "color", "labels", "mask", "mean_intensity", "strain"], "w")
    if template == "same":  # only the others are added to what was made
        assert (["cluster_mean", "strain"], "a") in calls and every not in calls
    else:
        assert every in calls
    a, b = xr.open_zarr(out), xr.open_zarr(want)
    assert sorted(a.variables) == sorted(b.variables) and a.attrs["complete"] is True
    for name in a.variables:
        np.testing.assert_array_equal(a[name].values, b[name].values)
        assert a[name].encoding["chunks"] == b[name].encoding["chunks"], name
        assert a[name].attrs == b[name].attrs, name
    assert leftovers(out) == []


def test_a_run_that_fails_while_its_arrays_are_made_leaves_nothing(tmp_path, monkeypatch):
    import threading

    from xtec.io.output import claim_output

    gate = threading.Event()
    real = store._to_zarr

    def slow(d, path, mode):
        gate.wait(10)
        return real(d, path, mode)

    monkeypatch.setattr(store, "_to_zarr", slow)
    out = tmp_path / "out.zarr"
    with pytest.raises(RuntimeError, match="the fit failed"), claim_output(out):
        layout = store.start_layout(_volumes(_dataset()), out)
        try:
            raise RuntimeError("the fit failed")
        finally:
            gate.set()
            store.wait_layout(layout)  # as the pipeline does before its claim ends
    assert leftovers(out) == [] and not out.exists()
