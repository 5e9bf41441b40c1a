"""Fault injection on options: job files and flags with wrong types or values are one line, the same from the CLI, job files and library callers.

Part of the fault-injection suite (issue 12): real processes, real signals,
a real LocalCluster and real files."""


from __future__ import annotations

import time

import pytest
from conftest import assert_one_line_error, leftovers, run

from xtec.errors import ParameterError
from xtec.io.store import open_result

# -- D2, S2, T6, H1: job files and options checked against the config's types ----------


@pytest.mark.parametrize("body, message", [
    ('overwrite = "no"', "overwrite must be true or false"),
    ('overwrite = "false"', "overwrite must be true or false"),
    ("k = 4.7", "k must be a positive integer"),
    ('k = "4"', "k must be a positive integer"),
    ('workers = "two"', "workers must be an integer"),
    ('seed = "x"', "seed must be an integer"),
    ('tol = "abc"', "tol must be a number"),
    ("inputs = 5", "inputs must be a list of strings"),
    ("out = 3", "out must be a path"),
    ("[chunks]\nl = 2", "'chunks' is a table"),
    ("memory_limit = 12", "is too small"),
    ("memory_limit = true", "memory_limit must be a size"),
    ("max_iter = 0", "max_iter must be an integer >= 1"),
    ("qh = [1, 2, 3]", "qh must be MIN:MAX"),
    ("no_such_option = 1", "unknown option 'no_such_option'"),
    ('k = 3\n[cluster]\nseed = 1', "sit beside a [cluster] table"),
])
def test_job_file_values_are_checked(tmp_path, capsys, tiny, body, message):
    out = tmp_path / "r.zarr"
    job = tmp_path / "job.toml"
    base = {"inputs": f'inputs = ["{tiny}"]', "out": f'out = "{out}"'}
    if body.startswith("k = 3\n[cluster]"):
        base = {}
    head = [line for key, line in base.items() if not body.startswith(key + " ")]
    job.write_text("\n".join(head + [body]) + "\n")
    code, _, err = run(capsys, "cluster", "--config", job)
    assert_one_line_error(code, err, message)
    assert not out.exists() and leftovers(out) == []


def test_binary_job_file_and_overwrite_no_keeps_the_result(tmp_path, capsys, tiny):
    job = tmp_path / "job.toml"
    job.write_bytes(bytes(range(256)) * 4)
    code, _, err = run(capsys, "cluster", tiny, "-o", tmp_path / "r.zarr", "--config", job)
    assert_one_line_error(code, err, "is not a TOML text file")
    # D2: a result that exists stays when the job file says overwrite = "no".
    out = tmp_path / "kept.zarr"
    assert run(capsys, "cluster", tiny, "-o", out, "-k", "2")[0] == 0
    job.write_text(f'inputs = ["{tiny}"]\nout = "{out}"\nk = 3\noverwrite = "no"\n')
    code, _, err = run(capsys, "cluster", "--config", job)
    assert_one_line_error(code, err, "overwrite must be true or false")
    assert open_result(out).attrs["k"] == 2


@pytest.mark.parametrize("argv, message", [
    (["--seed=-1"], "seed must be an integer between 0 and"),
    (["--threshold=-5"], "threshold must be one of"),
    (["--tol=0"], "tol must be a number > 0"),
    (["--memory-limit", "lots"], "memory_limit must be a size"),
    (["--workers", "1", "--memory-limit", "100MB"], "needs at least"),
    (["--workers", "1", "--memory-limit", "10MB"], "needs at least"),
    (["--chunks", "0,4,4"], "chunks must be three positive integers"),
    (["--qh=a:b"], "qh must be MIN:MAX"),
])
def test_numeric_options_are_checked_where_parsed(tmp_path, capsys, tiny, argv, message):
    out = tmp_path / "r.zarr"
    tick = time.monotonic()
    code, _, err = run(capsys, "cluster", tiny, "-o", out, *argv)
    assert_one_line_error(code, err, message)
    assert time.monotonic() - tick < 30  # refused up front, no worker started
    assert not out.exists()


def test_library_callers_get_the_same_messages(tiny, tmp_path):
    from xtec.pipeline import ClusterConfig, run_cluster
    from xtec.runtime.clusters import dask_runtime

    with pytest.raises(ParameterError, match="k must be a positive integer"):
        run_cluster(ClusterConfig(inputs=[str(tiny)], out=str(tmp_path / "r.zarr"), k=4.7))
    with pytest.raises(ParameterError, match="seed must be an integer between 0"):
        ClusterConfig(inputs=[str(tiny)], out="r.zarr", seed=-1).validate()
    with pytest.raises(ParameterError, match="needs at least"):
        with dask_runtime(workers=1, memory_limit="100MB"):
            pass
    # Every field of the config is an option of the CLI and of the job file.
    from xtec.cli.main import build_parser
    from xtec.config import cluster_keys, runtime_keys

    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices["cluster"]
    dests = {a.dest for a in sub._actions}
    assert set(cluster_keys()) | set(runtime_keys()) <= dests
