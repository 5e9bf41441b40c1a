"""Chunk helpers: blocks handed to a task without Dask's copy."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest

from xtec.runtime.chunks import map_blocks_dropping, map_blocks_with_pieces


class _Views:
    """An array source (as a file's reader is) whose blocks are views of ``x``."""

    def __init__(self, x):
        self.x, self.shape, self.dtype, self.ndim = x, x.shape, x.dtype, x.ndim

    def __getitem__(self, key):
        return self.x[key]


def test_dropping_an_axis_matches_map_blocks_and_hands_the_block_itself():
    x = np.random.default_rng(0).random((90, 24), dtype=np.float32)
    dx = da.from_array(_Views(x), chunks=(25, 24), asarray=False)
    w = da.from_array(np.arange(90.0), chunks=(25,))
    shared = []

    def f(block, weights, scale):
        shared.append(np.shares_memory(block, x))
        return block.sum(axis=1) * weights * scale

    got = map_blocks_dropping(f, dx, 1, w, 2.0, dtype=np.float64)
    assert got.chunks == ((25, 25, 25, 15),)
    with dask.config.set(scheduler="sync"):
        np.testing.assert_array_equal(got.compute(), x.sum(axis=1) * np.arange(90.0) * 2.0)
    assert shared and all(shared)  # Dask's drop_axis would have copied each block


def test_blocks_get_their_numbered_piece_in_one_task_each():
    """Each block of the grid with the piece its number names (pieces chunked
    apart from the grid: one per non-empty block), None where it has none; one
    task per block reads both, nothing assembles pieces."""
    grid = da.from_array(np.arange(24).reshape(2, 3, 4), chunks=(1, 2, 3))
    which = {(0, 0, 0): 0, (0, 1, 1): 1, (1, 0, 1): 2}
    pieces = da.from_array(np.array([10.0, 11, 20, 30, 31, 32]), chunks=((2, 1, 3),))

    def f(block, piece, fill):  # the block's first value plus its piece's sum
        out = np.full(block.shape, fill)
        out.flat[0] = block.flat[0] + (0.0 if piece is None else piece.sum())
        return out

    got = map_blocks_with_pieces(f, grid, pieces, which, -1.0, dtype=np.float64)
    assert got.chunks == grid.chunks
    with dask.config.set(scheduler="sync"):
        v = got.compute()
    firsts = {pos: v[tuple(sum(c[:i]) for c, i in zip(grid.chunks, pos))]
              for pos in np.ndindex(*grid.numblocks)}
    x = np.arange(24).reshape(2, 3, 4)
    assert firsts[(0, 0, 0)] == x[0, 0, 0] + 21 and firsts[(0, 1, 1)] == x[0, 2, 3] + 20
    assert firsts[(1, 0, 1)] == x[1, 0, 3] + 93 and firsts[(1, 1, 0)] == x[1, 2, 0]
    assert (v == -1).sum() == v.size - len(firsts)
    ours = [k for k in dict(got.__dask_graph__()) if k[0] == got.name]
    assert len(ours) == np.prod(grid.numblocks)


def test_dropping_a_split_axis_is_refused():
    with pytest.raises(ValueError, match="one chunk"):
        map_blocks_dropping(np.sum, da.ones((4, 6), chunks=(4, 3)), 1, dtype=float)


def test_the_first_pass_copies_no_block_of_the_series(monkeypatch):
    """Each block of the series is summarised as read: nothing the size of a
    block is concatenated (Dask's drop_axis copied the whole series once)."""
    import dask.array.core as core

    from xtec.preprocess.trajectories import summarize

    sizes = []
    concatenate3 = core.concatenate3

    def recording(arrays):
        out = concatenate3(arrays)
        sizes.append(out.nbytes)
        return out

    monkeypatch.setattr(core, "concatenate3", recording)
    data = da.from_array(np.random.default_rng(1).random((12, 4, 20, 20), dtype=np.float32),
                         chunks=(12, 2, 10, 20))
    with dask.config.set(scheduler="sync"):
        mean = summarize(data).mean.compute()
    block = 12 * 2 * 10 * 20 * 4
    assert sizes and max(sizes) < block, sizes  # the cells, and the means' (L, K, H)
    np.testing.assert_allclose(mean, data.compute().mean(axis=0), rtol=1e-6)


def _ndim_and_sum(block) -> np.ndarray:
    return np.array([[block.ndim, int(block.sum())]])


def test_stacked_tasks_are_the_chunks_and_read_persisted_blocks_on_a_cluster():
    """One task per chunk and no other (from_delayed pieces and a concatenate made
    three); its inputs are the blocks themselves, also those of an array persisted
    on a cluster and handed over by ``to_delayed()`` (a plain graph's tuple took
    such a block's key for a constant: the bug this guards)."""
    from distributed import Client, LocalCluster, get_task_stream, wait

    from xtec.runtime.chunks import stack_tasks

    x = np.arange(2 * 6 * 6).reshape(2, 6, 6)
    want = [[3, int(x[:1, :3, :3].sum())], [3, int(x[1:, 3:, 3:].sum())]]
    with pytest.raises(TypeError, match="Delayed"):
        stack_tasks([(_ndim_and_sum, x)], [(1, 2)], np.int64)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        m = da.from_array(x, chunks=(1, 3, 3)).persist()
        wait(m)
        for optimize in (True, False):
            blocks = m.to_delayed(optimize_graph=optimize)
            got = stack_tasks([(_ndim_and_sum, blocks[0, 0, 0]), (_ndim_and_sum, blocks[1, 1, 1])],
                              [(1, 2), (1, 2)], np.int64, name=f"stacked-{optimize}")
            assert got.chunks == ((1, 1), (2,))
            with get_task_stream(client) as stream:
                np.testing.assert_array_equal(got.compute(), want)
            ours = [t for t in stream.data if got.name in str(t["key"])]
            assert len(ours) == 2 and len(stream.data) <= 3  # (and the compute's finalize)
    with dask.config.set(scheduler="sync"):  # and without a cluster
        blocks = da.from_array(x, chunks=(1, 3, 3)).to_delayed()
        np.testing.assert_array_equal(
            stack_tasks([(_ndim_and_sum, blocks[0, 0, 0]), (_ndim_and_sum, blocks[1, 1, 1])],
                        [(1, 2), (1, 2)], np.int64).compute(), want)


def _pair(a, b, scale) -> float:
    return float(a.sum() * scale + b.sum())


def test_per_block_results_in_block_order_one_task_per_worker_thread_where_held():
    from distributed import Client, LocalCluster, get_task_stream, wait

    from xtec.runtime.chunks import per_block

    rng = np.random.default_rng(1)
    a, b = rng.random((90, 4)), rng.random(90)
    da_, db_ = da.from_array(a, chunks=(10, 4)), da.from_array(b, chunks=(10,))
    want = [float(a[i:i + 10].sum() * 2.0 + b[i:i + 10].sum()) for i in range(0, 90, 10)]
    with dask.config.set(scheduler="sync"):
        assert per_block(_pair, da_, db_, args=(2.0,)) == want
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        held_a, held_b = dask.persist(da_, db_)
        wait([held_a, held_b])
        with get_task_stream(client) as stream:
            assert per_block(_pair, held_a, held_b, args=(2.0,)) == want
        assert len(stream.data) <= 2  # one per worker thread holding blocks
        with get_task_stream(client) as stream:  # not held: a task per block
            assert per_block(_pair, da_, db_, args=(2.0,)) == want
        assert sum(1 for t in stream.data if "_pair" in str(t["key"])) == 9


def _thread_of(a, b, scale):
    import threading

    return threading.get_ident(), _pair(a, b, scale)


def test_per_block_runs_blocks_in_memory_on_the_current_scheduler_without_delayed_calls():
    """Blocks already in this process's memory (persisted locally, or NumPy
    chunks) run as one task each on a graph of just them, with the scheduler
    configured (the calling thread for 'sync', the pool for 'threads'); lazy
    arrays take the delayed calls; the results are the same, in block order."""
    import threading

    from xtec.runtime.chunks import _blocks_in_memory, per_block

    rng = np.random.default_rng(2)
    a, b = rng.random((90, 4)), rng.random(90)
    want = [float(a[i:i + 10].sum() * 2.0 + b[i:i + 10].sum()) for i in range(0, 90, 10)]
    lazy_a, lazy_b = da.from_array(a, chunks=(10, 4)) * 1.0, da.from_array(b, chunks=(10,)) + 0.0
    held_a, held_b = dask.persist(lazy_a, lazy_b, scheduler="threads")
    assert _blocks_in_memory([lazy_a, lazy_b]) is None
    assert _blocks_in_memory([held_a, held_b]) is not None
    for scheduler in ("sync", "threads"):
        with dask.config.set(scheduler=scheduler):
            got = per_block(_thread_of, held_a, held_b, args=(2.0,))
            assert [g[1] for g in got] == want
            here = {g[0] for g in got} == {threading.get_ident()}
            assert here == (scheduler == "sync")
            assert per_block(_pair, lazy_a, lazy_b, args=(2.0,)) == want


def _predict_like(x, scale):
    return (x[:, 0] * scale).astype(np.int16), float(x.sum())


def test_painted_results_are_painted_in_the_task_that_uses_the_block():
    """The blocks' results (labels, statistics), made under keys of the block grid
    and persisted, paint the grid as :func:`paint` does, in the consuming task
    (no task of their own, none picking the labels out), on a cluster and off it;
    a block keeping no voxel is all fill."""
    from distributed import Client, LocalCluster, get_task_stream, wait

    from xtec.preprocess.trajectories import (
        extract_trajectories,
        kept_block_keys,
        paint,
        paint_results,
    )
    from xtec.runtime.chunks import block_grid

    rng = np.random.default_rng(2)
    data = rng.random((3, 4, 6, 6)).astype(np.float32)
    keep = rng.random((4, 6, 6)) > 0.5
    keep[:2, :3, :3] = False  # block (0, 0, 0) keeps nothing
    ddata, dmask = da.from_array(data, chunks=(3, 2, 3, 3)), da.from_array(keep, chunks=(2, 3, 3))

    def painted(scheduler_ctx):
        with scheduler_ctx:
            traj = extract_trajectories(ddata, dmask, "none")
            keys = kept_block_keys(traj, "predicted-test")
            f = dask.delayed(_predict_like, pure=True)
            parts = dask.persist(*[f(b, 10.0, dask_key_name=key)
                                   for b, key in zip(traj.X.to_delayed().ravel(), keys)])
            return traj, parts, paint_results(list(parts), traj, 0, -1, np.int16)

    import contextlib

    traj, parts, got = painted(dask.config.set(scheduler="sync"))
    assert len(parts) == 7 and (0, 0, 0) not in [p.key[1:] for p in parts]
    want = paint(da.concatenate([da.from_array(_predict_like(x, 10.0)[0]) for x in
                                 [traj.X.blocks[i].compute() for i in range(7)]]).rechunk(
        (traj.X.chunks[0],)), traj, -1, np.int16).compute(scheduler="sync")
    np.testing.assert_array_equal(got.compute(scheduler="sync"), want)
    assert (want[:2, :3, :3] == -1).all() and (want >= -1).all() and (want > -1).any()
    with pytest.raises(ValueError, match="keyed"):
        block_grid({(0, 0, 1): parts[1]}, (2, 2, 2), "predicted-test")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        traj, parts, got = painted(contextlib.nullcontext())
        wait(list(parts))
        total = got.map_blocks(lambda b: np.array([[[b.astype(np.int64).sum()]]]),
                               chunks=(1, 1, 1), dtype=np.int64)
        with get_task_stream(client) as stream:
            assert int(total.sum().compute()) == int(want.astype(np.int64).sum())
        names = [str(t["key"]) for t in stream.data]
        # (the block keeping nothing is a None of its own: a task that runs nothing)
        assert [n for n in names if "predicted" in n] == ["('predicted-test', 0, 0, 0)"]
        assert not any("scatter" in n for n in names)
        assert sum(n.startswith("('sum-") for n in names) == 8  # one a block, painting fused in
