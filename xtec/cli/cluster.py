"""The clustering subcommands: ``cluster`` and ``bic``.

Every ``cluster`` option can also come from a TOML job file (``--config``):
keys are the long option names (``threshold = "kl"``, ``workers = 4``,
``qh = [-2, 2]``, ``inputs = ["a.nxs"]``); flags given on the command line win.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from pathlib import Path

import numpy as np

from xtec.cli.args import add_output, add_range_options, parse_range
from xtec.cli.jobfile import load_job_file, option_names
from xtec.config import RunOptions, cluster_keys, coerce
from xtec.errors import ParameterError


def register(sub) -> None:
    p = sub.add_parser(
        "cluster", help="cluster a temperature series (XTEC) into a Zarr map",
        description="Cluster voxel temperature trajectories. Negative ranges need '=': "
                    "--qh=-2:2.",
    )
    add_cluster_options(p)
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("bic", help="BIC and log-likelihood over K, with the elbow marked",
                       description="Fit K over a range with several seeds (in parallel on a "
                                   "Dask cluster) and report BIC per K.")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--ks", default="2:14", metavar="MIN:MAX", help="K range (default 2:14)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per K (default 3)")
    p.add_argument("--plot", default="bic.png", help="PNG to write (default bic.png)")
    p.add_argument("--json", default=None, help="also write the table as JSON here")
    p.add_argument("--threshold", default="kl")
    p.add_argument("--rescale", default="mean")
    p.add_argument("--covariance", default="diag")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    add_range_options(p)
    p.add_argument("--workers", type=int, default=0, help="local Dask workers (0: in-process)")
    p.add_argument("--scheduler", default=None, help="address of a running Dask scheduler")
    p.set_defaults(func=cmd_bic)


def add_cluster_options(p) -> None:
    """Options of ``xtec cluster`` (defaults None: unset flags fall back to the job file)."""
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="XTEC file, NXRefine parent file, or NXRefine wrapper files / glob")
    add_output(p, "OUT.zarr", "output .zarr store")
    p.add_argument("--config", default=None, help="TOML job file with any of these options")
    p.add_argument("-k", default=None, help="number of clusters (default 4), or 'auto' (BIC)")
    p.add_argument("--method", default=None,
                   help="xtec-d (default: every voxel), peaks (peak averaging), smooth "
                        "(label smoothing)")
    p.add_argument("--threshold", default=None,
                   help="kl (default), simple, none, or an intensity cutoff")
    p.add_argument("--rescale", default=None, help="mean (default), zscore, log-mean, none")
    p.add_argument("--covariance", default=None, help="diag (default) or full")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--n-init", type=int, default=None, help="EM restarts (default 3)")
    p.add_argument("--max-iter", type=int, default=None)
    p.add_argument("--tol", type=float, default=None, help="relative log-likelihood change")
    add_range_options(p)
    p.add_argument("--device", default=None, help="cpu (default) or gpu (CuPy)")
    p.add_argument("--engine", default=None,
                   help="auto (default: the compiled numba kernels where this node's cache "
                        "holds them, else their NumPy twins while the kernels compile in the "
                        "background for later runs), numba, numpy")
    p.add_argument("--persist", default=None,
                   help="where the first pass's candidate trajectories and the kept ones live "
                        "during EM: auto (default: memory if they fit, else scratch files), "
                        "memory, disk, none (no capture; re-read the input every iteration)")
    p.add_argument("--overwrite", action="store_true", default=None)
    p.add_argument("--nexus", default=None, metavar="OUT.nxs",
                   help="also export the result as NeXus for NeXpy (as `xtec export`)")
    x = p.add_argument_group("XTEC-s, K selection, second round")
    x.add_argument("--kernel", default=None, help="smoothing kernel: local (default), periodic")
    x.add_argument("--length-scale", type=float, default=None,
                   help="smoothing length scale L in pixels (default 1)")
    x.add_argument("--unit-cell", default=None, metavar="L,K,H",
                   help="pixels per r.l.u. for the periodic kernel (default: from the axes)")
    x.add_argument("--smooth-iterations", type=int, default=None,
                   help="times the neighbour average is applied per EM step (default 1)")
    x.add_argument("--neighbour-weights", default=None, help="uniform (default) or kernel")
    x.add_argument("--peak-stat", default=None, help="peaks: mean (default) or max trajectory")
    x.add_argument("--peak-grow", default=None, metavar="off|SIGMAS",
                   help="peaks: paint voxels below the cutoff but above the background "
                        "Gaussian's mean + SIGMAS sigmas that are face-connected to one "
                        "peak and whose own trajectory falls in its cluster (default 1)")
    x.add_argument("--bic-ks", default=None, metavar="MIN:MAX",
                   help="K range for -k auto (default 2:14)")
    x.add_argument("--bic-seeds", type=int, default=None, help="seeds per K (default 3)")
    x.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="divide each temperature by its scale against the smooth trend of "
                        "the kept (Bragg-region) intensity (default on)")
    x.add_argument("--drop-temperatures", default=None, metavar="T1,T2,...",
                   help="leave out the frames nearest these temperatures (K), e.g. the ones "
                        "a run flagged")
    x.add_argument("--drop-lost-frames", action=argparse.BooleanOptionalAction, default=None,
                   help="leave out frames flagged for a lost part (voxels zero in that frame "
                        "only; default on)")
    x.add_argument("--register", default=None, metavar="auto|on|off",
                   help="resample every temperature onto the coldest one's lattice, the "
                        "thermal expansion measured from the Bragg peaks (default auto: when "
                        "the farthest peak moves by more than half a voxel)")
    x.add_argument("--parent", default=None, metavar="RESULT.zarr",
                   help="second round: re-cluster voxels of a cluster of this result")
    x.add_argument("--parent-cluster", type=int, default=None, metavar="C",
                   help="second round: the parent's cluster to split")
    g = p.add_argument_group("where it runs")
    g.add_argument("--workers", type=int, default=None,
                   help="start a local Dask cluster with N worker processes")
    g.add_argument("--threads-per-worker", type=int, default=None)
    g.add_argument("--memory-limit", default=None,
                   help="per worker, e.g. 2GB (default auto); in-process (no --workers) "
                   "the run's memory budget")
    g.add_argument("--scheduler", default=None, help="address of a running Dask scheduler")
    g.add_argument("--scheduler-file", default=None,
                   help="scheduler file of a Dask cluster started inside an existing allocation")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")
    h = p.add_argument_group("batch jobs (dask-jobqueue)")
    h.add_argument("--cluster", default=None, choices=("slurm", "pbs"),
                   help="submit Dask workers as batch jobs")
    h.add_argument("--jobs", type=int, default=None, help="number of batch jobs (default 1)")
    h.add_argument("--cores", type=int, default=None, help="cores per job")
    h.add_argument("--memory", default=None, help="memory per job, e.g. 64GB")
    h.add_argument("--processes", type=int, default=None, help="worker processes per job")
    h.add_argument("--walltime", default=None, help="e.g. 02:00:00")
    h.add_argument("--queue", default=None, help="partition / queue")
    h.add_argument("--account", default=None, help="project account")
    h.add_argument("--job-extra", action="append", default=None,
                   help="extra scheduler directive (repeatable), e.g. --job-extra='--gres=gpu:1'")
    h.add_argument("--jobqueue-config", default=None,
                   help="YAML file with dask-jobqueue settings (its 'jobqueue:' section)")


def merged_options(args) -> dict:
    """Job file values overridden by the flags given on the command line, all checked.

    The option names are the fields of ``ClusterConfig`` and ``RunOptions``
    (:mod:`xtec.config`): a field added there is an option here.
    """
    opts = load_job_file(getattr(args, "config", None))
    for k in option_names():
        v = getattr(args, k, None)
        if k == "inputs" and not v:
            continue
        if v is not None:
            opts[k] = coerce(k, v, strict=False)
    return opts


def config_from_options(opts: dict):
    from xtec.pipeline import ClusterConfig

    if not opts.get("inputs") and not opts.get("parent"):
        raise ParameterError("no input files: give INPUT... or 'inputs' in the job file")
    if not opts.get("out"):
        raise ParameterError("no output: give -o/--output OUT.zarr or 'out' in the job file")
    kw = {k: opts[k] for k in cluster_keys() if k in opts}
    kw.setdefault("inputs", [])
    config = ClusterConfig(**kw)
    config.validate()
    return config


def _show_stages() -> None:
    """Stage messages of the library (its INFO log) on stderr, as progress."""
    import logging

    logger = logging.getLogger("xtec")
    if not any(getattr(h, "_xtec_progress", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
        handler._xtec_progress = True
        logger.addHandler(handler)
        logger.setLevel(min(logger.level or logging.INFO, logging.INFO))
        logger.propagate = False


@contextlib.contextmanager
def _progress(enabled: bool, runtime):
    if not enabled:
        yield
    elif runtime.client is None:
        from dask.diagnostics import ProgressBar

        with ProgressBar(out=sys.stderr, minimum=1.0):
            yield
    else:
        from xtec.runtime.progress import cluster_progress

        with cluster_progress(runtime.client):
            yield


def run_with_runtime(config, opts: dict, quiet: bool = False):
    from xtec.pipeline import run_cluster
    from xtec.runtime.clusters import dask_runtime
    from xtec.runtime.kernel_cache import choose_engine, compile_for_later, use_engine
    from xtec.runtime.workers import check_memory_limit

    run = RunOptions.from_options(opts)
    where = run.dask
    progress = sys.stderr.isatty() if where.progress is None else where.progress
    memory_limit = check_memory_limit(where.memory_limit or "auto", where.threads_per_worker)
    # Chosen before the workers start: they inherit it, so every task computes alike.
    local = not (where.scheduler or where.scheduler_file or where.cluster)
    engine, compile_later = choose_engine(config.engine, config.covariance, local,
                                          config.device == "cpu")
    config = dataclasses.replace(config, engine=engine)
    if progress:
        _show_stages()
    with use_engine(config.engine), dask_runtime(
        scheduler=where.scheduler, scheduler_file=where.scheduler_file, workers=where.workers,
        threads_per_worker=where.threads_per_worker, memory_limit=memory_limit,
        cluster=where.cluster, jobqueue=run.jobqueue,
    ) as rt:
        if rt.dashboard_link and not quiet:
            print(f"Dask dashboard: {rt.dashboard_link}", flush=True)
        with _progress(progress, rt):
            result = run_cluster(config, runtime=rt)
    if compile_later:
        result.summary["notes"].append(compile_for_later(config.covariance))
    return result


def cmd_cluster(args) -> int:
    opts = merged_options(args)
    config = config_from_options(opts)
    if getattr(args, "nexus", None):  # refuse a bad export path before the run, not after it
        from xtec.io.nexus_export import check_nexus_output
        check_nexus_output(args.nexus, overwrite=bool(opts.get("overwrite")))
    result = run_with_runtime(config, opts)
    s = result.summary
    for note in s["notes"]:
        print(f"note: {note}")
    print(f"kept {s['n_kept']} of {s['n_nonzero']} non-zero voxels "
          f"({s['threshold']} threshold, intensity > {s['cutoff_intensity']:.4g})")
    print(format_clusters(s))
    print(f"wrote {result.path}")
    if getattr(args, "nexus", None):
        from xtec.cli.export import export_nexus
        export_nexus(result.path, args.nexus, overwrite=bool(opts.get("overwrite")))
    return 0


def describe_trajectory(mean: np.ndarray, temperature: np.ndarray) -> str:
    """A few words on the shape of a rescaled mean trajectory."""
    t = np.asarray(temperature)
    m = np.asarray(mean)
    i_max = int(np.argmax(m))
    span = m.max() - m.min()
    if span < 0.1:
        return "flat"
    if 0 < i_max < len(m) - 1 and m[i_max] - max(m[0], m[-1]) > 0.5 * span:
        return f"peaks at {t[i_max]:.0f} K"
    # An order parameter: falls to a floor and stays there for the last few temperatures.
    low = m <= m.min() + 0.05 * span
    tail = np.logical_and.accumulate(low[::-1])[::-1]
    start = int(np.argmax(tail)) if tail.any() else len(m)
    if m[0] > m[-1] and len(m) - start >= 4 and start > 0:
        return f"falls, switches off near {t[start]:.0f} K"
    return "falls with T" if m[-1] < m[0] else "rises with T"


def format_clusters(s: dict) -> str:
    lines = [f"{'cluster':>7} {'voxels':>8} {'weight':>7}  trajectory"]
    for i, (n, w) in enumerate(zip(s["counts"], s["weights"])):
        lines.append(f"{i:>7} {n:>8} {w:>7.3f}  "
                     f"{describe_trajectory(s['cluster_mean'][i], s['temperature'])}")
    return "\n".join(lines)


def cmd_bic(args) -> int:
    import json

    from xtec.mixture.select import choose_k
    from xtec.pipeline import ClusterConfig, bic_for_inputs
    from xtec.results.figures import plot_bic_scan
    from xtec.runtime.chunks import parse_chunks
    from xtec.runtime.clusters import dask_runtime

    lo, hi = parse_range(args.ks, "--ks")
    if lo != int(lo) or hi != int(hi) or not 1 <= lo <= hi:
        raise ParameterError(f"--ks must be integers MIN:MAX with 1 <= MIN <= MAX "
                             f"(got {args.ks!r})")
    if args.seeds < 1:
        raise ParameterError("--seeds must be at least 1")
    from xtec.config import coerce

    coerce("seed", args.seed)
    coerce("workers", args.workers)
    if not str(args.plot).endswith(".png"):
        raise ParameterError(f"--plot must name a .png file (got {args.plot})")
    config = ClusterConfig(inputs=list(args.inputs), out="unused.zarr",
                           threshold=args.threshold, rescale=args.rescale,
                           covariance=args.covariance, ql=parse_range(args.ql, "ql"),
                           qk=parse_range(args.qk, "qk"), qh=parse_range(args.qh, "qh"),
                           chunks=parse_chunks(args.chunks))
    with dask_runtime(workers=args.workers, scheduler=args.scheduler) as rt:
        if rt.dashboard_link:
            print(f"Dask dashboard: {rt.dashboard_link}", flush=True)
        result = bic_for_inputs(config, rt, ks=range(int(lo), int(hi) + 1),
                                seeds=range(args.seed, args.seed + args.seeds))
    k_elbow, k_min = choose_k(result, "elbow"), choose_k(result, "min")
    print(f"{result.n_points} trajectories x {result.n_features} temperatures, "
          f"{len(result.seeds)} seeds per K")
    print(f"{'K':>3} {'best BIC':>14} {'mean BIC':>14} {'std':>10} {'log-lik':>10}")
    for row in result.table():
        mark = (" <- elbow" if row["k"] == k_elbow else "") + \
               (" <- minimum" if row["k"] == k_min else "")
        print(f"{row['k']:>3} {row['best_bic']:>14.1f} {row['mean_bic']:>14.1f} "
              f"{row['std_bic']:>10.1f} {row['loglik']:>10.4f}{mark}")
    plot_bic_scan(result, args.plot, rule="elbow")
    print(f"chosen K = {k_elbow} (elbow; minimum at K = {k_min}); plot: {args.plot}")
    if args.json:
        Path(args.json).write_text(json.dumps({"elbow": k_elbow, "minimum": k_min,
                                               "table": result.table()}, indent=2))
    return 0
