"""Bulk reads of HDF5 datasets inside Dask tasks: a bounded cache of open files
and :class:`H5Source`, the picklable array a Dask chunk reads from.

nexusformat (in :mod:`xtec.io.nexus`) reads the metadata; this module is the only
place that opens a file to read a volume.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from xtec.errors import InputError
from xtec.io.hdf5_chunks import infinite_to_nan, read_hyperslab

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
        try:
            opened = open_files.acquire(self.filename)
            f = opened.__enter__()
        except OSError as exc:
            raise InputError(_vanished(self.filename, exc)) from None
        try:
            dset = f[self.path]
            # Deflate/shuffle chunks are decompressed here, outside h5py's lock,
            # so threads read in parallel; anything else goes through h5py.
            out = read_hyperslab(dset, key)
            if out is None:
                try:
                    out = infinite_to_nan(dset[key])
                except OSError as exc:
                    if dset.is_virtual:  # a source deleted while HDF5 read it: name it
                        check_still_there(self.filename, self.path, virtual_map(dset), key,
                                          self.shape)
                    raise InputError(
                        f"{self.filename}: dataset {self.path}, region {_region(key)}: "
                        f"HDF5 cannot read it ({exc}); the file is damaged or a source "
                        "file is missing: copy or export it again") from None
            sources = virtual_map(dset) if dset.is_virtual else ()
        finally:
            opened.__exit__(None, None, None)
        # Checked after the read: what was there then was read (an open file stays
        # readable on POSIX), what is missing now may have been read as fill values.
        check_still_there(self.filename, self.path, sources, key, self.shape)
        return out


# -- sources checked where they are read.  HDF5 reads the slices of a virtual dataset
# whose source file or dataset is missing as the fill value (zeros, for NXRefine), and
# a file deleted after it was opened is still read through its open handle: a scan
# lost mid-run would silently become a temperature without intensity.  So every read
# checks, after reading, that its file and the sources its region maps to are there.

@dataclass(frozen=True)
class _Mapped:
    """One source of a virtual dataset: the region it fills and where it reads from."""

    lo: tuple[int, ...]
    hi: tuple[int, ...]  # inclusive
    file: str
    dataset: str


_virtual_maps: dict[tuple[str, str], tuple[_Mapped, ...]] = {}
_checked_sources: set[tuple] = set()
_maps_lock = threading.Lock()


def virtual_map(dset) -> tuple[_Mapped, ...]:
    """The sources of a virtual dataset with the region each fills (once per process)."""
    filename = dset.file.filename
    key = (filename, dset.name)
    with _maps_lock:
        known = _virtual_maps.get(key)
    if known is not None:
        return known
    base = os.path.dirname(filename)
    mapped = []
    for src in dset.virtual_sources():
        if "%" in src.file_name:
            continue  # a printf-style pattern of many files: HDF5 expands it, not us
        name = filename if src.file_name == "." else src.file_name
        lo, hi = src.vspace.get_select_bounds()
        mapped.append(_Mapped(tuple(lo), tuple(hi), os.path.join(base, name), src.dset_name))
    with _maps_lock:
        _virtual_maps[key] = tuple(mapped)
    return tuple(mapped)


def _bounds(key, shape) -> list[tuple[int, int]] | None:
    if not isinstance(key, tuple):
        key = (key,)
    if len(key) != len(shape) or not all(isinstance(k, slice) for k in key):
        return None  # not a box: check every source
    out = []
    for k, n in zip(key, shape):
        start, stop, _ = k.indices(n)
        out.append((start, stop))
    return out


def check_still_there(filename: str, path: str, sources, key, shape) -> None:
    """Raise :class:`InputError` naming the file if ``filename``, or a virtual source
    whose region meets ``key``, is gone (or lost its dataset) since the run began."""
    try:
        os.stat(filename)
    except OSError as exc:
        raise InputError(_vanished(filename, exc)) from None
    box = _bounds(key, shape)
    for src in sources:
        if box is not None and not all(a < h + 1 and b > lo for (a, b), lo, h
                                       in zip(box, src.lo, src.hi)):
            continue
        where = f"{src.file}:{src.dataset}"
        try:
            st = os.stat(src.file)
        except OSError as exc:
            raise InputError(f"{filename}: the virtual dataset {path} reads from {where}, "
                             f"which no longer exists ({exc.strerror}): it was there when "
                             "the run started; restore it and run again") from None
        signature = (src.file, src.dataset, st.st_ino, st.st_mtime_ns, st.st_size)
        if signature in _checked_sources:
            continue
        import h5py

        try:
            with h5py.File(src.file, "r") as f:
                if src.dataset not in f:
                    raise KeyError(src.dataset)
        except (OSError, KeyError) as exc:
            raise InputError(f"{filename}: the virtual dataset {path} reads from {where}, "
                             f"which can no longer be read ({exc}); restore it and run "
                             "again") from None
        _checked_sources.add(signature)


def _vanished(filename: str, exc: OSError) -> str:
    return (f"{filename} can no longer be read ({exc.strerror or exc}): it was there when "
            "the run started; restore it and run again")


def _region(key) -> str:
    if isinstance(key, tuple) and all(isinstance(k, slice) for k in key):
        return "[" + ", ".join(f"{k.start or 0}:{'' if k.stop is None else k.stop}"
                               for k in key) + "]"
    return repr(key)
