"""Spatial XTEC (XTEC-s): the two variants, re-exported under their old module name.

Peak averaging lives in :mod:`xtec.peaks`, label smoothing in :mod:`xtec.smoothing`.
"""

from xtec.peaks import (  # noqa: F401
    HOW,
    Components,
    PeakResult,
    component_trajectories,
    fit_peaks,
    label_components,
    paint_components,
    peak_components,
)
from xtec.smoothing import (  # noqa: F401
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
