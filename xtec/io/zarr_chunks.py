"""Whole chunks of a result store's Zarr arrays, encoded and written as
zarr-python writes them, without its event loop.

Every ``array[region] = block`` in zarr-python 3 is a round trip through its
asyncio loop (one thread for the process), which Dask's threads then take in
turn: writing the 128 chunks of the 1.5 GB benchmark series' four volumes took
0.45 s of a 1.0 s write stage in-process, where their encoding takes half as
long.  The store's arrays use three codecs (bytes, then Blosc or Zstandard from
numcodecs, then a crc32c checksum), so a chunk is encoded here with the same
numcodecs codecs and written to its file under the key the array's metadata
gives.  Arrays with other codecs, or a region that is not one chunk, get
``None`` from :func:`chunk_writer`: the caller writes those through Zarr.
Tests check the files are byte for byte what zarr-python writes.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

_COMPRESSORS = ("blosc", "zstd")


def chunk_writer(array, directory: str) -> Callable[[tuple, np.ndarray], bool] | None:
    """A function writing one whole chunk of ``array`` (a zarr-python 3 array
    stored in the local ``directory``): ``write(region, block) -> bool``,
    ``region`` a tuple of slices; False where ``region`` is not exactly one
    chunk (the caller writes it through Zarr).  None unless the array is a
    Zarr v3 array of a regular grid with the codecs bytes, Blosc or Zstandard,
    crc32c."""
    # Imported with Zarr (which the caller has loaded), not with this module.
    import google_crc32c

    meta = array.metadata
    if getattr(meta, "zarr_format", None) != 3 or len(meta.codecs) != 3:
        return None
    names = [c.to_dict()["name"] for c in meta.codecs]
    if names[0] != "bytes" or names[1] not in _COMPRESSORS or names[2] != "crc32c":
        return None
    chunk_shape = getattr(meta.chunk_grid, "chunk_shape", None)
    if chunk_shape is None:
        return None
    endian = meta.codecs[0].to_dict().get("configuration", {}).get("endian", "little")
    dtype = np.dtype(array.dtype)
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder("<" if endian == "little" else ">")
    compressor = _compressor(names[1], meta.codecs[1].to_dict().get("configuration", {}))
    shape, fill = tuple(array.shape), meta.fill_value

    def write(region: tuple, block: np.ndarray) -> bool:
        coords = _chunk_of(region, shape, chunk_shape)
        if coords is None:
            return False
        data = np.asarray(block)
        if data.shape != tuple(s.stop - s.start for s in region):
            return False
        if data.shape != tuple(chunk_shape):  # an edge chunk: stored whole, filled
            whole = np.full(chunk_shape, fill, dtype)
            whole[tuple(slice(0, n) for n in data.shape)] = data
            data = whole
        raw = np.ascontiguousarray(data, dtype=dtype).reshape(-1).view(np.uint8)
        encoded = bytes(compressor.encode(raw))
        checksum = np.uint32(google_crc32c.value(encoded)).astype("<u4").tobytes()
        path = os.path.join(directory, *meta.encode_chunk_key(coords).split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(encoded + checksum)
        return True

    return write


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
