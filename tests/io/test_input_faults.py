"""Fault injection on inputs: missing virtual-dataset sources, damaged chunks, infinite values, text axes, tiny chunks, the open-file cache.

Part of the fault-injection suite (issue 12): real processes, real signals,
a real LocalCluster and real files."""


from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import assert_one_line_error, leftovers, run

from xtec.datasets import write_nxrefine, write_xtec
from xtec.io.store import open_result

# -- S1, T1, T2, T4, U2: damaged and hostile input --------------------------------------


def test_missing_source_of_a_virtual_dataset_is_named(small_series, tmp_path, capsys):
    paths = write_nxrefine(small_series, tmp_path / "nxr")
    parent = paths[-1]
    lost = sorted((tmp_path / "nxr").glob("*/transform.nxs"))[3]
    lost.unlink()
    for cmd in (["info", parent], ["cluster", parent, "-o", tmp_path / "r.zarr"]):
        code, _, err = run(capsys, *cmd)
        assert_one_line_error(code, err, str(lost.resolve()), "does not exist")
    assert not (tmp_path / "r.zarr").exists()


def _corrupt_one_chunk(path: Path) -> tuple[int, ...]:
    with h5py.File(path, "r") as f:
        info = f["entry/data/data"].id.get_chunk_info(2)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 3)
        fh.write(b"\x00garbage\xff" * 8)
    return info.chunk_offset


@pytest.mark.parametrize("workers", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_damaged_chunk_is_one_line_naming_file_dataset_and_chunk(tiny, tmp_path, capsys,
                                                                  workers):
    origin = _corrupt_one_chunk(tiny)
    out = tmp_path / "r.zarr"
    code, _, err = run(capsys, "cluster", tiny, "-o", out, "--workers", workers,
                       "--no-progress")
    assert_one_line_error(code, err, str(tiny), "/entry/data/data",
                          f"chunk at {tuple(origin)}", "damaged")
    assert not out.exists() and leftovers(out) == []


def test_infinite_intensity_is_dropped_and_reported(small_series, tmp_path, capsys):
    bad = small_series.intensity.copy()
    bad[2, 3, 10, 10] = np.inf
    bad[5, 1, 4, 4] = -np.inf
    f = write_xtec(replace(small_series, intensity=bad), tmp_path / "inf.nxs")
    out = tmp_path / "r.zarr"
    code, stdout, err = run(capsys, "cluster", f, "-o", out, "-k", "3", "--threshold", "kl")
    assert code == 0, err
    assert "2 voxels with NaN or infinite intensities were dropped" in stdout
    mask = open_result(out).mask.values
    assert not mask[3, 10, 10] and not mask[1, 4, 4]


def test_text_axis_is_one_line(tiny, tmp_path, capsys):
    with h5py.File(tiny, "r+") as f:
        n = f["entry/data/Ql"].shape[0]
        del f["entry/data/Ql"]
        f["entry/data/Ql"] = np.array([f"l{i}" for i in range(n)], dtype=h5py.string_dtype())
    code, _, err = run(capsys, "cluster", tiny, "-o", tmp_path / "r.zarr")
    assert_one_line_error(code, err, "axis 'Ql'", "does not hold numbers")


def test_tiny_chunks_are_corrected_with_a_warning(tiny, tmp_path, capsys, caplog):
    out = tmp_path / "r.zarr"
    with caplog.at_level(logging.WARNING, logger="xtec"):
        code, _, err = run(capsys, "cluster", tiny, "-o", out, "-k", "3", "--chunks", "1,1,1")
    assert code == 0, err
    assert "chunks=1,1,1 would make 40,931 chunks" in caplog.text and "instead" in caplog.text
    ref = tmp_path / "ref.zarr"
    assert run(capsys, "cluster", tiny, "-o", ref, "-k", "3")[0] == 0
    np.testing.assert_array_equal(open_result(out).labels.values, open_result(ref).labels.values)


# -- the bounded file cache ---------------------------------------------------------


def test_open_file_cache_is_bounded_and_closes_on_evict(small_series, tmp_path):
    from xtec.io import h5source

    paths = write_nxrefine(small_series, tmp_path / "nxr", parent=False)
    cache = h5source.FileCache(maxsize=3)
    handles = []
    for p in paths:
        with cache.acquire(str(p)) as f:
            handles.append(f)
            assert len(cache) <= 3
    assert len(cache) == 3
    assert not handles[0].id.valid and handles[-1].id.valid  # least recent closed
    # A file being read is never closed under its reader.
    with cache.acquire(str(paths[0])) as busy:
        for p in paths[1:]:
            with cache.acquire(str(p)):
                pass
        assert busy.id.valid
    cache.close_all()
    assert len(cache) == 0
