"""An in-process memory budget (issue 29): candidate and kept trajectories that do
not fit it go to scratch files, and the labels stay those of the in-memory run."""

from __future__ import annotations

import numpy as np
import pytest

from xtec.io.store import open_result
from xtec.pipeline import ClusterConfig, run_cluster
from xtec.runtime.clusters import Runtime, dask_runtime


def test_budget_bounds_where_trajectories_live():
    assert Runtime("threads", memory_limit=10_000).memory_budget() == pytest.approx(3_000)
    assert Runtime("threads").memory_budget() > 3_000  # the memory available
    assert Runtime("threads", memory_limit=10_000).persist_mode(5_000, "auto") == "disk"
    assert Runtime("threads", memory_limit=10**9).persist_mode(5_000, "auto") == "memory"
    with dask_runtime(memory_limit=2**30) as rt:
        assert rt.client is None and rt.memory_limit == 2**30
    with dask_runtime(memory_limit="auto") as rt:
        assert rt.memory_limit is None


def test_tiny_budget_spills_with_identical_labels(medium_file, tmp_path):
    ref = tmp_path / "memory.zarr"
    run_cluster(ClusterConfig(inputs=[str(medium_file)], out=str(ref)))
    spilled = tmp_path / "budget.zarr"
    # 1 MB: the candidates (MBs here) do not fit, so they and the kept rows go to disk.
    run_cluster(ClusterConfig(inputs=[str(medium_file)], out=str(spilled)),
                runtime=Runtime("threads", memory_limit=2**20))
    a, b = open_result(ref), open_result(spilled)
    assert a.attrs["trajectories_held"] == "memory"
    assert b.attrs["trajectories_held"] == "disk"
    np.testing.assert_array_equal(b.labels.values, a.labels.values)
    np.testing.assert_array_equal(b.cluster_mean.values, a.cluster_mean.values)
    assert not (tmp_path / "budget.zarr.scratch").exists()
