"""Spatial XTEC (XTEC-s): label smoothing (``smoothing``: an E-step that averages
responsibilities over neighbouring voxels) and peak averaging (``peaks``: one
trajectory per connected component of the threshold mask, across chunks)."""

from xtec.spatial.peaks import (
    HOW,
    Components,
    PeakResult,
    component_trajectories,
    fit_peaks,
    label_components,
    paint_components,
    peak_components,
)
from xtec.spatial.smoothing import (
    KERNELS,
    WEIGHTS,
    SmoothedGaussianMixture,
    fit_smooth,
    neighbour_matrix,
    neighbour_stencil,
    only_self_loops,
    resp_stats,
    responsibilities,
    unit_cell_from_axes,
)

__all__ = [
    "HOW", "KERNELS", "WEIGHTS", "Components", "PeakResult", "SmoothedGaussianMixture",
    "component_trajectories", "fit_peaks", "fit_smooth", "label_components", "neighbour_matrix",
    "neighbour_stencil", "only_self_loops", "paint_components", "peak_components", "resp_stats",
    "responsibilities", "unit_cell_from_axes",
]
