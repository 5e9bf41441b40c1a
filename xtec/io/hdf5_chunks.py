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
import math
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


def _undo(raw, filters: list[int], skipped: int, itemsize: int, nbytes: int):
    """The chunk's bytes with ``filters`` undone (the pipeline in reverse; a set
    bit i in ``skipped`` means filter i was not applied to this chunk)."""
    for i in reversed(range(len(filters))):
        if skipped & (1 << i):
            continue
        if filters[i] == _DEFLATE:
            raw = _inflate(raw, bufsize=nbytes)
        else:
            raw = _unshuffle(raw, itemsize)
    return raw


def _decode(raw: bytes, filters: list[int], skipped: int, dtype: np.dtype,
            chunk: tuple[int, ...]) -> np.ndarray:
    nbytes = int(np.prod(chunk)) * dtype.itemsize
    return np.frombuffer(_undo(raw, filters, skipped, dtype.itemsize, nbytes),
                         dtype).reshape(chunk)


def _row_starts(lo, hi, shape) -> np.ndarray:
    """C-order flat offsets of the first value of each row (the last axis's run)
    of the box ``[lo, hi)`` in an array of ``shape``, in the box's C order."""
    strides = np.cumprod((tuple(shape[1:]) + (1,))[::-1])[::-1]
    starts = np.array([lo[-1]], np.int64)
    for a, b, st in zip(lo[:-1], hi[:-1], strides[:-1]):
        starts = (starts[:, None] + np.arange(a, b, dtype=np.int64) * st).ravel()
    return starts


class _Unshuffler:
    """Writes a shuffled chunk's part straight into the hyperslab (the compiled
    ``unshuffle*_into`` kernels): one pass over its values where an unshuffled
    copy of the chunk and a copy of that into place were two, infinities made
    NaN on the way (:func:`infinite_to_nan`'s pass then unneeded).  A block of
    the 1.5 GB benchmark series (24 x 640 x 988 float32) is read in 80-85 ms
    so, 82-88 ms and a 2-5 ms pass before; 68-73 ms of it is libdeflate's."""

    def __init__(self, out: np.ndarray):
        from xtec.io import _kernels

        itemsize = out.dtype.itemsize
        self.kernel = getattr(_kernels, _UNSHUFFLE[itemsize] + "_into")
        self.out = out
        self.words = out.reshape(-1).view(np.dtype(f"u{itemsize}"))
        self.nan_inf = out.dtype.kind == "f" and out.dtype.isnative

    @classmethod
    def make(cls, out: np.ndarray, filters: list[int]) -> _Unshuffler | None:
        """One for ``out`` where the last filter undone is a shuffle of a width
        the kernels serve (and they are compiled), else None."""
        if not (filters and filters[0] == _SHUFFLE and out.dtype.itemsize in _UNSHUFFLE
                and compiled_kernels() and _LITTLE and out.flags.c_contiguous):
            return None
        return cls(out)

    def write(self, planes: bytearray, chunk, src_lo, src_hi, dst_lo) -> None:
        shape = [b - a for a, b in zip(src_lo, src_hi)]
        src = _row_starts(src_lo, src_hi, chunk)
        dst = _row_starts(dst_lo, [a + n for a, n in zip(dst_lo, shape)], self.out.shape)
        self.kernel(np.frombuffer(planes, np.uint8), src, dst, shape[-1], self.words,
                    self.nan_inf)


def read_hyperslab(dset, key) -> np.ndarray | None:
    """``dset[key]`` for a tuple of unit-step slices, decompressed here, infinite
    values as NaN (:func:`infinite_to_nan`); None if the dataset or the key is
    not one this reader handles."""
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
    nbytes = math.prod(chunk) * dset.dtype.itemsize
    into = _Unshuffler.make(out, filters)
    clean = into is not None and (into.nan_inf or dset.dtype.kind != "f")
    ranges = [range(a // c * c, b, c) for (a, b), c in zip(bounds, chunk)]
    for origin in itertools.product(*ranges):
        src_lo, src_hi, dst_lo = [], [], []
        for o, (a, b), c, n in zip(origin, bounds, chunk, dset.shape):
            lo, hi = max(a, o), min(b, o + c, n)
            src_lo.append(lo - o)
            src_hi.append(hi - o)
            dst_lo.append(lo - a)
        src = tuple(slice(a, b) for a, b in zip(src_lo, src_hi))
        dst = tuple(slice(a, a + b - c) for a, b, c in zip(dst_lo, src_hi, src_lo))
        try:
            skipped, raw = dset.id.read_direct_chunk(origin)
        except RuntimeError:
            if dset.id.get_chunk_info_by_coord(origin).byte_offset is not None:
                raise
            out[dst] = fill  # never written: the dataset's fill value
            clean = False
            continue
        try:
            if into is not None and not skipped & 1:
                planes = _undo(raw, filters[1:], skipped >> 1, dset.dtype.itemsize, nbytes)
                if isinstance(planes, bytearray):  # (libdeflate's; one kernel type)
                    into.write(planes, chunk, src_lo, src_hi, dst_lo)
                    continue
                block = _decode(planes, filters[:1], 0, dset.dtype, chunk)
            else:
                block = _decode(raw, filters, skipped, dset.dtype, chunk)
        except (_InflateError, ValueError) as exc:
            raise InputError(
                f"{dset.file.filename}: dataset {dset.name}, chunk at {tuple(origin)} "
                f"cannot be decompressed ({exc}); the file is damaged: copy or export "
                "it again") from None
        out[dst] = block[src]
        clean = False
    return out if clean else infinite_to_nan(out)


def infinite_to_nan(block: np.ndarray) -> np.ndarray:
    """``block`` with infinite values as NaN (a copy where it has any): infinite
    intensities are no more measurements than NaN (the first pass drops NaN
    voxels and reports how many)."""
    if block.dtype.kind == "f":
        inf = np.isinf(block)
        if inf.any():
            block = np.array(block, copy=True)
            block[inf] = np.nan
    return block


def warm_kernels() -> bool:
    """Load (or compile) the compiled unshuffles, for every width they serve and
    both buffers they get: libdeflate's bytearray (writable) and the bytes of a
    chunk stored without deflate or inflated by zlib (read-only), which numba
    types apart."""
    for itemsize in _UNSHUFFLE:
        for buffer in (bytearray, bytes):
            _unshuffle(buffer(2 * itemsize), itemsize)
        out = np.empty((1, 2), np.dtype(f"f{itemsize}"))
        _Unshuffler(out).write(bytearray(2 * itemsize), (1, 2), (0, 0), (1, 2), (0, 0))
    return True
