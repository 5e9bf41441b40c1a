"""Per-voxel trajectories: cleaning and rescaling blocks, the first streaming pass
(mean over temperature), and the rescaled trajectories of the kept voxels.

Everything works chunk by chunk on Dask arrays of shape (T, L, K, H) whose chunks
hold every temperature.  The block functions (``*_block``) are written against
the array API, so the same code runs on NumPy, CuPy or array-api-strict chunks.
Kept trajectories stay ragged over the spatial blocks (:class:`Trajectories`),
so nothing is gathered whole.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import dask.array as da
import numpy as np

from xtec.backend import namespace, to_numpy
from xtec.errors import InputError, ParameterError
from xtec.preprocess.frames import FrameStats, frame_block
from xtec.preprocess.kernels import kernels, one_thread
from xtec.preprocess.threshold import combine_log_mean_blocks, log_mean_block, mean_logs
from xtec.runtime.chunks import (
    block_grid,
    block_offsets,
    map_blocks_with_pieces,
    per_block,
    stack_tasks,
)

log = logging.getLogger(__name__)

RESCALE_METHODS = ("mean", "zscore", "log-mean", "none")


# --------------------------------------------------------------------------- blocks
def clean_block(x):
    """Zero every trajectory holding a NaN and clip negative intensities to 0.

    x : array of shape (T, ...) -> same shape.  A NaN trajectory becomes all-zero,
    so the zero mask drops the voxel.
    """
    xp = namespace(x)
    bad = xp.any(xp.isnan(x), axis=0)
    x = xp.where(bad, xp.zeros_like(x), x)
    return xp.where(x < 0, xp.zeros_like(x), x)


def mean_block(x):
    """Mean over temperature, accumulated in float64; (T, ...) -> (...) float32."""
    xp = namespace(x)
    return xp.astype(xp.mean(xp.astype(x, xp.float64), axis=0), xp.float32)


def _bad_counts_block(x):
    xp = namespace(x)
    n_nan = xp.sum(xp.astype(xp.any(xp.isnan(x), axis=0), xp.int64))
    n_neg = xp.sum(xp.astype(x < 0, xp.int64))
    return np.array([int(n_nan), int(n_neg)], dtype=np.int64)


def rescale_block(x, method: str = "mean"):
    """Rescale trajectories along axis 0.

    ``mean``: I / mean_T I - 1; ``zscore``: (I - mean_T I) / std_T I;
    ``log-mean``: log(1 + I) - mean_T log(1 + I); ``none``: unchanged.
    Voxels with a zero mean (or zero spread, for zscore) give 0.
    """
    xp = namespace(x)
    x = xp.astype(x, xp.float32)
    if method == "none":
        return x
    if method == "log-mean":
        y = xp.log1p(x)
        return y - xp.mean(y, axis=0, keepdims=True)
    m = xp.mean(x, axis=0, keepdims=True)
    if method == "mean":
        safe = xp.where(m > 0, m, xp.ones_like(m))
        return xp.where(m > 0, x / safe - 1, xp.zeros_like(x))
    if method == "zscore":
        s = xp.std(x, axis=0, keepdims=True)
        safe = xp.where(s > 0, s, xp.ones_like(s))
        return xp.where(s > 0, (x - m) / safe, xp.zeros_like(x))
    raise ParameterError(f"rescale must be one of {RESCALE_METHODS} (got {method!r})")


def trajectories_block(x, mask, method: str):
    """Rescaled trajectories of the kept voxels of one block.

    x : (T, l, k, h); mask : (l, k, h) bool -> (n_kept, T) float32, in C order.
    """
    if isinstance(x, np.ndarray) and x.dtype in (np.float32, np.float64):
        one_thread()
        flat = np.ascontiguousarray(x).reshape(x.shape[0], -1)
        cols = np.flatnonzero(np.asarray(mask).reshape(-1))
        return kernels().gather_rescale(flat, cols, RESCALE_METHODS.index(method), 256)
    xp = namespace(x)
    t = x.shape[0]
    # Gather the kept columns first: only they are rescaled and transposed.
    cols = xp.nonzero(xp.reshape(mask, (-1,)))[0]
    kept = xp.take(xp.reshape(x, (t, -1)), cols, axis=1)
    # Kept voxels hold no NaN (their mean is > 0); negatives count as 0, as in the mean.
    kept = xp.where(kept < 0, xp.zeros_like(kept), kept)
    out = xp.permute_dims(rescale_block(kept, method), (1, 0))
    return np.ascontiguousarray(out) if isinstance(out, np.ndarray) else out



# ----------------------------------------------------------------------- the passes
@dataclass
class VoxelSummary:
    """One streaming pass over the raw data."""

    mean: da.Array  # (L, K, H) float32, mean over T after cleaning
    n_nan_voxels: int
    n_negative_values: int
    # What ``capture`` returned per spatial block, as an object array of the
    # block grid of Delayed (held on the workers): each the block's summary
    # cell, from which :func:`captured_of` takes it; None without ``capture``.
    captured: np.ndarray | None = None
    # Moments and histogram of log(mean) for the threshold
    # (:class:`xtec.preprocess.threshold.LogMeanSummary`); None if not persisted.
    log_means: object = None
    # Per-temperature statistics (:class:`xtec.preprocess.frames.FrameStats`).
    frames: object = None
    # What ``peaks`` returned per spatial block (the brightest local maxima of
    # its mean), in np.ndindex order of the block grid; None without ``peaks``.
    maxima: list | None = None

    def check_some_finite(self, n_voxels: int) -> None:
        """One line that says what is true when no voxel is left: NaN is not zero."""
        if self.n_nan_voxels and self.n_nan_voxels >= n_voxels:
            raise InputError(f"every voxel ({n_voxels:,}) has NaN or infinite intensities: "
                             "nothing to cluster")

    def notes(self) -> list[str]:
        """What the pass cleaned, for the user (each logged as a warning)."""
        notes = []
        if self.n_nan_voxels:
            notes.append(f"{self.n_nan_voxels} voxels with NaN or infinite intensities "
                         "were dropped")
        if self.n_negative_values:
            notes.append(f"{self.n_negative_values} negative intensities were set to 0")
        for n in notes:
            log.warning(n)
        return notes


def block_means(x):
    """(T, l, k, h) -> (flat values (T, n), means (n,) as :func:`mean_block` of the
    cleaned block, [n_nan_voxels, n_negative_values]); NumPy chunks take one fused
    pass."""
    if isinstance(x, np.ndarray):
        one_thread()
        flat = np.ascontiguousarray(x).reshape(x.shape[0], -1)
        if flat.dtype not in (np.float32, np.float64):
            flat = flat.astype(np.float32)
        m, n_nan, n_neg = kernels().mean_over_t(flat, 4096)
        return flat, m, np.array([n_nan, n_neg], np.int64)
    xp = namespace(x)
    flat = xp.reshape(x, (x.shape[0], -1))
    return flat, xp.reshape(mean_block(clean_block(x)), (-1,)), _bad_counts_block(x)


def summary_block(x, capture=None, pos=(), peaks=None, offset=()):
    """(T, l, k, h) -> (mean (l, k, h) float32 as in :func:`mean_block` of the cleaned
    block, [n_nan_voxels, n_negative_values], capture(values (T, n), mean (n,), pos)
    or None, the block's frame statistics (:func:`xtec.preprocess.frames.frame_block`),
    the block's log-mean summary (:func:`xtec.preprocess.threshold.log_mean_block`),
    peaks(mean, offset) or None)."""
    flat, m, bad = block_means(x)
    logs = mean_logs(m)  # each voxel's log once, for both summaries
    frames = frame_block(flat, m, logs)
    got = capture(flat, m, pos) if capture is not None else None
    xp = namespace(m)
    mean = xp.reshape(m, tuple(x.shape[1:]))
    found = peaks(mean, offset) if peaks is not None else None
    return mean, bad, got, frames, log_mean_block(mean, logs), found


def _summary_cell(x, capture=None, peaks=None, block_info=None):
    """:func:`summary_block` of one block of (T, L, K, H) data, in a (1, 1, 1, 1)
    object array: a block of the grid of summaries (its temperature axis kept,
    of one block)."""
    info = block_info[0]
    pos = tuple(info["chunk-location"][1:])
    offset = tuple(lo for lo, _ in info["array-location"][1:])
    cell = np.empty((1,) * x.ndim, dtype=object)
    cell[(0,) * x.ndim] = summary_block(x, capture, pos, peaks, offset)
    return cell


def _cell_mean(cell):
    return cell.item()[0]


def captured_of(held):
    """What a first-pass task's ``capture`` returned: ``held`` is the task's
    summary cell (:func:`summarize`'s ``captured``) or that result itself."""
    return held.item()[2] if isinstance(held, np.ndarray) and held.dtype == object else held


def _small_items(cell) -> tuple:
    """A first-pass block's small results: (bad counts, frame statistics,
    log-mean summary, peaks)."""
    part = cell.item()
    return part[1], part[3], part[4], part[5]


def summarize(data: da.Array, persist: bool = True, capture=None, peaks=None) -> VoxelSummary:
    """Mean over temperature per voxel, counts of NaN / negative values, and the
    per-temperature statistics of :mod:`xtec.preprocess.frames`.

    data : dask array (T, L, K, H) with the temperature axis in one chunk.
    All come from one read of the data, in one task per chunk.  ``capture``,
    if given, is called in each task with the block's values (T, n), means
    (n,) and block position, while the values are in hand (see
    :mod:`xtec.preprocess.candidates`); its results stay where the tasks ran.
    ``peaks``, if given, is called in each task with the block's means (l, k, h)
    and the block's offset in the (L, K, H) grid (such as the lattice estimate's
    search for bright maxima, :func:`xtec.preprocess.registration.block_maxima`):
    a round of tasks over the means saved, on a cluster a round trip.
    """
    if data.numblocks[0] != 1:
        data = data.rechunk({0: -1})
    spatial = data.chunks[1:]
    grid = np.empty((0,) * data.ndim, dtype=object)
    # One task per block reads it and summarises it (Dask fuses the two): the
    # block itself is never a result a worker holds, or sends to another.  The
    # grid of summaries keeps the temperature axis: dropping it (drop_axis)
    # made Dask concatenate each block's one piece along it, a copy of the
    # whole series (0.4-0.8 CPU-s of the 1.5 GB first pass, and a second
    # block in memory while it lasts).
    cells = data.map_blocks(_summary_cell, capture, peaks,
                            chunks=tuple((1,) * len(c) for c in data.chunks), dtype=object,
                            meta=grid)
    if persist:
        # The summaries first, so each block is read once; then their items,
        # so the means and the captures can be released apart and the small
        # ones travel together.  The means are an array of the summaries'
        # grid with the data's chunks, with no task assembling them: on a
        # cluster every task is a round of the scheduler's and a worker's
        # bookkeeping (the pass at 1.5 GB on two workers: 221 tasks before, 155 so).
        cells = cells.persist()
    meta = namespace(data._meta).empty((0, 0, 0), dtype=np.float32) \
        if not isinstance(data._meta, np.ndarray) else np.empty((0, 0, 0), np.float32)
    # (Here the concatenation along the dropped axis is of one (1, 1, 1, 1) cell.)
    mean = cells.map_blocks(_cell_mean, drop_axis=0, chunks=spatial, dtype=np.float32,
                            meta=meta)
    if persist:
        # Each later pass over the means (the threshold makes four) then runs
        # on their blocks directly.
        mean = mean.persist()
    # The captures are handed over in their cells (the consumer takes them out,
    # :func:`captured_of`): a task per block taking each out cost a round of a
    # cluster's bookkeeping.  The cells then live as long as the captures, and
    # hold nothing else of size (the means are the persisted means' blocks).
    captured = cells.to_delayed(optimize_graph=False)[0] if capture is not None else None
    # Each block's log-mean summary is computed in the block's own task, as it
    # is read: the threshold's first two passes (a round of tasks each) ride on
    # this one, and so did a round of tasks on the persisted means (32-128
    # tasks whose scheduling a cluster's client pays).  Each task's whole
    # result is wanted by this compute: Dask's scheduler fails an assertion
    # when a run is cancelled (a lost worker job) with unwanted tasks depending
    # on persisted ones, so there is no reduction tree here.
    smalls = per_block(_small_items, cells)
    bad, frames, logs, maxima = (list(x) for x in zip(*smalls)) if smalls else ([],) * 4
    log_means = combine_log_mean_blocks(logs) if persist else None
    totals = np.sum(bad, axis=0)
    # Combined in block order: the same statistics whatever the chunking.
    return VoxelSummary(mean, int(totals[0]), int(totals[1]), captured, log_means,
                        FrameStats.combine(frames), maxima if peaks is not None else None)


def flat_indices_block(mask, offset: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Global C-order voxel indices of the kept voxels of a mask block (host int64).

    mask : (l, k, h) block starting at ``offset`` in a grid of ``shape``.
    """
    mask = to_numpy(mask)
    if mask.ndim == 3:
        # One pass over the block (np.nonzero's per-axis arrays and
        # ravel_multi_index: 3-5x longer on a 256 x 1976 block).
        return kernels().flat_indices_3d(np.ascontiguousarray(mask, dtype=bool), *offset,
                                        shape[1], shape[2])
    ijk = np.nonzero(mask)
    return np.ravel_multi_index(tuple(a + o for a, o in zip(ijk, offset)), shape)


@dataclass
class Trajectories:
    """Rescaled trajectories of the kept voxels, ragged over the spatial blocks.

    Attributes
    ----------
    X : dask array of shape (n_kept, T), float32
        One chunk per spatial block that keeps any voxel, in block order.
    index : dask array of shape (n_kept,), int64
        Global C-order index of each voxel in the (L, K, H) grid: the identity
        that makes seeded results independent of the chunking.
    counts : ndarray of shape mask.numblocks
        Kept voxels per spatial block.
    """

    X: da.Array
    index: da.Array
    counts: np.ndarray
    mask: da.Array

    @property
    def n(self) -> int:
        return int(self.counts.sum())


def extract_trajectories(data: da.Array, mask: da.Array, rescale: str = "mean") -> Trajectories:
    """Gather and rescale the trajectories of kept voxels, chunk by chunk.

    data : (T, L, K, H) dask array, temperature in one chunk; mask : (L, K, H) bool
    with the same spatial chunks.
    """
    if rescale not in RESCALE_METHODS:
        raise ParameterError(f"rescale must be one of {RESCALE_METHODS} (got {rescale!r})")
    if data.numblocks[0] != 1:
        data = data.rechunk({0: -1})
    dblocks = data.to_delayed()[0]
    mblocks = mask.to_delayed()
    traj = functools.partial(trajectories_block, method=rescale)
    return assemble_trajectories(mask, lambda pos: (traj, dblocks[pos], mblocks[pos]),
                                 data.shape[0], data._meta)


def _count_block(m) -> int:
    return int(to_numpy(m).sum())


def block_counts(mask: da.Array) -> np.ndarray:
    """Set voxels per block of ``mask`` (L, K, H) bool: an array of its block grid."""
    return np.array(per_block(_count_block, mask), np.int64).reshape(mask.numblocks)


def assemble_trajectories(mask: da.Array, block_trajectories, t: int, meta=None,
                          counts: np.ndarray | None = None) -> Trajectories:
    """:class:`Trajectories` from one task per spatial block.

    block_trajectories(pos) gives the task ``(func, *Delayed inputs)`` whose
    result is the kept rows (n_kept, T) of block ``pos`` of ``mask`` (L, K, H)
    bool, in C order (:func:`xtec.runtime.chunks.stack_tasks`); blocks that
    keep nothing are skipped.  ``counts``: :func:`block_counts` of ``mask``,
    when the caller has them.
    """
    if counts is None:
        counts = block_counts(mask)
    mblocks = mask.to_delayed()
    offsets = block_offsets(mask.chunks)
    xs, ids, shapes = [], [], []
    for pos in np.ndindex(*counts.shape):
        n = int(counts[pos])
        if n == 0:
            continue
        xs.append(block_trajectories(pos))
        ids.append((functools.partial(flat_indices_block, offset=offsets[pos], shape=mask.shape),
                    mblocks[pos]))
        shapes.append(n)
    if not xs:
        raise ParameterError(
            "the threshold keeps no voxel; lower it (--threshold simple, none, or an intensity)"
        )
    meta2 = _meta_2d(meta if meta is not None else np.empty(0, np.float32))
    X = stack_tasks(xs, [(n, t) for n in shapes], np.float32, meta2, "trajectories")
    index = stack_tasks(ids, [(n,) for n in shapes], np.int64, np.empty(0, np.int64),
                        "voxel-index")
    return Trajectories(X, index, counts, mask)


def _meta_2d(meta):
    xp = namespace(meta)
    return xp.empty((0, 0), dtype=xp.float32)


def paint(values: da.Array, traj: Trajectories, fill, dtype) -> da.Array:
    """Scatter per-kept-voxel ``values`` (n_kept,) back onto the (L, K, H) grid.

    ``values`` must have the chunks of ``traj.X`` along axis 0 (one per block
    with kept voxels, in block order); voxels not kept get ``fill``.
    """
    which, n = {}, 0
    for pos in np.ndindex(*traj.counts.shape):
        if traj.counts[pos]:
            which[pos], n = n, n + 1
    return map_blocks_with_pieces(_scatter, traj.mask, values, which, fill, np.dtype(dtype),
                                  dtype=dtype, meta=np.empty((0, 0, 0), dtype))


def kept_block_keys(traj: Trajectories, name: str) -> list[tuple]:
    """``(name, *position)`` of each block that keeps a voxel, in block order: the
    keys under which one task per chunk of ``traj.X`` makes what
    :func:`paint_results` paints."""
    return [(name, *pos) for pos in np.ndindex(*traj.counts.shape) if traj.counts[pos]]


def paint_results(results: list, traj: Trajectories, item: int, fill, dtype) -> da.Array:
    """:func:`paint` of the ``item``-th element of each of ``results``, the Delayed
    results of one task per chunk of ``traj.X`` made under :func:`kept_block_keys`.

    The painting is blockwise: it runs in the task that uses the block (a
    store's write), not in one of its own, and no task picks the item out.
    """
    name = results[0].key[0] if results else "painted-none"
    cells = block_grid({r.key[1:]: r for r in results}, traj.mask.numblocks, name)
    ind = "ijk"[:traj.mask.ndim]
    return da.blockwise(_scatter_item, ind, traj.mask, ind, cells, ind, item, None, fill, None,
                        np.dtype(dtype), None, dtype=dtype, align_arrays=False,
                        meta=np.empty((0,) * traj.mask.ndim, dtype))


def _scatter_item(mask, result, item: int, fill, dtype) -> np.ndarray:
    return _scatter(mask, None if result is None else result[item], fill, dtype)


def _scatter(mask, values, fill, dtype) -> np.ndarray:
    """A block (l, k, h) of ``fill`` with ``values`` where ``mask`` is set."""
    m = to_numpy(mask)
    out = np.full(m.shape, fill, dtype=dtype)
    if values is not None:
        out[m] = to_numpy(values)
    return out
