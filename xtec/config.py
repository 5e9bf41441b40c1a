"""The options of one clustering job, validated in one place.

:class:`ClusterConfig` holds what is clustered, :class:`RunOptions` where it
runs (:class:`SchedulerOptions` and :class:`JobqueueOptions`, the batch jobs').
The command line, TOML job files and library callers all go through
:func:`coerce`, driven by the dataclass fields (their type hints, plus the
``choices`` / ``range`` / ``positive`` entries of their metadata), so an option
has one meaning and one check wherever it comes from.  Values are checked
against the field's type strictly: a flag is a boolean (``overwrite = "no"`` is
an error, not ``True``), a count is an integer (``k = 4.7`` is an error, not 4),
sizes are parsed by Dask's parser.  Messages name the parameter (``seed must
be ...``), which reads right both as ``--seed`` and ``seed=``.
"""

from __future__ import annotations

import functools
import math
import os
import types
import typing
from dataclasses import dataclass, field, fields

import numpy as np

from xtec.backend import CPU_ENGINES
from xtec.errors import ParameterError, check_choice
from xtec.mixture.parameters import COVARIANCE_TYPES
from xtec.preprocess import RESCALE_METHODS, THRESHOLD_METHODS
from xtec.preprocess.registration import REGISTER_MODES
from xtec.runtime.chunks import parse_chunks
from xtec.runtime.workers import parse_memory_limit
from xtec.spatial.smoothing import KERNELS, WEIGHTS

METHODS = ("xtec-d", "peaks", "smooth")
# Where the kept trajectories live while EM iterates: worker memory, a scratch
# Zarr store (written once, read every iteration), or nowhere (re-read from the
# input files every iteration); "auto" picks memory if they fit, else disk.
PERSIST_MODES = ("auto", "memory", "disk", "none")
PEAK_STATS = ("mean", "max")


def _opt(default, *, choices=None, range=None, positive=False):  # noqa: A002
    """A dataclass field whose metadata carries its check (see :func:`coerce`)."""
    meta = {k: v for k, v in (("choices", choices), ("range", range)) if v is not None}
    if positive:
        meta["positive"] = True
    return field(default=default, metadata=meta)


@dataclass
class ClusterConfig:
    """Every option of one clustering job (the CLI and TOML job files fill it).

    ``k`` is an int or ``"auto"`` (BIC elbow over ``bic_ks`` with ``bic_seeds``
    seeds).  ``method``: ``xtec-d`` (every voxel), ``peaks`` (one trajectory per
    connected component of the threshold mask), ``smooth`` (label smoothing
    with ``kernel``/``length_scale``/``unit_cell``/``smooth_iterations``).
    ``parent``/``parent_cluster``: re-cluster the voxels of one cluster of an
    earlier result (its mask replaces the threshold).  ``normalize``: divide
    each temperature by its scale against the smooth trend of the kept
    intensity (:mod:`xtec.preprocess.frames`); None (default) does it when the
    frames scatter or one was flagged for its scale; ``drop_temperatures``:
    leave the frames nearest these temperatures (K) out; ``drop_lost_frames``:
    leave out frames flagged for a lost part (voxels zero in that frame only).
    ``register``: resample every frame onto the coldest frame's lattice, its
    expansion measured from the Bragg peaks (:mod:`xtec.preprocess.registration`);
    ``auto`` (default) does it when the expansion moves the farthest peak by more
    than half a voxel.
    """

    inputs: list[str]
    out: str
    k: int | str = 4
    method: str = _opt("xtec-d", choices=METHODS)
    threshold: str | float = "kl"
    rescale: str = _opt("mean", choices=RESCALE_METHODS)
    covariance: str = _opt("diag", choices=COVARIANCE_TYPES)
    seed: int = _opt(0, range=(0, 2**32 - 1))
    n_init: int = _opt(3, range=(1, None))
    max_iter: int = _opt(500, range=(1, None))
    tol: float = _opt(1e-6, positive=True)
    ql: tuple[float, float] | None = None
    qk: tuple[float, float] | None = None
    qh: tuple[float, float] | None = None
    chunks: tuple[int, int, int] | None = None
    device: str = "cpu"
    # numba kernels or their NumPy twins on the CPU (auto: the kernels where this
    # node's cache holds them, see xtec.runtime.kernel_cache.resolve_engine)
    engine: str = _opt("auto", choices=CPU_ENGINES)
    persist: str = _opt("auto", choices=PERSIST_MODES)
    overwrite: bool = False
    kernel: str = _opt("local", choices=KERNELS)
    length_scale: float = _opt(1.0, positive=True)
    unit_cell: tuple[float, float, float] | None = None
    smooth_iterations: int = _opt(1, range=(0, None))
    neighbour_weights: str = _opt("uniform", choices=WEIGHTS)
    peak_stat: str = _opt("mean", choices=PEAK_STATS)
    # Peaks: hysteresis (xtec.spatial.grow): sub-cutoff voxels above the KL
    # background Gaussian's mean + this many sigmas, face-connected to one
    # component, are painted with its cluster where their own trajectory agrees
    # (1: CDW F1 0.787-0.869 -> 0.859-0.920 farther out, unchanged on the small
    # volume; docs/measured.md, Hysteresis).
    peak_grow: str | float = 1.0
    bic_ks: tuple[int, int] = (2, 14)
    bic_seeds: int = _opt(3, range=(1, None))
    parent: str | None = None
    parent_cluster: int | None = _opt(None, range=(0, None))
    # Frames (issue 27): divide out each temperature's scale against the smooth
    # trend of the kept (Bragg-region) intensity (None: when the frames need it,
    # see xtec.preprocess.frames.wants_normalize); leave frames out by temperature.
    normalize: bool | None = None
    drop_temperatures: list[float] | None = None
    drop_lost_frames: bool = True
    # Thermal expansion: resample each frame onto the coldest frame's lattice
    # (xtec.preprocess.registration); auto: when the lattice measurably moves.
    register: str = _opt("auto", choices=REGISTER_MODES)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """Every option's name (the dataclass fields): the keys a job file may hold."""
        return tuple(f.name for f in fields(cls))

    def validate(self) -> None:
        """Check every field (:func:`coerce`) and the rules between fields; raise
        :class:`ParameterError` naming the first bad parameter."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "inputs" and not value:
                self.inputs = []
                continue
            setattr(self, f.name, coerce(f.name, value))
        if not self.inputs and not self.parent:
            raise ParameterError("no input files given")
        if (self.parent is None) != (self.parent_cluster is None):
            raise ParameterError("a second round needs both parent (a RESULT.zarr) and "
                                 "parent_cluster")

    def gmm_kwargs(self) -> dict:
        """Keyword arguments of :class:`~xtec.mixture.gaussian_mixture.GaussianMixture` for this job."""
        return dict(covariance_type=self.covariance, tol=self.tol, max_iter=self.max_iter,
                    n_init=self.n_init, random_state=self.seed)

@dataclass
class SchedulerOptions:
    """Which Dask scheduler a job runs on (see :func:`xtec.runtime.clusters.dask_runtime`)."""

    workers: int = _opt(0, range=(0, None))
    threads_per_worker: int = _opt(1, range=(1, None))
    memory_limit: str | None = None
    scheduler: str | None = None
    scheduler_file: str | None = None
    progress: bool | None = None
    cluster: str | None = None


@dataclass
class JobqueueOptions:
    """Batch-job settings for dask-jobqueue (unset values come from its config file)."""

    cores: int | None = _opt(None, range=(1, None))
    memory: str | None = None
    processes: int | None = _opt(None, range=(1, None))
    walltime: str | None = None
    queue: str | None = None
    account: str | None = None
    jobs: int = _opt(1, range=(1, None))
    jobqueue_config: str | None = None
    job_extra: list[str] | None = None

    def cluster_kwargs(self) -> dict:
        kw = {k: getattr(self, k) for k in ("cores", "memory", "processes", "walltime", "queue",
                                            "account") if getattr(self, k) is not None}
        if self.job_extra:
            kw["job_extra_directives"] = list(self.job_extra)
        return kw


@dataclass
class RunOptions:
    """Where a job runs: the scheduler's options and the batch jobs'.  Their fields,
    in that order, are the run options of the command line and job files."""

    dask: SchedulerOptions = field(default_factory=SchedulerOptions)
    jobqueue: JobqueueOptions = field(default_factory=JobqueueOptions)

    @classmethod
    def from_options(cls, opts: dict) -> RunOptions:
        """The run options among checked options (:func:`coerce`); unset or None
        values take the defaults."""
        def part(kind):
            return kind(**{f.name: opts[f.name] for f in fields(kind)
                           if opts.get(f.name) is not None})

        return cls(part(SchedulerOptions), part(JobqueueOptions))


_RUN_PARTS = (SchedulerOptions, JobqueueOptions)


def cluster_keys() -> tuple[str, ...]:
    """Option names of the clustering itself: the fields of ClusterConfig."""
    return ClusterConfig.option_names()


def runtime_keys() -> tuple[str, ...]:
    return tuple(f.name for part in _RUN_PARTS for f in fields(part))


@functools.cache  # the classes do not change: read their hints once
def _hints() -> dict[str, object]:
    hints = dict(typing.get_type_hints(ClusterConfig))
    for part in _RUN_PARTS:
        hints.update(typing.get_type_hints(part))
    return hints




def _kind(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _fail(name: str, what: str, value) -> typing.NoReturn:
    raise ParameterError(f"{name} must be {what} (got {value!r}, {_kind(value)})")


def _as_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, np.integer):
            return int(value)
        _fail(name, "an integer", value)
    return int(value)


def _as_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if not isinstance(value, (np.integer, np.floating)):
            _fail(name, "a number", value)
    out = float(value)
    if not math.isfinite(out):
        _fail(name, "a finite number", value)
    return out


def _as_path(name: str, value) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        _fail(name, "a path (a non-empty string)", value)
    return value


def as_range(name: str, value):
    if isinstance(value, str):
        parts = value.split(":")
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        _fail(name, "MIN:MAX or [MIN, MAX]", value)
    try:
        if len(parts) != 2 or any(isinstance(p, bool) for p in parts):
            raise ValueError
        lo, hi = (float(p) for p in parts)
    except (TypeError, ValueError):
        _fail(name, "MIN:MAX or [MIN, MAX]", value)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        _fail(name, "two finite numbers MIN:MAX", value)
    return lo, hi


def _parse_k(value, strict: bool):
    if value == "auto":
        return "auto"
    if isinstance(value, str) and not strict:
        try:
            value = int(value)
        except ValueError:
            _fail("k", "a positive integer or 'auto'", value)
    if isinstance(value, bool) or not isinstance(value, int):
        _fail("k", "a positive integer or 'auto'", value)
    if value < 1:
        _fail("k", "a positive integer or 'auto'", value)
    return int(value)


def _parse_threshold(value):
    what = f"one of {THRESHOLD_METHODS} or an intensity cutoff >= 0"
    if isinstance(value, str):
        if value in THRESHOLD_METHODS:
            return value
        try:
            value = float(value)
        except ValueError:
            _fail("threshold", what, value)
    value = _as_float("threshold", value) if not isinstance(value, float) else value
    if not math.isfinite(value) or value < 0:
        _fail("threshold", what, value)
    return float(value)


def _parse_peak_grow(value):
    what = "'off' or a number of sigmas >= 0"
    if isinstance(value, str):
        if value == "off":
            return value
        try:
            value = float(value)
        except ValueError:
            _fail("peak_grow", what, value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail("peak_grow", what, value)
    if not math.isfinite(value) or value < 0:
        _fail("peak_grow", what, value)
    return float(value)


def _parse_triple(name, value):
    parts = value.split(",") if isinstance(value, str) else value
    try:
        if not isinstance(parts, (list, tuple)) or any(isinstance(p, bool) for p in parts):
            raise ValueError
        out = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or not all(math.isfinite(v) and v > 0 for v in out):
        _fail(name, "three positive numbers L,K,H", value)
    return out


def _parse_bic_ks(value):
    lo, hi = as_range("bic_ks", value)
    if lo != int(lo) or hi != int(hi) or not 1 <= lo <= hi:
        _fail("bic_ks", "integers MIN:MAX with 1 <= MIN <= MAX", value)
    return int(lo), int(hi)


def _parse_str_list(name, value):
    if isinstance(value, (str, os.PathLike)):
        return [_as_path(name, value)]
    if not isinstance(value, (list, tuple)):
        _fail(name, "a list of strings", value)
    return [_as_path(name, v) for v in value]


def _parse_temperatures(value):
    what = "temperatures in K (a list, or T1,T2,... on the command line)"
    parts = value.split(",") if isinstance(value, str) else value
    if isinstance(parts, (int, float)) and not isinstance(parts, bool):
        parts = [parts]
    if not isinstance(parts, (list, tuple)) or not parts:
        _fail("drop_temperatures", what, value)
    out = []
    for p in parts:
        try:
            if isinstance(p, bool):
                raise ValueError
            v = float(p)
        except (TypeError, ValueError):
            _fail("drop_temperatures", what, value)
        if not math.isfinite(v):
            _fail("drop_temperatures", what, value)
        out.append(v)
    return out


def _parse_memory_limit(value):
    return parse_memory_limit(value, "memory_limit")


_SPECIAL = {
    "k": None,  # needs ``strict``: see coerce
    "threshold": _parse_threshold,
    "peak_grow": _parse_peak_grow,
    "ql": lambda v: as_range("ql", v), "qk": lambda v: as_range("qk", v),
    "qh": lambda v: as_range("qh", v),
    "chunks": parse_chunks,
    "unit_cell": lambda v: _parse_triple("unit_cell", v),
    "bic_ks": _parse_bic_ks,
    "inputs": lambda v: _parse_str_list("inputs", v),
    "job_extra": lambda v: _parse_str_list("job_extra", v),
    "memory_limit": _parse_memory_limit,
    "drop_temperatures": _parse_temperatures,
    "out": lambda v: _as_path("out", v), "parent": lambda v: _as_path("parent", v),
    "scheduler_file": lambda v: _as_path("scheduler_file", v),
    "jobqueue_config": lambda v: _as_path("jobqueue_config", v),
}


def _strip_none(hint):
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else hint), True
    return hint, False


def coerce(name: str, value, strict: bool = True):
    """Check (and parse) one option's value against its field's type and range.

    ``strict``: the value comes from a job file or a library caller, so it must
    already have the right type (CLI values of ``k`` are strings and are parsed).
    """
    hint, optional = _strip_none(_hints()[name])
    if value is None:
        if optional or name in ("threshold",):
            return None
        _fail(name, "given a value", value)
    if name == "k":
        return _parse_k(value, strict)
    if name in _SPECIAL:
        out = _SPECIAL[name](value)
    elif hint is bool:
        if not isinstance(value, bool):
            _fail(name, "true or false (a boolean)", value)
        out = value
    elif hint is int:
        out = _as_int(name, value)
    elif hint is float:
        out = _as_float(name, value)
    elif hint is str:
        if not isinstance(value, str):
            _fail(name, "a string", value)
        out = value
    else:
        out = value
    meta = _metadata()[name]
    if "choices" in meta:
        check_choice(out, meta["choices"], name)
    if "range" in meta and out is not None:
        lo, hi = meta["range"]
        if (lo is not None and out < lo) or (hi is not None and out > hi):
            bound = f">= {lo}" if hi is None else f"between {lo} and {hi}"
            _fail(name, f"an integer {bound}", value)
    if meta.get("positive") and not out > 0:
        _fail(name, "a number > 0", value)
    return out


@functools.cache
def _metadata() -> dict[str, typing.Mapping]:
    return {f.name: f.metadata for cls in (ClusterConfig, *_RUN_PARTS) for f in fields(cls)}

