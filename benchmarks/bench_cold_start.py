"""The first run with an empty compiled-kernel cache against the warm run (issue 29).

Every run is a fresh ``python -m xtec cluster`` process on the same small
synthetic series (``xtec synth``: 24 x 21 x 121 x 121), timed from the command's
start to its exit (imports included, as a user meets it).  Per covariance type:

* ``cold``: a new, empty ``NUMBA_CACHE_DIR``: the run takes the kernels' NumPy
  twins and starts their compile in the background (the default, ``--engine
  auto``); the time that compile takes is recorded;
* ``warm``: the same cache once that compile is done (``--repeats`` runs,
  median), and the fraction of voxels whose label equals the cold run's;
* ``cold, compiling``: a new, empty cache with ``--engine numba`` (every kernel
  compiled in the run: the first run before the twins existed);
* ``prepared``: a new, empty cache filled by ``xtec prepare --covariance COV``
  (timed on its own), then the first run;

each in-process and on one local Dask worker process (``--workers 1``, which
compiles or loads in the worker).  The number of numba compilations in the run
is not visible from outside the process; ``xtec prepare``'s completeness is
checked by tests (tests/mixture/test_cold_start.py).

    nice python benchmarks/bench_cold_start.py [--repeats 3] [--covariances diag,full]

Writes benchmarks/results/cold_start.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def timed(cmd: list[str], env: dict) -> float:
    tick = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - tick


def wait_for_compile(cache: Path, cov: str, timeout: float = 1800) -> float:
    """Seconds until the background compile a cold run started is done (its lock gone)."""
    tick = time.perf_counter()
    lock = cache / f"xtec-kernels-{cov}.lock"
    while lock.exists() and time.perf_counter() - tick < timeout:
        time.sleep(0.5)
    if not (cache / f"xtec-kernels-{cov}.json").exists():
        raise SystemExit(f"the background compile left no stamp: {cache}")
    return time.perf_counter() - tick


def labels_equal(a: Path, b: Path) -> float:
    import xarray as xr

    la, lb = (xr.open_zarr(p).labels.values for p in (a, b))
    return float((la == lb).mean())


def loadavg() -> list[float]:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--covariances", default="diag,full")
    ap.add_argument("--modes", default="in-process,worker")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--results", default=str(RESULTS / "cold_start.json"))
    args = ap.parse_args()
    py = sys.executable
    work = Path(tempfile.mkdtemp(prefix="xtec-cold-"))
    series = work / "small.nxs"
    env0 = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XTEC_ENGINE")}
    subprocess.run([py, "-m", "xtec", "synth", "-o", str(series)], env=env0, check=True,
                   stdout=subprocess.DEVNULL)
    out = {"series": "xtec synth default (24 x 21 x 121 x 121)", "python": sys.version.split()[0],
           "cores": os.cpu_count(), "runs": []}
    n_cache = 0

    def fresh_cache() -> dict:
        nonlocal n_cache
        n_cache += 1
        return {**env0, "NUMBA_CACHE_DIR": str(work / f"cache{n_cache}")}

    for cov in args.covariances.split(","):
        for mode in args.modes.split(","):
            extra = ["--workers", "1", "--memory-limit", "2GB"] if mode == "worker" else []

            def cmd(name, *more, cov=cov, extra=extra):
                return [py, "-m", "xtec", "cluster", str(series), "-o", str(work / name),
                        "--overwrite", "--no-progress", "--covariance", cov, *extra, *more]

            row = {"covariance": cov, "mode": mode, "load_before": loadavg()}
            # The default: an empty cache runs the NumPy twins, then compiles in the background.
            env = fresh_cache()
            row["cold_s"] = timed(cmd("cold.zarr"), env)
            row["background_compile_s"] = wait_for_compile(Path(env["NUMBA_CACHE_DIR"]), cov)
            row["warm_s"] = [timed(cmd("warm.zarr"), env) for _ in range(args.repeats)]
            row["labels_equal_cold_vs_warm"] = labels_equal(work / "cold.zarr", work / "warm.zarr")
            # As before the twins: an empty cache with the kernels compiled in the run.
            env = fresh_cache()
            row["cold_compiling_s"] = timed(cmd("compiling.zarr", "--engine", "numba"), env)
            env = fresh_cache()
            row["prepare_s"] = timed([py, "-m", "xtec", "prepare", "--covariance", cov], env)
            row["prepared_first_s"] = timed(cmd("prepared.zarr"), env)
            row["load_after"] = loadavg()
            warm = statistics.median(row["warm_s"])
            row["cold_over_warm"] = row["cold_s"] / warm
            row["cold_compiling_over_warm"] = row["cold_compiling_s"] / warm
            row["prepared_over_warm"] = row["prepared_first_s"] / warm
            out["runs"].append(row)
            print(f"{cov:4s} {mode:10s} cold {row['cold_s']:5.1f} s  warm (median of "
                  f"{args.repeats}) {warm:5.1f} s  cold/warm {row['cold_over_warm']:4.2f}x  "
                  f"labels equal {row['labels_equal_cold_vs_warm']:.6f}  background compile "
                  f"{row['background_compile_s']:5.1f} s  cold with --engine numba "
                  f"{row['cold_compiling_s']:5.1f} s ({row['cold_compiling_over_warm']:.1f}x)  "
                  f"prepare {row['prepare_s']:5.1f} s, first after it "
                  f"{row['prepared_first_s']:5.1f} s ({row['prepared_over_warm']:.2f}x)  "
                  f"load {row['load_before'][:1]}->{row['load_after'][:1]}", flush=True)
    Path(args.results).write_text(json.dumps(out, indent=2))
    import shutil

    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
