"""Peaks of a pattern and the windows that mask them (NumPy, SciPy)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Peak:
    """One peak found in a pattern; ``lo``/``hi`` bound the masking window."""

    position: float
    height: float
    lo: float
    hi: float


def find_peaks(
    pattern: np.ndarray,
    grid: np.ndarray,
    *,
    prominence: float = 0.02,
    window: float | None = None,
    width_factor: float = 1.5,
    max_peaks: int | None = None,
) -> list[Peak]:
    """Peaks of a (normalised) pattern and the window to mask for each.

    Parameters
    ----------
    pattern, grid
        Shape (m,).
    prominence
        Minimum prominence as a fraction of the pattern maximum.
    window
        Full width of the masking window in grid units; by default
        ``2 * width_factor`` times the peak's full width at half maximum.
    max_peaks
        Keep only the most prominent ones.

    Returns
    -------
    Peaks sorted by position.
    """
    from scipy.signal import find_peaks as _find
    from scipy.signal import peak_widths

    y = np.asarray(pattern, dtype=float)
    scale = float(np.max(y) - np.min(y)) or 1.0
    idx, props = _find(y, prominence=prominence * scale)
    if max_peaks is not None and idx.size > max_peaks:
        keep = np.sort(np.argsort(props["prominences"])[::-1][:max_peaks])
        idx = idx[keep]
    if idx.size == 0:
        return []
    step = float(np.median(np.diff(grid)))
    widths = peak_widths(y, idx, rel_height=0.5)[0] * step
    peaks = []
    for i, w in zip(idx, widths, strict=True):
        half = window / 2 if window is not None else max(width_factor * w, 2 * step)
        peaks.append(
            Peak(float(grid[i]), float(y[i]), float(grid[i] - half), float(grid[i] + half))
        )
    return peaks


def mask_window(
    pattern: np.ndarray, grid: np.ndarray, lo: float, hi: float, edge: int = 3
) -> np.ndarray:
    """Replace ``pattern`` on ``lo <= grid <= hi`` by a straight background line.

    The line joins the medians of ``edge`` points just outside each end, so a
    peak is removed without leaving a step, whatever the background.

    Parameters
    ----------
    pattern, grid
        Shape (m,).
    lo, hi
        Window limits in grid units.

    Returns
    -------
    A masked copy, shape (m,).
    """
    y = np.array(pattern, dtype=float, copy=True)
    inside = (grid >= lo) & (grid <= hi)
    if not inside.any():
        return y
    idx = np.flatnonzero(inside)
    i0, i1 = idx[0], idx[-1]
    left = y[max(i0 - edge, 0) : i0] if i0 > 0 else y[i0 : i0 + 1]
    right = y[i1 + 1 : i1 + 1 + edge] if i1 + 1 < y.size else y[i1 : i1 + 1]
    yl, yr = float(np.median(left)), float(np.median(right))
    xl, xr_ = grid[max(i0 - 1, 0)], grid[min(i1 + 1, y.size - 1)]
    t = (grid[idx] - xl) / (xr_ - xl) if xr_ > xl else np.zeros(idx.size)
    y[idx] = yl + t * (yr - yl)
    return y
