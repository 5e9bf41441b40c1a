"""Result Dataset <-> Zarr (the storage backend of :mod:`xtec.io.result`).

The store is written to a private ``OUT.zarr.partial-<run>`` and renamed to
``OUT.zarr`` only after every variable and the final ``complete=true``
attribute are written, so an interrupted run never leaves something at
``OUT.zarr`` that looks complete (see :mod:`xtec.io.output`).
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import xarray as xr

from xtec.errors import InputError, ParameterError
from xtec.io.output import (
    CHUNK_INVENTORY,
    check_target,
    chunk_inventory,
    claim_output,
    held_claim,
    manifest,
    replace_store,
    verify_chunks,
    verify_store,
)
from xtec.io.result import check_result, decode_attrs, encode_attrs
from xtec.io.zarr_chunks import chunk_writer

log = logging.getLogger(__name__)


def check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """Fail before any work if the output exists and may not be replaced."""
    path = Path(path)
    if path.suffix != ".zarr":
        raise ParameterError(f"the output must be a .zarr directory (got {path})")
    return check_target(path, overwrite)


def _uniform_chunks(ds: xr.Dataset) -> xr.Dataset:
    # Zarr needs equal chunks (but the last); sub-volume selection can make the
    # first chunk short.
    sizes = {}
    for var in ds.data_vars.values():
        if var.chunks:
            for dim, ch in zip(var.dims, var.chunks):
                sizes[dim] = max(sizes.get(dim, 0), max(ch))
    if not sizes:
        return ds
    # Only the Dask-backed variables: Dataset.chunk would make every one a Dask
    # array, the small ones too, and each a task of the write.  And only those
    # not uniform already: each rechunk tokenizes its graph (0.04 s a run).
    uneven = {name: var.chunk({d: sizes[d] for d in var.dims if d in sizes})
              for name, var in ds.data_vars.items()
              if var.chunks and any(c[0] != sizes[d] or any(x != c[0] for x in c[:-1])
                                    for d, c in zip(var.dims, var.chunks))}
    return ds.assign(uneven) if uneven else ds


def _encoding(ds: xr.Dataset) -> dict:
    # Zstandard level 1, not Zarr's default 3: labels, colours and masks
    # compress 4-20x and fast.  Float volumes (the mean intensity: the one that
    # compresses poorly, and the largest) get Blosc's LZ4 on bit planes: on a
    # block of the 1.5 GB benchmark series' mean 2.0 ms for 1.94x against
    # Zstandard-1's 12.1 ms for 2.68x (and 1.1 against 5.1 ms to decode);
    # Zstandard-3 took 1.6x longer still.
    # crc32c after the compressor: every chunk carries a checksum of its bytes, checked
    # by every Zarr reader on decoding and by open_result on opening (verify_chunks).
    # Chunk keys "c.0.3.1", files side by side, not Zarr's nested "c/0/3/1": a
    # result of the 1.5 GB benchmark series made 281 directories where this makes
    # 27, and removing it (--overwrite) took 0.7 s against 0.16 (medians of 6);
    # the v3 format allows both and every reader follows the array's metadata.
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

    def compressor(v):
        if v.dtype.kind == "f" and v.ndim >= 3:
            return BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")
        return ZstdCodec(level=1)

    return {name: {"compressors": (compressor(v), Crc32cCodec()),
                   "chunk_key_encoding": {"name": "default", "separator": "."}}
            for name, v in ds.variables.items()}


def _consolidate(path: Path) -> None:
    """Consolidated metadata, written last (after ``complete``), so that a user's
    ``xr.open_zarr`` reads one document and warns about nothing.  Zarr calls it an
    extension of the v3 format; xarray and zarr-python read it."""
    import warnings

    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(path)


def write_result(ds: xr.Dataset, path: str | os.PathLike, overwrite: bool = False,
                 layout: concurrent.futures.Future | None = None) -> Path:
    """Write a result Dataset to ``path`` (a .zarr directory), atomically.

    Under the run's exclusive claim on ``path`` (:mod:`xtec.io.output`): written
    to a private ``.partial-<run>`` name, then swapped in by renames.
    ``layout``: :func:`start_layout`'s future, where the run made the volumes'
    arrays ahead; used if they are the ones ``ds`` needs, else made again.
    """
    path = check_output(path, overwrite)
    with claim_output(path) as claim:
        check_output(path, overwrite)  # again, now that no other run can write it
        tmp = claim.partial
        ds = ds.copy()
        ds.attrs["manifest"] = manifest(ds)
        ds.attrs = encode_attrs(ds.attrs)
        ds.attrs["complete"] = False
        ds = _uniform_chunks(ds)
        try:
            # write_empty_chunks: Zarr's test of every chunk against the fill
            # value cost more than compressing it (colour: 0.22 -> 0.05 s for
            # 16 chunks of 1.9 MB); a result's chunks are rarely empty.  It also
            # makes every chunk of the grid a file, which verify_chunks relies on.
            # The Dask-backed variables' arrays first (empty), then their blocks
            # are written while the rest (small arrays, made one by one through
            # Zarr's loop) is added beside them.
            lazy = _volumes_layout(ds)
            made = _made(layout)
            if made is not None and _same_layout(made, lazy[list(made.data_vars)]):
                rest = lazy[[n for n in lazy.data_vars if n not in made.data_vars]]
                if rest.data_vars:  # the profiles (of K clusters, known now), and such
                    _to_zarr(rest.drop_vars([c for c in rest.coords if c in made.variables]),
                             tmp, "a")
            else:
                _to_zarr(lazy, tmp, "w")
            blocks = None if any(v.chunks for v in ds.coords.values()) else \
                _block_writes(ds, tmp)
            if blocks is None:  # xarray writes them (and makes the store again)
                compute_and_wait(_to_zarr(ds, tmp, "w"))
            else:
                _compute_beside(blocks, _to_zarr, ds.drop_vars(list(lazy.variables)), tmp, "a")
            import zarr

            group = zarr.open_group(tmp, mode="r+")
            group.attrs[CHUNK_INVENTORY] = json.dumps(chunk_inventory(tmp, ds.variables))
            group.attrs["complete"] = True
            _consolidate(tmp)
            replace_store(claim, tmp)
        except BaseException:
            # Nothing of ours may write into tmp any more when it is removed: the
            # Dask tasks were waited for (compute_and_wait), and so are the writes
            # Zarr still has in flight (its metadata and small arrays are written
            # by concurrent coroutines, which go on after the first one fails).
            _wait_for_zarr_io()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("wrote %s", path)
    return path


def start_layout(template: xr.Dataset, path: str | os.PathLike
                 ) -> concurrent.futures.Future | None:
    """Make the arrays of ``template``'s Dask-backed variables (the result's
    volumes: names, coordinates, shapes, chunks, dtypes, attributes; the data
    need not be computed) in the run's private store for ``path``, in a thread
    of its own, while the run goes on: at 1.5 GB this was 0.17 s of the write
    stage in-process and 0.32 s on a cluster's client, where the workers'
    write tasks waited for it.  None outside a run's claim on ``path``.  The
    caller waits for the future before the claim ends (:func:`wait_layout`)."""
    import threading

    claim = held_claim(path)
    if claim is None:
        return None
    future: concurrent.futures.Future = concurrent.futures.Future()

    def make():
        try:
            lazy = _volumes_layout(_uniform_chunks(template))
            _to_zarr(lazy.assign_attrs(complete=False), claim.partial, "w")
        except BaseException as exc:  # noqa: BLE001 - write_result makes them then
            future.set_exception(exc)
        else:
            future.set_result(lazy)

    threading.Thread(target=make, name="xtec-layout", daemon=True).start()
    return future


def wait_layout(layout: concurrent.futures.Future | None) -> None:
    """Wait for :func:`start_layout`'s thread to end, whatever it did."""
    if layout is not None:
        concurrent.futures.wait([layout])


def _made(layout: concurrent.futures.Future | None) -> xr.Dataset | None:
    if layout is None:
        return None
    try:
        return layout.result()
    except Exception as exc:  # noqa: BLE001 - made again by the write
        log.debug("the store's arrays made ahead failed (%s); making them again", exc)
        return None


def _volumes_layout(ds: xr.Dataset) -> xr.Dataset:
    """:func:`_layout` of ``ds``'s Dask-backed variables (in even chunks: see
    :func:`_uniform_chunks`), with their coordinates: the arrays the block
    writes fill."""
    return _layout(ds)[[n for n, v in ds.data_vars.items() if v.chunks]]


def _same_layout(made: xr.Dataset, lazy: xr.Dataset) -> bool:
    """Whether the arrays made for ``made`` are those ``lazy`` needs."""
    if set(made.variables) != set(lazy.variables):
        return False
    for name, v in lazy.variables.items():
        m = made.variables[name]
        if (m.dims, m.shape, m.dtype, m.chunks, m.attrs) != (v.dims, v.shape, v.dtype,
                                                           v.chunks, v.attrs):
            return False
        if v.chunks is None and not np.array_equal(m.values, v.values):
            return False
    return True


def _to_zarr(ds: xr.Dataset, path: Path, mode: str):
    """``ds.to_zarr(path, mode=mode, compute=False)`` with the store's settings."""
    return ds.to_zarr(path, mode=mode, consolidated=False, zarr_format=3,
                      encoding=_encoding(ds), write_empty_chunks=True, compute=False)


def _compute_beside(writes: list, func, *args) -> None:
    """:func:`compute_and_wait` of ``writes`` while ``func(*args)`` runs in a
    thread of its own (awaited, its error raised after theirs).  Made for the
    result's small arrays: 77 round trips through Zarr's loop for the 1.5 GB
    benchmark series (0.12-0.2 s in-process, 0.44-0.67 s on a busy cluster's
    client, with the workers idle), now beside the volumes' writes: the write
    stage 0.71 -> 0.67 s in-process, 1.25 -> 1.19 s on two workers (medians of
    six)."""
    import concurrent.futures

    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="xtec-store")
    try:
        beside = pool.submit(func, *args)
        try:
            compute_and_wait(*writes)
        finally:
            concurrent.futures.wait([beside])
        beside.result()
    finally:
        pool.shutdown(wait=True)


# The volumes of a result (labels, colour, mask, mean intensity) share the (L, K,
# H) grid.  xarray's store writes each variable's chunks in tasks of their own,
# and the painted labels reach them through tasks that only pass a block on: 430
# tasks for the write of the 1.5 GB benchmark series on two workers, each a
# round of the scheduler's bookkeeping on a machine whose two cores also run
# the workers.  Writing every volume's block in one task (with what computes it)
# leaves 238 (the labels' predictions and their painting keep tasks of their own).
def _layout(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with each Dask-backed variable's data replaced by empty blocks of
    the same chunks and dtype: what ``to_zarr(compute=False)`` needs to create
    the store's arrays (and write the variables in memory), without the graph
    of the real data.  Its write graph for those was built, optimised and
    dropped (:func:`_block_writes` writes them): 0.05-0.1 s of the client's
    time per run, on a cluster beside the scheduler."""
    import dask.array as da

    # Named after the data they stand for: a name of its own spares Dask
    # tokenizing the call (0.07 s a run, cloudpickling its function).
    return ds.assign({name: v.copy(data=da.empty(v.shape, chunks=v.data.chunks, dtype=v.dtype,
                                                 name="layout-" + v.data.name))
                      for name, v in ds.data_vars.items() if isinstance(v.data, da.Array)})


def _block_writes(ds: xr.Dataset, path: Path) -> list | None:
    """Dask arrays whose computing writes every Dask-backed variable of ``ds``
    into the arrays ``to_zarr(path, compute=False)`` created (of ``ds`` or of
    its :func:`_layout`): one task per block of the grid of the volumes' first three
    dimensions (with what computes the block where only the write uses it),
    one per other variable of one chunk.  None (write them as xarray does)
    unless every variable is either, with one chunk along any further
    dimension and its stored dtype."""
    import dask.array as da

    lazy = {name: v for name, v in ds.variables.items() if isinstance(v.data, da.Array)}
    grid = next((v for v in lazy.values() if v.ndim >= 3), None)
    if grid is None or any(_stored(str(path), n).dtype != v.dtype for n, v in lazy.items()):
        return None
    dims, chunks = grid.dims[:3], grid.data.chunks[:3]
    volumes, whole, extra = {}, {}, []
    for name, v in lazy.items():
        if v.dims[:3] == dims and v.data.chunks[:3] == chunks \
                and all(len(c) == 1 for c in v.data.chunks[3:]):
            volumes[name] = v
            extra += [d for d in v.dims[3:] if d not in extra]  # one index letter each
        elif all(len(c) == 1 for c in v.data.chunks):
            whole[name] = v
        else:
            return None
    if len(extra) > 10:  # index letters l..u
        return None
    letters = {d: chr(ord("l") + i) for i, d in enumerate(extra)}
    edges = tuple(tuple(int(x) for x in np.cumsum((0, *c))) for c in chunks)
    # The block's region, made in the writing task itself (fused by Dask).
    regions = da.map_blocks(_block_region, edges, chunks=tuple((1,) * len(c) for c in chunks),
                            dtype=object, meta=np.empty((0, 0, 0), object))
    args = [regions, "ijk"]
    for v in volumes.values():
        args += [v.data, "ijk" + "".join(letters[d] for d in v.dims[3:])]
    out = "ijk" + "".join(letters.values())
    # Every letter in the output: Dask's blockwise fusion (of the colours and
    # the host copies into the writing task) stops at a contracted dimension.
    writes = [da.blockwise(_write_block, out, str(path), None, tuple(volumes), None,
                           len(out), None, *args, dtype=np.int8, align_arrays=False,
                           adjust_chunks={i: 1 for i in out},
                           meta=np.empty((0,) * len(out), np.int8))]
    writes += [v.data.map_blocks(_write_whole, str(path), name, dtype=np.int8,
                                 chunks=(1,) * v.ndim, meta=np.empty((0,) * v.ndim, np.int8))
               for name, v in whole.items()]
    return writes


def _write_whole(block, path: str, name: str) -> np.ndarray:
    """Write a one-chunk variable ``name`` whole."""
    block = np.asarray(block)
    _write_region(path, name, tuple(slice(0, n) for n in block.shape), block)
    return np.zeros((1,) * block.ndim, np.int8)


def _block_region(edges: tuple, block_id=None) -> np.ndarray:
    """The (1, 1, 1) object array holding block ``block_id``'s slices of a grid
    with block ``edges``."""
    out = np.empty((1, 1, 1), dtype=object)
    out[0, 0, 0] = tuple(slice(e[i], e[i + 1]) for e, i in zip(edges, block_id))
    return out


def _write_block(path: str, names: tuple, ndim: int, region, *blocks) -> np.ndarray:
    """Write one block of each variable ``names`` at ``region`` of their grid:
    a block that is one stored chunk as its file (:mod:`xtec.io.zarr_chunks`),
    any other through Zarr."""
    region = region.item()
    for name, block in zip(names, blocks):
        block = np.asarray(block)
        _write_region(path, name, region + tuple(slice(0, n) for n in block.shape[len(region):]),
                      block)
    return np.zeros((1,) * ndim, np.int8)


def _write_region(path: str, name: str, region: tuple, block: np.ndarray) -> None:
    """``block`` at ``region`` (a slice per dimension) of the array ``name``: as
    its chunk file where it is one stored chunk (:mod:`xtec.io.zarr_chunks`),
    else through Zarr."""
    write = _chunk_writer(path, name)
    if write is None or not write(region, block):
        _stored(path, name)[region] = block


@functools.lru_cache(maxsize=64)
def _opened(path: str, name: str, stamp: tuple):
    import zarr

    # Every chunk a file, as xarray's write makes them (see write_result).
    return zarr.open_array(path, path=name, mode="r+").with_config({"write_empty_chunks": True})


@functools.lru_cache(maxsize=64)
def _writer(path: str, name: str, stamp: tuple):
    return chunk_writer(os.path.join(path, name))


def _stamp(path: str, name: str) -> tuple:
    st = os.stat(os.path.join(path, name, "zarr.json"))
    return st.st_ino, st.st_mtime_ns, st.st_size


def _stored(path: str, name: str):
    """The Zarr array ``name`` of the store at ``path``, opened once per process
    for as long as its metadata file is the same one."""
    return _opened(path, name, _stamp(path, name))


def _chunk_writer(path: str, name: str):
    """:func:`~xtec.io.zarr_chunks.chunk_writer` of :func:`_stored`'s array."""
    return _writer(path, name, _stamp(path, name))


def open_result(path: str | os.PathLike, *, verify: bool = True) -> xr.Dataset:
    """Open a result store lazily; refuse one whose run did not finish, or whose
    chunks are missing or damaged (``verify=False``: variables and shapes only)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"no such result store: {path}")
    try:
        ds = xr.open_zarr(path, consolidated=False)
    except Exception as exc:
        raise InputError(f"{path} is not a readable Zarr result store ({exc})") from None
    if ds.attrs.get("complete") is not True:
        raise InputError(f"{path} is incomplete (its run did not finish); run it again")
    # Nested provenance (dicts, lists) is stored as JSON text.
    ds.attrs = decode_attrs(ds.attrs)
    verify_store(ds, path)
    if verify and CHUNK_INVENTORY in ds.attrs:  # stores written before it: shapes only
        verify_chunks(path, ds.attrs[CHUNK_INVENTORY])
        _verified.add(_verified_key(path))
    ds.encoding["xtec_verify"] = verify
    return ds


_verified: set[tuple[str, int]] = set()


def _verified_key(path: Path) -> tuple[str, int]:
    return str(path.resolve()), (path / "zarr.json").stat().st_mtime_ns


def verify_source(ds: xr.Dataset) -> None:
    """Check the chunks of the store ``ds`` was read from (``xr.open_zarr`` or
    :func:`open_result`), once per store and process; nothing for a Dataset built
    in memory, a store without a chunk inventory, or one opened with ``verify=False``."""
    source = ds.encoding.get("source")
    if not source or ds.encoding.get("xtec_verify") is False:
        return
    path = Path(source)
    inventory = decode_attrs({"i": ds.attrs.get(CHUNK_INVENTORY)})["i"]
    if inventory is None or not (path / "zarr.json").is_file():
        return
    key = _verified_key(path)
    if key not in _verified:
        verify_chunks(path, inventory)
        _verified.add(key)


def undecodable(ds: xr.Dataset) -> str | None:
    """The first variable of ``ds`` that cannot be read (to name it when a read
    failed in a store without checksums), or None."""
    for name in ds.variables:
        try:
            ds[name].load()
        except Exception:  # noqa: BLE001 - any codec error: this variable is damaged
            return str(name)
    return None


def load_result(path: str | os.PathLike, *, verify: bool = True) -> xr.Dataset:
    """Open a finished result store lazily (attributes decoded) and check it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path} is not a result store (a .zarr directory)")
    return check_result(open_result(path, verify=verify), str(path))


def compute_and_wait(*writes) -> None:
    """Compute ``writes`` (Dask collections), and on any error return only once
    none of their tasks runs any more, so that the caller may remove what they
    were writing.

    Dask raises the first task's error at once while other tasks still run (in
    the threaded scheduler's pool, or on distributed workers): those would go on
    creating chunk directories in a store already removed.
    """
    import dask
    import dask.threaded
    from dask.base import get_scheduler

    scheduler = get_scheduler(collections=list(writes))
    # A distributed Client comes as itself (dask's default client) or as its get.
    client = scheduler if hasattr(scheduler, "compute") else getattr(scheduler, "__self__", None)
    if client is not None and "Client" in type(client).__name__:
        _compute_on_client(client, writes)
    elif scheduler is dask.threaded.get:
        from concurrent.futures import ThreadPoolExecutor

        from dask.system import CPU_COUNT

        pool = ThreadPoolExecutor(dask.config.get("num_workers", None) or CPU_COUNT,
                                  thread_name_prefix="xtec-write")
        try:
            dask.compute(*writes, scheduler=dask.threaded.get, pool=pool)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    else:  # synchronous, or processes (each write finishes before the call returns)
        dask.compute(*writes)


def _wait_for_zarr_io(timeout: float = 60.0) -> None:
    """Return once every coroutine on Zarr's IO loop in this process has ended
    (``asyncio.gather`` raises the first error while the others still run)."""
    import asyncio

    try:
        from zarr.core.sync import loop, sync
    except ImportError:  # another Zarr: nothing known to wait for
        return
    if loop[0] is None or not loop[0].is_running():
        return

    async def others_done() -> None:
        me = asyncio.current_task()
        others = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        if others:
            await asyncio.wait(others, timeout=timeout)

    try:
        sync(others_done())
    except Exception as exc:  # noqa: BLE001 - the clean-up goes on regardless
        log.debug("waiting for Zarr's writes: %s", exc)


def _compute_on_client(client, writes: tuple, timeout: float = 120.0) -> None:
    import time

    futures = client.compute(list(writes))
    try:
        client.gather(futures)
    except BaseException:
        names = {k[0] if isinstance(k, tuple) else k
                 for w in writes for k in w.__dask_graph__()}
        client.cancel(futures)
        end = time.monotonic() + timeout
        try:
            while any(client.run(_running, names).values()):
                if time.monotonic() > end:
                    log.warning("tasks writing the result still run after %.0f s", timeout)
                    break
                time.sleep(0.05)
        except Exception as exc:  # workers gone: nothing of theirs writes any more
            log.debug("waiting for the write's tasks: %s", exc)
        raise


def _running(names, dask_worker=None) -> bool:
    """On a worker: whether one of the tasks named ``names`` is still executing
    (a cancelled task runs to its end)."""
    for ts in dask_worker.state.tasks.values():
        key = ts.key[0] if isinstance(ts.key, tuple) else ts.key
        if key in names and ts.state in ("executing", "cancelled", "resumed", "long-running"):
            return True
    return False
