"""Bulk reads of HDF5 datasets inside Dask tasks: a bounded cache of open files
and :class:`H5Source`, the picklable array a Dask chunk reads from.

nexusformat (in :mod:`xtec.io.nexus`) reads the metadata; this module is the only
place that opens a file to read a volume.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from xtec.errors import InputError
from xtec.io.hdf5_chunks import read_hyperslab

# The most HDF5 files a process keeps open (as xarray's ``file_cache_maxsize``):
# an NXRefine series opens one file per temperature, and a process that reads
# several series would otherwise hold every file it ever opened.
MAX_OPEN_FILES = 128


class FileCache:
    """Open read-only h5py files, least recently used closed first.

    Opening a file per chunk costs more than reading a small chunk, so each
    process keeps its handles; beyond ``maxsize`` the least recently used file
    that no thread is reading is closed (as ``xarray.backends.CachingFileManager``).
    File locking is left to ``HDF5_USE_FILE_LOCKING``: passing ``locking=`` here
    as well would clash with other libraries opening the same file in this process.
    """

    def __init__(self, maxsize: int = MAX_OPEN_FILES):
        self.maxsize = maxsize
        self.open_files: OrderedDict[str, list] = OrderedDict()  # name -> [file, readers]
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def acquire(self, filename: str) -> Iterator[object]:
        import h5py

        with self._lock:
            entry = self.open_files.get(filename)
            if entry is None or not entry[0].id.valid:
                entry = [h5py.File(filename, "r"), 0]
                self.open_files[filename] = entry
            self.open_files.move_to_end(filename)
            entry[1] += 1
            self._evict()
        try:
            yield entry[0]
        finally:
            with self._lock:
                entry[1] -= 1
                self._evict()

    def _evict(self) -> None:
        idle = [name for name, (_, readers) in self.open_files.items() if readers == 0]
        for name in idle[:max(0, len(self.open_files) - self.maxsize)]:
            f, _ = self.open_files.pop(name)
            f.close()

    def __len__(self) -> int:
        return len(self.open_files)

    def close_all(self) -> None:
        """Close every idle file (files being read close when their reader is done)."""
        with self._lock:
            for name in [n for n, (_, readers) in self.open_files.items() if readers == 0]:
                self.open_files.pop(name)[0].close()


open_files = FileCache()


def set_max_open_files(n: int) -> None:
    """Bound the HDF5 files each process keeps open (default 128)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"max open files must be a positive integer (got {n!r})")
    open_files.maxsize = n
    with open_files._lock:
        open_files._evict()


@dataclass(frozen=True)
class H5Source:
    """A picklable, lazily opened HDF5 dataset, indexable like an array.

    ``dask.array.from_array`` calls ``__getitem__`` with one chunk's slices, so
    each task opens (once per process) and reads only its own part of the file.
    """

    filename: str
    path: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key):
        with open_files.acquire(self.filename) as f:
            dset = f[self.path]
            # Deflate/shuffle chunks are decompressed here, outside h5py's lock,
            # so threads read in parallel; anything else goes through h5py.
            out = read_hyperslab(dset, key)
            if out is None:
                try:
                    out = dset[key]
                except OSError as exc:
                    raise InputError(
                        f"{self.filename}: dataset {self.path}, region {_region(key)}: "
                        f"HDF5 cannot read it ({exc}); the file is damaged or a source "
                        "file is missing: copy or export it again") from None
        return _infinite_to_nan(out)


def _region(key) -> str:
    if isinstance(key, tuple) and all(isinstance(k, slice) for k in key):
        return "[" + ", ".join(f"{k.start or 0}:{'' if k.stop is None else k.stop}"
                               for k in key) + "]"
    return repr(key)


def _infinite_to_nan(block: np.ndarray) -> np.ndarray:
    """Infinite intensities are no more measurements than NaN: treat them alike
    (the first pass drops NaN voxels and reports how many)."""
    if block.dtype.kind == "f":
        inf = np.isinf(block)
        if inf.any():
            block = np.array(block, copy=True)
            block[inf] = np.nan
    return block
