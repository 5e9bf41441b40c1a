"""Whole chunks written as their files: byte for byte what zarr-python writes,
and only where the array's codecs and the region allow it."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, GzipCodec, ZstdCodec

from xtec.io.zarr_chunks import chunk_writer

SHAPE, CHUNKS = (3, 70, 50), (1, 32, 50)  # 70 rows: two chunks and an edge of 6


def _array(root, name, dtype, compressors, fill, extra=(), order="little"):
    g = zarr.open_group(root, mode="a", zarr_format=3)
    return g.create_array(name, shape=SHAPE + extra, chunks=CHUNKS + extra, dtype=dtype,
                          compressors=compressors, fill_value=fill,
                          chunk_key_encoding={"name": "default", "separator": "/"},
                          config={"write_empty_chunks": True})


@pytest.mark.parametrize(("dtype", "codec", "fill", "extra"), [
    (np.float32, BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"), np.nan, ()),
    (np.float64, BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"), 0.0, ()),
    (np.int16, ZstdCodec(level=1), -1, ()),
    (np.int32, ZstdCodec(level=3, checksum=True), -1, ()),
    (bool, ZstdCodec(level=1), False, ()),
    (np.uint8, ZstdCodec(level=1), 0, (3,)),
])
def test_chunks_are_zarrs_byte_for_byte(tmp_path, dtype, codec, fill, extra):
    rng = np.random.default_rng(3)
    data = (rng.gamma(2.0, 1.0, SHAPE + extra) * 50).astype(dtype)
    theirs = _array(tmp_path / "theirs.zarr", "v", dtype, (codec, Crc32cCodec()), fill, extra)
    _array(tmp_path / "ours.zarr", "v", dtype, (codec, Crc32cCodec()), fill, extra)
    write = chunk_writer(str(tmp_path / "ours.zarr" / "v"))
    assert write is not None
    for lo in range(3):
        for k0 in range(0, SHAPE[1], CHUNKS[1]):
            region = (slice(lo, lo + 1), slice(k0, min(k0 + CHUNKS[1], SHAPE[1])),
                      slice(0, SHAPE[2])) + tuple(slice(0, n) for n in extra)
            theirs[region] = data[region]
            assert write(region, data[region])
    files = sorted(p.relative_to(tmp_path / "theirs.zarr" / "v")
                   for p in (tmp_path / "theirs.zarr" / "v").rglob("*") if p.is_file())
    assert len(files) == 3 * 3 + 1  # nine chunks in nested "c/l/k/h" keys, zarr.json
    for f in files:
        if f.name != "zarr.json":
            assert (tmp_path / "ours.zarr" / "v" / f).read_bytes() == \
                (tmp_path / "theirs.zarr" / "v" / f).read_bytes(), f
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "ours.zarr" / "v")[...], data)


def test_other_codecs_or_regions_are_left_to_zarr(tmp_path):
    no_crc = _array(tmp_path / "a.zarr", "v", np.float32, (ZstdCodec(level=1),), 0.0)
    assert no_crc is not None and chunk_writer(str(tmp_path / "a.zarr" / "v")) is None
    gzip = _array(tmp_path / "b.zarr", "v", np.float32, (GzipCodec(), Crc32cCodec()), 0.0)
    assert gzip is not None and chunk_writer(str(tmp_path / "b.zarr" / "v")) is None
    ok = _array(tmp_path / "c.zarr", "v", np.int16, (ZstdCodec(level=1), Crc32cCodec()), -1)
    assert ok is not None and chunk_writer(str(tmp_path / "nothing")) is None
    write = chunk_writer(str(tmp_path / "c.zarr" / "v"))
    block = np.ones((1, 32, 50), np.int16)
    for region in [(slice(0, 1), slice(16, 48), slice(0, 50)),  # off the grid
                   (slice(0, 1), slice(0, 16), slice(0, 50)),  # part of a chunk
                   (slice(0, 1), slice(0, 32, 2), slice(0, 50)),  # strided
                   (slice(0, 1), slice(0, 32))]:  # too few dimensions
        assert write(region, block[tuple(slice(0, r.stop - r.start) for r in region)]) is False
    assert not any(p.name.startswith("c") for p in (tmp_path / "c.zarr" / "v").iterdir())


def test_a_worker_writes_chunks_without_importing_zarr(tmp_path):
    """Dask workers write the result's blocks: its chunk writer reads the array's
    zarr.json itself, so a worker process never pays Zarr's import."""
    import subprocess
    import sys

    for root in ("ours.zarr", "theirs.zarr"):
        _array(tmp_path / root, "v", np.float32,
               (BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"), Crc32cCodec()), np.nan)
    data = np.random.default_rng(0).normal(size=(1, 32, 50)).astype(np.float32)
    zarr.open_array(tmp_path / "theirs.zarr" / "v", mode="r+")[0:1, 32:64] = data
    code = ("import sys, numpy as np\n"
            "from xtec.io.zarr_chunks import chunk_writer\n"
            "w = chunk_writer(sys.argv[1])\n"
            "x = np.random.default_rng(0).normal(size=(1, 32, 50)).astype(np.float32)\n"
            "assert w((slice(0, 1), slice(32, 64), slice(0, 50)), x)\n"
            "print('zarr' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ours.zarr" / "v")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
    key = "c/0/1/0"
    assert (tmp_path / "ours.zarr" / "v" / key).read_bytes() == \
        (tmp_path / "theirs.zarr" / "v" / key).read_bytes()


def test_metadata_it_does_not_know_is_left_to_zarr(tmp_path):
    import json

    _array(tmp_path / "a.zarr", "v", np.float32, (ZstdCodec(level=1), Crc32cCodec()), np.nan)
    meta_path = tmp_path / "a.zarr" / "v" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    assert chunk_writer(str(meta_path.parent)) is not None
    for change in ({"fill_value": "0x7fc00000"}, {"data_type": "complex64"},
                   {"chunk_key_encoding": {"name": "v2"}}, {"zarr_format": 2},
                   {"chunk_grid": {"name": "rectilinear"}}):
        meta_path.write_text(json.dumps({**meta, **change}))
        assert chunk_writer(str(meta_path.parent)) is None, change
    meta_path.write_text("{not json")
    assert chunk_writer(str(meta_path.parent)) is None
