"""Boxes of a chunked series, each chunk read once (issue 29: Dask reads a slice
of a ``from_array`` array as its whole chunk, so the registration's boxes read a
tenth of the file; on an array chunked as the file is they read 80 HDF5 chunks)."""

from __future__ import annotations

import dask.array as da
import h5py
import numpy as np

from xtec.runtime.chunks import box_chunks, compute_blocks, read_boxes

FILE_CHUNKS = (1, 32, 32)  # 24 x 1 x 32 x 32 float32: 96 kB, above MIN_CHUNK_BYTES
BOXES = [((1, 3, 3), (4, 9, 9)), ((2, 5, 28), (5, 11, 40)),  # share chunks, cross edges
         ((0, 60, 60), (6, 96, 96)), ((3, 40, 40), (4, 44, 44))]


class _Counted:
    """An HDF5 dataset that records the regions read from it."""

    def __init__(self, dset):
        self.dset, self.shape, self.dtype, self.ndim = dset, dset.shape, dset.dtype, dset.ndim
        self.reads = []

    def __getitem__(self, key):
        self.reads.append(key)
        return self.dset[key]


def _touched(chunks):
    """Chunks (per axis sizes) the boxes touch, counted voxel by voxel."""
    edges = [np.cumsum(c) for c in chunks]
    return {tuple(int(np.searchsorted(e, i, "right")) for e, i in zip(edges, (p, k, h)))
            for lo, hi in BOXES for p in range(lo[0], hi[0]) for k in range(lo[1], hi[1])
            for h in range(lo[2], hi[2])}


def test_boxes_equal_the_slices_each_chunk_read_once(tmp_path):
    a = np.random.default_rng(0).random((24, 6, 96, 96), dtype=np.float32)
    path = tmp_path / "s.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("d", data=a, chunks=(24, *FILE_CHUNKS), compression="gzip")
    fine_chunks = box_chunks(FILE_CHUNKS, a.shape[1:], 24)
    assert fine_chunks == FILE_CHUNKS
    with h5py.File(path, "r") as f:
        src = _Counted(f["d"])
        results = {}
        for name, chunks in (("pass", (3, 64, 64)), ("file", fine_chunks)):
            data = da.from_array(src, chunks=(24, *chunks), asarray=True, fancy=False)
            src.reads.clear()
            results[name] = read_boxes(data, BOXES)
            assert len(src.reads) == len(_touched(data.chunks[1:])), name
        # Read by a scheduler of the caller's choosing (the client's threads
        # where a cluster runs on this host): the same boxes
        src.reads.clear()
        results["sync"] = read_boxes(data, BOXES, scheduler="sync")
        assert len(src.reads) == len(_touched(data.chunks[1:]))
        # Temperatures in chunks of their own (the NXRefine layout's): stacked again
        by_t = da.from_array(src, chunks=(8, *fine_chunks), asarray=True, fancy=False)
        src.reads.clear()
        results["by temperature"] = read_boxes(by_t, BOXES)
        assert len(src.reads) == 3 * len(_touched(by_t.chunks[1:]))
        # Fewer voxels read on the file's own chunks (a third here, where the boxes
        # cover much of a small volume)
        assert len(_touched(data.chunks[1:])) * np.prod(FILE_CHUNKS) \
            < len(_touched(((3, 3), (64, 32), (64, 32)))) * 3 * 64 * 64 / 2
    for i, (lo, hi) in enumerate(BOXES):
        want = a[(slice(None),) + tuple(map(slice, lo, hi))]
        for name in results:
            np.testing.assert_array_equal(results[name][i], want)
            assert isinstance(results[name][i], np.ndarray)


def test_box_chunks_grow_only_where_they_would_be_too_many():
    assert box_chunks(None, (100, 100, 100), 24) == (32, 32, 32)  # not chunked: 32-cubes
    assert box_chunks((1, 128, 128), (16, 988, 988), 24) == (1, 128, 128)
    grown = box_chunks((1, 128, 128), (1000, 1000, 1000), 24)
    assert np.prod([-(-1000 // c) for c in grown]) <= 20_000


def _two_sums(a, b):
    return float(a.sum() + 10 * b.sum())


def test_compute_blocks_reads_only_the_blocks_it_is_given():
    """compute_blocks runs f on the named blocks of a file-like array: only their
    reads happen, the results come in call order, on the scheduler named, and
    two calls at once on one cluster keep their own results."""
    from distributed import Client, LocalCluster

    values = np.arange(4 * 6 * 6, dtype=np.float64).reshape(4, 6, 6)
    src = _Counted(values)
    x = da.from_array(src, chunks=(2, 3, 3))
    calls = [(np.sum, [(0, 1, 1)]), (_two_sums, [(0, 0, 0), (1, 0, 0)])]
    want = [float(values[:2, 3:, 3:].sum()),
            float(values[:2, :3, :3].sum() + 10 * values[2:, :3, :3].sum())]
    for scheduler in ("sync", "threads"):
        src.reads.clear()
        assert [float(v) for v in compute_blocks(x, calls, scheduler)] == want
        assert len(src.reads) == 3
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cluster, Client(cluster):
        assert [float(v) for v in compute_blocks(x, calls)] == want  # the client's
        assert [float(v) for v in compute_blocks(x, calls[::-1])] == want[::-1]
