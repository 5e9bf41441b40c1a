"""The options of one clustering job, validated: :class:`ClusterConfig`.

The CLI and TOML job files fill it; library callers build it directly.  Errors
name the parameter (``threshold``, ``bic_ks``), not a command-line flag.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from xtec.errors import ParameterError, check_choice
from xtec.mixture import COVARIANCE_TYPES
from xtec.preprocess import RESCALE_METHODS, THRESHOLD_METHODS
from xtec.smoothing import KERNELS, WEIGHTS

METHODS = ("xtec-d", "peaks", "smooth")
# Where the kept trajectories live while EM iterates: worker memory, a scratch
# Zarr store (written once, read every iteration), or nowhere (re-read from the
# input files every iteration); "auto" picks memory if they fit, else disk.
PERSIST_MODES = ("auto", "memory", "disk", "none")
PEAK_STATS = ("mean", "max")


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

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """Every option's name (the dataclass fields): the keys a job file may hold."""
        return tuple(f.name for f in fields(cls))

    def validate(self) -> None:
        """Raise :class:`ParameterError` naming the first bad parameter."""
        from xtec.options import check_config

        check_config(self)  # types and ranges of every field (xtec.options)
        if not self.inputs and not self.parent:
            raise ParameterError("no input files given")
        if self.k != "auto" and (not isinstance(self.k, int) or self.k < 1):
            raise ParameterError(f"k must be a positive integer or 'auto' (got {self.k!r})")
        check_choice(self.method, METHODS, "method")
        if isinstance(self.threshold, str) and self.threshold not in THRESHOLD_METHODS:
            try:
                self.threshold = float(self.threshold)
            except ValueError:
                raise ParameterError(
                    f"threshold must be one of {THRESHOLD_METHODS} or an intensity "
                    f"(got {self.threshold!r})"
                ) from None
        check_choice(self.rescale, RESCALE_METHODS, "rescale")
        check_choice(self.covariance, COVARIANCE_TYPES, "covariance")
        check_choice(self.persist, PERSIST_MODES, "persist")
        check_choice(self.kernel, KERNELS, "kernel")
        if not self.length_scale > 0 or self.smooth_iterations < 0:
            raise ParameterError("length_scale must be > 0 and smooth_iterations >= 0")
        check_choice(self.neighbour_weights, WEIGHTS, "neighbour_weights")
        check_choice(self.peak_stat, PEAK_STATS, "peak_stat")
        lo, hi = self.bic_ks
        if not 1 <= lo <= hi or self.bic_seeds < 1:
            raise ParameterError(f"bic_ks must be (MIN, MAX) with 1 <= MIN <= MAX "
                                 f"(got {self.bic_ks!r})")
        if (self.parent is None) != (self.parent_cluster is None):
            raise ParameterError("a second round needs both parent (a RESULT.zarr) and "
                                 "parent_cluster")

    def gmm_kwargs(self) -> dict:
        """Keyword arguments of :class:`~xtec.mixture.GaussianMixture` for this job."""
        return dict(covariance_type=self.covariance, tol=self.tol, max_iter=self.max_iter,
                    n_init=self.n_init, random_state=self.seed)
