"""Hyperslabs decompressed outside the HDF5 library equal h5py's own reads."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from xtec.io.hdf5_chunks import read_hyperslab

KEYS = [
    (slice(None),) * 4,
    (slice(0, 5), slice(1, 3), slice(10, 65), slice(31, 90)),  # partial chunks
    (slice(None), slice(2, 3), slice(0, 70), slice(64, 90)),  # edge chunks
    (slice(1, 4), slice(0, 1), slice(5, 6), slice(7, 8)),  # one value per trajectory
]


@pytest.fixture(scope="module")
def h5(tmp_path_factory):
    rng = np.random.default_rng(0)
    a = rng.gamma(2, 2, size=(5, 3, 70, 90)).astype(np.float32)
    path = tmp_path_factory.mktemp("h5") / "direct.h5"
    with h5py.File(path, "w") as f:
        kw = dict(chunks=(5, 1, 32, 32))
        f.create_dataset("gzip_shuffle", data=a, compression="gzip", shuffle=True, **kw)
        f.create_dataset("gzip", data=a, compression="gzip", compression_opts=9, **kw)
        f.create_dataset("shuffle", data=a, shuffle=True, **kw)
        f.create_dataset("plain", data=a, **kw)
        f.create_dataset("int16", data=(a * 100).astype(np.int16), compression="gzip",
                         shuffle=True, **kw)
        f.create_dataset("float64", data=a.astype(np.float64), compression="gzip",
                         shuffle=True, **kw)
        f.create_dataset("big_endian", data=a.astype(">f4"), compression="gzip",
                         shuffle=True, **kw)
        part = f.create_dataset("unwritten_chunks", shape=a.shape, dtype=np.float32,
                                compression="gzip", fillvalue=-3, **kw)
        part[:, 0, :20, :20] = a[:, 0, :20, :20]
        f.create_dataset("lzf", data=a, compression="lzf", **kw)
        f.create_dataset("contiguous", data=a)
    return path


@pytest.mark.parametrize("name", ["gzip_shuffle", "gzip", "shuffle", "plain", "int16",
                                  "float64", "big_endian", "unwritten_chunks"])
def test_direct_reads_equal_h5py(h5, name):
    with h5py.File(h5, "r") as f:
        d = f[name]
        for key in KEYS:
            got = read_hyperslab(d, key)
            assert got is not None and got.dtype == d.dtype
            np.testing.assert_array_equal(got, d[key])


@pytest.mark.parametrize("name", ["lzf", "contiguous"])
def test_other_layouts_fall_back_to_h5py(h5, name):
    with h5py.File(h5, "r") as f:
        assert read_hyperslab(f[name], KEYS[0]) is None
        # and so do keys that are not plain slices
        assert read_hyperslab(f["gzip"], (0, slice(None), slice(None), slice(None))) is None


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64, "V3"])
def test_compiled_unshuffle_equals_its_numpy_twin(dtype, monkeypatch):
    """HDF5's shuffle undone by the compiled kernels (2, 4 and 8 bytes) and by
    NumPy (every width; what a run without compiled kernels uses): the same bytes,
    which are those before the shuffle."""
    from xtec.backend import CPU_ENGINE_ENV
    from xtec.io.hdf5_chunks import _unshuffle

    itemsize = np.dtype(dtype).itemsize
    values = np.random.default_rng(itemsize).integers(0, 256, 1000 * itemsize, dtype=np.uint8)
    shuffled = values.reshape(-1, itemsize).T.tobytes()
    got = np.frombuffer(_unshuffle(shuffled, itemsize), np.uint8)
    monkeypatch.setenv(CPU_ENGINE_ENV, "numpy")
    twin = np.frombuffer(_unshuffle(shuffled, itemsize), np.uint8)
    np.testing.assert_array_equal(got, values)
    np.testing.assert_array_equal(twin, values)


@pytest.mark.parametrize("dtype", ["<f2", "<f4", "<f8", ">f4"])
@pytest.mark.parametrize("shuffle", [True, False])
def test_infinities_are_read_as_nan(tmp_path, dtype, shuffle):
    """The reader's contract: infinite values come back as NaN (no more a
    measurement), whether the chunk is unshuffled straight into the hyperslab
    (native floats: the kernel replaces them), or copied (big-endian, deflate
    alone: a pass over the hyperslab does); every other value as h5py reads it."""
    rng = np.random.default_rng(3)
    a = rng.gamma(2, 2, size=(4, 2, 40, 50)).astype(dtype)
    a[0, 0, 3, 4], a[2, 1, 39, 49], a[3, 0, 0, 0] = np.inf, -np.inf, np.nan
    path = tmp_path / "inf.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("d", data=a, chunks=(4, 1, 16, 16), compression="gzip",
                             shuffle=shuffle)
        for key in KEYS[:3]:
            want = d[key].astype(np.float64)
            want[np.isinf(want)] = np.nan
            got = read_hyperslab(d, key)
            assert got.dtype == d.dtype
            np.testing.assert_array_equal(got.astype(np.float64), want)
        assert np.isnan(read_hyperslab(d, KEYS[0])[0, 0, 3, 4])


def test_integers_pass_through_the_kernels_unchanged(tmp_path):
    """Integer bit patterns that would be a float's infinity are left alone."""
    a = np.full((2, 1, 8, 8), 0x7F800000, np.uint32)
    a[1] = 0x7C00FF80
    path = tmp_path / "int.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("u4", data=a, chunks=(2, 1, 4, 4), compression="gzip", shuffle=True)
        f.create_dataset("u2", data=np.full((2, 1, 8, 8), 0x7C00, np.uint16), chunks=(2, 1, 4, 4),
                         compression="gzip", shuffle=True)
        for name in ("u4", "u2"):
            np.testing.assert_array_equal(read_hyperslab(f[name], KEYS[0]), f[name][...])
