"""First-pass candidate capture: the kept trajectories without a second read."""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import dask
import dask.array as da
import numpy as np
import pytest

import xtec.pipeline as pipeline
import xtec.preprocess.candidates as candidates
from xtec.io.nexus import open_nexus
from xtec.io.store import open_result
from xtec.pipeline import ClusterConfig, run_cluster
from xtec.preprocess import compute_threshold, extract_trajectories, keep_mask, summarize
from xtec.preprocess.candidates import (
    EXTRA_FRACTION,
    PILOT_MIN_BLOCKS,
    CandidatePlan,
    extra_fraction,
    pilot_block_count,
    plan_candidates,
    trajectories_from_candidates,
)
from xtec.preprocess.trajectories import captured_of
from xtec.runtime.clusters import Runtime


@pytest.fixture(scope="module")
def reread_labels(medium_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("reread") / "none.zarr"
    run_cluster(ClusterConfig(inputs=[str(medium_file)], out=str(out), persist="none"))
    ds = open_result(out)
    assert ds.attrs["trajectories_held"] == "none"
    return ds.labels.values


@pytest.mark.parametrize("rescale", ["mean", "zscore"])
@pytest.mark.parametrize("where", ["memory", "disk"])
def test_picked_trajectories_equal_reread_ones(medium_file, tmp_path, rescale, where):
    data = open_nexus(medium_file, chunks=(2, 64, 96)).data
    with dask.config.set(scheduler="threads"):
        plain = summarize(data)
        thr = compute_threshold(plain.mean, "kl")
        plan = CandidatePlan(thr.cutoff - 0.3, rescale,
                             scratch=str(tmp_path) if where == "disk" else None)
        summ = summarize(data, capture=plan)
        np.testing.assert_array_equal(summ.mean.compute(), plain.mean.compute())
        mask = keep_mask(summ.mean, thr).persist()
        picked = trajectories_from_candidates(summ.captured, mask, data.shape[0])
        reread = extract_trajectories(data, mask, rescale)
        np.testing.assert_array_equal(picked.X.compute(), reread.X.compute())
        np.testing.assert_array_equal(picked.index.compute(), reread.index.compute())
    # Candidates include voxels below the cutoff: more were captured than kept.
    n_captured = sum(captured_of(c).n for c in dask.compute(*summ.captured.ravel()))
    assert n_captured > picked.n
    assert (len(list(tmp_path.glob("cand-*.npy"))) > 0) == (where == "disk")


def test_first_pass_with_capture_is_a_task_a_block_and_its_means(medium_file):
    """On a cluster the pass is one task per block reading and summarising it,
    and one per block of the means; the candidates are handed over in the
    pass's own results (no task takes them out), and picked as in memory."""
    from distributed import Client, LocalCluster, get_task_stream

    data = open_nexus(medium_file, chunks=(2, 64, 96)).data
    with dask.config.set(scheduler="threads"):
        thr = compute_threshold(summarize(data).mean, "kl")
        want = extract_trajectories(data, keep_mask(summarize(data).mean, thr), "mean")
        want_X = want.X.compute()
    n_blocks = math.prod(data.numblocks[1:])
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        with get_task_stream(client) as stream:
            summ = summarize(data, capture=CandidatePlan(thr.cutoff - 0.3, "mean"))
        names = [str(t["key"]) for t in stream.data]
        assert sum("_summary_cell" in n for n in names) == n_blocks
        assert sum("_cell_mean" in n for n in names) == n_blocks
        # and the file opened once, the small items a task per worker thread
        assert len(names) <= 2 * n_blocks + 3
        mask = keep_mask(summ.mean, thr).persist()
        picked = trajectories_from_candidates(summ.captured, mask, data.shape[0])
        np.testing.assert_array_equal(picked.X.compute(), want_X)


@pytest.mark.parametrize("group_bytes", [1, 200_000, 2**30])
def test_compacted_candidates_equal_picked_ones_and_replace_them(medium_file, tmp_path,
                                                                 group_bytes):
    from xtec.preprocess.candidates import compact_candidates, compact_group

    data = open_nexus(medium_file, chunks=(2, 64, 96)).data
    with dask.config.set(scheduler="threads"):
        plain = summarize(data)
        thr = compute_threshold(plain.mean, "kl")
        summ = summarize(data, capture=CandidatePlan(thr.cutoff - 0.3, "mean",
                                                     scratch=str(tmp_path)))
        mask = keep_mask(summ.mean, thr).persist()
        picked = trajectories_from_candidates(summ.captured, mask, data.shape[0])
        X, index = picked.X.compute(), picked.index.compute()
        cands = [captured_of(c) for c in dask.compute(*summ.captured.ravel())]
        traj, Xg, ig = compact_candidates(summ.captured, mask, data.shape[0],
                                          group_bytes=group_bytes)
        # The candidate files are gone; one file per group of consecutive blocks.
        assert not list(tmp_path.glob("cand-*.X.npy"))
        n_files = len(list(tmp_path.glob("*.kept.npy")))
        n_blocks = summ.captured.size
        assert n_files == {1: n_blocks, 2**30: 1}.get(group_bytes, n_files)
        assert 1 < n_files < n_blocks or group_bytes != 200_000
        # In spatial blocks (for painting) and in the files' chunks (for the EM).
        np.testing.assert_array_equal(traj.X.compute(), X)
        np.testing.assert_array_equal(traj.index.compute(), index)
        np.testing.assert_array_equal(traj.counts, picked.counts)
        assert traj.X.chunks == picked.X.chunks
        np.testing.assert_array_equal(Xg.compute(), X)
        np.testing.assert_array_equal(ig.compute(), index)
        assert Xg.chunks[0] == ig.chunks[0] and len(Xg.chunks[0]) <= n_files
        # A rerun of a group's task (a lost worker) finds its work done.
        masks = [m.compute() for m in mask.to_delayed().ravel()]
        n = sum(int(m.sum()) for m in masks)
        if n_files == 1:
            assert compact_group(cands, masks, n, data.shape[0]) == cands[0].path + ".kept.npy"


def test_pilot_bound_lies_below_the_exact_cutoff(medium_file):
    data = open_nexus(medium_file).data
    pilot = open_nexus(medium_file, chunks=(1, 64, 64)).data
    with dask.config.set(scheduler="threads"):
        exact = compute_threshold(summarize(data).mean, "kl").cutoff
        plan = plan_candidates(data, "kl", "mean", budget_bytes=0, pilot_data=pilot)
        assert plan.source == "pilot"
        assert plan.bound < exact
        kept = float((summarize(data).mean.compute() > math.exp(exact)).mean())
        assert kept < plan.fraction <= kept + 0.2
        # Exact bounds need no pilot; a series that fits in memory is captured whole.
        assert plan_candidates(data, 2.5, "mean", 0).bound == pytest.approx(math.log(2.5))
        assert plan_candidates(data, "none", "mean", 0).bound == -math.inf
        assert plan_candidates(data, "kl", "mean", 1e12).source == "all"


def test_candidate_margin_shrinks_with_the_pilots_sampling_error(medium_file, caplog):
    """The margin beyond the pilot's kept fraction is 10% of the voxels at the
    fewest sampled blocks and falls as 1 / sqrt(blocks): 3.6% at the 484
    blocks of the 48 GB benchmark series, never below what the pilot adds
    at the smallest sample."""
    assert extra_fraction(1) == extra_fraction(PILOT_MIN_BLOCKS) == EXTRA_FRACTION
    assert extra_fraction(4 * PILOT_MIN_BLOCKS) == pytest.approx(EXTRA_FRACTION / 2)
    assert extra_fraction(pilot_block_count(15_488)) == pytest.approx(0.0364, abs=1e-4)
    counts = [pilot_block_count(t) for t in (10, 1_024, 4_096, 15_488)]
    assert counts == [10, 64, 128, 484]
    margins = [extra_fraction(n) for n in counts]
    assert margins == sorted(margins, reverse=True) and margins[-1] > 0
    # The plan uses the margin of the blocks its pilot sampled.
    data = open_nexus(medium_file).data
    pilot = open_nexus(medium_file, chunks=(1, 64, 64)).data
    with dask.config.set(scheduler="threads"), caplog.at_level("INFO"):
        plan = plan_candidates(data, "kl", "mean", budget_bytes=0, pilot_data=pilot)
    n_blocks = pilot_block_count(math.prod(pilot.numblocks[1:]))
    kept = float(caplog.text.split("keeps ")[1].split("%")[0]) / 100
    assert plan.fraction == pytest.approx(kept + extra_fraction(n_blocks), abs=1e-3)


def test_pipeline_with_pilot_and_disk_candidates(medium_file, reread_labels, tmp_path,
                                                 monkeypatch, caplog):
    # Workers with almost no memory for trajectories: a pilot sets the bound and
    # the candidates go to the scratch directory.
    monkeypatch.setattr(Runtime, "memory_budget", lambda self: 1e5)
    out = tmp_path / "pilot.zarr"
    with caplog.at_level(logging.INFO, logger="xtec"):
        run_cluster(ClusterConfig(inputs=[str(medium_file)], out=str(out), chunks=(2, 64, 64)))
    assert "pilot cutoff" in caplog.text and "read again" not in caplog.text
    ds = open_result(out)
    assert ds.attrs["trajectories_held"] == "disk"
    np.testing.assert_array_equal(ds.labels.values, reread_labels)
    assert not (tmp_path / "pilot.zarr.scratch").exists()


def test_pilot_on_a_local_cluster_equals_in_process(medium_file, reread_labels, tmp_path,
                                                    monkeypatch):
    from xtec.runtime.clusters import dask_runtime

    monkeypatch.setattr(Runtime, "memory_budget", lambda self: 1e5)
    out = tmp_path / "cluster.zarr"
    with dask_runtime(workers=2, memory_limit="600MB", dashboard_address=None) as rt:
        run_cluster(ClusterConfig(inputs=[str(medium_file)], out=str(out)), runtime=rt)
    ds = open_result(out)
    assert ds.attrs["trajectories_held"] == "disk"
    np.testing.assert_array_equal(ds.labels.values, reread_labels)


def test_cutoff_below_the_bound_falls_back_to_a_second_read(medium_file, reread_labels,
                                                            tmp_path, monkeypatch, caplog):
    real = candidates.plan_candidates

    def too_high(*args, **kwargs):
        return replace(real(*args, **kwargs), bound=50.0)

    monkeypatch.setattr(pipeline, "plan_candidates", too_high)
    out = tmp_path / "fallback.zarr"
    with caplog.at_level(logging.INFO, logger="xtec"):
        run_cluster(ClusterConfig(inputs=[str(medium_file)], out=str(out)))
    assert "read again" in caplog.text
    np.testing.assert_array_equal(open_result(out).labels.values, reread_labels)


def test_capture_and_pick_run_on_array_api_strict():
    xps = pytest.importorskip("array_api_strict")
    from xtec.preprocess import mean_block
    from xtec.preprocess.candidates import pick_block

    rng = np.random.default_rng(1)
    host = rng.gamma(2.0, 1.0, size=(6, 40)).astype(np.float32)
    host[:, :3] = 0.0
    m = mean_block(host)
    plan = CandidatePlan(math.log(1.5), "mean")
    cand = plan(xps.asarray(host), xps.asarray(m), (0,))
    ref = plan(host, m, (0,))
    np.testing.assert_array_equal(cand.index, ref.index)
    mask = m > 2.0  # the exact cutoff above the bound
    got = pick_block(cand, xps.asarray(mask))
    np.testing.assert_allclose(np.from_dlpack(got), pick_block(ref, mask), rtol=1e-5, atol=1e-6)
    assert got.shape[0] == int(mask.sum()) < cand.n


def test_pilot_reads_only_its_sampled_blocks():
    """The pilot's log-means are those of the blocks the seed picks (the NumPy
    expression on each), and its graph holds tasks for those blocks only (per
    block a read and a summary at most, of a grid of 16)."""
    from xtec.preprocess.candidates import pilot_log_means

    rng = np.random.default_rng(5)
    cube = rng.gamma(0.5, 2.0, size=(6, 4, 8, 8)).astype(np.float32)
    cube[:, 1, :4, :4] = 0.0  # a block of zeros leaves nothing
    data = da.from_array(cube, chunks=(6, 1, 4, 4))
    got = pilot_log_means(data, max_fraction=0.25, min_blocks=3, seed=2)
    grid = data.numblocks[1:]
    chosen = np.sort(np.random.default_rng(2).choice(16, size=4, replace=False))
    want = []
    for i in chosen:
        lb, kb, hb = np.unravel_index(i, grid)
        m = cube[:, lb, 4 * kb:4 * kb + 4, 4 * hb:4 * hb + 4].mean(0, dtype=np.float64)
        m = m.astype(np.float32).astype(np.float64).ravel()  # float32 means, as stored
        want.append(np.log(m[m > 0]))
    np.testing.assert_allclose(got, np.concatenate(want), rtol=0, atol=1e-12)

    tasks = []

    from dask.callbacks import Callback

    class Count(Callback):
        def _start_state(self, dsk, state):
            tasks.append(len(state["ready"]) + len(state["waiting"]))

    with Count():
        pilot_log_means(data, max_fraction=0.25, min_blocks=3, seed=2)
    assert len(tasks) == 1 and 4 <= tasks[0] <= 2 * 4


@pytest.mark.parametrize("pattern", ["sparse", "dense", "prefix", "none"])
def test_pick_moves_the_kept_rows_up_in_place_and_again_on_a_rerun(pattern, monkeypatch):
    from xtec.preprocess.candidates import CandidateBlock, pick_block

    monkeypatch.setattr(candidates, "PICK_ROWS", 7)  # many steps, some already in place
    rng = np.random.default_rng(3)
    n, t = 100, 5
    X = rng.normal(size=(n, t)).astype(np.float32)
    index = np.sort(rng.choice(400, size=n, replace=False))
    keep = {"sparse": rng.random(n) < 0.2, "dense": rng.random(n) < 0.9,
            "prefix": np.arange(n) < 60, "none": np.zeros(n, bool)}[pattern]
    keep[0] = pattern != "none"  # the first steps in place where any row is kept
    mask = np.zeros((4, 10, 10), bool)
    mask.reshape(-1)[index[keep]] = True
    want = X[keep].copy()
    cand = CandidateBlock(n, index, X, None)
    got = pick_block(cand, mask)
    np.testing.assert_array_equal(got, want)
    assert got.size == 0 or np.shares_memory(got, X)  # no copy of the kept rows
    np.testing.assert_array_equal(cand.index, index[keep])
    again = pick_block(cand, mask)  # a rerun of the task: the same rows
    np.testing.assert_array_equal(again, want)
    assert cand.n == n


def test_a_read_only_block_is_picked_by_copy():
    """A block received from another worker is a read-only view: its kept rows
    are copied, the view left as it is."""
    from xtec.preprocess.candidates import CandidateBlock, pick_block

    X = np.arange(40, dtype=np.float32).reshape(10, 4)
    X.flags.writeable = False
    index = np.arange(0, 20, 2)
    mask = np.zeros((2, 2, 5), bool)
    mask.reshape(-1)[index[[1, 4, 7]]] = True
    got = pick_block(CandidateBlock(10, index, X, None), mask)
    np.testing.assert_array_equal(got, X[[1, 4, 7]])
    np.testing.assert_array_equal(X, np.arange(40, dtype=np.float32).reshape(10, 4))
