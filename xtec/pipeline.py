"""One clustering job: load -> preprocess -> cluster -> paint -> write.

The job runs on whatever Dask scheduler is current (see :mod:`xtec.runtime`).
Two reads of the input are the floor: one for the per-voxel mean (threshold),
one for the trajectories of the kept voxels.  Everything between works on the
mean volume (1/T of the data) or on the kept trajectories.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr

from xtec import __version__
from xtec.backend import get_device_module, to_numpy
from xtec.chunks import target_bytes_for_workers
from xtec.errors import ParameterError
from xtec.io.nexus import open_nexus
from xtec.io.store import check_output, color_block, palette, write_result
from xtec.mixture import COVARIANCE_TYPES, GaussianMixture
from xtec.preprocess import (
    RESCALE_METHODS,
    THRESHOLD_METHODS,
    compute_threshold,
    extract_trajectories,
    keep_mask,
    paint,
    summarize,
)

log = logging.getLogger(__name__)

METHODS = ("xtec-d",)
# Where the kept trajectories live while EM iterates: worker memory, a scratch
# Zarr store (written once, read every iteration), or nowhere (re-read from the
# input files every iteration); "auto" picks memory if they fit, else disk.
PERSIST_MODES = ("auto", "memory", "disk", "none")


@dataclass
class ClusterConfig:
    """Every option of one clustering job (the CLI and TOML job files fill it)."""

    inputs: list[str]
    out: str
    k: int = 4
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
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if not self.inputs:
            raise ParameterError("no input files given")
        if not isinstance(self.k, int) or self.k < 1:
            raise ParameterError(f"-k must be a positive integer (got {self.k!r})")
        if self.method not in METHODS:
            raise ParameterError(f"--method must be one of {METHODS} (got {self.method!r})")
        if isinstance(self.threshold, str) and self.threshold not in THRESHOLD_METHODS:
            try:
                self.threshold = float(self.threshold)
            except ValueError:
                raise ParameterError(
                    f"--threshold must be one of {THRESHOLD_METHODS} or an intensity "
                    f"(got {self.threshold!r})"
                ) from None
        if self.rescale not in RESCALE_METHODS:
            raise ParameterError(f"--rescale must be one of {RESCALE_METHODS} "
                                 f"(got {self.rescale!r})")
        if self.covariance not in COVARIANCE_TYPES:
            raise ParameterError(f"--covariance must be one of {COVARIANCE_TYPES} "
                                 f"(got {self.covariance!r})")
        if self.persist not in PERSIST_MODES:
            raise ParameterError(f"--persist must be one of {PERSIST_MODES} "
                                 f"(got {self.persist!r})")


@dataclass
class ClusterResult:
    path: Path
    summary: dict


def _cluster_block_stats(x, labels, k):
    x = to_numpy(x).astype(np.float64)
    lab = to_numpy(labels).astype(np.int64)
    t = x.shape[1]
    out = np.zeros((3, k, t))
    np.add.at(out[0], lab, 1.0)
    np.add.at(out[1], lab, x)
    np.add.at(out[2], lab, x * x)
    return out


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
    n = tot[0][:, 0]
    safe = np.maximum(n, 1)[:, None]
    mean = tot[1] / safe
    std = np.sqrt(np.maximum(tot[2] / safe - mean**2, 0.0))
    return n.astype(np.int64), mean, std


def _persist_mode(nbytes: int, policy: str, runtime) -> str:
    if policy != "auto":
        return policy
    total = getattr(runtime, "worker_memory", None)
    if total is None:
        import psutil

        total = psutil.virtual_memory().available
    return "memory" if nbytes < 0.3 * total else "disk"


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


def _balanced_rows(n: int, runtime) -> int | None:
    """Rows per trajectory chunk for the EM on a Dask cluster (None in-process)."""
    client = getattr(runtime, "client", None)
    if client is None:
        return None
    threads = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
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
    X.rechunk((rows, t)).to_zarr(str(scratch / "X"), overwrite=True)
    index.rechunk((rows,)).to_zarr(str(scratch / "index"), overwrite=True)
    return da.from_zarr(str(scratch / "X")), da.from_zarr(str(scratch / "index"))


def run_cluster(config: ClusterConfig, runtime=None) -> ClusterResult:
    """Run one XTEC-d job and write its Zarr store. Returns the path and a summary."""
    config.validate()
    out = check_output(config.out, config.overwrite)
    started = _dt.datetime.now(_dt.timezone.utc)
    xp = get_device_module(config.device)

    target = target_bytes_for_workers(getattr(runtime, "memory_per_worker", None),
                                      getattr(runtime, "threads_per_worker", 1))
    arr = open_nexus(config.inputs, ql=config.ql, qk=config.qk, qh=config.qh,
                     chunks=config.chunks, target_chunk_bytes=target)
    data = arr.data
    if xp is not np:
        data = data.map_blocks(xp.asarray, dtype=data.dtype, meta=xp.empty((0,) * 4, data.dtype))

    timings = {}
    tick = time.perf_counter()
    log.info("pass 1 of 2: mean over temperature of %s voxels x %d temperatures",
             f"{math.prod(arr.shape[1:]):,}", arr.sizes["temperature"])
    warming = _warm_workers(runtime)  # futures: held so the tasks are not cancelled
    summary_pass = summarize(data)
    timings["mean_pass"] = time.perf_counter() - tick
    notes = []
    if summary_pass.n_nan_voxels:
        notes.append(f"{summary_pass.n_nan_voxels} voxels with NaN intensities were dropped")
    if summary_pass.n_negative_values:
        notes.append(f"{summary_pass.n_negative_values} negative intensities were set to 0")
    for n in notes:
        log.warning(n)

    tick = time.perf_counter()
    threshold = compute_threshold(summary_pass.mean, config.threshold)
    mask = keep_mask(summary_pass.mean, threshold).persist()
    traj = extract_trajectories(data, mask, config.rescale)
    timings["threshold"] = time.perf_counter() - tick
    n_kept = traj.n
    log.info("threshold %s keeps %d of %d non-zero voxels", threshold.method, n_kept,
             threshold.n_nonzero)
    if n_kept < config.k:
        raise ParameterError(
            f"the threshold keeps {n_kept} voxels, fewer than K={config.k}; lower -k or the "
            "threshold"
        )
    n_t = arr.sizes["temperature"]
    mode = _persist_mode(n_kept * n_t * 4, config.persist, runtime)
    X, index = traj.X, traj.index
    scratch = out.with_name(out.name + ".scratch")
    tick = time.perf_counter()
    log.info("pass 2 of 2: rescaled trajectories of the kept voxels (held in %s)", mode)
    if mode == "memory":
        X, index = dask.persist(X, index)
        _wait(X, index)
        traj.X = X
        rows = _balanced_rows(n_kept, runtime)
        if rows and len(X.chunks[0]) != -(-n_kept // rows):
            # EM passes are many and short: one even chunk per worker thread
            # beats the uneven spatial blocks.
            X, index = dask.persist(X.rechunk({0: rows}), index.rechunk(rows))
            _wait(X, index)
    elif mode == "disk":
        log.info("trajectories (%.2f GB) go to scratch store %s", n_kept * n_t * 4 / 1e9, scratch)
        X, index = _spill_to_zarr(X, index, scratch, n_t)
    else:
        log.info("trajectories are re-read from the input every iteration")
    timings["trajectories"] = time.perf_counter() - tick
    del warming
    try:
        tick = time.perf_counter()
        log.info("EM: K=%d, %s covariances, %d restarts on a subsample", config.k,
                 config.covariance, config.n_init)
        gmm = GaussianMixture(
            config.k, covariance_type=config.covariance, tol=config.tol,
            max_iter=config.max_iter, n_init=config.n_init, random_state=config.seed,
        ).fit(X, index)
        labels = gmm.predict(X)
        counts, cmean, cstd = cluster_profiles(X, labels, config.k)
        if X.chunks[0] != traj.X.chunks[0]:
            labels = labels.rechunk((traj.X.chunks[0],))
        labels = labels.persist()
        timings["gmm"] = time.perf_counter() - tick
        tick = time.perf_counter()
        log.info("writing %s", out)
        result = _assemble(config, arr, traj, mask, summary_pass, threshold, gmm, labels,
                           counts, cmean, cstd, notes, started, mode, out)
        timings["write"] = time.perf_counter() - tick
        result.summary["timings"] = timings
    finally:
        if scratch.exists():
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)
    return result


def _assemble(config, arr, traj, mask, summary_pass, threshold, gmm, labels, counts, cmean,
              cstd, notes, started, mode, out) -> ClusterResult:
    """Paint the labels, build the result Dataset with its provenance, write it."""
    n_kept = traj.n

    pal = palette(config.k)
    labels_vol = paint(labels, traj, -1, np.int16)
    color = da.map_blocks(color_block, labels_vol, mask.map_blocks(to_numpy, dtype=bool), pal,
                          dtype=np.uint8, new_axis=3, chunks=labels_vol.chunks + ((3,),))
    mean_host = summary_pass.mean.map_blocks(to_numpy, dtype=np.float32)

    ended = _dt.datetime.now(_dt.timezone.utc)
    coords = {d: arr[d].values for d in ("Ql", "Qk", "Qh")}
    coords.update(temperature=arr.temperature.values, cluster=np.arange(config.k),
                  rgb=np.arange(3))
    ds = xr.Dataset(
        {
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
        },
        coords=coords,
    )
    ds.labels.attrs["description"] = "cluster per voxel, -1 not clustered"
    ds.color.attrs["description"] = "palette colour; grey kept but unclustered; black dropped"
    ds.temperature.attrs["units"] = "K"
    for d in ("Ql", "Qk", "Qh"):
        ds[d].attrs["units"] = "rlu"
    cfg = asdict(config)
    cfg.pop("extra")
    ds.attrs.update(
        method=config.method,
        k=config.k,
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
    )
    path = write_result(ds, out, overwrite=config.overwrite)
    summary = {
        "n_voxels": int(math.prod(arr.shape[1:])),
        "n_nonzero": threshold.n_nonzero,
        "n_kept": n_kept,
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
