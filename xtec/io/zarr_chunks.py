"""Whole chunks of a result store's Zarr arrays, encoded and written as
zarr-python writes them, without its event loop.

Every ``array[region] = block`` in zarr-python 3 is a round trip through its
asyncio loop (one thread for the process), which Dask's threads then take in
turn: writing the 128 chunks of the 1.5 GB benchmark series' four volumes took
0.45 s of a 1.0 s write stage in-process, where their encoding takes half as
long.  The store's arrays use three codecs (bytes, then Blosc or Zstandard from
numcodecs, then a crc32c checksum), so a chunk is encoded here with the same
numcodecs codecs and written to its file under the key the array's metadata
(its ``zarr.json``, read here) gives.  Arrays with other codecs or chunk
keys, or a region that is not one chunk, are left to the caller, who writes
them through Zarr.  Tests check the files are byte for byte what zarr-python
writes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable

import numpy as np

_COMPRESSORS = ("blosc", "zstd")
_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def chunk_writer(directory: str) -> Callable[[tuple, np.ndarray], bool] | None:
    """A function writing one whole chunk of the Zarr v3 array stored in the
    local ``directory``: ``write(region, block) -> bool``, ``region`` a tuple
    of slices; False where ``region`` is not exactly one chunk (the caller
    writes it through Zarr).  None unless the array's metadata (its
    ``zarr.json``, read here: a Dask worker need not import Zarr, 0.15-0.2 s
    of CPU per process) says a regular grid, the default chunk keys and the
    codecs bytes, Blosc or Zstandard, crc32c."""
    try:
        with open(os.path.join(directory, "zarr.json"), "rb") as fh:
            meta = json.load(fh)
        return _writer(directory, meta)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _writer(directory: str, meta: dict):
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
        return None
    codecs = meta["codecs"]
    names = [c["name"] for c in codecs]
    if len(codecs) != 3 or names[0] != "bytes" or names[1] not in _COMPRESSORS \
            or names[2] != "crc32c":
        return None
    grid, keys = meta["chunk_grid"], meta["chunk_key_encoding"]
    if grid["name"] != "regular" or keys["name"] != "default":
        return None
    chunk_shape = tuple(int(c) for c in grid["configuration"]["chunk_shape"])
    separator = keys.get("configuration", {}).get("separator", "/")
    shape = tuple(int(n) for n in meta["shape"])
    dtype = np.dtype(meta["data_type"])  # Zarr's names of the numeric types are NumPy's
    if dtype.kind not in "biuf" or len(chunk_shape) != len(shape) or not shape:
        return None
    if dtype.itemsize > 1:
        endian = codecs[0].get("configuration", {}).get("endian", "little")
        dtype = dtype.newbyteorder("<" if endian == "little" else ">")
    fill = meta["fill_value"]
    fill = np.array(_FLOATS.get(fill, fill) if isinstance(fill, str) else fill, dtype)
    compressor = _compressor(names[1], codecs[1].get("configuration", {}))
    # Imported with numcodecs (which the compressor has loaded).
    import google_crc32c

    def write(region: tuple, block: np.ndarray) -> bool:
        coords = _chunk_of(region, shape, chunk_shape)
        data = np.asarray(block)
        if coords is None or data.shape != tuple(
                min((i + 1) * c, n) - i * c for i, c, n in zip(coords, chunk_shape, shape)):
            return False
        if data.shape != chunk_shape:  # an edge chunk: stored whole, filled
            whole = np.full(chunk_shape, fill, dtype)
            whole[tuple(slice(0, n) for n in data.shape)] = data
            data = whole
        raw = np.ascontiguousarray(data, dtype=dtype).reshape(-1).view(np.uint8)
        encoded = bytes(compressor.encode(raw))
        checksum = np.uint32(google_crc32c.value(encoded)).astype("<u4").tobytes()
        key = separator.join(["c", *map(str, coords)])
        _put(os.path.join(directory, *key.split("/")), encoded + checksum)
        return True

    return write


def _put(path: str, data: bytes) -> None:
    """Write a chunk's file (and its directories, for nested keys)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def _compressor(name: str, config: dict):
    """The numcodecs codec zarr-python's codec of ``name`` and ``config`` encodes
    with (Zarr names Blosc's shuffle, numcodecs numbers it)."""
    import numcodecs

    if name == "blosc":
        shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[config["shuffle"]]
        return numcodecs.Blosc.from_config({**config, "shuffle": shuffle})
    return numcodecs.get_codec({"id": name, **config})


def _chunk_of(region: tuple, shape: tuple, chunk_shape: tuple) -> tuple | None:
    """The grid coordinates of the one chunk ``region`` covers, or None."""
    if len(region) != len(shape):
        return None
    coords = []
    for s, n, c in zip(region, shape, chunk_shape):
        start, stop = s.start or 0, n if s.stop is None else s.stop
        if s.step not in (None, 1) or start % c or stop != min(start + c, n):
            return None
        coords.append(start // c)
    return tuple(coords)
