"""Preprocessing as in XTEC: zero mask, background threshold, rescaling, trajectories.

:mod:`xtec.preprocess.threshold` finds the background cutoff from the mean volume;
:mod:`xtec.preprocess.trajectories` streams the first pass and holds the rescaled
trajectories of the kept voxels.
"""

from xtec.preprocess.threshold import (
    THRESHOLD_METHODS,
    LogIntensityStats,
    Threshold,
    above_cutoff_block,
    compute_threshold,
    iqr_ranks,
    keep_mask,
    kl_cutoff,
    kl_threshold_values,
    log_intensity_stats,
    order_statistics,
)
from xtec.preprocess.trajectories import (
    RESCALE_METHODS,
    Trajectories,
    VoxelSummary,
    assemble_trajectories,
    clean_block,
    extract_trajectories,
    flat_indices_block,
    kept_block_keys,
    mean_block,
    paint,
    paint_results,
    rescale_block,
    summarize,
    summary_block,
    trajectories_block,
)

__all__ = [
    "LogIntensityStats",
    "RESCALE_METHODS",
    "THRESHOLD_METHODS",
    "Threshold",
    "Trajectories",
    "VoxelSummary",
    "above_cutoff_block",
    "assemble_trajectories",
    "clean_block",
    "compute_threshold",
    "extract_trajectories",
    "flat_indices_block",
    "iqr_ranks",
    "keep_mask",
    "kl_cutoff",
    "kl_threshold_values",
    "log_intensity_stats",
    "mean_block",
    "order_statistics",
    "kept_block_keys",
    "paint",
    "paint_results",
    "rescale_block",
    "summarize",
    "summary_block",
    "trajectories_block",
]
