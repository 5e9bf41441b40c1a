"""Result Dataset <-> Zarr.

The store is written to a private ``OUT.zarr.partial-<run>`` and renamed to
``OUT.zarr`` only after every variable and the final ``complete=true``
attribute are written, so an interrupted run never leaves something at
``OUT.zarr`` that looks complete (see :mod:`xtec.io.output`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import xarray as xr

from xtec.errors import InputError, ParameterError

log = logging.getLogger(__name__)

# Okabe-Ito (without black), then Paul Tol's "muted": colour-blind safe and
# distinct from the grey (kept, not clustered) and black (dropped) of the maps.
_PALETTE_HEX = [
    "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",
    "#CC6677", "#332288", "#DDCC77", "#117733", "#88CCEE", "#882255", "#44AA99",
    "#999933", "#AA4499",
]
KEPT_UNCLUSTERED = (128, 128, 128)
DROPPED = (0, 0, 0)


def palette(k: int) -> np.ndarray:
    """(k, 3) uint8 colours, colour-blind safe for k <= 16."""
    base = [tuple(int(h[i:i + 2], 16) for i in (1, 3, 5)) for h in _PALETTE_HEX]
    if k > len(base):
        import matplotlib

        extra = matplotlib.colormaps["viridis"](np.linspace(0, 1, k - len(base)))[:, :3]
        base += [tuple(int(round(255 * c)) for c in row) for row in extra]
    return np.array(base[:k], dtype=np.uint8)


def color_block(labels: np.ndarray, mask: np.ndarray, pal: np.ndarray) -> np.ndarray:
    """RGB per voxel: palette colour, grey if kept but unclustered, black if dropped.

    labels, mask : (...,) -> (..., 3) uint8
    """
    out = np.empty(labels.shape + (3,), np.uint8)
    out[...] = DROPPED
    out[mask] = KEPT_UNCLUSTERED
    lab = labels >= 0
    out[lab] = pal[labels[lab]]
    return out


def check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """Fail before any work if the output exists and may not be replaced."""
    path = Path(path)
    if path.suffix != ".zarr":
        raise ParameterError(f"the output must be a .zarr directory (got {path})")
    if path.exists() and not overwrite:
        raise ParameterError(f"{path} exists; pass --overwrite to replace it")
    if not path.parent.is_dir():
        raise ParameterError(f"the output directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise ParameterError(f"the output directory {path.parent} is not writable")
    return path


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    return v


def _uniform_chunks(ds: xr.Dataset) -> xr.Dataset:
    # Zarr needs equal chunks (but the last); sub-volume selection can make the
    # first chunk short.
    sizes = {}
    for var in ds.data_vars.values():
        if var.chunks:
            for dim, ch in zip(var.dims, var.chunks):
                sizes[dim] = max(sizes.get(dim, 0), max(ch))
    return ds.chunk(sizes) if sizes else ds


def write_result(ds: xr.Dataset, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a result Dataset to ``path`` (a .zarr directory), atomically.

    Under the run's exclusive claim on ``path`` (:mod:`xtec.io.output`): written
    to a private ``.partial-<run>`` name, then swapped in by renames.
    """
    from xtec.io.output import claim_output, manifest, replace_store

    path = check_output(path, overwrite)
    with claim_output(path) as claim:
        check_output(path, overwrite)  # again, now that no other run can write it
        tmp = claim.partial
        ds = ds.copy()
        ds.attrs["manifest"] = manifest(ds)
        ds.attrs = {k: json.dumps(_jsonable(v)) if isinstance(v, (dict, list, tuple)) else
                    _jsonable(v) for k, v in ds.attrs.items()}
        ds.attrs["complete"] = False
        ds = _uniform_chunks(ds)
        try:
            # Consolidated metadata is not part of the Zarr v3 spec: plain metadata only.
            ds.to_zarr(tmp, mode="w", consolidated=False, zarr_format=3)
            import zarr

            group = zarr.open_group(tmp, mode="r+")
            group.attrs["complete"] = True
            replace_store(claim, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("wrote %s", path)
    return path


def open_result(path: str | os.PathLike) -> xr.Dataset:
    """Open a result store lazily; refuse one whose run did not finish."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"no such result store: {path}")
    try:
        ds = xr.open_zarr(path, consolidated=False)
    except Exception as exc:
        raise InputError(f"{path} is not a readable Zarr result store ({exc})") from None
    if ds.attrs.get("complete") is not True:
        raise InputError(f"{path} is incomplete (its run did not finish); run it again")
    for key, value in list(ds.attrs.items()):
        # Nested provenance (dicts, lists) is stored as JSON text.
        if isinstance(value, str) and value[:1] in "{[":
            try:
                ds.attrs[key] = json.loads(value)
            except json.JSONDecodeError:
                pass
    from xtec.io.output import verify_store

    verify_store(ds, path)
    return ds
