"""A run in this process keeps to Dask's threaded scheduler without importing
``distributed`` (0.4 s of an in-process run at 1.5 GB), and leaves a user's
configured scheduler or Client in place."""

from __future__ import annotations

import json
import subprocess
import sys

import dask
import dask.threaded
import distributed  # noqa: F401  (imported here: a Client is possible in this process)
import numpy as np

from xtec.io.store import open_result
from xtec.pipeline import ClusterConfig, run_cluster
from xtec.runtime.clusters import Runtime
from xtec.runtime.schedulers import distributed_loaded, scheduler_of, threaded_unless_configured

# Runs the command line in-process, then the library with no runtime, and
# reports what was imported and the log levels distributed takes on import.
_SCRIPT = """
import json, logging, sys
from xtec.cli.main import main
from xtec.pipeline import ClusterConfig, run_cluster
src, out_cli, out_lib = sys.argv[1:4]
code = main(["cluster", src, "-o", out_cli, "-k", "3", "--seed", "2", "--no-progress"])
after_cli = "distributed" in sys.modules
run_cluster(ClusterConfig(inputs=[src], out=out_lib, k=3, seed=2))
after_lib = "distributed" in sys.modules
import distributed
levels = {n: logging.getLogger(n).getEffectiveLevel()
          for n in ("distributed", "distributed.comm", "distributed.core", "bokeh")}
print(json.dumps({"code": code, "after_cli": after_cli, "after_lib": after_lib,
                  "levels": levels}))
"""


def test_in_process_runs_never_import_distributed(medium_file, tmp_path):
    cli, lib = tmp_path / "cli.zarr", tmp_path / "lib.zarr"
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(medium_file), str(cli), str(lib)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["code"] == 0 and not got["after_cli"] and not got["after_lib"]
    # The command line's quiet logs hold once distributed is imported after all.
    assert got["levels"] == {"distributed": 30, "distributed.comm": 50, "distributed.core": 50,
                             "bokeh": 40}
    # The same labels as a run here, where distributed is imported and the
    # threaded scheduler is named.
    assert distributed_loaded()
    ref = tmp_path / "ref.zarr"
    with dask.config.set(scheduler="threads"):
        run_cluster(ClusterConfig(inputs=[str(medium_file)], out=str(ref), k=3, seed=2),
                    runtime=Runtime("threads"))
    want = open_result(ref)["labels"].values
    for out in (cli, lib):
        np.testing.assert_array_equal(open_result(out)["labels"].values, want)


def test_a_configured_scheduler_or_a_possible_client_is_left_in_place():
    with dask.config.set(scheduler="synchronous"), scheduler_of(None):
        assert dask.config.get("scheduler") == "synchronous"
    # distributed is imported in this process: a default Client may exist.
    with dask.config.set(scheduler=None), threaded_unless_configured():
        assert dask.config.get("scheduler") is None
    with dask.config.set(scheduler="synchronous"), scheduler_of(Runtime("threads")):
        assert dask.config.get("scheduler") == "synchronous"


def test_without_distributed_the_threaded_scheduler_is_named_by_its_function():
    code = ("import sys, dask, dask.threaded\n"
            "from xtec.runtime.schedulers import scheduler_of\n"
            "with scheduler_of(None):\n"
            "    assert dask.config.get('scheduler') is dask.threaded.get\n"
            "    dask.array.ones(4, chunks=2).sum().compute()\n"
            "assert dask.config.get('scheduler', None) is None\n"
            "print('distributed' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", "import dask.array\n" + code],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_chosen_blocks_and_blocks_in_memory_run_without_importing_distributed():
    """compute_blocks with a scheduler named and per_block on blocks in memory
    with none configured run on Dask's local schedulers as dask.compute would,
    without the import dask.base.get_scheduler makes for them."""
    code = ("import sys, numpy as np, dask, dask.array as da\n"
            "from xtec.runtime.chunks import compute_blocks, per_block\n"
            "x = da.from_array(np.arange(12.0).reshape(4, 3), chunks=(2, 3))\n"
            "assert [float(v) for v in compute_blocks(x, [(np.sum, [(1, 0)])], 'threads')]"
            " == [6.0 + 7 + 8 + 9 + 10 + 11]\n"
            "assert per_block(lambda b: float(b.sum()), x) == [15.0, 51.0]\n"
            "with dask.config.set(scheduler='sync'):\n"
            "    assert per_block(lambda b: float(b.sum()), x) == [15.0, 51.0]\n"
            "print('distributed' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_scheduler_function_names_what_dask_would_run():
    import dask.local
    import dask.threaded

    from xtec.runtime.schedulers import scheduler_function

    x = dask.array.ones(4, chunks=2)
    assert scheduler_function("threads", x) is dask.threaded.get
    assert scheduler_function("sync", x) is dask.local.get_sync
    assert scheduler_function(dask.local.get_sync, x) is dask.local.get_sync
    with dask.config.set(scheduler="synchronous"):
        assert scheduler_function(None, x) is dask.local.get_sync
