"""Candidate trajectories, captured during the first read so there is no second one.

The background cutoff is known only once the mean of every voxel is (the first
pass), yet that pass has every trajectory in hand.  So before it starts, a
*pilot* cutoff is computed from a sample of the file's own chunks (a few per
cent of the read), and a *bound* is set below it.  Each first-pass task then
keeps, rescaled, the trajectories of its voxels with log(mean) above the bound
(in worker memory, or as ``.npy`` files in a scratch directory when they would
not fit), and once the exact cutoff is known the kept voxels are picked out of
them.  The kept set is a subset of the candidates whenever cutoff >= bound; if
the exact cutoff falls below the bound the caller reads the input a second time
instead: slower, never different.

With a cutoff given as an intensity, or no threshold, the bound is exact; when
a series under 1 GiB fits in memory every non-zero voxel is a candidate (no
pilot).
"""

from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
from dask.sizeof import sizeof

from xtec.backend import namespace, to_numpy
from xtec.preprocess.threshold import THRESHOLD_METHODS, above_cutoff_block, kl_threshold_values
from xtec.preprocess.trajectories import (
    Trajectories,
    assemble_trajectories,
    block_counts,
    block_means,
    captured_of,
    trajectories_block,
)
from xtec.runtime.chunks import compute_blocks, stack_tasks

log = logging.getLogger(__name__)

# Candidates beyond the pilot's kept fraction: the margin that absorbs the
# pilot's sampling error (measured: pilot cutoffs within +-0.2 in log
# intensity of the exact one; on the synthetic series 10% of voxels lie
# within 0.3 below the cutoff), at the fewest sampled blocks; see
# :func:`extra_fraction` for more.
EXTRA_FRACTION = 0.10
PILOT_FRACTION = 1 / 32  # of the file's chunks
PILOT_MIN_BLOCKS = 64
# Below this a series is captured whole when it fits (no pilot: its fixed cost
# outweighs rescaling every voxel); above it only candidates are kept, which
# is about a third of the memory on typical data.
CAPTURE_ALL_BYTES = 2**30


@dataclass(frozen=True)
class CandidatePlan:
    """What the first pass keeps: voxels with mean > 0 and log(mean) > ``bound``.

    Called in each first-pass task with the block's values (T, n) and means (n,).
    ``scratch``: directory for the candidates of each block, or None to hold
    them in memory.  ``fraction``: expected share of the voxels kept (for the
    memory decision and the log).
    """

    bound: float
    rescale: str
    scratch: str | None = None
    fraction: float = 1.0
    source: str = "pilot"

    def __call__(self, values, mean, pos: tuple[int, ...]) -> CandidateBlock:
        xp = namespace(mean)
        # The keep mask's own test and the second read's own block function:
        # the picked rows are bit-identical to re-read ones.
        keep = above_cutoff_block(mean, self.bound)
        X = trajectories_block(values, keep, self.rescale)
        index = to_numpy(xp.nonzero(keep)[0]).astype(np.int64)
        if self.scratch is None:
            return CandidateBlock(int(index.size), index, X, None)
        path = os.path.join(self.scratch, "cand-" + "-".join(map(str, pos)))
        np.save(path + ".X.npy", to_numpy(X))
        np.save(path + ".index.npy", index)
        return CandidateBlock(int(index.size), None, None, path)


@dataclass
class CandidateBlock:
    """Candidates of one spatial block: flat indices within the block (n,) and
    rescaled trajectories (n, T), in memory or at ``path``.  Once picked
    (:func:`pick_block`), a block in memory holds the kept rows only; ``n``
    stays the number captured."""

    n: int
    index: np.ndarray | None
    X: object | None
    path: str | None


# Rows moved per step of an in-place pick: the gathered step is a temporary this size.
PICK_ROWS = 4096


@sizeof.register(CandidateBlock)
def _sizeof_candidates(cand: CandidateBlock) -> int:
    # Dask's default (the object's own few bytes) made its scheduler run a
    # block's pick where the small mask block was, and send the candidates there.
    return 64 + sum(sizeof(a) for a in (cand.index, cand.X) if a is not None)


def pick_block(cand, mask) -> object:
    """The kept rows of a block's candidates (its :class:`CandidateBlock`, or the
    first-pass cell holding it): mask (l, k, h) bool -> (n_kept, T).

    On disk, the kept rows are copied out of the candidates' file.  In memory, they
    are moved up within the candidates' own array, which the block then holds
    as its only rows (a rerun of the task picks the same rows again): no second
    copy of the kept trajectories, and no fresh memory for one.
    """
    cand = captured_of(cand)
    if cand.path is not None:  # a memory map: take copies only the rows wanted
        index = np.load(cand.path + ".index.npy")
        X = np.load(cand.path + ".X.npy", mmap_mode="r")
        keep = to_numpy(mask).reshape(-1)[index]
        return np.array(X) if keep.all() else np.take(X, np.flatnonzero(keep), axis=0)
    index, X = cand.index, cand.X
    keep = to_numpy(mask).reshape(-1)[index]
    if keep.all():
        return X
    rows = np.flatnonzero(keep)
    xp = namespace(X)
    # Received from another worker, a block is a read-only view: copy its rows.
    # (CuPy's flags have no ``writeable``: its arrays always are.)
    if not getattr(getattr(X, "flags", None), "writeable", True):
        return xp.take(X, xp.asarray(rows), axis=0)
    compact_rows(X, rows)
    cand.index, cand.X = index[rows], X[:rows.size, ...]
    return cand.X


def compact_rows(X, rows: np.ndarray) -> None:
    """Move rows ``rows`` (increasing) of X (n, T) to X[:len(rows)], in place.

    Row ``rows[i] >= i``, so a step's sources lie at or after its destinations
    and after every earlier step's: each step gathers its rows (a small
    temporary) before writing them.
    """
    xp = namespace(X)
    for lo in range(0, rows.size, PICK_ROWS):
        hi = min(rows.size, lo + PICK_ROWS)
        if rows[hi - 1] == hi - 1:
            continue  # the rows are already in place
        X[lo:hi, ...] = xp.take(X, xp.asarray(rows[lo:hi]), axis=0)


def trajectories_from_candidates(candidates: np.ndarray, mask: da.Array,
                                 t: int, meta=None) -> Trajectories:
    """Trajectories of the kept voxels picked from captured candidates.

    candidates : object array of Delayed :class:`CandidateBlock` (or the first
    pass's cells holding them, :func:`captured_of`), one per spatial block of
    ``mask`` (L, K, H) bool; the result matches
    :func:`xtec.preprocess.extract_trajectories` on the same mask.
    """
    mblocks = mask.to_delayed()
    return assemble_trajectories(mask, lambda pos: (pick_block, candidates[pos], mblocks[pos]),
                                 t, meta)


def compact_group(cands: list, masks: list, n: int, t: int) -> str:
    """Write the kept rows of consecutive blocks' candidate files, in block order,
    to one ``.npy`` file (n, t) float32 and delete the candidates; returns its path
    (named after the first block's)."""
    cands = [captured_of(c) for c in cands]
    path = cands[0].path + ".kept.npy"
    if os.path.exists(path) and not any(os.path.exists(c.path + ".X.npy") for c in cands):
        return path  # a rerun of this task: the work is done
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
              "fortran_order": False, "shape": (n, t)}
    with open(path + ".part", "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        rows = 0
        for cand, mask in zip(cands, masks):
            X = np.ascontiguousarray(to_numpy(pick_block(cand, mask)), dtype=np.float32)
            f.write(memoryview(X).cast("B"))
            rows += X.shape[0]
    if rows != n:
        raise RuntimeError(f"{path}: {rows} kept rows, the mask counts {n}")
    os.replace(path + ".part", path)
    for cand in cands:
        for suffix in (".X.npy", ".index.npy"):
            os.remove(cand.path + suffix)
    return path


def map_kept(path: str, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Rows ``start:stop`` of a compacted file, memory-mapped (copy-on-write:
    writeable, so the EM's numba kernels see the array type they were compiled for)."""
    return np.load(path, mmap_mode="c")[start:stop]


def _runs(sizes: list[int], limit: int) -> list[list[int]]:
    """Consecutive runs of positions whose sizes add up to at most ``limit``
    (at least one position each)."""
    runs, total = [[]], 0
    for i, size in enumerate(sizes):
        if runs[-1] and total + size > limit:
            runs.append([])
            total = 0
        runs[-1].append(i)
        total += size
    return runs


def compact_candidates(candidates: np.ndarray, mask: da.Array, t: int, meta=None,
                       group_bytes: int = 64 * 2**20):
    """Kept trajectories of candidates held on disk, rewritten once to files of
    their own that every later pass maps without copying.

    Picking the kept rows out of the candidate files at every EM pass copied
    them each time (6.7 s of 15 s in the EM stage at 6 GB on two workers),
    and each pass was one task per spatial block (128 at 6 GB, about 2 ms of
    scheduling each).  Consecutive blocks are written together, about
    ``group_bytes`` per file, in block order; the candidates are deleted as
    they are rewritten, so the scratch directory never holds both.

    Returns the :class:`Trajectories` in spatial blocks (as
    :func:`trajectories_from_candidates` gives them), and X (n_kept, T) and
    index (n_kept,) chunked one file per chunk, for the EM.
    """
    counts = block_counts(mask)
    positions = list(np.ndindex(*candidates.shape))
    sizes = [int(counts[p]) for p in positions]
    mblocks = mask.to_delayed()
    compact = dask.delayed(compact_group, pure=True)
    runs = _runs([n * t * 4 for n in sizes], group_bytes)
    tasks = [compact([candidates[positions[i]] for i in run],
                     [mblocks[positions[i]] for i in run], sum(sizes[i] for i in run), t)
             for run in runs]
    paths = dask.compute(*tasks)
    where = {}
    for path, run in zip(paths, runs):
        start = 0
        for i in run:
            where[positions[i]] = (path, start, start + sizes[i])
            start += sizes[i]
    traj = assemble_trajectories(mask, lambda pos: (functools.partial(map_kept, *where[pos]),),
                                 t, meta, counts)
    group_rows = [sum(sizes[i] for i in run) for run in runs]
    files = [(path, n) for path, n in zip(paths, group_rows) if n]
    X = stack_tasks([(functools.partial(map_kept, path),) for path, _ in files],
                    [(n, t) for _, n in files], np.float32, traj.X._meta, "kept-trajectories")
    return traj, X, traj.index.rechunk((tuple(n for _, n in files),))


# ---------------------------------------------------------------------------- pilot
def _pilot_block(x):
    m = to_numpy(block_means(x)[1]).astype(np.float64)
    return np.log(m[m > 0])


def pilot_block_count(total: int, max_fraction: float = PILOT_FRACTION,
                      min_blocks: int = PILOT_MIN_BLOCKS) -> int:
    """How many of ``total`` blocks the pilot samples."""
    return min(total, max(min_blocks, int(round(total * max_fraction))))


def extra_fraction(n_blocks: int) -> float:
    """The candidates' margin beyond the pilot's kept fraction (a fraction of all
    voxels) when the pilot sampled ``n_blocks`` blocks.

    :data:`EXTRA_FRACTION` at :data:`PILOT_MIN_BLOCKS`, shrinking as the
    pilot's sampling error does, 1 / sqrt(blocks).  Measured on the benchmark
    series, the kept fraction at the exact cutoff lay 1.8, 0.6 and 0.0
    points above the pilot's at 1.5, 6 and 48 GB (64, 128 and 484 sampled
    blocks), where this margin is 10, 7.1 and 3.6 points: at 48 GB the
    candidates written to scratch fall from 37.8% to 31.4% of the voxels,
    where 27.8% are kept.  A bound that proves too high costs a second read,
    never a different result.
    """
    return EXTRA_FRACTION * math.sqrt(PILOT_MIN_BLOCKS / max(n_blocks, PILOT_MIN_BLOCKS))


def pilot_log_means(data: da.Array, max_fraction: float = PILOT_FRACTION,
                    min_blocks: int = PILOT_MIN_BLOCKS, seed: int = 0,
                    scheduler: str | None = None) -> np.ndarray:
    """log(mean_T I) of the non-zero voxels of a random sample of ``data``'s blocks,
    computed with ``scheduler`` (None: the current one).

    data : (T, L, K, H) dask array chunked like the file (one HDF5 chunk per
    block), so a sampled block costs one chunk read and only its log-means
    travel.
    """
    if data.numblocks[0] != 1:
        data = data.rechunk({0: -1})
    total = math.prod(data.numblocks[1:])
    n = pilot_block_count(total, max_fraction, min_blocks)
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
    # Only the chosen blocks' tasks are built and run (compute_blocks).
    cells = np.unravel_index(chosen, data.numblocks[1:])
    return np.concatenate(compute_blocks(
        data, [(_pilot_block, [(0, *cell)]) for cell in zip(*cells)], scheduler))


def plan_candidates(data: da.Array, threshold, rescale: str, budget_bytes: float,
                    pilot_data=None, scheduler: str | None = None) -> CandidatePlan | None:
    """The bound for the first pass, or None when capturing would not pay.

    ``threshold``: 'kl', 'simple', 'none' or an intensity.  ``budget_bytes``:
    what the candidates may take in worker memory; above it they go to disk
    (the caller sets ``scratch``).  ``pilot_data``: the same series chunked
    like the file (a callable returning it; opened only if a pilot is needed).
    ``scheduler``: the pilot's (None: the current one).  Returns a plan with
    ``scratch=None``.
    """
    t = data.shape[0]
    total = math.prod(data.shape) * 4
    if not isinstance(threshold, str):
        return CandidatePlan(math.log(float(threshold)), rescale, fraction=1.0, source="exact")
    if threshold == "none" or total <= min(budget_bytes, CAPTURE_ALL_BYTES):
        return CandidatePlan(-math.inf, rescale, fraction=1.0,
                             source="exact" if threshold == "none" else "all")
    if threshold not in THRESHOLD_METHODS:
        return None
    if callable(pilot_data):
        pilot_data = pilot_data()
    pilot_data = data if pilot_data is None else pilot_data
    x = pilot_log_means(pilot_data, scheduler=scheduler)
    n_blocks = pilot_block_count(math.prod(pilot_data.numblocks[1:]))
    if x.size < 1000:
        return None
    if threshold == "simple":
        cutoff = float(x.mean() + 2 * x.std())
    else:
        try:
            cutoff = kl_threshold_values(x)
        except (ValueError, ZeroDivisionError, IndexError):
            return None
        if not math.isfinite(cutoff):
            return None
    kept = float(np.mean(x > cutoff))
    fraction = min(1.0, kept + extra_fraction(n_blocks))
    bound = float(np.quantile(x, 1.0 - fraction)) if fraction < 1.0 else -math.inf
    bound = min(bound, cutoff)
    log.info("pilot cutoff %.4g (log) from %d sampled voxels keeps %.1f%%; first pass keeps "
             "candidates above %.4g (%.1f%% of voxels, %d trajectories of %d values)", cutoff,
             x.size, 100 * kept, bound, 100 * fraction, int(fraction * total / (4 * t)), t)
    return CandidatePlan(bound, rescale, fraction=fraction)
