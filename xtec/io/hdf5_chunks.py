"""Reading HDF5 hyperslabs by decompressing their chunks outside the HDF5 library.

h5py serialises every call into HDF5 behind one lock, decompression included,
so threads reading one file take turns: an in-process run, or a Dask worker
with several threads, decompresses on one core.  For the filters archived
NeXus files carry (deflate, with or without shuffle) this module reads each
chunk's stored bytes with ``read_direct_chunk`` (a short locked call) and
inflates and unshuffles them with libdeflate (or :mod:`zlib`) and NumPy, which
release the GIL, so threads decompress in parallel.  Anything else (other filters,
contiguous or virtual datasets, fancy keys) returns None and the caller
reads through h5py as usual.
"""

from __future__ import annotations

import itertools
import sys

import numpy as np

from xtec.backend import compiled_kernels
from xtec.errors import InputError

try:
    # libdeflate (one-shot buffers, the size known) inflates the benchmark
    # series' 1.5 MB chunks in 2.2 ms, zlib-ng in 2.5, zlib in 3.7 (interleaved
    # rounds, median of 8); all three release the GIL.
    from deflate import DeflateError as _InflateError
    from deflate import zlib_decompress as _inflate_exact

    def _inflate(raw: bytes, bufsize: int) -> bytes:
        return _inflate_exact(raw, bufsize)
except ImportError:  # pragma: no cover - deflate is a dependency; zlib still works
    from zlib import decompress as _inflate
    from zlib import error as _InflateError

_DEFLATE, _SHUFFLE = 1, 2
# Value widths with a compiled unshuffle (xtec.io._kernels); NumPy does others.
_UNSHUFFLE = {2: "unshuffle2", 4: "unshuffle4", 8: "unshuffle8"}
_LITTLE = sys.byteorder == "little"


def _filters(dset) -> list[int] | None:
    """Filter ids of the dataset's pipeline, in write order, or None if unsupported."""
    if dset.chunks is None or dset.is_virtual or dset.dtype.kind not in "fiu":
        return None
    plist = dset.id.get_create_plist()
    ids = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    return ids if set(ids) <= {_DEFLATE, _SHUFFLE} else None


def _unshuffle(raw, itemsize: int) -> np.ndarray:
    """Undo HDF5's shuffle: byte plane j holds byte j of every value.  The
    values' bytes in order, as an array whose buffer :func:`_decode` reads."""
    # The kernels put byte j of a value at bit 8 j of a word: the stored byte
    # order only where words are little-endian in memory.
    kernel = _UNSHUFFLE.get(itemsize) if compiled_kernels() and _LITTLE else None
    if kernel is not None:
        from xtec.io import _kernels

        return getattr(_kernels, kernel)(np.frombuffer(raw, np.uint8))
    return _unshuffle_numpy(raw, itemsize)


def _unshuffle_numpy(raw, itemsize: int) -> np.ndarray:
    planes = np.frombuffer(raw, np.uint8).reshape(itemsize, -1)
    out = np.empty((planes.shape[1], itemsize), np.uint8)
    for j in range(itemsize):  # one strided copy per plane: 2.5x a transpose's tobytes
        out[:, j] = planes[j]
    return out


def _decode(raw: bytes, filters: list[int], skipped: int, dtype: np.dtype,
            chunk: tuple[int, ...]) -> np.ndarray:
    # Reading undoes the pipeline in reverse; a set bit in ``skipped`` means
    # that filter was not applied to this chunk.
    nbytes = int(np.prod(chunk)) * dtype.itemsize
    for i in reversed(range(len(filters))):
        if skipped & (1 << i):
            continue
        if filters[i] == _DEFLATE:
            raw = _inflate(raw, bufsize=nbytes)
        else:
            raw = _unshuffle(raw, dtype.itemsize)
    return np.frombuffer(raw, dtype).reshape(chunk)


def read_hyperslab(dset, key) -> np.ndarray | None:
    """``dset[key]`` for a tuple of unit-step slices, decompressed here; None if
    the dataset or the key is not one this reader handles."""
    if not isinstance(key, tuple) or len(key) != dset.ndim or not all(
            isinstance(k, slice) and k.step in (None, 1) for k in key):
        return None
    filters = _filters(dset)
    if filters is None:
        return None
    bounds = [k.indices(n)[:2] for k, n in zip(key, dset.shape)]
    out = np.empty(tuple(max(0, b - a) for a, b in bounds), dset.dtype)
    if out.size == 0:
        return out
    chunk = dset.chunks
    fill = dset.fillvalue
    ranges = [range(a // c * c, b, c) for (a, b), c in zip(bounds, chunk)]
    for origin in itertools.product(*ranges):
        try:
            skipped, raw = dset.id.read_direct_chunk(origin)
        except RuntimeError:
            if dset.id.get_chunk_info_by_coord(origin).byte_offset is not None:
                raise
            block = None  # never written: the dataset's fill value
        else:
            try:
                block = _decode(raw, filters, skipped, dset.dtype, chunk)
            except (_InflateError, ValueError) as exc:
                raise InputError(
                    f"{dset.file.filename}: dataset {dset.name}, chunk at {tuple(origin)} "
                    f"cannot be decompressed ({exc}); the file is damaged: copy or export "
                    "it again") from None
        src, dst = [], []
        for o, (a, b), c, n in zip(origin, bounds, chunk, dset.shape):
            lo, hi = max(a, o), min(b, o + c, n)
            src.append(slice(lo - o, hi - o))
            dst.append(slice(lo - a, hi - a))
        out[tuple(dst)] = fill if block is None else block[tuple(src)]
    return out


def warm_kernels() -> bool:
    """Load (or compile) the compiled unshuffles, for every width they serve and
    both buffers they get: libdeflate's bytearray (writable) and the bytes of a
    chunk stored without deflate or inflated by zlib (read-only), which numba
    types apart."""
    for itemsize in _UNSHUFFLE:
        for buffer in (bytearray, bytes):
            _unshuffle(buffer(2 * itemsize), itemsize)
    return True
