"""Chunk choices, kept in one place.

Every stage works on chunks that hold complete temperature trajectories: the
temperature axis is never split.  Spatial chunks are whole multiples of the
file's own HDF5 chunks, so each HDF5 chunk is read (and decompressed) once.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import uuid

import dask
import numpy as np

from xtec.backend import to_numpy
from xtec.errors import ParameterError
from xtec.runtime.schedulers import distributed_loaded, scheduler_function

log = logging.getLogger(__name__)

DEFAULT_TARGET_BYTES = 64 * 2**20


def spatial_chunks(
    shape: tuple[int, ...],
    file_chunks: tuple[int, ...] | None,
    n_temperatures: int,
    itemsize: int,
    target_bytes: int = DEFAULT_TARGET_BYTES,
    min_blocks: int = 1,
) -> tuple[int, ...]:
    """Spatial chunk shape for a (L, K, H) grid read with all temperatures at once.

    Grows the file chunk along the fastest axes first (H, then K, then L) in whole
    multiples until one chunk of ``n_temperatures`` trajectories reaches
    ``target_bytes``.

    Parameters
    ----------
    shape : (n_l, n_k, n_h)
    file_chunks : (c_l, c_k, c_h) or None
        HDF5 chunk shape of the stored volume; None for contiguous storage.
    min_blocks : int
        Make chunks small enough for at least this many (so a small volume
        still keeps every worker thread busy).
    """
    shape = tuple(int(s) for s in shape)
    if file_chunks is None:
        file_chunks = tuple(min(s, 32) for s in shape)
    chunks = [min(int(c), s) for c, s in zip(file_chunks, shape)]
    target_bytes = min(target_bytes, math.prod(shape) * n_temperatures * itemsize
                       // max(1, min_blocks))
    budget = max(1, target_bytes // (n_temperatures * itemsize))
    for axis in reversed(range(len(shape))):
        rest = math.prod(chunks) // chunks[axis]
        if rest * shape[axis] <= budget:
            chunks[axis] = shape[axis]
            continue
        mult = max(1, budget // (rest * chunks[axis]))
        chunks[axis] = min(shape[axis], chunks[axis] * mult)
        break
    return tuple(chunks)


def parse_chunks(value) -> tuple[int, int, int] | None:
    """``"16,128,128"`` or ``[16, 128, 128]`` -> (16, 128, 128); ``None`` or ``"auto"`` -> None."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    parts = value.split(",") if isinstance(value, str) else value
    try:
        if not isinstance(parts, (list, tuple)) or any(isinstance(p, (bool, float)) for p in parts):
            raise ValueError
        out = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or min(out) < 1:
        raise ParameterError(
            f"chunks must be three positive integers L,K,H or 'auto' (got {value!r})"
        )
    return out  # type: ignore[return-value]


def target_bytes_for_workers(memory_per_worker: int | None, threads_per_worker: int) -> int:
    """Chunk size that keeps a worker well inside its memory limit.

    A task holds its input chunk, its rescaled candidates, and transients
    (decompression buffers, copies in flight, the allocator's slack): budget
    8 chunk sizes per thread, and leave half the limit for Dask itself and
    persisted results (a 1/12 budget peaked at 71% of a 1 GB limit once in
    the 3 GB benchmark and spilled; with 1/16 the peaks were 46-65%).
    """
    if not memory_per_worker:
        return DEFAULT_TARGET_BYTES
    per_thread = memory_per_worker // (2 * 8 * max(1, threads_per_worker))
    return int(min(max(per_thread, 4 * 2**20), 128 * 2**20))


# More spatial chunks than this makes a graph of hundreds of thousands of
# tasks, whose scheduling takes longer than the reading (chunks=1,1,1 on a
# 21x121x121 grid ran for minutes); chunks under MIN_CHUNK_BYTES cost more in
# per-task overhead (about a millisecond) than in reading.  The automatic
# chunks stay far from both.
MAX_CHUNKS = 20_000
MIN_CHUNK_BYTES = 64 * 2**10


def checked_chunks(chunks, shape, n_temperatures: int = 1, itemsize: int = 4
                   ) -> tuple[int, ...]:
    """User-given spatial chunks, grown (with a warning) where they are too many or
    too small: the axis with the most chunks is doubled until at most
    :data:`MAX_CHUNKS` remain and each holds :data:`MIN_CHUNK_BYTES`."""
    given = tuple(int(c) for c in chunks)
    out = _grown(given, shape, n_temperatures, itemsize)
    n0 = _count(given, shape)
    if out != given[:len(out)] and _count(out, shape) != n0:
        log.warning("chunks=%s would make %s chunks (as many Dask tasks per pass) of "
                    "%s bytes; using chunks=%s (%s chunks) instead",
                    ",".join(map(str, given)), f"{n0:,}",
                    f"{math.prod(given) * n_temperatures * itemsize:,}",
                    ",".join(map(str, out)), f"{_count(out, shape):,}")
    return out


def box_chunks(file_chunks, shape, n_temperatures: int = 1, itemsize: int = 4
               ) -> tuple[int, ...]:
    """Spatial chunks for reads of a few chunks (the pilot's sample, the
    registration's boxes, :func:`read_boxes`): the file's own chunks (32-voxel
    cubes where it is not chunked), grown as :func:`checked_chunks` grows them,
    without its warning, where they would be too many or too small."""
    if not file_chunks:
        file_chunks = tuple(min(s, 32) for s in shape)
    return _grown(tuple(int(c) for c in file_chunks), shape, n_temperatures, itemsize)


def _count(chunks, shape) -> int:
    return math.prod(-(-s // min(c, s)) for s, c in zip(shape, chunks))


def _grown(chunks, shape, n_temperatures, itemsize) -> tuple[int, ...]:
    out = [min(c, s) for c, s in zip(chunks, shape)]
    while (_count(out, shape) > MAX_CHUNKS
           or math.prod(out) * n_temperatures * itemsize < MIN_CHUNK_BYTES) \
            and list(out) != list(shape):
        axis = max(range(len(out)), key=lambda i: (-(-shape[i] // out[i]), i))
        out[axis] = min(shape[axis], 2 * out[axis])
    return tuple(out)


def held_chunks(X) -> list | None:
    """The futures of a Dask array's chunks in flat C order, if every chunk is
    held (persisted) on a Dask cluster; else None."""
    if not distributed_loaded():
        return None
    from distributed import futures_of

    futures = {f.key: f for f in futures_of(X)}
    keys = list(_flat_keys(X.__dask_keys__()))
    if not futures or any(k not in futures for k in keys):
        return None
    return [futures[k] for k in keys]


def chunks_by_thread(futures: list) -> list[tuple[str, list[int]]] | None:
    """Per worker thread, the worker's address and the indices (into
    ``futures``) of a share of the chunks it holds; None if one is held nowhere.

    A pass over held chunks can then run as one task per thread on the chunks
    already there, instead of one task per chunk (each about 2 ms of
    scheduling; an EM pass at 1.5 GB is 32 tasks of 12 ms).
    """
    from distributed import wait

    wait(futures)  # held once computed: where they are is known then
    client = futures[0].client
    who = client.who_has(futures)
    threads = client.nthreads()
    held: dict[str, list[int]] = {}
    for i, f in enumerate(futures):
        where = sorted(w for w in who.get(f.key, ()) if w in threads)
        if not where:
            return None
        held.setdefault(where[0], []).append(i)
    shares = []
    for addr in sorted(held):
        n = max(1, min(threads[addr], len(held[addr])))
        shares += [(addr, held[addr][j::n]) for j in range(n)]
    return shares


def per_block(func, *arrays, args: tuple = ()) -> list:
    """``[func(*blocks, *args)]`` for the blocks of ``arrays`` (Dask arrays of as
    many blocks), in flat C order: small results for the caller.

    Where the first array is held (persisted) on a Dask cluster, one task per
    worker thread runs over the blocks held there (:func:`chunks_by_thread`):
    each task is a round of the scheduler's and a worker's bookkeeping, about
    3 ms of CPU on this project's 2-core VM, and a pass over the 1.5 GB
    benchmark series' means was 32 of them.  Else one task per block, with the
    current scheduler: where every block is already in this process's memory
    (persisted by a local scheduler), on a graph of just those blocks and the
    tasks (:func:`_blocks_in_memory`).
    """
    held = [held_chunks(a) for a in arrays]
    shares = chunks_by_thread(held[0]) if all(h is not None for h in held) else None
    if shares is None:
        in_memory = _blocks_in_memory(arrays)
        if in_memory is not None:
            return _per_block_in_memory(func, arrays[0], in_memory, args)
        f = dask.delayed(func, pure=True)
        blocks = [a.to_delayed().ravel() for a in arrays]
        return list(dask.compute(*[f(*bs, *args) for bs in zip(*blocks)]))
    client = held[0][0].client
    tasks = [client.submit(_blocks_of_share, func, len(arrays), args,
                           *[h[i] for i in idx for h in held],
                           workers=[addr], allow_other_workers=True, pure=False)
             for addr, idx in shares]
    out: list = [None] * len(held[0])
    for (_, idx), got in zip(shares, client.gather(tasks)):
        for i, r in zip(idx, got):
            out[i] = r
    return out


def _blocks_in_memory(arrays) -> list[list] | None:
    """Per array the keys of its blocks in flat C order and their values, where
    every block is a value already in memory (an array persisted in this
    process: its graph is its blocks); else None."""
    out = []
    for a in arrays:
        graph = a.__dask_graph__()
        if len(getattr(graph, "layers", ())) > 1:  # not persisted (and len() would build it)
            return None
        keys = list(_flat_keys(a.__dask_keys__()))
        if len(graph) != len(keys):
            return None
        pairs = [(k, graph.get(k)) for k in keys]
        if not all(hasattr(v, "shape") and hasattr(v, "dtype") for _, v in pairs):
            return None
        out.append(pairs)
    return out


def _per_block_in_memory(func, like, blocks: list[list], args: tuple) -> list:
    # The blocks and one task each, run by the current scheduler: the delayed
    # calls' way (tokenising the arguments per call, optimising the graph) cost
    # 30-40 ms of a 0.2 s EM pass over the 1.5 GB series' 32 held chunks.
    call = functools.partial(_apply_to_blocks, func, args)
    dsk = {k: v for pairs in blocks for k, v in pairs}
    tasks = [(call, *[pairs[i][0] for pairs in blocks]) for i in range(len(blocks[0]))]
    return _run_tasks(dsk, tasks, like, None, getattr(func, "__name__", "per_block"))


def _apply_to_blocks(func, args: tuple, *blocks):
    return func(*blocks, *args)


def compute_blocks(data, calls: list[tuple], scheduler: str | None = None) -> list:
    """``[f(*blocks)]`` for each ``(f, block indices)`` of ``calls``, the blocks
    those of the Dask array ``data``, computed with ``scheduler`` (None: the
    current one).

    Only those blocks' tasks are built and run, the array's graph culled to
    them and not optimised: the reads that touch a few blocks of a large grid
    (the pilot's 64 of 1,024 at 1.5 GB, the lattice boxes' 80), where delayed
    calls on the grid's blocks and the graph's optimisation cost 30-90 ms each.
    """
    keys = {(data.name, *map(int, idx)) for _, idxs in calls for idx in idxs}
    dsk = dict(data.__dask_graph__().cull(keys))
    tasks = [(f, *[(data.name, *map(int, idx)) for idx in idxs]) for f, idxs in calls]
    return _run_tasks(dsk, tasks, data, scheduler, "blocks")


def _run_tasks(dsk: dict, tasks: list[tuple], like, scheduler, name: str) -> list:
    # Under keys of their own (unique: a shared cluster may run another at once).
    out = [(f"{name}-{uuid.uuid4().hex}", i) for i in range(len(tasks))]
    dsk.update(zip(out, tasks))
    return list(scheduler_function(scheduler, like)(dsk, out))


def _blocks_of_share(func, n_arrays: int, args: tuple, *blocks) -> list:
    # blocks: n_arrays per position, in the share's order
    return [func(*blocks[j:j + n_arrays], *args) for j in range(0, len(blocks), n_arrays)]


def _flat_keys(keys):
    for k in keys:
        if isinstance(k, list):
            yield from _flat_keys(k)
        else:
            yield k


def block_offsets(chunks) -> dict[tuple[int, ...], tuple[int, ...]]:
    """Each block's position in the block grid -> its first index on every axis,
    from Dask's ``chunks`` (a tuple of block sizes per axis)."""
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]) for c in chunks]
    return {pos: tuple(int(s[i]) for s, i in zip(starts, pos))
            for pos in np.ndindex(*[len(c) for c in chunks])}


def read_boxes(data, boxes: list[tuple[tuple[int, ...], tuple[int, ...]]],
               scheduler: str | None = None) -> list:
    """The boxes ``[(lo, hi), ...]`` (spatial corners, hi exclusive) of the Dask
    array ``data`` (T, L, K, H), every temperature: NumPy arrays (T, box shape),
    read with ``scheduler`` (None: the current one).

    Dask reads a slice of an array made by ``from_array`` as the whole chunk it
    lies in, so each chunk the boxes touch is read once (the bounding region of
    their parts in it) and the boxes are put together from those reads.  Boxes
    are cheapest on an array chunked as the file is (:func:`box_chunks`): the
    registration's 48 boxes of the 1.5 GB benchmark series touch 80 of its
    HDF5 chunks (1.5 MB each), but a tenth of the file in the pass's chunks.
    """
    edges = [np.cumsum((0,) + c) for c in data.chunks[1:]]
    regions: dict[tuple[int, ...], list[list[int]]] = {}
    parts = []  # per box: (cell, part lo, part hi)
    for lo, hi in boxes:
        mine = []
        for cell in _cells(lo, hi, edges):
            plo = [max(a, int(e[c])) for a, c, e in zip(lo, cell, edges)]
            phi = [min(b, int(e[c + 1])) for b, c, e in zip(hi, cell, edges)]
            r = regions.setdefault(cell, [list(plo), list(phi)])
            r[0] = [min(a, b) for a, b in zip(r[0], plo)]
            r[1] = [max(a, b) for a, b in zip(r[1], phi)]
            mine.append((cell, plo, phi))
        parts.append(mine)
    cells = list(regions)
    # Each region is cut from its blocks (every T) in a task of its own on the
    # blocks' tasks: slicing the array per region made Dask build, optimise and
    # order a graph for each (0.5 of 0.7 s of the client's time for the 80
    # regions of the 1.5 GB benchmark series).
    values = compute_blocks(data, [
        (functools.partial(_region_of_blocks, tuple(slice(a - int(e[i]), b - int(e[i]))
                                                     for a, b, e, i in zip(*regions[c], edges, c))),
         [(t, *c) for t in range(data.numblocks[0])])
        for c in cells], scheduler)
    read = {c: to_numpy(v) for c, v in zip(cells, values)}
    out = []
    for (lo, hi), mine in zip(boxes, parts):
        box = np.empty((data.shape[0], *(b - a for a, b in zip(lo, hi))), data.dtype)
        for cell, plo, phi in mine:
            rlo = regions[cell][0]
            src = tuple(slice(a - r, b - r) for a, b, r in zip(plo, phi, rlo))
            dst = tuple(slice(a - o, b - o) for a, b, o in zip(plo, phi, lo))
            box[(slice(None),) + dst] = read[cell][(slice(None),) + src]
        out.append(box)
    return out


def _region_of_blocks(region: tuple, *blocks):
    """``region`` (spatial slices) of the blocks (T_i, l, k, h) of one spatial
    cell, stacked along T."""
    parts = [b[(slice(None),) + region] for b in blocks]
    return parts[0] if len(parts) == 1 else np.concatenate([to_numpy(p) for p in parts])


def _cells(lo, hi, edges):
    """Indices of the chunks (cut at ``edges`` per axis) the box [lo, hi) touches."""
    return itertools.product(*[
        range(int(np.searchsorted(e, a, "right")) - 1, int(np.searchsorted(e, b - 1, "right")))
        for a, b, e in zip(lo, hi, edges)])


def map_blocks_dropping(func, x, axis: int, *args, dtype, meta=None, **kwargs):
    """``x.map_blocks(func, *args, drop_axis=axis)`` for ``x`` whose ``axis`` is
    one chunk, without Dask's copy of every block.

    Dask's ``drop_axis`` concatenates each block's pieces along the dropped axis,
    and copies the block when there is only one (a whole series, for the
    temperature axis).  Here ``func`` gets the block itself.  ``args`` are Dask
    arrays over the other axes of ``x`` (with its chunks there) or constants;
    ``kwargs`` go to ``func``.  Returns the (x.ndim - 1)-dimensional result with
    the chunks of ``x``'s other axes.
    """
    import dask.array as da

    if x.numblocks[axis] != 1:
        raise ValueError(f"axis {axis} of x must be one chunk, not {x.numblocks[axis]}")
    index = "abcdefghijklmnopqrstuvwxyz"[:x.ndim]
    out = index[:axis] + index[axis + 1:]
    pairs = []
    for a in args:
        pairs += [a, out] if isinstance(a, da.Array) else [a, None]
    return da.blockwise(_first_piece, out, func, None, x, index, *pairs, dtype=dtype,
                        meta=meta, concatenate=False, **kwargs)


def _first_piece(func, pieces, *args, **kwargs):
    # concatenate=False hands the block's pieces along the dropped axis as a
    # list: there is one.
    return func(pieces[0], *args, **kwargs)


def stack_tasks(tasks: list[tuple], shapes: list[tuple[int, ...]], dtype, meta=None,
                name: str = "stack"):
    """A Dask array stacked along axis 0 from one task per chunk and nothing else.

    ``tasks[j]`` is ``(func, *inputs)``: chunk j is ``func(*results)`` of the
    Delayed ``inputs`` (constants go into ``func``, a ``functools.partial``),
    of shape ``shapes[j]`` (the same beyond axis 0).

    ``da.concatenate`` of ``da.from_delayed`` pieces, which this replaces,
    made three tasks of each chunk (the work, the piece, the concatenation's
    alias), and each task is a round of a cluster's bookkeeping: 320 chunks
    of an identity persisted in 1.2-2.0 s on two workers that way, 0.55-0.83 s
    as one task each (this project's 2-core VM).
    """
    import dask.array as da
    from dask.base import tokenize
    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph

    if not tasks or len(tasks) != len(shapes):
        raise ValueError("one shape per task, and at least one task")
    out = f"{name}-{tokenize(tasks, shapes, dtype)}"
    tail = tuple(shapes[0][1:])
    inputs: dict = {}
    layer = {}
    for j, (func, *args) in enumerate(tasks):
        if not callable(func) or not all(isinstance(a, Delayed) for a in args):
            raise TypeError("each task is (callable, *Delayed inputs)")
        inputs.update((a.key, a) for a in args)
        # dask.delayed makes the task (its inputs referred to as keys, which a
        # tuple of a plain graph does not do for a persisted array's blocks);
        # named as the array's chunk, it is the chunk.
        part = dask.delayed(func, pure=True)(*args, dask_key_name=(out, j, *(0,) * len(tail)))
        layer[part.key] = part.dask[part.key]
    graph = HighLevelGraph.from_collections(out, layer, dependencies=list(inputs.values()))
    chunks = (tuple(int(s[0]) for s in shapes), *((int(n),) for n in tail))
    return da.Array(graph, out, chunks, dtype=dtype, meta=meta)


def block_grid(results: dict, numblocks: tuple[int, ...], name: str):
    """An object Dask array over a grid of ``numblocks`` blocks, one ``(1,) * ndim``
    chunk each: block ``pos`` is what the Delayed ``results[pos]`` gives (a tuple,
    say), None where ``results`` has no entry; for a blockwise function to take
    each block's result beside another array's block, in its own task.

    ``results[pos]`` must have been made under the key ``(name, *pos)``
    (``dask_key_name``): the array is those tasks, persisted or not, and adds none.
    """
    import dask.array as da

    graph: dict = {}
    for pos, part in results.items():
        if part.key != (name, *pos):
            raise ValueError(f"the result for block {pos} is keyed {part.key!r}, "
                             f"not {(name, *pos)!r}")
        graph.update(part.__dask_graph__())
    for pos in np.ndindex(*numblocks):
        graph.setdefault((name, *pos), None)
    return da.Array(graph, name, tuple((1,) * n for n in numblocks), dtype=object,
                    meta=np.empty((0,) * len(numblocks), dtype=object))


def map_blocks_with_pieces(func, x, pieces, which: dict, *args, dtype, meta=None):
    """``func(block, piece, *args)`` for every block of ``x``: ``piece`` the block
    of the 1-D Dask array ``pieces`` numbered ``which[position]`` (its chunks need
    not line up with ``x``'s grid: one per non-empty block, say), None for
    positions not in ``which``.  Returns a Dask array with ``x``'s chunks.

    One task per block, on the two blocks it reads: built as ``da.block`` of
    ``from_delayed`` pieces it made three tasks more per block (the painting of
    the 1.5 GB benchmark series' labels: 128 tasks for 32 blocks, each a round
    of a cluster's bookkeeping).
    """
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    name = f"{getattr(func, '__name__', 'func')}-{tokenize(func, x, pieces, sorted(which.items()), args, dtype)}"
    keys = pieces.__dask_keys__()
    layer = {(name, *pos): (func, (x.name, *pos), keys[which[pos]] if pos in which else None,
                            *args)
             for pos in np.ndindex(*x.numblocks)}
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[x, pieces])
    return da.Array(graph, name, x.chunks, dtype=dtype, meta=meta)
