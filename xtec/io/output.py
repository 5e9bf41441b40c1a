"""Claiming an output path for one run: lock, private work names, atomic replace.

A run that writes ``OUT.zarr`` holds an exclusive lock on ``OUT.zarr.lock``
for its whole length, so a second run on the same path fails at once with a
line naming the holder instead of sharing (and deleting) its files.  Each run
writes under names of its own (``OUT.zarr.partial-<run>``,
``OUT.zarr.scratch-<run>``), and an existing store is replaced by swapping
directories (``renameat2(RENAME_EXCHANGE)`` on Linux, else two renames with
the old store kept aside until the new one is in place), so a kill at any
moment leaves either the old complete store or the new one at ``OUT.zarr``.

Whatever a killed run left (its private names, a store set aside) is found
by the next run on the same path, which holds the lock and so knows no one
else is using them: it restores a store set aside and removes the rest.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime as _dt
import errno
import fcntl
import logging
import os
import secrets
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xtec.errors import InputError, ParameterError
from xtec.runtime import signals

log = logging.getLogger(__name__)

_PRIVATE = (".partial-", ".scratch-", ".old-")


@dataclass
class OutputClaim:
    """One run's hold on an output path and the private names it works under."""

    path: Path
    run_id: str
    fd: int

    @property
    def partial(self) -> Path:
        """Where the new store is written before it replaces ``path``."""
        return self.path.with_name(f"{self.path.name}.partial-{self.run_id}")

    @property
    def scratch(self) -> Path:
        """Scratch directory of this run (candidate trajectories, spilled arrays)."""
        return self.path.with_name(f"{self.path.name}.scratch-{self.run_id}")

    @property
    def aside(self) -> Path:
        return self.path.with_name(f"{self.path.name}.old-{self.run_id}")


_held: dict[Path, OutputClaim] = {}
_held_lock = threading.Lock()


def check_target(path: Path, overwrite: bool) -> Path:
    """Fail before any work if ``path`` exists and may not be replaced, or its
    directory is missing or not writable (the checks every output shares)."""
    if path.exists() and not overwrite:
        raise ParameterError(f"{path} exists; pass --overwrite to replace it")
    if not path.parent.is_dir():
        raise ParameterError(f"the output directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise ParameterError(f"the output directory {path.parent} is not writable")
    return path


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _holder(lockfile: Path) -> str:
    try:
        text = lockfile.read_text().strip()
    except OSError:
        text = ""
    return text or "another process"


def _acquire(lockfile: Path) -> int:
    """An fd holding an exclusive flock on ``lockfile`` (created if needed)."""
    while True:
        fd = os.open(lockfile, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise ParameterError(
                    f"{lockfile.with_suffix('')} is in use by another xtec run "
                    f"({_holder(lockfile)}); wait for it to finish or choose another output"
                ) from None
            raise
        # The holder before us may have removed the lock file after we opened
        # it: our lock is then on a file nobody else will look at.
        try:
            same = os.stat(lockfile).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _recover(path: Path) -> None:
    """Tidy what killed runs left beside ``path`` (we hold the lock, so they are dead)."""
    parent = path.parent
    leftovers = [p for p in parent.glob(path.name + ".*")
                 if any(p.name.startswith(path.name + s) for s in _PRIVATE)]
    asides = sorted((p for p in leftovers if p.name.startswith(path.name + ".old-")),
                    key=lambda p: p.stat().st_mtime)
    if not path.exists() and asides:
        # Killed between setting the old store aside and moving the new one in.
        os.replace(asides[-1], path)
        log.warning("restored %s, which an interrupted --overwrite had set aside", path)
        leftovers.remove(asides[-1])
    for p in leftovers:
        log.info("removing %s left by an interrupted run", p)
        _remove(p)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


@contextlib.contextmanager
def claim_output(path: str | os.PathLike) -> Iterator[OutputClaim]:
    """Hold ``path`` (a result store) exclusively for the duration of the block.

    Re-entrant within a process: a nested claim of the same path yields the
    outer claim.  The private names of the claim are removed on exit however
    the block ends, and on SIGTERM/SIGINT by :mod:`xtec.runtime.signals`.
    """
    path = Path(os.path.abspath(path))
    with _held_lock:
        outer = _held.get(path)
    if outer is not None:
        yield outer
        return
    lockfile = lock_path(path)
    fd = _acquire(lockfile)
    claim = OutputClaim(path, f"{os.getpid()}-{secrets.token_hex(3)}", fd)
    try:
        started = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n".encode())
        _recover(path)
        with _held_lock:
            _held[path] = claim
        signals.add_cleanup(claim.partial)
        signals.add_cleanup(claim.scratch)
        yield claim
    finally:
        with _held_lock:
            _held.pop(path, None)
        for p in (claim.partial, claim.scratch):
            signals.remove_cleanup(p)
            _remove(p)
        with contextlib.suppress(OSError):
            os.unlink(lockfile)
        os.close(fd)


def held_claim(path: str | os.PathLike) -> OutputClaim | None:
    with _held_lock:
        return _held.get(Path(os.path.abspath(path)))


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False  # file system or kernel without RENAME_EXCHANGE
    raise OSError(err, os.strerror(err), str(b))


def replace_store(claim: OutputClaim, new: Path) -> None:
    """Move the finished store ``new`` to ``claim.path``, replacing what is there.

    At no moment is ``claim.path`` a partial store: it is the old store until
    one rename makes it the new one.  Where directories cannot be swapped
    atomically the old store waits under ``.old-<run>`` (restored by the next
    claim if we die before the new one is in place).
    """
    # A run whose interrupt a library swallowed must not commit what it went on to write.
    signals.raise_if_stopped()
    path = claim.path
    if not path.exists():
        os.replace(new, path)
        return
    if _exchange(new, path):
        _remove(new)  # now the old store
        return
    os.replace(path, claim.aside)
    os.replace(new, path)
    _remove(claim.aside)


# What a store marked complete must hold; a store missing any of them was not
# written by a run that finished (for example two runs that shared files).
REQUIRED_VARIABLES = ("labels", "color", "mask", "palette", "cluster_mean", "cluster_std",
                      "weights")
REQUIRED_ATTRS = ("method", "k", "source_files", "versions", "started", "ended")


def verify_store(ds, path) -> None:
    """Raise :class:`InputError` unless a store marked complete checks out.

    Checks the variables and provenance every run writes, the manifest of
    variable shapes written just before ``complete``, and that the sizes agree
    with ``k``.
    """
    missing = [v for v in REQUIRED_VARIABLES if v not in ds.variables]
    if len(missing) == len(REQUIRED_VARIABLES):
        raise InputError(f"{path} is not an xtec result store (no {', '.join(missing)})")
    missing += [f"attribute {a!r}" for a in REQUIRED_ATTRS if a not in ds.attrs]
    if missing:
        raise InputError(f"{path} says it is complete but lacks {', '.join(missing)}: it was "
                         "not written by a run that finished; run it again")
    manifest = ds.attrs.get("manifest")
    if isinstance(manifest, str):
        import json

        try:
            manifest = json.loads(manifest)
        except ValueError:
            manifest = None
    if manifest is not None and not isinstance(manifest, dict):
        raise InputError(f"{path} says it is complete but its manifest is unreadable; run it "
                         "again")
    # Stores written before manifests existed are checked by the lists above only.
    for name, shape in (manifest or {}).items():
        if name not in ds.variables or list(ds[name].shape) != list(shape):
            got = list(ds[name].shape) if name in ds.variables else "missing"
            raise InputError(f"{path}: variable {name!r} is {got}, but the run wrote "
                             f"{list(shape)}; the store is damaged, run it again")
    try:
        k = int(ds.attrs["k"])
    except (TypeError, ValueError):
        k = -1
    if ds.sizes.get("cluster") != k:
        raise InputError(f"{path}: k={ds.attrs['k']!r} but {ds.sizes.get('cluster')} clusters "
                         "are stored; the store is damaged, run it again")


def manifest(ds) -> dict:
    """Shape of every variable, written into the store just before ``complete``."""
    return {str(name): [int(n) for n in var.shape] for name, var in ds.variables.items()}


# -- chunks: what a finished store holds, recorded by the writer and checked by readers.
# Every array of a result is written with every chunk of its grid (write_empty_chunks)
# and a crc32c checksum after its compressed bytes (Zarr's crc32c codec), so a store
# proves it is whole: each chunk of each array's grid is there, the chunks add up to
# the count and bytes recorded when the store was completed, and each chunk's bytes
# match its checksum.  Without this, Zarr reads a missing chunk as its fill value
# (a deleted labels chunk would silently become cluster 0).

CHUNK_INVENTORY = "chunk_inventory"


def _array_meta(store: Path, name: str) -> dict:
    import json

    with open(store / name / "zarr.json", "rb") as fh:
        return json.load(fh)


def _chunk_keys(meta: dict) -> Iterator[str]:
    """Every chunk key of the array's regular grid, as Zarr v3 names them."""
    import itertools
    import math

    shape = meta["shape"]
    chunk_shape = meta["chunk_grid"]["configuration"]["chunk_shape"]
    grid = [math.ceil(n / c) if c else 0 for n, c in zip(shape, chunk_shape)]
    encoding = meta.get("chunk_key_encoding", {})
    sep = encoding.get("configuration", {}).get("separator",
                                                "/" if encoding.get("name") != "v2" else ".")
    for idx in itertools.product(*(range(n) for n in grid)):
        if encoding.get("name") == "v2":
            yield sep.join(map(str, idx)) if idx else "0"
        else:
            yield sep.join(("c", *map(str, idx)))


def _has_crc(meta: dict) -> bool:
    codecs = meta.get("codecs") or []
    return bool(codecs) and codecs[-1].get("name") == "crc32c"


def chunk_inventory(store: str | os.PathLike, names) -> dict:
    """``{array: [chunks, bytes]}`` of the chunk files written under ``store``."""
    store = Path(store)
    out = {}
    for name in names:
        n = size = 0
        for key in _chunk_keys(_array_meta(store, name)):
            try:
                size += os.stat(store / name / key).st_size
            except FileNotFoundError:
                continue
            n += 1
        out[str(name)] = [n, size]
    return out


def verify_chunks(store: str | os.PathLike, inventory: dict) -> None:
    """Raise :class:`InputError`, naming the array, unless every chunk recorded in
    ``inventory`` is there, whole, and matches its checksum.

    Reads every chunk file once (the crc32c of the compressed bytes, about 5 GB/s
    with google-crc32c; nothing is decompressed).
    """
    import google_crc32c

    store = Path(store)
    if not isinstance(inventory, dict):
        raise InputError(f"{store} says it is complete but its chunk inventory is unreadable; "
                         "run it again")
    for name, recorded in inventory.items():
        where = f"{store}: {name!r}"
        try:
            meta = _array_meta(store, name)
            want_n, want_bytes = (int(v) for v in recorded)
        except (OSError, ValueError, TypeError, KeyError):
            raise InputError(f"{where} is missing or its metadata is unreadable; the store is "
                             "damaged, run it again") from None
        try:
            keys = list(_chunk_keys(meta))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise InputError(f"{where}: its metadata is unreadable; the store is damaged, run "
                             "it again") from None
        crc = _has_crc(meta)
        n = size = 0
        for key in keys:
            try:
                data = np.fromfile(store / name / key, dtype=np.uint8)
            except FileNotFoundError:
                raise InputError(f"{where} lacks its chunk {key} (Zarr would read it as fill "
                                 "values); the store is damaged, run it again") from None
            n += 1
            size += data.size
            if crc and (data.size < 4 or google_crc32c.value(data[:-4])
                        != int.from_bytes(data[-4:].tobytes(), "little")):
                raise InputError(f"{where}: chunk {key} does not match its checksum; the "
                                 "store is damaged, run it again")
        if (n, size) != (want_n, want_bytes):
            raise InputError(f"{where} holds {n} chunks of {size:,} bytes, but the run wrote "
                             f"{want_n} of {want_bytes:,}; the store is damaged, run it again")
