"""Figures of a result: cluster colours, HKL planes, trajectories, counts,
threshold histogram, BIC curve.

Every colour comes from the store's ``palette`` (colour-blind safe by default),
so a cluster has the same colour in every figure.  The plotting functions take
an open result Dataset and an optional Matplotlib ``Axes``; they are what the
``ds.xtec`` accessor and :func:`xtec.results.report.write_report` call.  Matplotlib is
imported lazily; without an ``Axes`` they draw on an Agg canvas (no pyplot, no
display needed).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence

import numpy as np
import xarray as xr

from xtec.errors import ParameterError
from xtec.io.result import (
    KEPT_GREY,
    Q_DIMS,
    decode_value,
)
from xtec.mixture.select import BICResult, choose_k

log = logging.getLogger(__name__)

# The log-intensity image is drawn in this grey range, darker than KEPT_GREY.
_BASE_GREY = (0.04, 0.38)


def palette_rgb(ds: xr.Dataset) -> np.ndarray:
    """The store's palette as (k, 3) floats in [0, 1]."""
    return np.asarray(ds["palette"].values, dtype=np.float64) / 255.0


def cluster_ids(ds: xr.Dataset) -> np.ndarray:
    if "cluster" in ds.coords:
        return np.asarray(ds["cluster"].values)
    return np.arange(ds.sizes["cluster"])


def hex_color(rgb) -> str:
    r, g, b = (int(round(float(c))) for c in rgb)
    return f"#{r:02X}{g:02X}{b:02X}"


# --------------------------------------------------------------------------- planes
def parse_plane(text: str | tuple) -> tuple[str, float]:
    """``"Ql=0"`` (or ``"l=0.5"``, ``("Qk", 1)``) -> ``("Ql", 0.0)``."""
    if isinstance(text, tuple):
        dim, value = text
    else:
        if "=" not in str(text):
            raise ParameterError(f"a plane is DIM=VALUE, e.g. Ql=0 (got {text!r})")
        dim, value = str(text).split("=", 1)
    key = str(dim).strip().lower()
    key = {"l": "ql", "k": "qk", "h": "qh"}.get(key, key)
    names = {d.lower(): d for d in Q_DIMS}
    if key not in names:
        raise ParameterError(f"a plane's dimension must be one of {Q_DIMS} (got {dim!r})")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ParameterError(
            f"a plane's position must be a number in r.l.u. (got {value!r})"
        ) from None
    return names[key], v


def default_planes(
    ds: xr.Dataset, per_axis: int = 1, dims: Sequence[str] = Q_DIMS
) -> list[tuple[str, float]]:
    """The planes with the most clustered voxels: ``per_axis`` for each of ``dims``."""
    clustered = ds["labels"] >= 0
    out = []
    for dim in dims:
        if ds.sizes.get(dim, 0) < 2 and len(dims) > 1:
            continue
        other = [d for d in Q_DIMS if d != dim]
        counts = np.asarray(clustered.sum(other).values)
        order = np.argsort(-counts, kind="stable")[:per_axis]
        for i in sorted(order):
            out.append((dim, float(ds[dim].values[i])))
    return out


def nearest_plane(ds: xr.Dataset, dim: str, value: float) -> tuple[int, float]:
    coord = np.asarray(ds[dim].values, dtype=np.float64)
    lo, hi = float(coord.min()), float(coord.max())
    step = float(np.min(np.abs(np.diff(coord)))) if coord.size > 1 else 0.0
    if not (lo - step / 2 - 1e-9 <= value <= hi + step / 2 + 1e-9):
        raise ParameterError(f"{dim}={value:g} is outside the result ({dim} {lo:g} to {hi:g})")
    i = int(np.argmin(np.abs(coord - value)))
    return i, float(coord[i])


def slice_rgb(ds: xr.Dataset, dim: str, value: float) -> tuple[np.ndarray, dict]:
    """RGB image (rows, cols, 3) of one plane and its axes.

    Clustered voxels take their palette colour, kept-but-unclustered voxels
    :data:`KEPT_GREY`, the rest the log mean intensity in dark grey.
    Returns the image (floats in [0, 1]) and ``{"x": dim, "y": dim, "extent":
    [...], "value": exact plane position}``; rows run along ``y`` upwards.
    """
    i, exact = nearest_plane(ds, dim, value)
    ydim, xdim = [d for d in Q_DIMS if d != dim]
    sel = {dim: i}
    labels = np.asarray(ds["labels"].isel(sel).transpose(ydim, xdim).values)
    if "mask" in ds:
        mask = np.asarray(ds["mask"].isel(sel).transpose(ydim, xdim).values, dtype=bool)
    else:
        mask = labels >= 0
    if "mean_intensity" in ds:
        m = np.asarray(ds["mean_intensity"].isel(sel).transpose(ydim, xdim).values, np.float64)
        lg = np.log1p(np.clip(np.nan_to_num(m), 0, None))
        pos = lg[lg > 0]
        if pos.size:
            lo, hi = np.percentile(pos, [1, 99.5])
            g = np.clip((lg - lo) / max(hi - lo, 1e-12), 0, 1)
        else:
            g = np.zeros_like(lg)
        g = _BASE_GREY[0] + (_BASE_GREY[1] - _BASE_GREY[0]) * g
    else:
        g = np.full(labels.shape, _BASE_GREY[0])
    img = np.repeat(g[..., None], 3, axis=-1)
    img[mask & (labels < 0)] = np.asarray(KEPT_GREY) / 255.0
    pal = palette_rgb(ds)
    ok = (labels >= 0) & (labels < len(pal))
    img[ok] = pal[labels[ok]]
    xs = np.asarray(ds[xdim].values, np.float64)
    ys = np.asarray(ds[ydim].values, np.float64)

    def _ext(c):
        if c.size < 2:
            return c[0] - 0.5, c[0] + 0.5
        h = abs(c[1] - c[0]) / 2
        return min(c[0], c[-1]) - h, max(c[0], c[-1]) + h

    if xs.size > 1 and xs[0] > xs[-1]:
        img = img[:, ::-1]
    if ys.size > 1 and ys[0] > ys[-1]:
        img = img[::-1]
    extent = [*_ext(xs), *_ext(ys)]
    return img, {"x": xdim, "y": ydim, "extent": extent, "value": exact, "dim": dim}


# --------------------------------------------------------------------------- figures
def _new_axes(ax=None, figsize=(6.4, 4.2)):
    """``ax`` itself, or a fresh Agg figure's axes (no pyplot)."""
    if ax is not None:
        return ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig.add_subplot()


def plot_trajectories(
    ds: xr.Dataset, clusters: Iterable[int] | None = None, ax=None, band: bool = True
):
    """Mean rescaled trajectory of each cluster with a +-1 sigma band."""
    ax = _new_axes(ax)
    pal = palette_rgb(ds)
    t = np.asarray(ds["temperature"].values, np.float64)
    mean = np.asarray(ds["cluster_mean"].values, np.float64)
    std = np.asarray(ds["cluster_std"].values, np.float64)
    count = np.asarray(ds["cluster_count"].values) if "cluster_count" in ds else None
    ids = list(cluster_ids(ds))
    wanted = ids if clusters is None else list(clusters)
    for c in wanted:
        j = ids.index(c)
        label = f"cluster {c}" + (f" ({int(count[j]):,} voxels)" if count is not None else "")
        if band:
            ax.fill_between(
                t, mean[j] - std[j], mean[j] + std[j], color=pal[j], alpha=0.25, linewidth=0
            )
        ax.plot(t, mean[j], color=pal[j], lw=2.2, marker="o", ms=3.5, label=label)
    units = ds["temperature"].attrs.get("units", "K")
    ax.set_xlabel(f"temperature ({units})")
    resc = ds.attrs.get("rescale", "")
    ax.set_ylabel(f"rescaled intensity ({resc})" if resc else "rescaled intensity")
    ax.set_title("cluster mean trajectories (band: \u00b11\u03c3)")
    ax.legend(fontsize="small", frameon=False)
    return ax


def plot_frames(ds: xr.Dataset, ax=None):
    """Per-temperature statistics of the input (each relative to its median):
    the frame's scale (median voxel against its own mean), total, kept
    (Bragg-region) and background intensity; flagged frames marked."""
    ax = _new_axes(ax)
    t = np.asarray(ds["temperature"].values, np.float64)
    order = np.argsort(t)
    for name, label, style in (("frame_scale", "scale (median voxel)", "o-"),
                               ("frame_total", "total", "s-"),
                               ("frame_kept", "kept (Bragg region)", "^-"),
                               ("frame_background", "background", "v-"),
                               ("frame_correction", "--normalize divided by", "k:")):
        if name not in ds:
            continue
        y = np.asarray(ds[name].values, np.float64)
        med = np.median(y[np.isfinite(y) & (y > 0)]) if (y > 0).any() else 1.0
        if name == "frame_correction" and np.allclose(y, 1.0):
            continue
        ax.plot(t[order], (y / med)[order], style, ms=3.5, lw=1.2, label=label)
    flagged = np.asarray(ds["frame_flagged"].values, bool)
    for i in np.flatnonzero(flagged):
        ax.axvline(t[i], color="#D55E00", lw=6, alpha=0.25)
    ax.set_xlabel(f"temperature ({ds['temperature'].attrs.get('units', 'K')})")
    ax.set_ylabel("relative to the median over T")
    n = int(flagged.sum())
    title = "frames: " + (f"{n} flagged (shaded)" if n else "none flagged")
    gone = [float(v) for k in ("lost_frames_left_out", "dropped_temperatures")
            for v in (decode_value(ds.attrs.get(k)) or [])]
    if gone:
        title += "; left out: " + ", ".join(f"{v:g} K" for v in sorted(gone))
    ax.set_title(title)
    ax.legend(fontsize="small", frameon=False)
    return ax


def plot_counts(ds: xr.Dataset, ax=None):
    """Voxels per cluster, bars in the palette colours."""
    ax = _new_axes(ax, figsize=(5.0, 3.6))
    pal = palette_rgb(ds)
    ids = cluster_ids(ds)
    if "cluster_count" in ds:
        counts = np.asarray(ds["cluster_count"].values, np.int64)
    else:
        lab = np.asarray(ds["labels"].values).ravel()
        counts = np.bincount(lab[lab >= 0], minlength=len(ids))[: len(ids)]
    bars = ax.bar([str(c) for c in ids], counts, color=pal, edgecolor="black", linewidth=0.5)
    for b, n in zip(bars, counts):
        ax.annotate(
            f"{int(n):,}",
            (b.get_x() + b.get_width() / 2, b.get_height()),
            ha="center",
            va="bottom",
            fontsize="small",
        )
    ax.set_xlabel("cluster")
    ax.set_ylabel("voxels")
    ax.set_title("voxels per cluster")
    ax.margins(y=0.12)
    return ax


def plot_slice(
    ds: xr.Dataset,
    dim: str | None = None,
    value: float | None = None,
    ax=None,
    legend: bool = True,
    **plane,
):
    """One HKL plane coloured by cluster over the log mean intensity.

    ``plot_slice(ds, "Ql", 0.0)`` or ``plot_slice(ds, Ql=0.0)``; the nearest plane is drawn.
    """
    if plane:
        if dim is not None or len(plane) != 1:
            raise ParameterError("give one plane, e.g. Ql=0.0")
        ((dim, value),) = plane.items()
    if dim is None:
        dim, value = default_planes(ds, dims=("Ql",))[0]
    dim, value = parse_plane((dim, value))
    img, info = slice_rgb(ds, dim, value)
    ax = _new_axes(ax, figsize=(5.6, 5.0))
    ext = info["extent"]
    ratio = (ext[3] - ext[2]) / max(ext[1] - ext[0], 1e-12)
    ax.imshow(
        img,
        origin="lower",
        extent=ext,
        interpolation="nearest",
        aspect="equal" if 0.2 <= ratio <= 5 else "auto",
    )
    ax.set_xlabel(f"{info['x']} (r.l.u.)")
    ax.set_ylabel(f"{info['y']} (r.l.u.)")
    ax.set_title(f"{dim} = {info['value']:g}")
    if legend:
        from matplotlib.patches import Patch

        pal = palette_rgb(ds)
        handles = [Patch(color=pal[j], label=f"cluster {c}") for j, c in enumerate(cluster_ids(ds))]
        labels = np.asarray(ds["labels"].isel({dim: nearest_plane(ds, dim, value)[0]}).values)
        mask = (
            np.asarray(ds["mask"].isel({dim: nearest_plane(ds, dim, value)[0]}).values)
            if "mask" in ds
            else labels >= 0
        )
        if np.any(mask & (labels < 0)):
            handles.append(Patch(color=np.asarray(KEPT_GREY) / 255, label="kept, unclustered"))
        ax.legend(
            handles=handles,
            fontsize="x-small",
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            frameon=False,
        )
    return ax


def _threshold_histogram(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    if "threshold_hist" in ds and ds.sizes.get("bin", 0) > 0:
        return (
            np.asarray(ds["threshold_hist"].values, np.float64),
            np.asarray(ds["threshold_edges"].values, np.float64),
        )
    # Simple / value / no threshold: histogram the log mean intensity here.
    m = np.asarray(ds["mean_intensity"].values, np.float64).ravel()
    x = np.log(m[m > 0])
    if x.size == 0:
        return np.zeros(0), np.zeros(1)
    q25, q75 = np.percentile(x, [25, 75])
    width = (q75 - q25) / x.size ** (1 / 3) if q75 > q25 else 0.1
    nb = int(min(max(np.ceil((x.max() - x.min()) / width), 10), 2000))
    return np.histogram(x, bins=nb)


def plot_threshold(ds: xr.Dataset, ax=None):
    """Histogram of log mean intensity, the Gaussian fitted to the background, the cutoff."""
    ax = _new_axes(ax)
    thr = ds.attrs.get("threshold") or {}
    if isinstance(thr, str):
        thr = decode_value(thr)
    if "mean_intensity" not in ds and "threshold_hist" not in ds:
        ax.text(0.5, 0.5, "no threshold data in this store", ha="center", transform=ax.transAxes)
        return ax
    hist, edges = _threshold_histogram(ds)
    if hist.size:
        ax.stairs(hist, edges, fill=True, color="#BBBBBB", label="voxels")
        ax.stairs(hist, edges, color="#555555", lw=0.6)
        cut = thr.get("cutoff_log")
        mu, sd = thr.get("gaussian_mean"), thr.get("gaussian_std")
        width = float(edges[1] - edges[0])
        centres = 0.5 * (edges[:-1] + edges[1:])
        if _finite(mu) and _finite(sd) and sd > 0:
            below = hist[centres < cut].sum() if _finite(cut) else hist.sum()
            xs = np.linspace(edges[0], edges[-1], 400)
            g = below * width * np.exp(-0.5 * ((xs - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
            g = np.where(g >= 0.3, g, np.nan)
            ax.plot(
                xs,
                g,
                color="#0072B2",
                lw=1.8,
                label=f"Gaussian fit (\u03bc={mu:.3g}, \u03c3={sd:.3g})",
            )
        if _finite(cut):
            ax.axvline(
                cut,
                color="#D55E00",
                lw=1.8,
                ls="--",
                label=f"cutoff {cut:.3g} (I = {math.exp(cut):.3g})",
            )
        ax.set_yscale("log")
        ax.set_ylim(0.8, max(float(hist.max()), 1.0) * 3)
    kept = thr.get("n_kept")
    title = f"threshold: {thr.get('method', '?')}"
    if kept is not None and thr.get("n_nonzero"):
        title += f", keeps {int(kept):,} of {int(thr['n_nonzero']):,} non-zero voxels"
    ax.set_title(title)
    ax.set_xlabel("log mean intensity")
    ax.set_ylabel("voxels")
    ax.legend(fontsize="small", frameon=False)
    return ax


def _finite(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def bic_curve(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray] | None:
    """(K values, BIC) from the store's ``bic`` variable along ``bic_k`` (written by
    ``-k auto``); ``None`` when the store has none."""
    if "bic" not in ds.variables or "bic_k" not in ds.variables:
        return None
    vals = np.asarray(ds["bic"].values, np.float64).ravel()
    ks = np.asarray(ds["bic_k"].values, np.float64).ravel()
    if ks.size == 0 or ks.size != vals.size:
        return None
    order = np.argsort(ks)
    return ks[order], vals[order]


def plot_bic(ds: xr.Dataset, ax=None):
    """The BIC curve over K with the chosen K marked; ``None`` if the store has none."""
    curve = bic_curve(ds)
    if curve is None:
        return None
    ks, vals = curve
    ax = _new_axes(ax, figsize=(5.0, 3.6))
    ax.plot(ks, vals, marker="o", color="#0072B2")
    good = np.isfinite(vals)
    if good.any():
        best = ks[good][np.argmin(vals[good])]
        ax.axvline(best, color="#D55E00", ls=":", label=f"minimum at K = {best:g}")
    k = ds.attrs.get("k")
    if k is not None and _finite(k):
        ax.axvline(float(k), color="#009E73", ls="--", label=f"K used = {k}")
    ax.set_xlabel("K (clusters)")
    ax.set_ylabel("BIC")
    ax.set_title("Bayesian information criterion")
    ax.legend(fontsize="small", frameon=False)
    return ax


def plot_bic_scan(result: BICResult, path, rule: str = "elbow", frac: float = 0.25) -> str:
    """Write a PNG of BIC (best, mean +- std over seeds) and log-likelihood versus K,
    the chosen K marked.  Returns the path.  Uses the Agg canvas directly, so it
    neither needs a display nor changes matplotlib's global backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k_sel = choose_k(result, rule, frac)
    k_min = choose_k(result, "min")
    fig = Figure(figsize=(8, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ks = result.ks
    ax1.errorbar(
        ks,
        result.mean_bic,
        yerr=result.std_bic,
        fmt="o-",
        color="0.6",
        ms=3,
        label="mean over seeds",
    )
    ax1.plot(ks, result.best_bic, "s-", color="C0", ms=4, label="best")
    i = int(np.flatnonzero(ks == k_sel)[0])
    ax1.plot([k_sel], [result.best_bic[i]], "*", color="C3", ms=16, label=f"{rule}: K={k_sel}")
    if k_min != k_sel:
        j = int(np.flatnonzero(ks == k_min)[0])
        ax1.plot([k_min], [result.best_bic[j]], "v", color="C2", ms=10, label=f"min: K={k_min}")
    ax1.set_xlabel("K")
    ax1.set_ylabel("BIC")
    ax1.legend(fontsize=8)
    ax2.plot(ks, result.best_loglik, "o-", color="C1", ms=4)
    ax2.axvline(k_sel, color="C3", ls="--", lw=1)
    ax2.set_xlabel("K")
    ax2.set_ylabel("mean log-likelihood per point")
    fig.suptitle(f"BIC scan: N={result.n_points}, T={result.n_features}")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return str(path)


# --------------------------------------------------------------------------- provenance
