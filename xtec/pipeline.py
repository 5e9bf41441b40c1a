"""One clustering job: load -> preprocess -> cluster -> paint -> write.

The job runs on whatever Dask scheduler is current (see :mod:`xtec.runtime.clusters`).
The input is read once: the pass that computes the per-voxel mean (for the
threshold) also keeps the trajectories of likely-kept voxels
(:mod:`xtec.preprocess.candidates`), from which the kept ones are picked; only
if the exact cutoff falls below the pilot's bound is the input read a second
time.
Everything else works on the mean volume (1/T of the data) or on the kept
trajectories.

This module only orchestrates: :func:`run_cluster` prepares the kept
trajectories (:func:`_prepare`), hands them to one function per method
(:func:`cluster_xtec_d`, :func:`cluster_peaks`, :func:`cluster_smooth`), each
returning a :class:`~xtec.io.result.Clustering`, and writes the result through
:mod:`xtec.io.result`.  Where trajectories are held is :class:`~xtec.runtime.clusters.Runtime`'s
call.
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr

from xtec.backend import get_device_module
from xtec.config import METHODS, PERSIST_MODES, ClusterConfig  # noqa: F401  (re-exported)
from xtec.errors import InputError, ParameterError
from xtec.io.nexus import open_nexus
from xtec.io.result import (
    Q_DIMS,
    Clustering,
    ResultParts,
    bic_variables,
    build_result,
    summarize_result,
    volumes_template,
)
from xtec.io.store import check_output, open_result, start_layout, wait_layout, write_result
from xtec.mixture.gaussian_mixture import GaussianMixture
from xtec.mixture.profiles import cluster_profiles, predict_with_profiles
from xtec.mixture.warm import warm_worker_kernels
from xtec.preprocess import (
    Threshold,
    compute_threshold,
    extract_trajectories,
    keep_mask,
    kept_block_keys,
    paint,
    paint_results,
    summarize,
)
from xtec.preprocess.candidates import (
    CandidatePlan,
    compact_candidates,
    plan_candidates,
    trajectories_from_candidates,
)
from xtec.preprocess.frames import (
    ROW_NORMALIZABLE,
    check_frames,
    drop_frames,
    fix_rows,
    frame_variables,
    scale_frames,
    wants_normalize,
)
from xtec.preprocess.registration import block_maxima, register_series, registration_variables
from xtec.preprocess.threshold import NoPositiveVoxels, parent_threshold, threshold_aside
from xtec.runtime.chunks import box_chunks, target_bytes_for_workers
from xtec.runtime.clusters import Runtime
from xtec.runtime.kernel_cache import choose_engine, compile_for_later, mark_compiled, use_engine
from xtec.runtime.schedulers import scheduler_of

log = logging.getLogger(__name__)

@dataclass
class ClusterResult:
    path: Path
    summary: dict


@dataclass
class Prepared:
    """The kept voxels of a series, ready for a clustering method.

    arr : the loaded series; data : its dask array (on the device); summary :
    the first pass (:class:`~xtec.preprocess.VoxelSummary`); threshold and mask
    (L, K, H) bool; traj : the kept :class:`~xtec.preprocess.Trajectories` (lazy);
    source : where they come from, "input" (read again) or the captured
    candidates in "memory" or on "disk"; warming : futures loading the EM
    kernels on the workers (held until the EM starts); frames : the verdict on
    each temperature (:class:`~xtec.preprocess.frames.FrameCheck`, with the
    factors ``--normalize`` divided out in ``frames.applied``); correction : the
    fix rows rebuilt from captured candidates still need (None: none), as
    (correction, kept frames); n_captured : temperatures of the captured rows.
    """

    arr: xr.DataArray
    data: da.Array
    summary: object
    threshold: Threshold
    mask: da.Array
    traj: object
    notes: list
    timings: dict
    warming: list
    source: str = "input"
    frames: object = None  # xtec.preprocess.frames.FrameCheck
    correction: tuple | None = None  # (correction, kept frames) for rows rebuilt from candidates
    n_captured: int = 0  # temperatures of the captured candidate rows
    registration: object = None  # xtec.preprocess.registration.Registration


# --------------------------------------------------------------------------- preparing
def _small_reads(rt: Runtime) -> str | None:
    """The scheduler of a stage's few chunk reads (the pilot's 64, the lattice
    boxes' 80): the client's own threads where the cluster runs on this host,
    less than their round trips through the scheduler; else the cluster's (a
    remote scheduler's client may not see the files)."""
    return "threads" if rt.kind == "local" else None


def _candidate_plan(config: ClusterConfig, arr: xr.DataArray, rt: Runtime,
                    scratch: Path | None, pilot_data) -> CandidatePlan | None:
    """How the first pass captures candidate trajectories (None: it does not);
    ``pilot_data``: a callable giving the series chunked as its file is."""
    if config.method == "peaks" or config.parent or config.persist == "none":
        return None
    plan = plan_candidates(arr.data, config.threshold, config.rescale, rt.memory_budget(),
                           pilot_data, _small_reads(rt))
    if plan is None:
        return None
    # Trajectories (float32) and their voxel indices (int64).
    n_t = arr.sizes["temperature"]
    nbytes = plan.fraction * math.prod(arr.shape[1:]) * (4 * n_t + 8)
    mode = rt.persist_mode(nbytes, config.persist)
    if mode == "disk":
        if scratch is None:
            return None
        scratch.mkdir(parents=True, exist_ok=True)
        plan = replace(plan, scratch=str(scratch))
    log.info("first pass keeps candidate trajectories (%.2f GB) in %s", nbytes / 1e9,
             "worker memory" if mode == "memory" else scratch)
    return plan


def _open_input(config: ClusterConfig, **kw) -> xr.DataArray:
    """The input series, less the frames of ``drop_temperatures``."""
    arr = open_nexus(config.inputs, ql=config.ql, qk=config.qk, qh=config.qh, **kw)
    if config.drop_temperatures:
        arr = drop_frames(arr, config.drop_temperatures)
    return arr


def _file_chunked(config: ClusterConfig, arr: xr.DataArray):
    """A callable giving the series chunked as its file is (opened on the first
    call, once): for the reads that touch a few chunks, the pilot's sample and the
    registration's boxes, where a pass's chunks would read many times more."""
    fine = box_chunks(arr.attrs.get("file_chunks"), arr.shape[1:], arr.sizes["temperature"],
                      arr.dtype.itemsize)
    if fine == arr.data.chunksize[1:]:
        return lambda: arr.data
    return functools.cache(lambda: _open_input(config, chunks=fine).data)


def _check_frames(config: ClusterConfig, prep_arr, summary, threshold, notes: list):
    """The verdict on each frame, logged (a warning naming the flagged ones)."""
    check = check_frames(summary.frames, prep_arr.temperature.values,
                         None if threshold.method == "parent" else threshold.cutoff)
    if check.flagged.any():
        msg = (check.describe() + "; they are left out of the order-parameter fit; "
               "--drop-temperatures " + ",".join(f"{t:g}" for t in check.flagged_temperatures)
               + " leaves them out of the clustering")
        log.warning(msg)
        notes.append(msg)
    else:
        log.info("frames checked: no temperature flagged")
    return check


def _open_parent(config: ClusterConfig):
    """The parent result of a second round; fills inputs and ranges from it."""
    parent = open_result(config.parent)
    k_parent = int(parent.sizes["cluster"])
    if not 0 <= config.parent_cluster < k_parent:
        raise ParameterError(f"parent_cluster must be in 0..{k_parent - 1} "
                             f"(got {config.parent_cluster})")
    if not config.inputs:
        config.inputs = list(parent.attrs["source_files"])
    ranges = parent.attrs.get("ranges") or {}
    for ax, dim in (("ql", "Ql"), ("qk", "Qk"), ("qh", "Qh")):
        if getattr(config, ax) is None and ranges.get(dim) is not None:
            setattr(config, ax, tuple(ranges[dim]))
    return parent


def _warm_in_background(covariance_type: str | None, in_process: bool = True) -> None:
    """Load the writer's modules (Zarr and its codecs: 0.2 s), and the kernels
    this process calls (``covariance_type`` given: every stage's in-process, the
    EM start's on a cluster), in a thread while the file is read; a cluster's
    workers are warmed by :meth:`Runtime.on_every_worker`."""
    import threading

    from xtec.mixture.warm import warm_stage_kernels, warm_start

    def warm():
        try:
            from xtec.io.result import versions

            versions()  # imports zarr
            if covariance_type is None:
                return
            if in_process:
                # Every stage's kernels (1.8 s of a fresh in-process run at 1.5 GB
                # went to loading them where first called); once all are in the
                # cache, later runs need not wait for them.
                if warm_stage_kernels(covariance_type):
                    mark_compiled(covariance_type)
            else:
                warm_start(covariance_type)
        except Exception as exc:  # the stage itself will report it
            log.debug("warming the kernels failed: %s", exc)

    threading.Thread(target=warm, name="xtec-warm-kernels", daemon=True).start()


def _prepare(config: ClusterConfig, runtime: Runtime | None, parent=None,
             scratch: Path | None = None) -> Prepared:
    """Load, first pass (mean, candidates), threshold (or the parent's cluster),
    trajectories (lazy)."""
    xp = get_device_module(config.device)
    # Chunk size from the runtime given (none: the library default of one thread);
    # everything else treats no runtime as the in-process threaded scheduler.
    target = target_bytes_for_workers(getattr(runtime, "memory_per_worker", None),
                                      getattr(runtime, "threads_per_worker", 1))
    rt = runtime if runtime is not None else Runtime("threads")
    compiled = xp is np and config.engine != "numpy"
    _warm_in_background(config.covariance if compiled else None, rt.client is None)
    arr = _open_input(config, chunks=config.chunks, target_chunk_bytes=target,
                      min_blocks=2 * rt.n_workers * rt.threads_per_worker)
    data = arr.data
    if xp is not np:
        data = data.map_blocks(xp.asarray, dtype=data.dtype, meta=xp.empty((0,) * 4, data.dtype))

    timings = {}
    tick = time.perf_counter()
    log.info("pass 1 of 2: mean over temperature of %s voxels x %d temperatures",
             f"{math.prod(arr.shape[1:]):,}", arr.sizes["temperature"])
    # Loading the kernels overlaps the first pass.
    warming = rt.on_every_worker(functools.partial(warm_worker_kernels, config.covariance)) \
        if compiled else []
    file_chunked = _file_chunked(config, arr)
    plan = _candidate_plan(config, arr, rt, scratch, file_chunked)
    timings["pilot"] = time.perf_counter() - tick
    # The lattice estimate's search for bright maxima rides on the first pass.
    summary = summarize(data, capture=plan,
                        peaks=None if config.register == "off" else block_maxima)
    timings["mean_pass"] = time.perf_counter() - tick - timings["pilot"]
    summary.check_some_finite(math.prod(arr.shape[1:]))
    tick = time.perf_counter()
    # The cutoff needs only the means: its passes run while the lattice is measured.
    aside = threshold_aside(summary.mean, config.threshold, summary.log_means) \
        if parent is None else None
    # The peaks are found in the mean volume (in memory), so measuring the lattice
    # reads a few boxes, not a frame (a whole pass where a file chunk holds every T).
    registration, registered = register_series(
        config.register, arr.temperature.values, [arr[d].values for d in Q_DIMS], data,
        summary.mean, None if config.register == "off" else file_chunked(), summary.maxima,
        _small_reads(rt))
    if registered is not data:  # the first pass again, over the registered frames
        if aside is not None:  # its cutoff is of the frames before: let it end, unused
            aside.exception()
            aside = None
        data = registered
        if plan is not None and plan.scratch:
            plan = replace(plan, scratch=str(Path(plan.scratch) / "registered"))
        summary = summarize(data, capture=plan)
    timings["register"] = time.perf_counter() - tick

    tick = time.perf_counter()
    if parent is not None:
        if parent.labels.shape != summary.mean.shape or not all(
                np.allclose(parent[d].values, arr[d].values) for d in Q_DIMS):
            raise ParameterError(f"{config.parent} covers a different grid than the inputs; "
                                 "give the parent's inputs and ranges")
        threshold, mask = parent_threshold(parent.labels.values == config.parent_cluster,
                                           summary.mean)
    else:
        try:
            threshold = aside.result() if aside is not None else \
                compute_threshold(summary.mean, config.threshold, summary.log_means)
        except NoPositiveVoxels:
            if not summary.n_nan_voxels:
                raise
            raise InputError(f"no voxel is left to cluster: {summary.n_nan_voxels:,} have NaN "
                             "or infinite intensities, the others are zero at every "
                             "temperature") from None
        mask = keep_mask(summary.mean, threshold).persist()
    notes = summary.notes()  # after the threshold: its refusal is the one line
    frames = _check_frames(config, arr, summary, threshold, notes)
    correction = frames.correction if wants_normalize(config.normalize, frames) else None
    frames.applied = correction
    n_t = arr.sizes["temperature"]
    keep = None
    if config.drop_lost_frames and frames.lost.any():
        keep = np.flatnonzero(~frames.lost)
        msg = ("left out the frame(s) with a lost part: "
               + ", ".join(f"{t:g} K" for t in frames.temperature[frames.lost]))
        log.warning(msg)
        notes.append(msg)
        arr, data = arr.isel(temperature=keep), data[keep]
        lost = [float(t) for t in frames.temperature[frames.lost]]
        frames = frames.subset(keep)
        frames.left_out = lost
    # Rows of the mean / none rescalings are corrected after they are made, the
    # same arithmetic whichever way they come (picked or read again); others,
    # and peak averaging, read the scaled frames.
    fix = (correction, keep) if correction is not None or keep is not None else None
    in_rows = fix is not None and config.rescale in ROW_NORMALIZABLE
    scaled = data if correction is None else scale_frames(data, frames.applied)
    source = "input"
    if plan is not None and threshold.cutoff >= plan.bound and (fix is None or in_rows):
        traj = trajectories_from_candidates(summary.captured, mask, n_t, data._meta)
        source = "memory" if plan.scratch is None else "disk"
    else:
        if plan is not None:
            log.info("the cutoff %.4g lies below the first pass's bound %.4g: the kept "
                     "trajectories are read again", threshold.cutoff, plan.bound)
        summary.captured = None
        traj = extract_trajectories(data if fix is None or in_rows else scaled, mask,
                                    config.rescale)
        # read without the left-out frames: only the correction is left to do
        fix = None if frames.applied is None else (frames.applied, None)
        in_rows = in_rows and fix is not None
    if in_rows:
        traj.X = fix_rows(traj.X, fix, config.rescale)
    timings["threshold"] = time.perf_counter() - tick
    return Prepared(arr, scaled, summary, threshold, mask, traj, notes, timings, warming,
                    source, frames, fix if in_rows and source != "input" else None, n_t,
                    registration)


# --------------------------------------------------------------------------- K and methods
def _fit_k(config: ClusterConfig, X, index):
    """K: the configured one, or the BIC elbow over the configured range (and the scan)."""
    if config.k != "auto":
        return int(config.k), None
    from xtec.mixture.select import bic_scan, choose_k

    lo, hi = config.bic_ks
    n = int(X.shape[0])
    ks = [k for k in range(lo, hi + 1) if k <= n]
    if not ks:
        raise ParameterError(f"k='auto': only {n} trajectories, fewer than K={lo}")
    log.info("-k auto: BIC over K=%d..%d with %d seeds", ks[0], ks[-1], config.bic_seeds)
    result = bic_scan(X, index, ks=ks, seeds=range(config.seed, config.seed + config.bic_seeds),
                      covariance_type=config.covariance, max_iter=config.max_iter,
                      tol=config.tol)
    k = int(choose_k(result, "elbow"))
    log.info("-k auto chose K=%d (BIC elbow)", k)
    return k, result


def _kept_trajectories(config: ClusterConfig, prep: Prepared, rt: Runtime, scratch: Path):
    """The kept trajectories where the EM reads them: (X, index, where held)."""
    tick = time.perf_counter()
    n_t = prep.arr.sizes["temperature"]
    if prep.source == "disk":
        # The candidates did not fit worker memory, but the kept ones may (the
        # issue's 1.5 GB on two 1 GB workers: 0.64 GB of candidates, 0.45 GB
        # kept): then one read of the candidates' files, and the EM's passes
        # run in memory (each pass from disk took 0.86 s).  Else the kept rows
        # are rewritten once, in place of the candidates, and mapped.
        held = rt.persist_mode(prep.traj.n * (n_t * 4 + 8), config.persist)
        if held == "memory":
            X, index = rt.hold_trajectories(prep.traj, held, scratch, picked=True)
        else:
            log.info("kept trajectories rewritten from the first pass's candidates "
                     "(%.2f GB, held on disk)", prep.traj.n * n_t * 4 / 1e9)
            prep.traj, X, index = compact_candidates(prep.summary.captured, prep.mask,
                                                     prep.n_captured, prep.data._meta)
            if prep.correction is not None:
                X = fix_rows(X, prep.correction, config.rescale)
            held = "disk"
    else:
        held = (prep.source if prep.source != "input"
                else rt.persist_mode(prep.traj.n * n_t * 4, config.persist))
        X, index = rt.hold_trajectories(prep.traj, held, scratch,
                                        picked=prep.source != "input")
    # In memory the trajectories are held now; the candidates can go.
    prep.summary.captured = None
    prep.timings["trajectories"] = time.perf_counter() - tick
    prep.warming = []
    return X, index, held


def _painted(labels: da.Array, X: da.Array, traj) -> dict:
    """Labels of the kept rows painted into the (L, K, H) volume, -1 elsewhere, and
    the persisted labels (for :class:`Clustering`'s ``keep``)."""
    if X.chunks[0] != traj.X.chunks[0]:
        labels = labels.rechunk((traj.X.chunks[0],))
    labels = labels.persist()
    return {"labels": paint(labels, traj, -1, np.int16), "keep": (labels,)}


def cluster_xtec_d(config: ClusterConfig, prep: Prepared, rt: Runtime,
                   scratch: Path) -> Clustering:
    """XTEC-d: one Gaussian mixture over the trajectories of every kept voxel."""
    X, index, held = _kept_trajectories(config, prep, rt, scratch)
    k, bic = _fit_k(config, X, index)
    log.info("EM: K=%d, %s covariances, %d restarts on a subsample", k, config.covariance,
             config.n_init)
    gmm = GaussianMixture(k, **config.gmm_kwargs()).fit(X, index)
    # Chunks of the blocks' kept rows: each block painted in the task writing it.
    keys = kept_block_keys(prep.traj, "predicted-" + dask.base.tokenize(X.name, gmm.params_)) \
        if X.chunks[0] == prep.traj.X.chunks[0] else None
    labels, counts, cmean, cstd, pass_ = predict_with_profiles(gmm, X, k, keys)
    painted = {"labels": paint_results(pass_, prep.traj, 0, -1, np.int16), "keep": ()} \
        if keys else _painted(labels, X, prep.traj)
    painted["keep"] += tuple(pass_)
    return Clustering(k=k, gmm=gmm, counts=counts, mean=cmean, std=cstd, held=held,
                      variables=bic_variables(bic), **painted)


def cluster_smooth(config: ClusterConfig, prep: Prepared, rt: Runtime,
                   scratch: Path) -> Clustering:
    """XTEC-s label smoothing: the mixture's E-step averaged over neighbouring voxels."""
    from xtec.spatial.smoothing import fit_smooth, unit_cell_from_axes

    X, index, held = _kept_trajectories(config, prep, rt, scratch)
    k, bic = _fit_k(config, X, index)
    cell = config.unit_cell or unit_cell_from_axes(*(prep.arr[d].values for d in Q_DIMS))
    gmm = fit_smooth(X, index, prep.mask.shape, k, kernel=config.kernel,
                     length_scale=config.length_scale, unit_cell=cell,
                     weights=config.neighbour_weights, n_smooth=config.smooth_iterations,
                     **config.gmm_kwargs())
    w = gmm.neighbours
    per_voxel = w.nnz / max(w.shape[0], 1)
    log.info("label smoothing: %s kernel, L=%g, %.1f neighbours per voxel", config.kernel,
             config.length_scale, per_voxel)
    labels = da.from_array(gmm.labels_, chunks=(X.chunks[0],))
    counts, cmean, cstd = cluster_profiles(X, labels, k)
    attrs = {"kernel": config.kernel, "length_scale": config.length_scale,
             "unit_cell_pixels": list(map(float, cell)),
             "smooth_iterations": config.smooth_iterations,
             "neighbour_weights": config.neighbour_weights,
             "neighbours_per_voxel": per_voxel}
    return Clustering(k=k, gmm=gmm, counts=counts, mean=cmean, std=cstd, held=held,
                      variables=bic_variables(bic), attrs=attrs,
                      **_painted(labels, X, prep.traj))


def cluster_peaks(config: ClusterConfig, prep: Prepared, rt: Runtime,
                  scratch: Path) -> Clustering:
    """XTEC-s peak averaging: one trajectory per connected component of the mask."""
    from xtec.spatial.peaks import fit_peaks, peak_components

    prep.warming = []
    prep.timings["trajectories"] = 0.0
    comps = peak_components(prep.data, prep.mask, rescale=config.rescale,
                            how=config.peak_stat)
    k, bic = _fit_k(config, comps.X, comps.index) if config.k == "auto" else (config.k, None)
    log.info("peak averaging: K=%d", k)
    pr = fit_peaks(prep.data, prep.mask, k, components=comps, **config.gmm_kwargs())
    # Profiles per cluster over the component trajectories, voxel-weighted counts.
    counts = np.bincount(pr.component_cluster, weights=pr.counts, minlength=k).astype(np.int64)
    _, cmean, cstd = cluster_profiles(pr.X, pr.component_cluster, k)
    variables = bic_variables(bic)
    variables["component"] = (Q_DIMS, pr.labels.astype(np.int32))
    attrs = {"n_components": int(pr.n_components), "peak_stat": config.peak_stat}
    labels = pr.paint()
    if config.peak_grow != "off":  # hysteresis: paint sub-cutoff voxels joined to a peak
        from xtec.spatial.grow import grown_labels

        labels, grow_attrs = grown_labels(prep.data, prep.summary.mean, prep.threshold, pr,
                                          config.peak_grow, config.rescale)
        attrs.update(grow_attrs)
    return Clustering(k, pr.gmm, labels, counts, cmean, cstd, "none", variables, attrs)


_METHODS = {"xtec-d": cluster_xtec_d, "peaks": cluster_peaks, "smooth": cluster_smooth}


# --------------------------------------------------------------------------- jobs
def bic_for_inputs(config: ClusterConfig, runtime=None, ks=range(2, 15), seeds=(0, 1, 2)):
    """BIC and log-likelihood over K for the kept trajectories of a series."""
    from xtec.mixture.select import bic_scan

    config.validate()
    prep = _prepare(config, runtime)
    ks = [k for k in ks if k <= prep.traj.n]
    if not ks:
        raise ParameterError(f"only {prep.traj.n} voxels are kept: too few for the K range")
    X, index = dask.persist(prep.traj.X, prep.traj.index)
    return bic_scan(X, index, ks=ks, seeds=seeds, covariance_type=config.covariance,
                    max_iter=config.max_iter, tol=config.tol)


def _parent_attrs(config: ClusterConfig, parent) -> dict:
    return {"parent": {"path": str(Path(config.parent).resolve()),
                       "cluster": int(config.parent_cluster),
                       "method": parent.attrs.get("method"), "k": parent.attrs.get("k")}}


def run_cluster(config: ClusterConfig, runtime: Runtime | None = None) -> ClusterResult:
    """Run one clustering job and write its Zarr store. Returns the path and a summary."""
    from xtec.io.output import claim_output
    from xtec.runtime.workers import cluster_failures

    config.validate()
    out = check_output(config.out, config.overwrite)
    # numba kernels or their NumPy twins, for every task of the run (workers this
    # process did not start cannot be told: they run the kernels).
    local = runtime is None or runtime.client is None
    engine, twins = choose_engine(config.engine, config.covariance, local,
                                  config.device == "cpu")  # (the command line passes its choice)
    config = replace(config, engine=engine)
    # The output is this run's alone (a second run fails at once); lost workers: one line.
    with use_engine(config.engine), scheduler_of(runtime), claim_output(out) as claim, \
            cluster_failures():
        check_output(out, config.overwrite)
        result = _run_cluster(config, runtime, out, claim.scratch)
    if twins:  # the next run gets the kernels
        note = compile_for_later(config.covariance)
        log.warning(note)
        result.summary["notes"].append(note)
    return result


def _run_cluster(config: ClusterConfig, runtime: Runtime | None, out: Path,
                 scratch: Path) -> ClusterResult:
    started = _dt.datetime.now(_dt.UTC)
    parent = _open_parent(config) if config.parent else None
    rt = runtime if runtime is not None else Runtime("threads")
    layout = None
    try:
        prep = _prepare(config, runtime, parent, scratch)
        # The store's arrays are made while the mixture is fitted.
        layout = start_layout(volumes_template(prep.arr, prep.mask, prep.summary.mean), out)
        n_kept = prep.traj.n
        log.info("threshold %s keeps %d of %d non-zero voxels", prep.threshold.method, n_kept,
                 prep.threshold.n_nonzero)
        if config.k != "auto" and n_kept < config.k:
            raise ParameterError(f"the threshold keeps {n_kept} voxels, fewer than "
                                 f"K={config.k}; lower k or the threshold")
        tick = time.perf_counter()
        clustering = _METHODS[config.method](config, prep, rt, scratch)
        timings = prep.timings
        timings["gmm"] = time.perf_counter() - tick - timings["trajectories"]
        if parent is not None:
            clustering.attrs.update(_parent_attrs(config, parent))
        fv, fa = frame_variables(prep.frames, prep.frames.applied, config.drop_temperatures)
        clustering.variables.update(fv)
        clustering.attrs.update(fa)
        rv, ra = registration_variables(prep.registration, prep.arr.temperature.values)
        clustering.variables.update(rv)
        clustering.attrs.update(ra)
        tick = time.perf_counter()
        log.info("writing %s", out)
        parts = ResultParts(config, prep.arr, prep.mask, prep.summary.mean, prep.threshold,
                            n_kept, clustering, prep.notes, started)
        path = write_result(build_result(parts), out, overwrite=config.overwrite, layout=layout)
        timings["write"] = time.perf_counter() - tick
        summary = summarize_result(parts)
        summary["timings"] = timings
    finally:
        wait_layout(layout)  # nothing of ours writes the private store once it is removed
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    return ClusterResult(path, summary)
