"""Look at a result: a self-contained HTML report of its figures (:mod:`xtec.results.figures`).

``write_report(RESULT.zarr)`` writes, in one directory, the PNG figures

* ``trajectories.png`` - mean rescaled trajectory of each cluster with a +-1 sigma band,
* ``counts.png`` - voxels per cluster,
* ``slice_<dim>_<value>.png`` - HKL planes coloured by cluster (kept but unclustered
  voxels grey) over the log mean-intensity image,
* ``threshold.png`` - histogram of log mean intensity, the fitted Gaussian, the cutoff,
* ``bic.png`` - the BIC curve, when the store carries one,

and ``report.html``, which embeds the same PNGs as ``data:`` URIs (it opens from
disk with no server and no network) with the provenance table.

Every colour comes from the store's ``palette`` (colour-blind safe by default),
so a cluster has the same colour in every figure.  The plotting functions take
an open result Dataset and an optional Matplotlib ``Axes``; they are what the
``ds.xtec`` accessor calls.  Matplotlib is imported lazily and the report draws
on Agg canvases (no pyplot, no display needed).  Nothing here prints.
"""

from __future__ import annotations

import base64
import html
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from xtec.errors import InputError, ParameterError, XtecError
from xtec.io.result import Q_DIMS, decode_attrs
from xtec.io.store import load_result, undecodable
from xtec.results.figures import (
    cluster_ids,
    default_planes,
    hex_color,
    nearest_plane,
    parse_plane,
    plot_bic,
    plot_counts,
    plot_frames,
    plot_slice,
    plot_threshold,
    plot_trajectories,
)

log = logging.getLogger(__name__)

def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        if len(v) > 12:
            return ", ".join(_fmt(x) for x in v[:12]) + f", ... ({len(v)} in all)"
        return ", ".join(_fmt(x) for x in v) if v else "(none)"
    if v is None:
        return "-"
    return str(v)


def provenance_rows(ds: xr.Dataset) -> list[tuple[str, str]]:
    """Flattened ``(key, value)`` rows of the store's attributes."""
    rows = []

    def walk(prefix, v):
        if isinstance(v, dict) and v:
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else str(k), x)
        else:
            rows.append((prefix, _fmt(v)))

    for key, value in decode_attrs(ds.attrs).items():
        if key == "bic":
            continue
        walk(key, value)
    return rows


# --------------------------------------------------------------------------- report
def _save(ax, path: Path, dpi: int) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = ax.figure
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi, facecolor="white", bbox_inches="tight", pad_inches=0.08)
    return path


def _plane_name(dim: str, value: float) -> str:
    v = f"{value:+.3f}".replace("+", "p").replace("-", "m").replace(".", "_")
    return f"slice_{dim}_{v}.png"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1150px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px
solid #ddd;padding-bottom:.2em}
.sub{color:#666;margin-top:0} figure{display:inline-block;margin:.5em 1em .5em 0;
vertical-align:top} figcaption{font-size:.85em;color:#555;max-width:560px}
img{max-width:100%;height:auto;border:1px solid #eee}
table{border-collapse:collapse;font-size:.85em} td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:left;vertical-align:top} th{background:#f4f4f4} td.v{font-family:ui-monospace,
Menlo,Consolas,monospace;word-break:break-all;max-width:780px}
.sw{display:inline-block;width:1em;height:1em;border:1px solid #333;vertical-align:middle}
"""


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" '
        f'data-file="{html.escape(path.name)}">'
    )


def _figure(path: Path, caption: str) -> str:
    return (
        f"<figure>{_img_tag(path, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def write_report(
    result_path: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    planes: Sequence[str | tuple[str, float]] | None = None,
    dpi: int = 110,
    title: str | None = None,
) -> Path:
    """Write the PNG figures and a self-contained ``report.html`` for a result store.

    Parameters
    ----------
    result_path : path of a finished ``.zarr`` result store
    out_dir : directory for the report (created); default ``<result>_report`` beside the store
    planes : planes to draw, e.g. ``["Ql=0", "Qh=0.5"]`` (r.l.u., nearest plane);
        default: for each axis the plane with the most clustered voxels
    dpi : resolution of the PNGs

    Returns
    -------
    Path of ``report.html``.
    """
    result_path = Path(result_path)
    ds = load_result(result_path)
    out = _report_dir(result_path, out_dir)
    created = not out.exists()
    try:
        return _write_report(ds, result_path, out, planes, title, dpi)
    except Exception as exc:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        name = None if isinstance(exc, XtecError) else undecodable(ds)
        if name is None:
            raise
        # A store without checksums (written before them) whose chunk fails to decode.
        raise InputError(f"{result_path}: {name!r} cannot be read ({exc}); the store is "
                         "damaged, run it again") from None


def _write_report(ds, result_path: Path, out: Path, planes, title, dpi) -> Path:
    chosen = [parse_plane(p) for p in planes] if planes else default_planes(ds)
    for dim, value in chosen:
        nearest_plane(ds, dim, value)  # fail before writing anything
    out.mkdir(parents=True, exist_ok=True)
    ds = _with_small_loaded(ds)
    figs = _draw_figures(ds, out, chosen, dpi)
    html_path = out / "report.html"
    html_path.write_text(_html(ds, result_path, figs, title), encoding="utf-8")
    log.info("wrote %s (%d figures)", html_path, len(figs))
    return html_path


def _report_dir(result_path: Path, out_dir) -> Path:
    """``out_dir``, default ``<result>_report`` beside the store; refused if a file."""
    if out_dir is None:
        stem = result_path.name[:-5] if result_path.name.endswith(".zarr") else result_path.name
        out_dir = result_path.parent / f"{stem}_report"
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ParameterError(f"{out} exists and is not a directory")
    return out


#: Small variables, read into memory once (labels, mask and mean are read per plane).
_SMALL = ("palette", "cluster_mean", "cluster_std", "cluster_count", "weights",
          "threshold_hist", "threshold_edges")


def _with_small_loaded(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.copy()
    for v in _SMALL:
        if v in ds:
            ds[v] = ds[v].load()
    return ds


def _draw_figures(ds: xr.Dataset, out: Path, chosen, dpi: int) -> list[tuple[str, Path, str]]:
    """Every figure of the report as a PNG in ``out``: (section, path, caption)."""
    figs = [
        ("Clusters", _save(plot_trajectories(ds), out / "trajectories.png", dpi),
         "Mean rescaled trajectory of each cluster, with a \u00b11\u03c3 band."),
        ("Clusters", _save(plot_counts(ds), out / "counts.png", dpi),
         "Voxels assigned to each cluster."),
    ]
    for dim, value in chosen:
        ax = plot_slice(ds, dim, value)
        exact = nearest_plane(ds, dim, value)[1]
        figs.append(("Reciprocal space", _save(ax, out / _plane_name(dim, exact), dpi),
                     f"{dim} = {exact:g} r.l.u.: voxels coloured by cluster; grey: kept but "
                     "unclustered; dark: log mean intensity of dropped voxels."))
    figs.append(("Threshold", _save(plot_threshold(ds), out / "threshold.png", dpi),
                 "Histogram of log mean intensity with the Gaussian fitted to the "
                 "background and the cutoff."))
    if "frame_flagged" in ds:
        flagged = [f"{t:g} K" for t, f in zip(ds["temperature"].values, ds["frame_flagged"].values)
                   if f]
        figs.append(("Frames", _save(plot_frames(ds), out / "frames.png", dpi),
                     "Per-temperature statistics of the input, each relative to its median; "
                     + (f"flagged as bad frames: {', '.join(flagged)}." if flagged
                        else "no frame flagged.")))
    ax = plot_bic(ds)
    if ax is not None:
        figs.append(("Model selection", _save(ax, out / "bic.png", dpi),
                     "BIC over the number of clusters K."))
    return figs


def _html(ds: xr.Dataset, result_path: Path, figs, title: str | None) -> str:
    title = title or f"xtec report: {result_path.name}"
    pal = np.asarray(ds["palette"].values)
    ids = cluster_ids(ds)
    counts = np.asarray(ds["cluster_count"].values) if "cluster_count" in ds else [None] * len(ids)
    weights = np.asarray(ds["weights"].values) if "weights" in ds else [None] * len(ids)
    rows = []
    for j, c in enumerate(ids):
        hx = hex_color(pal[j])
        rows.append(
            f'<tr><td><span class="sw" style="background:{hx}"></span> {c}</td><td>{hx}</td>'
            f"<td>{'' if counts[j] is None else f'{int(counts[j]):,}'}</td>"
            f"<td>{'' if weights[j] is None else f'{float(weights[j]):.3f}'}</td></tr>"
        )
    a = ds.attrs
    sub = (
        f"method {html.escape(str(a.get('method', '?')))}, K = {a.get('k', len(ids))}, "
        f"rescale {html.escape(str(a.get('rescale', '?')))}, "
        f"{ds.sizes.get('temperature', '?')} temperatures, "
        f"{' x '.join(str(ds.sizes[d]) for d in Q_DIMS if d in ds.sizes)} voxels"
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="sub">{sub}</p>',
        "<table><tr><th>cluster</th><th>colour</th><th>voxels</th><th>weight</th></tr>",
        *rows,
        "</table>",
    ]
    section = None
    for sec, path, caption in figs:
        if sec != section:
            parts.append(f"<h2>{html.escape(sec)}</h2>")
            section = sec
        parts.append(_figure(path, caption))
    parts.append("<h2>Provenance</h2><table><tr><th>key</th><th>value</th></tr>")
    for k, v in provenance_rows(ds):
        parts.append(f'<tr><td>{html.escape(k)}</td><td class="v">{html.escape(v)}</td></tr>')
    parts.append("</table></body></html>")
    return "\n".join(parts) + "\n"
