"""One clustering job: load -> preprocess -> cluster -> paint -> write.

The job runs on whatever Dask scheduler is current (see :mod:`xtec.runtime`).
The input is read once: the pass that computes the per-voxel mean (for the
threshold) also keeps the trajectories of likely-kept voxels
(:mod:`xtec.candidates`), from which the kept ones are picked; only if the
exact cutoff falls below the pilot's bound is the input read a second time.
Everything else works on the mean volume (1/T of the data) or on the kept
trajectories.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr

from xtec import __version__
from xtec.backend import get_device_module, to_numpy
from xtec.candidates import CandidatePlan, plan_candidates, trajectories_from_candidates
from xtec.chunks import target_bytes_for_workers
from xtec.errors import ParameterError, check_choice
from xtec.io.nexus import open_nexus
from xtec.io.store import check_output, color_block, palette, write_result
from xtec.mixture import COVARIANCE_TYPES, GaussianMixture
from xtec.preprocess import (
    RESCALE_METHODS,
    THRESHOLD_METHODS,
    Threshold,
    compute_threshold,
    extract_trajectories,
    keep_mask,
    paint,
    summarize,
)
from xtec.runtime import Runtime

log = logging.getLogger(__name__)

METHODS = ("xtec-d", "peaks", "smooth")
KERNELS = ("local", "periodic")
# Where the kept trajectories live while EM iterates: worker memory, a scratch
# Zarr store (written once, read every iteration), or nowhere (re-read from the
# input files every iteration); "auto" picks memory if they fit, else disk.
PERSIST_MODES = ("auto", "memory", "disk", "none")


@dataclass
class ClusterConfig:
    """Every option of one clustering job (the CLI and TOML job files fill it).

    ``k`` is an int or ``"auto"`` (BIC elbow over ``bic_ks`` with ``bic_seeds``
    seeds).  ``method``: ``xtec-d`` (every voxel), ``peaks`` (one trajectory per
    connected component of the threshold mask), ``smooth`` (label smoothing
    with ``kernel``/``length_scale``/``unit_cell``/``smooth_iterations``).
    ``parent``/``parent_cluster``: re-cluster the voxels of one cluster of an
    earlier result (its mask replaces the threshold).
    """

    inputs: list[str]
    out: str
    k: int | str = 4
    method: str = "xtec-d"
    threshold: str | float = "kl"
    rescale: str = "mean"
    covariance: str = "diag"
    seed: int = 0
    n_init: int = 3
    max_iter: int = 500
    tol: float = 1e-6
    ql: tuple[float, float] | None = None
    qk: tuple[float, float] | None = None
    qh: tuple[float, float] | None = None
    chunks: tuple[int, int, int] | None = None
    device: str = "cpu"
    persist: str = "auto"
    overwrite: bool = False
    kernel: str = "local"
    length_scale: float = 1.0
    unit_cell: tuple[float, float, float] | None = None
    smooth_iterations: int = 1
    neighbour_weights: str = "uniform"
    peak_stat: str = "mean"
    bic_ks: tuple[int, int] = (2, 14)
    bic_seeds: int = 3
    parent: str | None = None
    parent_cluster: int | None = None
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        from xtec.options import check_config

        check_config(self)  # types and ranges of every field (xtec.options)
        if not self.inputs and not self.parent:
            raise ParameterError("no input files given")
        if self.k != "auto" and (not isinstance(self.k, int) or self.k < 1):
            raise ParameterError(f"-k must be a positive integer or 'auto' (got {self.k!r})")
        check_choice(self.method, METHODS, "--method")
        if isinstance(self.threshold, str) and self.threshold not in THRESHOLD_METHODS:
            try:
                self.threshold = float(self.threshold)
            except ValueError:
                raise ParameterError(
                    f"--threshold must be one of {THRESHOLD_METHODS} or an intensity "
                    f"(got {self.threshold!r})"
                ) from None
        check_choice(self.rescale, RESCALE_METHODS, "--rescale")
        check_choice(self.covariance, COVARIANCE_TYPES, "--covariance")
        check_choice(self.persist, PERSIST_MODES, "--persist")
        check_choice(self.kernel, KERNELS, "--kernel")
        if not self.length_scale > 0 or self.smooth_iterations < 0:
            raise ParameterError("--length-scale must be > 0 and --smooth-iterations >= 0")
        check_choice(self.neighbour_weights, ("uniform", "kernel"), "--neighbour-weights")
        check_choice(self.peak_stat, ("mean", "max"), "--peak-stat")
        lo, hi = self.bic_ks
        if not 1 <= lo <= hi or self.bic_seeds < 1:
            raise ParameterError(f"--bic-ks must be MIN:MAX with 1 <= MIN <= MAX "
                                 f"(got {self.bic_ks!r})")
        if (self.parent is None) != (self.parent_cluster is None):
            raise ParameterError("a second round needs both --parent RESULT.zarr and "
                                 "--parent-cluster C")


@dataclass
class ClusterResult:
    path: Path
    summary: dict


def _cluster_block_stats(x, labels, k):
    """Per cluster: count, sum and sum of squares of one block's trajectories, (3, k, T)."""
    x = to_numpy(x).astype(np.float64)
    lab = to_numpy(labels).astype(np.int64)
    onehot = np.zeros((x.shape[0], k))
    onehot[np.arange(x.shape[0]), lab] = 1.0
    out = np.empty((3, k, x.shape[1]))
    out[0] = onehot.sum(axis=0)[:, None]
    out[1] = onehot.T @ x
    out[2] = onehot.T @ (x * x)
    return out


def _profile_totals(tot) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = tot[0][:, 0]
    safe = np.maximum(n, 1)[:, None]
    mean = tot[1] / safe
    std = np.sqrt(np.maximum(tot[2] / safe - mean**2, 0.0))
    return n.astype(np.int64), mean, std


def _predict_block_stats(x, params, engine, k):
    from xtec.mixture import chunk_predict

    labels = chunk_predict(x, params, engine)
    return labels, _cluster_block_stats(x, labels, k)


def predict_with_profiles(gmm, X, k: int):
    """Labels (persisted) and :func:`cluster_profiles`, from one pass over X.

    X : (N, T) dask array -> labels (N,) int16 dask array with X's chunks,
    counts (k,), mean (k, T), std (k, T).
    """
    f = dask.delayed(_predict_block_stats, pure=True, nout=2)
    # All Delayed, so one graph: each block of X is read once for both.
    parts = dask.persist(*[f(b, gmm.params_, gmm.engine, k) for b in X.to_delayed().ravel()])
    labels = da.concatenate([da.from_delayed(p[0], shape=(n,), dtype=np.int16,
                                             meta=np.empty(0, np.int16))
                             for p, n in zip(parts, X.chunks[0])]).persist()
    tot = np.sum(dask.compute(*[p[1] for p in parts]), axis=0)
    return (labels, *_profile_totals(tot))


def cluster_profiles(X, labels, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count, mean and standard deviation of the trajectories of each cluster.

    X : (N, T); labels : (N,) in 0..k-1 -> counts (k,), mean (k, T), std (k, T)
    """
    if isinstance(X, da.Array):
        f = dask.delayed(_cluster_block_stats, pure=True)
        parts = dask.compute(*[f(a, b, k) for a, b in
                               zip(X.to_delayed().ravel(), labels.to_delayed().ravel())])
        tot = np.sum(parts, axis=0)
    else:
        tot = _cluster_block_stats(X, labels, k)
    return _profile_totals(tot)


def _memory_budget(runtime) -> float:
    """Bytes the kept trajectories may take in worker memory (30% of it)."""
    total = getattr(runtime, "worker_memory", None)
    if total is None:
        import psutil

        total = psutil.virtual_memory().available
    return 0.3 * total


def _persist_mode(nbytes: int, policy: str, runtime) -> str:
    if policy != "auto":
        return policy
    return "memory" if nbytes < _memory_budget(runtime) else "disk"


def _candidate_plan(config: ClusterConfig, arr: xr.DataArray, runtime,
                    scratch: Path | None) -> CandidatePlan | None:
    """How the first pass captures candidate trajectories (None: it does not)."""
    if config.method == "peaks" or config.parent or config.persist == "none":
        return None
    budget = _memory_budget(runtime)
    fchunks = arr.attrs.get("file_chunks") or tuple(min(s, 32) for s in arr.shape[1:])

    def pilot_data():
        return open_nexus(config.inputs, ql=config.ql, qk=config.qk, qh=config.qh,
                          chunks=tuple(fchunks)).data

    plan = plan_candidates(arr.data, config.threshold, config.rescale, budget, pilot_data)
    if plan is None:
        return None
    # Trajectories (float32) and their voxel indices (int64).
    n_t = arr.sizes["temperature"]
    nbytes = plan.fraction * math.prod(arr.shape[1:]) * (4 * n_t + 8)
    mode = _persist_mode(nbytes, config.persist, runtime)
    if mode == "disk":
        if scratch is None:
            return None
        scratch.mkdir(parents=True, exist_ok=True)
        plan = replace(plan, scratch=str(scratch))
    log.info("first pass keeps candidate trajectories (%.2f GB) in %s", nbytes / 1e9,
             "worker memory" if mode == "memory" else scratch)
    return plan


def _load_kernels() -> bool:
    from xtec.mixture import _numba_kernels

    _numba_kernels()
    return True


def _warm_workers(runtime) -> list:
    """Have every worker load the EM kernels now, overlapping the first pass."""
    client = getattr(runtime, "client", None)
    if client is None:
        return []
    return [client.submit(_load_kernels, workers=[addr], allow_other_workers=False, pure=False)
            for addr in client.scheduler_info()["workers"]]


def _balanced_rows(n: int, n_chunks: int, runtime) -> int | None:
    """Rows per trajectory chunk for the EM on a Dask cluster, or None to keep the
    spatial chunks (in-process, or already at least two chunks per thread: a
    rechunk would move every trajectory between workers)."""
    client = getattr(runtime, "client", None)
    if client is None:
        return None
    threads = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
    if n_chunks >= 2 * threads:
        return None
    return max(16_384, -(-n // max(1, 2 * threads)))


def _wait(*arrays) -> None:
    """Block until persisted arrays are in (distributed) memory, for honest timings."""
    try:
        from distributed import default_client, wait

        default_client()
    except (ImportError, ValueError):
        return  # the local schedulers persist synchronously
    wait(list(arrays))


def _spill_to_zarr(X: da.Array, index: da.Array, scratch: Path, t: int):
    """Write trajectories once to a scratch Zarr store and read them back lazily."""
    rows = max(1, (32 * 2**20) // (4 * t))
    # Uncompressed: read back every EM iteration, where decompression would cost
    # more than the bytes saved (measured: 4x faster reads than zstd).
    X.rechunk((rows, t)).to_zarr(str(scratch / "X"), mode="w", compressors=None)
    index.rechunk((rows,)).to_zarr(str(scratch / "index"), mode="w", compressors=None)
    return da.from_zarr(str(scratch / "X")), da.from_zarr(str(scratch / "index"))


def _open_parent(config: ClusterConfig):
    """The parent result of a second round, its cluster mask, and inputs/ranges from it."""
    from xtec.io.store import open_result

    parent = open_result(config.parent)
    k_parent = int(parent.sizes["cluster"])
    if not 0 <= config.parent_cluster < k_parent:
        raise ParameterError(f"--parent-cluster must be in 0..{k_parent - 1} "
                             f"(got {config.parent_cluster})")
    if not config.inputs:
        config.inputs = list(parent.attrs["source_files"])
    ranges = parent.attrs.get("ranges") or {}
    for ax, dim in (("ql", "Ql"), ("qk", "Qk"), ("qh", "Qh")):
        if getattr(config, ax) is None and ranges.get(dim) is not None:
            setattr(config, ax, tuple(ranges[dim]))
    return parent


def _fit_k(config: ClusterConfig, X, index) -> tuple[int, object]:
    """K: the configured one, or the BIC elbow over the configured range."""
    if config.k != "auto":
        return int(config.k), None
    from xtec.select import bic_scan, choose_k

    lo, hi = config.bic_ks
    n = int(X.shape[0])
    ks = [k for k in range(lo, hi + 1) if k <= n]
    if not ks:
        raise ParameterError(f"-k auto: only {n} trajectories, fewer than K={lo}")
    log.info("-k auto: BIC over K=%d..%d with %d seeds", ks[0], ks[-1], config.bic_seeds)
    result = bic_scan(X, index, ks=ks, seeds=range(config.seed, config.seed + config.bic_seeds),
                      covariance_type=config.covariance, max_iter=config.max_iter,
                      tol=config.tol)
    k = int(choose_k(result, "elbow"))
    log.info("-k auto chose K=%d (BIC elbow)", k)
    return k, result


@dataclass
class _Prepared:
    arr: xr.DataArray
    data: da.Array
    summary: object
    threshold: Threshold
    mask: da.Array
    traj: object
    notes: list
    timings: dict
    warming: list
    # Where the trajectories come from: "input" (read again) or the captured
    # candidates, in "memory" or on "disk".
    source: str = "input"


def _prepare(config: ClusterConfig, runtime, parent=None, scratch: Path | None = None
             ) -> _Prepared:
    """Load, first pass (mean, candidates), threshold (or the parent's cluster),
    trajectories (lazy)."""
    xp = get_device_module(config.device)
    target = target_bytes_for_workers(getattr(runtime, "memory_per_worker", None),
                                      getattr(runtime, "threads_per_worker", 1))
    # Runtime() is the in-process threaded scheduler: one worker, every core.
    rt = runtime if runtime is not None else Runtime("threads")
    threads = rt.n_workers * rt.threads_per_worker
    arr = open_nexus(config.inputs, ql=config.ql, qk=config.qk, qh=config.qh,
                     chunks=config.chunks, target_chunk_bytes=target, min_blocks=2 * threads)
    data = arr.data
    if xp is not np:
        data = data.map_blocks(xp.asarray, dtype=data.dtype, meta=xp.empty((0,) * 4, data.dtype))

    timings = {}
    tick = time.perf_counter()
    log.info("pass 1 of 2: mean over temperature of %s voxels x %d temperatures",
             f"{math.prod(arr.shape[1:]):,}", arr.sizes["temperature"])
    warming = _warm_workers(runtime)  # futures: held so the tasks are not cancelled
    plan = _candidate_plan(config, arr, runtime, scratch)
    timings["pilot"] = time.perf_counter() - tick
    summary_pass = summarize(data, capture=plan)
    timings["mean_pass"] = time.perf_counter() - tick - timings["pilot"]
    notes = []
    if summary_pass.n_nan_voxels:
        notes.append(f"{summary_pass.n_nan_voxels} voxels with NaN or infinite "
                     "intensities were dropped")
    if summary_pass.n_negative_values:
        notes.append(f"{summary_pass.n_negative_values} negative intensities were set to 0")
    for n in notes:
        log.warning(n)

    tick = time.perf_counter()
    if parent is not None:
        plabels = parent.labels
        if plabels.shape != summary_pass.mean.shape or not all(
                np.allclose(parent[d].values, arr[d].values) for d in ("Ql", "Qk", "Qh")):
            raise ParameterError(f"{config.parent} covers a different grid than the inputs; "
                                 "give the parent's inputs and ranges")
        pmask = da.from_array(plabels.values == config.parent_cluster,
                              chunks=summary_pass.mean.chunks)
        n_nonzero = int(da.count_nonzero(summary_pass.mean > 0).compute())
        threshold = Threshold("parent", -math.inf, n_nonzero)
        mask = (pmask & (summary_pass.mean > 0)).persist()
    else:
        threshold = compute_threshold(summary_pass.mean, config.threshold)
        mask = keep_mask(summary_pass.mean, threshold).persist()
    source = "input"
    if plan is not None and threshold.cutoff >= plan.bound:
        traj = trajectories_from_candidates(summary_pass.captured, mask,
                                            arr.sizes["temperature"], data._meta)
        source = "memory" if plan.scratch is None else "disk"
    else:
        if plan is not None:
            log.info("the cutoff %.4g lies below the first pass's bound %.4g: the kept "
                     "trajectories are read again", threshold.cutoff, plan.bound)
        summary_pass.captured = None
        traj = extract_trajectories(data, mask, config.rescale)
    timings["threshold"] = time.perf_counter() - tick
    return _Prepared(arr, data, summary_pass, threshold, mask, traj, notes, timings, warming,
                     source)


def bic_for_inputs(config: ClusterConfig, runtime=None, ks=range(2, 15), seeds=(0, 1, 2)):
    """BIC and log-likelihood over K for the kept trajectories of a series."""
    from xtec.select import bic_scan

    config.validate()
    prep = _prepare(config, runtime)
    ks = [k for k in ks if k <= prep.traj.n]
    if not ks:
        raise ParameterError(f"only {prep.traj.n} voxels are kept: too few for the K range")
    X, index = dask.persist(prep.traj.X, prep.traj.index)
    return bic_scan(X, index, ks=ks, seeds=seeds, covariance_type=config.covariance,
                    max_iter=config.max_iter, tol=config.tol)


def run_cluster(config: ClusterConfig, runtime=None) -> ClusterResult:
    """Run one clustering job and write its Zarr store. Returns the path and a summary."""
    from xtec.io.output import claim_output
    from xtec.workers import cluster_failures

    config.validate()
    out = check_output(config.out, config.overwrite)
    # The output is this run's alone until it ends (a second run fails at once);
    # lost Dask workers end the run with one XtecError line.
    with claim_output(out) as claim, cluster_failures():
        check_output(out, config.overwrite)
        return _run_cluster(config, runtime, out, claim.scratch)


def _run_cluster(config: ClusterConfig, runtime, out: Path, scratch: Path) -> ClusterResult:
    started = _dt.datetime.now(_dt.timezone.utc)
    parent = _open_parent(config) if config.parent else None
    try:
        prep = _prepare(config, runtime, parent, scratch)
        arr, data, summary_pass, threshold, mask, traj = (
            prep.arr, prep.data, prep.summary, prep.threshold, prep.mask, prep.traj)
        notes, timings, warming = prep.notes, prep.timings, prep.warming
        n_kept = traj.n
        log.info("threshold %s keeps %d of %d non-zero voxels", threshold.method, n_kept,
                 threshold.n_nonzero)
        if config.k != "auto" and n_kept < config.k:
            raise ParameterError(
                f"the threshold keeps {n_kept} voxels, fewer than K={config.k}; lower -k or "
                "the threshold"
            )
        n_t = arr.sizes["temperature"]
        if config.method == "peaks":
            mode = "none"
        elif prep.source != "input":
            mode = prep.source
        else:
            mode = _persist_mode(n_kept * n_t * 4, config.persist, runtime)
        gmm_kw = dict(covariance_type=config.covariance, tol=config.tol,
                      max_iter=config.max_iter, n_init=config.n_init, random_state=config.seed)
        extra_vars: dict = {}
        tick = time.perf_counter()
        if config.method == "peaks":
            del warming
            from xtec.spatial import fit_peaks

            k = config.k
            if k == "auto":
                from xtec.spatial import component_trajectories, label_components

                comp, n_comp = label_components(mask)
                comp = comp.persist()
                ctraj = component_trajectories(data, comp, n_comp, config.peak_stat)
                from xtec.preprocess import rescale_block

                cX = np.ascontiguousarray(rescale_block(ctraj.T.astype(np.float32),
                                                        config.rescale).T)
                k, bic = _fit_k(config, cX, np.arange(1, n_comp + 1))
                extra_vars.update(_bic_vars(bic))
            log.info("peak averaging: K=%d", k)
            pr = fit_peaks(data, mask, k, rescale=config.rescale, how=config.peak_stat,
                           **gmm_kw)
            gmm = pr.gmm
            labels_vol = pr.paint()
            # Profiles per cluster over the component trajectories, voxel-weighted.
            counts = np.bincount(pr.component_cluster, weights=pr.counts,
                                 minlength=k).astype(np.int64)
            _, cmean, cstd = cluster_profiles(pr.X, pr.component_cluster, k)
            extra_vars["component"] = (("Ql", "Qk", "Qh"), pr.labels.astype(np.int32))
            extra_attrs = {"n_components": int(pr.n_components), "peak_stat": config.peak_stat}
            timings["trajectories"] = 0.0
        else:
            if prep.source == "disk":
                # Read from the candidates' files at every pass: no second copy.
                X, index = traj.X, traj.index
            else:
                X, index = _hold_trajectories(traj, mode, runtime, scratch, n_t,
                                              picked=prep.source != "input")
            # In memory the trajectories are held now; the candidates can go.
            summary_pass.captured = None
            timings["trajectories"] = time.perf_counter() - tick
            del warming
            tick = time.perf_counter()
            k, bic = _fit_k(config, X, index)
            extra_vars.update(_bic_vars(bic))
            extra_attrs = {}
            if config.method == "smooth":
                from xtec.spatial import (
                    SmoothedGaussianMixture,
                    neighbour_matrix,
                    unit_cell_from_axes,
                )

                cell = config.unit_cell or unit_cell_from_axes(
                    *(arr[d].values for d in ("Ql", "Qk", "Qh")))
                idx_np = index.compute() if isinstance(index, da.Array) else np.asarray(index)
                W = neighbour_matrix(idx_np, mask.shape, kernel=config.kernel,
                                     length_scale=config.length_scale, unit_cell=cell,
                                     weights=config.neighbour_weights)
                log.info("label smoothing: %s kernel, L=%g, %.1f neighbours per voxel",
                         config.kernel, config.length_scale, W.nnz / max(W.shape[0], 1))
                gmm = SmoothedGaussianMixture(k, neighbours=W,
                                              n_smooth=config.smooth_iterations,
                                              **gmm_kw).fit(X, index)
                labels = da.from_array(gmm.labels_, chunks=(X.chunks[0],))
                extra_attrs = {"kernel": config.kernel, "length_scale": config.length_scale,
                               "unit_cell_pixels": list(map(float, cell)),
                               "smooth_iterations": config.smooth_iterations,
                               "neighbour_weights": config.neighbour_weights,
                               "neighbours_per_voxel": W.nnz / max(W.shape[0], 1)}
            else:
                log.info("EM: K=%d, %s covariances, %d restarts on a subsample", k,
                         config.covariance, config.n_init)
                gmm = GaussianMixture(k, **gmm_kw).fit(X, index)
            if config.method != "smooth" and isinstance(X, da.Array):
                labels, counts, cmean, cstd = predict_with_profiles(gmm, X, k)
            else:
                if config.method != "smooth":
                    labels = gmm.predict(X)
                counts, cmean, cstd = cluster_profiles(X, labels, k)
            if X.chunks[0] != traj.X.chunks[0]:
                labels = labels.rechunk((traj.X.chunks[0],))
            # Held in a name until the store is written: releasing a persisted
            # collection on a cluster releases its data.
            labels = labels.persist()
            labels_vol = paint(labels, traj, -1, np.int16)
        timings["gmm"] = time.perf_counter() - tick
        tick = time.perf_counter()
        log.info("writing %s", out)
        if parent is not None:
            extra_attrs["parent"] = {"path": str(Path(config.parent).resolve()),
                                     "cluster": int(config.parent_cluster),
                                     "method": parent.attrs.get("method"),
                                     "k": parent.attrs.get("k")}
        result = _assemble(config, k, arr, n_kept, mask, summary_pass, threshold, gmm,
                           labels_vol, counts, cmean, cstd, notes, started, mode, out,
                           extra_vars, extra_attrs)
        timings["write"] = time.perf_counter() - tick
        result.summary["timings"] = timings
    finally:
        if scratch.exists():
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)
    return result


def _hold_trajectories(traj, mode: str, runtime, scratch: Path, n_t: int,
                       picked: bool = False):
    """Keep the kept trajectories where ``mode`` says, for the EM's many passes."""
    X, index = traj.X, traj.index
    n_kept = traj.n
    if not picked:
        log.info("pass 2 of 2: rescaled trajectories of the kept voxels (held in %s)", mode)
    else:
        log.info("kept trajectories picked from the first pass's candidates (held in %s)",
                 mode)
    if mode == "memory":
        X, index = dask.persist(X, index)
        _wait(X, index)
        traj.X = X
        rows = _balanced_rows(n_kept, len(X.chunks[0]), runtime)
        if rows:
            # EM passes are many and short: one even chunk per worker thread
            # beats the uneven spatial blocks.
            X, index = dask.persist(X.rechunk({0: rows}), index.rechunk(rows))
            _wait(X, index)
    elif mode == "disk":
        log.info("trajectories (%.2f GB) go to scratch store %s", n_kept * n_t * 4 / 1e9, scratch)
        X, index = _spill_to_zarr(X, index, scratch, n_t)
    else:
        log.info("trajectories are re-read from the input every iteration")
    return X, index


def _bic_vars(bic) -> dict:
    if bic is None:
        return {}
    return {
        "bic_k": (("bic_k",), np.asarray(bic.ks, dtype=np.int64)),
        "bic": (("bic_k",), np.asarray(bic.best_bic, dtype=np.float64)),
        "bic_mean": (("bic_k",), np.asarray(bic.mean_bic, dtype=np.float64)),
        "bic_std": (("bic_k",), np.asarray(bic.std_bic, dtype=np.float64)),
        "bic_loglik": (("bic_k",), np.asarray(bic.best_loglik, dtype=np.float64)),
    }


def _assemble(config, k, arr, n_kept, mask, summary_pass, threshold, gmm, labels_vol, counts,
              cmean, cstd, notes, started, mode, out, extra_vars, extra_attrs
              ) -> ClusterResult:
    """Colour the labels, build the result Dataset with its provenance, write it."""
    pal = palette(k)
    color = da.map_blocks(color_block, labels_vol, mask.map_blocks(to_numpy, dtype=bool), pal,
                          dtype=np.uint8, new_axis=3, chunks=labels_vol.chunks + ((3,),))
    mean_host = summary_pass.mean.map_blocks(to_numpy, dtype=np.float32)

    ended = _dt.datetime.now(_dt.timezone.utc)
    coords = {d: arr[d].values for d in ("Ql", "Qk", "Qh")}
    coords.update(temperature=arr.temperature.values, cluster=np.arange(k),
                  rgb=np.arange(3))
    variables = {
        "labels": (("Ql", "Qk", "Qh"), labels_vol),
        "color": (("Ql", "Qk", "Qh", "rgb"), color),
        "mask": (("Ql", "Qk", "Qh"), mask.map_blocks(to_numpy, dtype=bool)),
        "mean_intensity": (("Ql", "Qk", "Qh"), mean_host),
        "palette": (("cluster", "rgb"), pal),
        "cluster_mean": (("cluster", "temperature"), cmean.astype(np.float32)),
        "cluster_std": (("cluster", "temperature"), cstd.astype(np.float32)),
        "cluster_count": (("cluster",), counts),
        "weights": (("cluster",), gmm.weights_.astype(np.float32)),
        "threshold_hist": (("bin",), np.asarray(threshold.hist, dtype=np.float64)),
        "threshold_edges": (("edge",), np.asarray(threshold.edges, dtype=np.float64)),
    }
    variables.update(extra_vars)
    ds = xr.Dataset(variables, coords=coords)
    ds.labels.attrs["description"] = "cluster per voxel, -1 not clustered"
    ds.color.attrs["description"] = "palette colour; grey kept but unclustered; black dropped"
    ds.temperature.attrs["units"] = "K"
    for d in ("Ql", "Qk", "Qh"):
        ds[d].attrs["units"] = "rlu"
    cfg = asdict(config)
    cfg.pop("extra")
    ds.attrs.update(
        method=config.method,
        k=int(k),
        k_requested=config.k,
        seed=config.seed,
        rescale=config.rescale,
        covariance_type=config.covariance,
        threshold={
            "method": threshold.method, "cutoff_log": threshold.cutoff,
            "cutoff_intensity": threshold.intensity_cutoff,
            "gaussian_mean": threshold.gaussian[0], "gaussian_std": threshold.gaussian[1],
            "iterations": threshold.iterations, "n_nonzero": threshold.n_nonzero,
            "n_kept": n_kept,
        },
        source_files=arr.attrs["source_files"],
        nexus_paths=arr.attrs["nexus_paths"],
        layout=arr.attrs["layout"],
        ranges={"Ql": config.ql, "Qk": config.qk, "Qh": config.qh},
        gmm={"converged": bool(gmm.converged_), "n_iter": int(gmm.n_iter_),
             "mean_loglik": float(gmm.lower_bound_), "n_init": config.n_init,
             "tol": config.tol},
        trajectories_held=mode,
        notes=notes,
        parameters=cfg,
        versions=_versions(),
        started=started.isoformat(),
        ended=ended.isoformat(),
        **extra_attrs,
    )
    path = write_result(ds, out, overwrite=config.overwrite)
    summary = {
        "n_voxels": int(math.prod(arr.shape[1:])),
        "n_nonzero": threshold.n_nonzero,
        "n_kept": n_kept,
        "k": int(k),
        "threshold": threshold.method,
        "cutoff_intensity": threshold.intensity_cutoff,
        "counts": counts.tolist(),
        "weights": gmm.weights_.tolist(),
        "cluster_mean": cmean,
        "temperature": arr.temperature.values,
        "n_iter": int(gmm.n_iter_),
        "notes": notes,
    }
    return ClusterResult(path, summary)


def _versions() -> dict:
    import dask as _dask
    import h5py
    import zarr

    return {"xtec": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "dask": _dask.__version__, "xarray": xr.__version__, "zarr": zarr.__version__,
            "h5py": h5py.__version__}
