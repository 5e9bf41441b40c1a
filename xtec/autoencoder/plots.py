"""PNG figures for the autoencoder module (matplotlib, Agg backend).

Each function draws one figure, writes it to ``path`` and closes it; nothing is
shown on screen, so they work on headless machines.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def plot_relevance(
    grid: np.ndarray,
    pattern: np.ndarray,
    relevance: xr.Dataset,
    path: str | os.PathLike,
    *,
    xlabel: str = "2θ (deg)",
    title: str | None = None,
) -> Path:
    """The pattern coloured by the relevance of the peak each point belongs to.

    ``relevance`` is the Dataset of :meth:`FeatureSpaceAE.peak_relevance`; points
    outside every masking window are drawn in grey, peaks are labelled by rank.
    """
    from matplotlib.collections import LineCollection

    plt = _pyplot()
    grid = np.asarray(grid, dtype=float)
    y = np.asarray(pattern, dtype=float)
    colour = np.full(grid.size, np.nan)
    for lo, hi, r in zip(
        relevance["lo"].values, relevance["hi"].values, relevance["relevance"].values, strict=True
    ):
        inside = (grid >= lo) & (grid <= hi)
        colour[inside] = np.fmax(colour[inside], r)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(grid, y, color="0.75", lw=1.0, zorder=1)
    pts = np.column_stack([grid, y])
    segs = np.stack([pts[:-1], pts[1:]], axis=1)
    c = colour[:-1]
    keep = np.isfinite(c)
    lc = LineCollection(segs[keep], cmap="plasma", norm=plt.Normalize(0, 1), lw=2.0, zorder=2)
    lc.set_array(c[keep])
    ax.add_collection(lc)
    for pos, h, rank in zip(
        relevance["position"].values,
        relevance["height"].values,
        relevance["rank"].values,
        strict=True,
    ):
        ax.annotate(
            f"#{int(rank)}",
            (pos, h),
            textcoords="offset points",
            xytext=(0, 4),
            ha="center",
            fontsize=8,
        )
    fig.colorbar(lc, ax=ax, label="relevance (latent shift / largest)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("normalised intensity")
    ax.set_title(title or "peak relevance")
    ax.margins(y=0.12)
    return _save(fig, path)


def plot_latent(
    latent: np.ndarray,
    path: str | os.PathLike,
    *,
    colour: np.ndarray | None = None,
    colour_label: str = "",
    reference: np.ndarray | None = None,
    title: str = "feature space",
) -> Path:
    """Scatter of the first two latent coordinates, coloured by ``colour``.

    ``reference`` (n, 2), if given, is drawn as the reference path.
    """
    plt = _pyplot()
    z = np.atleast_2d(latent)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    if reference is not None:
        ax.plot(
            reference[:, 0],
            reference[:, 1] if reference.shape[1] > 1 else 0 * reference[:, 0],
            color="0.6",
            lw=1,
            zorder=1,
            label="reference path",
        )
    yz = z[:, 1] if z.shape[1] > 1 else np.zeros(len(z))
    sc = ax.scatter(z[:, 0], yz, c=colour, s=14, cmap="viridis", zorder=2)
    if colour is not None:
        fig.colorbar(sc, ax=ax, label=colour_label)
    ax.set_xlabel("z0")
    ax.set_ylabel("z1")
    ax.set_title(title)
    return _save(fig, path)


def plot_curves(
    curves: xr.DataArray,
    path: str | os.PathLike,
    *,
    label: str | None = None,
    offset: float = 0.0,
    title: str = "",
) -> Path:
    """Curves (n, m) on one axis, coloured in order, optionally stacked by ``offset``."""
    plt = _pyplot()
    first, axis = curves.dims
    n = curves.sizes[first]
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(8, 4))
    for i in range(n):
        tag = (
            f"{label} = {float(curves[label].values[i]):.3g}"
            if label and label in curves.coords
            else None
        )
        ax.plot(
            curves[axis].values,
            curves.values[i] + i * offset,
            color=cmap(i / max(n - 1, 1)),
            lw=1,
            label=tag,
        )
    if label and n <= 12:
        ax.legend(fontsize=7)
    ax.set_xlabel(axis)
    ax.set_ylabel("intensity")
    ax.set_title(title)
    return _save(fig, path)


def plot_sweep(
    sweep: xr.DataArray, path: str | os.PathLike, *, title: str = "latent sweep"
) -> Path:
    """One panel per latent dimension: decoded spectra from its 5th to 95th percentile."""
    plt = _pyplot()
    names = [str(v) for v in sweep["latent"].values]
    axis = sweep.dims[-1]
    n = len(names)
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False, sharex=True)
    cmap = plt.get_cmap("coolwarm")
    steps = sweep.sizes["step"]
    for j, name in enumerate(names):
        ax = axes[j // cols][j % cols]
        for s in range(steps):
            ax.plot(sweep[axis].values, sweep.values[j, s], color=cmap(s / max(steps - 1, 1)), lw=1)
        ax.set_title(name, fontsize=9)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle(f"{title} (blue: 5th percentile → red: 95th)", fontsize=10)
    return _save(fig, path)
