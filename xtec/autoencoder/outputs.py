"""What the autoencoder commands write and check, as library functions the CLI calls.

Tables of feature-space results (CSV), the errors of estimates against known
values, and the check that an output can be written before any training.
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr

from xtec.errors import InputError


def check_output(path: str | os.PathLike) -> None:
    """Refuse, before any training, an output whose folder cannot take a new file.

    A real probe file is written and removed (permission bits alone say nothing
    for root or on a read-only mount).
    """
    parent = Path(path).expanduser().resolve().parent
    probe_dir = parent
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise InputError(f"cannot write {path}: {probe_dir} is a file, not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".xtec-probe-", dir=probe_dir)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise InputError(
            f"cannot write {path}: the folder {probe_dir} is not writable ({exc.strerror or exc}); "
            "choose another -o"
        ) from None


def estimate_errors(ds: xr.Dataset, data: xr.DataArray, names) -> dict[str, tuple[float, float]]:
    """Mean absolute error and 1-sigma coverage of each estimate whose truth ``data`` carries.

    ``ds`` is :meth:`FeatureSpaceAE.embed`'s result for ``data``; returns
    ``{name: (mae, share of |error| <= uncertainty)}`` for every name in
    ``names`` that is a numeric coordinate of ``data``.
    """
    out = {}
    for name in names:
        if name in data.coords and data[name].dtype.kind in "fiu":
            truth = np.asarray(data[name].values, dtype=float)
            err = np.abs(ds[name + "_estimate"].values - truth)
            out[name] = (float(err.mean()), float(np.mean(err <= ds[name + "_uncertainty"].values)))
    return out


def write_embed_table(ds: xr.Dataset, names, path: str | os.PathLike) -> None:
    """One CSV row per pattern: index, the patterns' 1-D coordinates, latent, cluster,
    strain (and, instrument-corrected, its uncertainty, zero shift and displacement)
    and ``<name>_estimate`` / ``<name>_uncertainty`` for each name."""
    first = ds["latent"].dims[0]
    z = ds["latent"].values
    columns = [n for n, c in ds.coords.items() if c.dims == (first,) and n != first]
    extra = [f"{n}_{w}" for n in names for w in ("estimate", "uncertainty")]
    measured = [
        v for v in ("strain", "strain_uncertainty", "zero_shift", "displacement") if v in ds
    ]
    extra = [*measured, *extra]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["index", *columns, *[f"z{j}" for j in range(z.shape[1])], "cluster", *extra])
        for i in range(z.shape[0]):
            w.writerow(
                [
                    i,
                    *[ds[c].values[i] for c in columns],
                    *z[i].tolist(),
                    int(ds["cluster"].values[i]),
                ]
                + [float(ds[e].values[i]) for e in extra]
            )


RELEVANCE_COLUMNS = ("position", "height", "lo", "hi", "latent_shift", "relevance")


def write_relevance_table(rel: xr.Dataset, path: str | os.PathLike) -> None:
    """One CSV row per peak of :meth:`FeatureSpaceAE.peak_relevance`, most relevant first."""
    order = rel["rank"].values.argsort()
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["rank", *RELEVANCE_COLUMNS])
        for j in order:
            w.writerow(
                [int(rel["rank"].values[j])] + [float(rel[k].values[j]) for k in RELEVANCE_COLUMNS]
            )
