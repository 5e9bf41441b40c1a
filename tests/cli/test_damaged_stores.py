"""Issue 26: a result store that is damaged after it was completed.

A real store written by ``xtec cluster``, then really damaged: a chunk file of
``labels`` deleted (Zarr would read it as its fill value, cluster 0), a chunk
overwritten with garbage of the same size or cut short.  ``open_result``,
``xtec report``, ``xtec export``, ``xtec cluster --parent`` and the accessor
refuse it with one line naming the array, and write nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import assert_one_line_error, run

from xtec.datasets import write_xtec
from xtec.errors import InputError
from xtec.io.store import open_result


@pytest.fixture(scope="module")
def finished(small_series, tmp_path_factory):
    from xtec.cli.main import main

    d = tmp_path_factory.mktemp("finished")
    f = write_xtec(small_series, d / "s.nxs", chunks=(8, 4, 16, 16))
    out = d / "r.zarr"
    assert main(["cluster", str(f), "-o", str(out), "-k", "3", "--chunks", "4,32,32",
                 "--no-progress"]) == 0
    return out


def _chunk(store: Path, name: str) -> Path:
    """A chunk file of ``name`` in the middle of its grid."""
    files = sorted(p for p in (store / name).glob("c.*") if p.is_file())
    assert len(files) > 1
    return files[len(files) // 2]


def _deleted(chunk: Path) -> None:
    chunk.unlink()


def _garbage_same_size(chunk: Path) -> None:
    n = chunk.stat().st_size
    chunk.write_bytes(np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes())


def _one_byte_flipped(chunk: Path) -> None:
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))


def _cut_short(chunk: Path) -> None:
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2])


DAMAGE = {
    "labels chunk deleted": ("labels", _deleted, "lacks its chunk"),
    "labels chunk garbage": ("labels", _garbage_same_size, "does not match its checksum"),
    "labels one bit flipped": ("labels", _one_byte_flipped, "does not match its checksum"),
    "color chunk cut short": ("color", _cut_short, "does not match its checksum"),
    "mean_intensity chunk deleted": ("mean_intensity", _deleted, "lacks its chunk"),
}


@pytest.fixture(params=list(DAMAGE))
def damaged(request, finished, tmp_path):
    name, damage, message = DAMAGE[request.param]
    store = tmp_path / "damaged.zarr"
    shutil.copytree(finished, store)
    chunk = _chunk(store, name)
    damage(chunk)
    return store, name, message, chunk.relative_to(store / name).as_posix()


def test_open_result_refuses_naming_the_array_and_chunk(damaged):
    store, name, message, key = damaged
    with pytest.raises(InputError, match=f"'{name}'.*{key}") as err:
        open_result(store)
    assert message in str(err.value)


def test_report_refuses_in_one_line_and_writes_nothing(damaged, capsys):
    store, name, message, _ = damaged
    code, _, err = run(capsys, "report", store)
    assert_one_line_error(code, err, f"'{name}'", message)
    assert not store.with_name("damaged_report").exists()


def test_export_refuses_in_one_line_and_writes_nothing(damaged, tmp_path, capsys):
    store, name, message, _ = damaged
    code, _, err = run(capsys, "export", store, "-o", tmp_path / "x.nxs")
    assert_one_line_error(code, err, f"'{name}'", message)
    assert sorted(p.name for p in tmp_path.glob("x.nxs*")) == []


def test_second_round_refuses_a_damaged_parent(damaged, tmp_path, capsys):
    store, name, message, _ = damaged
    out = tmp_path / "second.zarr"
    code, _, err = run(capsys, "cluster", "--parent", store, "--parent-cluster", "0", "-k", "2",
                       "-o", out, "--no-progress")
    assert_one_line_error(code, err, f"'{name}'", message)
    assert sorted(p.name for p in tmp_path.glob("second.zarr*")) == []


def test_accessor_refuses_a_store_read_with_xarray(damaged):
    store, name, message, _ = damaged
    ds = xr.open_zarr(store)
    with pytest.raises(InputError, match=f"'{name}'"):
        ds.xtec.cluster_mask(0)


def test_intact_store_passes_every_check(finished, tmp_path, capsys):
    inventory = json.loads(json.loads((finished / "zarr.json").read_text())["attributes"]
                           ["chunk_inventory"])
    assert inventory["labels"][0] > 1 and inventory["color"][1] > 0
    assert json.loads((finished / "labels" / "zarr.json").read_text())["codecs"][-1] == {
        "name": "crc32c"}
    ds = xr.open_zarr(finished)
    assert int(ds.xtec.cluster_mask(0).sum()) > 0
    code, _, err = run(capsys, "report", finished, "-o", tmp_path / "rep")
    assert code == 0, err
    code, _, err = run(capsys, "export", finished, "-o", tmp_path / "x.nxs")
    assert code == 0, err


def test_no_verify_skips_the_chunk_check_but_not_the_rest(finished, tmp_path):
    store = tmp_path / "d.zarr"
    shutil.copytree(finished, store)
    _deleted(_chunk(store, "labels"))
    ds = open_result(store, verify=False)  # what the caller asked for: no chunk check
    assert ds.labels.shape == open_result(finished).labels.shape
    assert list(ds.xtec.clusters) == [0, 1, 2]  # the accessor honours it
    shutil.rmtree(store / "labels")
    with pytest.raises(InputError, match="lacks labels"):
        open_result(store, verify=False)


def test_store_without_checksums_still_names_the_array_it_cannot_read(finished, tmp_path,
                                                                      capsys):
    """A store written before chunk inventories and checksums: opened as before (shapes
    checked), and a chunk that does not decode is one line naming the array."""
    import zarr

    store = tmp_path / "old.zarr"
    shutil.copytree(finished, store)
    g = zarr.open_group(store, mode="r+")
    del g.attrs["chunk_inventory"]
    meta = json.loads((store / "labels" / "zarr.json").read_text())
    meta["codecs"] = meta["codecs"][:-1]  # no crc32c: as stores were written before
    (store / "labels" / "zarr.json").write_text(json.dumps(meta))
    zarr.consolidate_metadata(store)
    chunk = _chunk(store, "labels")
    chunk.write_bytes(chunk.read_bytes()[:-4])  # drop the checksum: a valid old chunk
    assert open_result(store).labels.shape  # opens
    _garbage_same_size(chunk)
    code, _, err = run(capsys, "report", store)
    assert_one_line_error(code, err, "'labels'", "cannot be read", "damaged")
    assert not store.with_name("old_report").exists()


def test_python_m_xtec_exits_with_the_status(finished, tmp_path):
    """``python -m xtec`` returned 0 after printing an error; the status now reaches
    the shell (as with the ``xtec`` script)."""
    import os
    import subprocess
    import sys

    store = tmp_path / "d.zarr"
    shutil.copytree(finished, store)
    _deleted(_chunk(store, "labels"))
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", "xtec", "report", str(store)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert_one_line_error(done.returncode, done.stderr, "'labels'", "lacks its chunk")
