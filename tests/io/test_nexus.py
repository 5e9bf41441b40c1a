"""Lazy NeXus loading of both layouts, selections, and input errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from xtec.datasets import make_series, write_nxrefine
from xtec.errors import InputError
from xtec.io.nexus import DIMS, open_nexus


def test_xtec_layout_is_lazy_and_follows_file_chunks(small_series, small_file):
    arr = open_nexus(small_file, chunks=None, target_chunk_bytes=8 * 16 * 16 * 4 * 8)
    assert arr.dims == DIMS
    assert arr.chunks is not None and arr.data.npartitions > 1
    # Spatial chunks are whole multiples of the HDF5 chunks (4, 16, 16).
    for size, file_chunk in zip(arr.data.chunksize[1:], (4, 16, 16)):
        assert size % file_chunk == 0 or size == arr.shape[DIMS.index("Ql")]
    assert arr.data.chunksize[0] == arr.sizes["temperature"]
    np.testing.assert_array_equal(arr.values, small_series.intensity)
    np.testing.assert_allclose(arr.Qh.values, small_series.qh)
    assert arr.temperature.attrs["units"] == "K"


def test_nxrefine_wrappers_vds_and_xtec_agree(series, xtec_file, nxrefine_files):
    wrappers, parent = nxrefine_files[:-1], nxrefine_files[-1]
    a = open_nexus(xtec_file)
    b = open_nexus(list(reversed(wrappers)))  # any order: sorted by temperature
    c = open_nexus(parent)
    d = open_nexus(str(wrappers[0].parent / "*_*k.nxs"))
    assert b.attrs["layout"] == "nxrefine" and c.attrs["layout"] == "nxrefine-vds"
    for other in (b, c, d):
        np.testing.assert_array_equal(other.temperature.values, a.temperature.values)
        np.testing.assert_array_equal(other.isel(Ql=slice(3, 6)).values,
                                      a.isel(Ql=slice(3, 6)).values)


def test_axes_in_other_order_and_names(tmp_path, small_series):
    path = tmp_path / "swapped.nxs"
    data = np.transpose(small_series.intensity, (0, 3, 2, 1))  # (T, H, K, L)
    with h5py.File(path, "w") as f:
        g = f.create_group("entry/results")
        f["entry"].attrs["NX_class"] = "NXentry"
        g.attrs["NX_class"] = "NXdata"
        g.attrs["signal"] = "counts"
        g.attrs["axes"] = ["temperature", "Qh", "Qk", "Ql"]
        g.create_dataset("counts", data=data, chunks=(8, 8, 8, 4))
        g["temperature"] = small_series.temperature
        g["Qh"], g["Qk"], g["Ql"] = small_series.qh, small_series.qk, small_series.ql
    arr = open_nexus(path)
    assert arr.dims == DIMS
    np.testing.assert_array_equal(arr.values, small_series.intensity)


def test_subvolume_selection_by_rlu(small_file, small_series):
    arr = open_nexus(small_file, qh=(0.5, -0.5), ql=(0, 0.5))
    assert arr.Qh.values.min() == pytest.approx(-0.5) and arr.Qh.values.max() == pytest.approx(0.5)
    assert arr.Ql.values.min() >= 0
    i = np.nonzero(np.isclose(small_series.qh, -0.5))[0][0]
    j = np.nonzero(np.isclose(small_series.ql, 0.0))[0][0]
    np.testing.assert_array_equal(arr.values[:, 0, :, 0], small_series.intensity[:, j, :, i])
    with pytest.raises(InputError, match="selects nothing"):
        open_nexus(small_file, qh=(5, 6))


def test_input_errors(tmp_path, small_series):
    with pytest.raises(InputError, match="no such file"):
        open_nexus(tmp_path / "missing.nxs")
    bad = tmp_path / "plain.nxs"
    with h5py.File(bad, "w") as f:
        f["entry/x"] = np.zeros(3)
    with pytest.raises(InputError, match="no NXdata"):
        open_nexus(bad)
    txt = tmp_path / "notes.txt"
    txt.write_text("not hdf5")
    with pytest.raises(InputError, match="cannot be read"):
        open_nexus(txt)
    # Mismatched shapes across temperatures.
    other = make_series(h_range=(-1, 1), k_range=(-1, 1), l_range=(-0.5, 0.5),
                        temperatures=[400.0, 410.0])
    w1 = write_nxrefine(small_series, tmp_path / "a", parent=False)
    w2 = write_nxrefine(other, tmp_path / "b", parent=False)
    with pytest.raises(InputError, match="differ in shape"):
        open_nexus(w1 + w2[:1])
    # Duplicate temperatures.
    dup = write_nxrefine(small_series, tmp_path / "c", parent=False)
    with pytest.raises(InputError, match="duplicate temperatures"):
        open_nexus(w1 + dup[:1])
    # A broken external link.
    (tmp_path / "a" / "020k" / "transform.nxs").unlink()
    with pytest.raises(InputError, match="does not exist"):
        open_nexus(w1)
