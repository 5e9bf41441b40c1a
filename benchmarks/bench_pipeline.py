"""End-to-end scaling benchmark: xtec against the I/O floor, scikit-learn and the reference.

For series of growing size (the largest bigger than the memory given to the
Dask workers) this writes a synthetic XTEC-layout file, then in one run:

* the I/O floor: one pass reading the whole input with h5py (chunk-aligned
  slabs, in one process); with ``--cold`` (root only) the page cache is dropped
  before the floor and before xtec, so both start from the disk;
* xtec end to end (`run_cluster`) on a LocalCluster of ``--workers`` processes
  with ``--worker-memory`` each, sampling every worker's RSS to record its peak
  and checking that no worker was restarted;
* with ``--in-process``, xtec again with no cluster (threads, every core; what
  a laptop user runs), in a new process loaded as the command line is, with
  the peak RSS of that process; with
  ``--compare-labels`` the two runs' label volumes compared voxel by voxel
  (their chunks differ where the workers' memory sets another chunk size);
* the GMM stage alone on the same thresholded trajectories, xtec vs
  scikit-learn ``GaussianMixture``, diagonal and full covariances, same initial
  parameters, same fixed number of EM iterations;
* where ``--reference-python`` points at a virtual environment holding the
  published package (``pip install xtec==0.1.1``, never vendored): its KL
  threshold and its GMM on the smallest size.

    python benchmarks/bench_pipeline.py --sizes 0.75,1.5,3,6 --workers 2 --worker-memory 1GB \
        --compression gzip --cold --in-process [--repeats 3]

``--repeats N`` runs the floor and both xtec runs N times per size (each from a
cold cache with ``--cold``) and reports medians: single runs on a shared
machine vary by 2x and more.

The files are written with the given HDF5 compression (``gzip`` level 1 with
shuffle, as archived NeXus files often are, or ``none``).

Prints a table and writes benchmarks/results/pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

T = 24


def shape_for(gb: float, n_l: int = 16) -> tuple[int, int, int]:
    voxels = gb * 1e9 / (T * 4)
    n = int(round(math.sqrt(voxels / n_l)))
    return (n_l, n, n)


def drop_page_cache() -> bool:
    """Empty the OS page cache (needs root); False where that is not allowed."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return True
    except OSError:
        return False


def read_floor(path: Path) -> float:
    import h5py

    t0 = time.perf_counter()
    total = 0.0
    with h5py.File(path, "r") as f:
        d = f["entry/data/data"]
        for i in range(d.shape[1]):
            total += float(d[:, i].sum(dtype=np.float64))
    return time.perf_counter() - t0


def _warm_imports():
    # A running cluster has its code loaded; the cold cache is for the data only.
    import h5py  # noqa: F401
    import nexusformat.nexus  # noqa: F401

    from xtec.mixture.warm import warm_stage_kernels

    return warm_stage_kernels("diag")


def run_xtec(path: Path, out: Path, workers: int, memory: str) -> dict:
    from xtec.pipeline import ClusterConfig, run_cluster
    from xtec.runtime.clusters import dask_runtime
    from xtec.runtime.diagnostics import watch_workers

    with dask_runtime(workers=workers, memory_limit=memory, dashboard_address=None) as rt:
        rt.client.run(_warm_imports)
        _warm_imports()  # the client runs the EM restarts
        with watch_workers(rt.client) as watch:
            t0 = time.perf_counter()
            res = run_cluster(ClusterConfig(inputs=[str(path)], out=str(out), overwrite=True),
                              runtime=rt)
            wall = time.perf_counter() - t0
        limit = rt.memory_per_worker
    peaks, restarted = watch.peak_rss, watch.restarted
    import xarray as xr

    return {"wall_s": wall, "peak_rss_per_worker": sorted(peaks.values()),
            "trajectories_held": xr.open_zarr(out).attrs.get("trajectories_held"),
            "spilled_bytes_per_worker": sorted(watch.spilled.values()),
            "worker_limit": limit, "restarted": restarted, "n_kept": res.summary["n_kept"],
            "timings": res.summary["timings"]}


def run_in_process(path: Path, out: Path, memory: str | None = None) -> dict:
    """xtec with no cluster (Dask's threaded scheduler, every core): what
    ``xtec cluster IN -o OUT [--memory-limit MEMORY]`` does on a laptop.  Peak RSS
    of this process is sampled while it runs; with ``memory`` the run's budget
    (where candidate and kept trajectories live)."""
    import threading

    import psutil

    from xtec.pipeline import ClusterConfig, run_cluster
    from xtec.runtime.clusters import dask_runtime
    from xtec.runtime.workers import parse_memory_limit

    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    stop = threading.Event()

    spilled, ticks = [0], [0]

    def scratch_bytes() -> int:  # the run's scratch directory, OUT.zarr.scratch-<run>
        return sum(p.stat().st_size for d in out.parent.glob(out.name + ".scratch-*")
                   for p in d.rglob("*") if p.is_file())

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            ticks[0] += 1
            if ticks[0] % 10 == 0:  # every second
                try:
                    spilled[0] = max(spilled[0], scratch_bytes())
                except OSError:  # a file removed while summed
                    pass
            stop.wait(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        budget = parse_memory_limit(memory) if memory else None
        with dask_runtime(memory_limit=budget or None) as rt:  # as the command line
            t0 = time.perf_counter()
            res = run_cluster(ClusterConfig(inputs=[str(path)], out=str(out), overwrite=True),
                              runtime=rt)
            wall = time.perf_counter() - t0
    finally:
        stop.set()
        thread.join()
    import xarray as xr

    held = xr.open_zarr(out).attrs.get("trajectories_held")
    return {"wall_s": wall, "peak_rss": peak[0], "rss_before": base, "memory_budget": budget,
            "trajectories_held": held, "scratch_peak_bytes": spilled[0],
            "timings": res.summary["timings"]}


def in_fresh_process(path: Path, out: Path, memory: str | None = None) -> dict:
    """:func:`run_in_process` in a new Python process holding what ``xtec
    cluster`` has imported when its run starts (the command-line modules, h5py,
    nexusformat, the compiled kernels): a run after the cluster's in this
    process would find Dask's distributed, Zarr and thread pools already
    loaded, which a laptop user's command does not."""
    argv = [sys.executable, __file__, "--in-process-child", str(path), str(out)]
    proc = subprocess.run(argv + ([memory] if memory else []), capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"in-process run failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _in_process_child(argv: list[str]) -> None:
    import xtec.cli.cluster  # noqa: F401  (what the command has loaded)
    import xtec.cli.main  # noqa: F401

    _warm_imports()
    path, out, *memory = argv
    print(json.dumps(run_in_process(Path(path), Path(out), memory[0] if memory else None),
                     default=str))


def trajectories(path: Path) -> np.ndarray:
    """The thresholded, rescaled trajectories exactly as the pipeline makes them."""
    import dask

    from xtec.io.nexus import open_nexus
    from xtec.preprocess import compute_threshold, extract_trajectories, keep_mask, summarize

    with dask.config.set(scheduler="threads"):
        data = open_nexus(path).data
        s = summarize(data)
        mask = keep_mask(s.mean, compute_threshold(s.mean, "kl"))
        tr = extract_trajectories(data, mask.persist(), "mean")
        return np.ascontiguousarray(tr.X.compute())


def gmm_vs_sklearn(X: np.ndarray, k: int = 4, iters: int = 50,
                   covariance_type: str = "diag") -> dict:
    """The GMM stage alone: xtec's EM against scikit-learn's, same start, same
    fixed number of iterations (tol=0); scikit-learn starts from the shared
    parameters (``init_params='random_from_data'``, so no k-means in its time)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture as SkGMM

    from xtec.mixture import GaussianMixture, data_stats, m_step

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p0 = GaussianMixture(k, covariance_type=covariance_type, n_init=1, max_iter=1,
                             random_state=0).fit(X).params_
    p = p0
    data_stats(X[:1000], p)  # compile outside the timing
    t0 = time.perf_counter()
    for _ in range(iters):
        p = m_step(data_stats(X, p), 1e-6)
    ours = time.perf_counter() - t0
    prec = 1 / p0.covariances if covariance_type == "diag" else np.linalg.inv(p0.covariances)
    sk = SkGMM(k, covariance_type=covariance_type, tol=0.0, max_iter=iters,
               init_params="random_from_data", weights_init=p0.weights, means_init=p0.means,
               precisions_init=prec, reg_covar=1e-6, random_state=0)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk.fit(X.astype(np.float64))
    theirs = time.perf_counter() - t0
    return {"n": int(X.shape[0]), "covariance_type": covariance_type, "iterations": iters,
            "xtec_s": ours, "sklearn_s": theirs, "speedup": theirs / ours,
            "means_agree": bool(np.allclose(p.means, sk.means_, rtol=1e-5, atol=1e-6))}


_REFERENCE_SCRIPT = r"""
import json, sys, time
import numpy as np
from xtec.Preprocessing import Mask_Zeros, Threshold_Background
from xtec.GMM import GMM
data = np.load(sys.argv[1])
t0 = time.perf_counter()
mask = Mask_Zeros(data)
thr = Threshold_Background(mask)
t_thr = time.perf_counter() - t0
X = thr.Rescale_mean(thr.data_thresholded).T
t0 = time.perf_counter()
g = GMM(X, 4, max_full_epoch=int(sys.argv[2]))
g.RunEM()
t_gmm = time.perf_counter() - t0
print(json.dumps({"cutoff_log": float(thr.LogI_cutoff), "n_kept": int(X.shape[0]),
                  "threshold_s": t_thr, "gmm_s": t_gmm, "gmm_epochs": int(g.epoch)}))
"""


def reference(python: str, path: Path, epochs: int) -> dict | None:
    import h5py

    npy = path.with_suffix(".npy")  # the reference package reads arrays, not files
    with h5py.File(path, "r") as f:
        np.save(npy, f["entry/data/data"][()])
    try:
        proc = subprocess.run([python, "-c", _REFERENCE_SCRIPT, str(npy), str(epochs)],
                              cwd=tempfile.gettempdir(),
                              capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": str(exc)}
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare_labels(a: Path, b: Path) -> dict:
    """Voxel by voxel, the labels of two result stores of the same series (the
    workers' run and the in-process one, whose chunks differ where the workers'
    memory sets another chunk size): how many voxels differ, and each store's
    chunks.  Streams the volumes block by block."""
    import dask
    import xarray as xr

    la, lb = xr.open_zarr(a)["labels"].data, xr.open_zarr(b)["labels"].data
    out = {"voxels": int(la.size), "chunks": [list(la.chunksize), list(lb.chunksize)]}
    if la.shape != lb.shape:
        return {**out, "differ": None, "shapes": [list(la.shape), list(lb.shape)]}
    with dask.config.set(scheduler="threads"):
        out["differ"] = int((la != lb.rechunk(la.chunks)).sum().compute())
    out["mean_loglik"] = [json.loads(xr.open_zarr(p).attrs["gmm"])["mean_loglik"]
                          for p in (a, b)]
    return out


def _one_repeat(path: Path, work: Path, gb: float, args) -> tuple[bool, float, dict]:
    """One floor read and the xtec runs after it, each from a cold cache when asked."""
    cold = args.cold and drop_page_cache()
    if not cold:
        read_floor(path)  # warm the page cache for both sides
    floor = read_floor(path)
    if cold:
        drop_page_cache()
    res = run_xtec(path, work / f"result_{gb:g}.zarr", args.workers, args.worker_memory)
    res["ratio_to_floor"] = res["wall_s"] / floor
    if args.in_process:
        if cold:
            drop_page_cache()
        res["in_process"] = in_fresh_process(path, work / f"result_{gb:g}_inproc.zarr",
                                             args.in_process_memory)
        res["in_process"]["ratio_to_floor"] = res["in_process"]["wall_s"] / floor
    print(f"  repeat: floor {floor:.2f} s, cluster {res['wall_s']:.2f} s "
          f"({res['ratio_to_floor']:.2f}x)" + (
              f", in-process {res['in_process']['wall_s']:.2f} s "
              f"({res['in_process']['ratio_to_floor']:.2f}x)" if args.in_process else ""),
          flush=True)
    return cold, floor, res


def _median_run(runs: list) -> tuple[bool, float, dict]:
    """The run of median cluster time (its stages and memory), with the medians
    of the floor, the times and the ratios over all runs (ratio: the median of
    each run's own ratio), and every run's times kept."""
    cold = all(r[0] for r in runs)
    floors = [r[1] for r in runs]
    order = sorted(range(len(runs)), key=lambda i: runs[i][2]["wall_s"])
    res = dict(runs[order[len(order) // 2]][2])
    res["wall_s"] = float(np.median([r[2]["wall_s"] for r in runs]))
    res["ratio_to_floor"] = float(np.median([r[2]["ratio_to_floor"] for r in runs]))
    if "in_process" in res:
        ip = sorted((r[2]["in_process"] for r in runs), key=lambda d: d["wall_s"])
        res["in_process"] = dict(ip[len(ip) // 2])
        res["in_process"]["wall_s"] = float(np.median([d["wall_s"] for d in ip]))
        res["in_process"]["ratio_to_floor"] = float(np.median(
            [r[2]["in_process"]["ratio_to_floor"] for r in runs]))
    res["repeats"] = [{"io_floor_s": f, "wall_s": r["wall_s"],
                       "in_process_s": r.get("in_process", {}).get("wall_s")}
                      for _, f, r in runs]
    return cold, float(np.median(floors)), res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="0.75,1.5,3,6", help="series sizes in GB")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--worker-memory", default="1GB")
    ap.add_argument("--gmm-max-size", type=float, default=1.5,
                    help="largest size (GB) for the scikit-learn comparison")
    ap.add_argument("--gmm-iters", type=int, default=50,
                    help="EM iterations of the diagonal GMM-stage comparison")
    ap.add_argument("--gmm-full-iters", type=int, default=10,
                    help="EM iterations of the full-covariance comparison (0: skip)")
    ap.add_argument("--reference-python", default=os.environ.get("XTEC_REFERENCE_PYTHON"),
                    help="python of a venv with the published xtec 0.1.1")
    ap.add_argument("--reference-epochs", type=int, default=100)
    ap.add_argument("--dir", default=None, help="where to write the series (default: temp)")
    ap.add_argument("--compression", default="gzip", choices=("gzip", "lzf", "none"))
    ap.add_argument("--cold", action="store_true",
                    help="drop the page cache before each timed read (root only)")
    ap.add_argument("--in-process", action="store_true",
                    help="also run xtec without a cluster (threads, every core)")
    ap.add_argument("--in-process-memory", default=None,
                    help="the in-process run's memory budget (e.g. 3GB; default: available)")
    ap.add_argument("--compare-labels", action="store_true",
                    help="with --in-process: count the voxels whose labels differ "
                         "between the workers' run and the in-process one (last repeat)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs per size (cold cache each); medians are reported")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "pipeline.json"))
    args = ap.parse_args(argv)

    from xtec.datasets import write_xtec_large
    from xtec.preprocess import compute_threshold, summarize

    sizes = [float(s) for s in args.sizes.split(",")]
    work = Path(args.dir or tempfile.mkdtemp(prefix="xtec-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for gb in sizes:
        shape = shape_for(gb)
        path = work / f"series_{gb:g}GB_{args.compression}.nxs"
        t0 = time.perf_counter()
        if not path.exists():  # written under a temporary name: no half file is reused
            tmp = path.with_suffix(".partial")
            write_xtec_large(tmp, shape, chunks=(1, 128, 128),
                             compression=None if args.compression == "none" else args.compression)
            tmp.rename(path)
        gen = time.perf_counter() - t0
        nbytes = T * math.prod(shape) * 4
        runs = [_one_repeat(path, work, gb, args) for _ in range(args.repeats)]
        cold, floor, res = _median_run(runs)
        row = {"size_gb": nbytes / 1e9, "shape": [T, *shape], "voxels": math.prod(shape),
               "file_bytes": path.stat().st_size, "compression": args.compression,
               "cold_cache": cold,
               "generate_s": gen, "io_floor_s": floor, **res,
               "ratio_to_floor": res["ratio_to_floor"],
               "ns_per_voxel": 1e9 * res["wall_s"] / math.prod(shape)}
        if args.in_process and args.compare_labels:
            row["labels_workers_vs_in_process"] = compare_labels(
                work / f"result_{gb:g}.zarr", work / f"result_{gb:g}_inproc.zarr")
        if gb <= args.gmm_max_size:
            X = trajectories(path)
            row["gmm"] = gmm_vs_sklearn(X, iters=args.gmm_iters)
            if args.gmm_full_iters > 0:
                row["gmm_full"] = gmm_vs_sklearn(X, iters=args.gmm_full_iters,
                                                 covariance_type="full")
            del X
        if args.reference_python and gb == min(sizes):
            row["reference"] = reference(args.reference_python, path, args.reference_epochs)
            import dask

            from xtec.io.nexus import open_nexus

            with dask.config.set(scheduler="threads"):
                s = summarize(open_nexus(path).data)
                row["xtec_cutoff_log"] = compute_threshold(s.mean, "kl").cutoff
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "timings"}, default=str),
              flush=True)

    print()
    print(f"{'size GB':>8} {'voxels':>11} {'floor s':>8} {'xtec s':>8} {'x floor':>8} "
          f"{'ns/voxel':>9} {'peak MB/worker':>15} {'limit MB':>9} {'spilled MB':>10} "
          f"{'restart':>8}")
    for r in rows:
        peak = max(r["peak_rss_per_worker"]) / 2**20 if r["peak_rss_per_worker"] else float("nan")
        print(f"{r['size_gb']:8.2f} {r['voxels']:11d} {r['io_floor_s']:8.2f} {r['wall_s']:8.2f} "
              f"{r['ratio_to_floor']:8.2f} {r['ns_per_voxel']:9.1f} {peak:15.0f} "
              f"{(r['worker_limit'] or 0) / 2**20:9.0f} "
              f"{sum(r['spilled_bytes_per_worker']) / 2**20:10.0f} {str(r['restarted']):>8}")
    flat = max(r["ns_per_voxel"] for r in rows) / min(r["ns_per_voxel"] for r in rows)
    print(f"time per voxel, largest / smallest spread: {flat:.2f}x")
    stages = ("pilot", "mean_pass", "threshold", "trajectories", "gmm", "write")
    if any("in_process" in r for r in rows):
        print(f"{'size GB':>8} {'in-process s':>13} {'x floor':>8} {'peak RSS MB':>12}"
              "   (no cluster, threads)")
        for r in rows:
            ip = r["in_process"]
            print(f"{r['size_gb']:8.2f} {ip['wall_s']:13.2f} {ip['ratio_to_floor']:8.2f} "
                  f"{ip['peak_rss'] / 2**20:12.0f}   trajectories held in "
                  f"{ip.get('trajectories_held')}, budget {ip.get('memory_budget')}, "
                  f"scratch peak {ip.get('scratch_peak_bytes', 0) / 2**20:.0f} MB")
    print(f"{'size GB':>8} " + " ".join(f"{s:>12}" for s in stages) + "   (seconds per stage)")
    for r in rows:
        print(f"{r['size_gb']:8.2f} " + " ".join(f"{r['timings'].get(s, 0.0):12.2f}"
                                                 for s in stages))
    for r in rows:
        for key in ("gmm", "gmm_full"):
            if key in r:
                g = r[key]
                print(f"GMM stage ({g['covariance_type']}), {g['n']} trajectories, "
                      f"{g['iterations']} EM iterations: xtec {g['xtec_s']:.2f} s, "
                      f"scikit-learn {g['sklearn_s']:.2f} s, {g['speedup']:.1f}x "
                      f"(same means: {g['means_agree']})")
        if "reference" in r:
            ref = r["reference"]
            print(f"reference xtec 0.1.1 on {r['size_gb']:.2f} GB: {ref}")
            print(f"  KL cutoff: xtec {r['xtec_cutoff_log']:.6f} vs reference "
                  f"{ref.get('cutoff_log', float('nan')):.6f}")
    out = {"rows": rows, "workers": args.workers, "worker_memory": args.worker_memory,
           "time_per_voxel_spread": flat, "python": sys.version.split()[0]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=str))
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["--in-process-child"]:
        _in_process_child(sys.argv[2:])
    else:
        main()
