"""Result Dataset <-> Zarr (the storage backend of :mod:`xtec.io.result`).

The store is written to a private ``OUT.zarr.partial-<run>`` and renamed to
``OUT.zarr`` only after every variable and the final ``complete=true``
attribute are written, so an interrupted run never leaves something at
``OUT.zarr`` that looks complete (see :mod:`xtec.io.output`).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import xarray as xr

from xtec.errors import InputError, ParameterError
from xtec.io.output import check_target, claim_output, manifest, replace_store, verify_store
from xtec.io.result import check_result, decode_attrs, encode_attrs

log = logging.getLogger(__name__)


def check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """Fail before any work if the output exists and may not be replaced."""
    path = Path(path)
    if path.suffix != ".zarr":
        raise ParameterError(f"the output must be a .zarr directory (got {path})")
    return check_target(path, overwrite)


def _uniform_chunks(ds: xr.Dataset) -> xr.Dataset:
    # Zarr needs equal chunks (but the last); sub-volume selection can make the
    # first chunk short.
    sizes = {}
    for var in ds.data_vars.values():
        if var.chunks:
            for dim, ch in zip(var.dims, var.chunks):
                sizes[dim] = max(sizes.get(dim, 0), max(ch))
    return ds.chunk(sizes) if sizes else ds


def _encoding(ds: xr.Dataset) -> dict:
    # Zstandard level 1, not Zarr's default 3: the mean intensity (the one
    # volume that compresses poorly) 146 -> 243 MB/s per core for 2.83x
    # instead of 3.11x; labels, colours and mask compress as well or better.
    from zarr.codecs import ZstdCodec

    return {name: {"compressors": (ZstdCodec(level=1),)} for name in ds.variables}


def _consolidate(path: Path) -> None:
    """Consolidated metadata, written last (after ``complete``), so that a user's
    ``xr.open_zarr`` reads one document and warns about nothing.  Zarr calls it an
    extension of the v3 format; xarray and zarr-python read it."""
    import warnings

    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(path)


def write_result(ds: xr.Dataset, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a result Dataset to ``path`` (a .zarr directory), atomically.

    Under the run's exclusive claim on ``path`` (:mod:`xtec.io.output`): written
    to a private ``.partial-<run>`` name, then swapped in by renames.
    """
    path = check_output(path, overwrite)
    with claim_output(path) as claim:
        check_output(path, overwrite)  # again, now that no other run can write it
        tmp = claim.partial
        ds = ds.copy()
        ds.attrs["manifest"] = manifest(ds)
        ds.attrs = encode_attrs(ds.attrs)
        ds.attrs["complete"] = False
        ds = _uniform_chunks(ds)
        try:
            # write_empty_chunks: Zarr's test of every chunk against the fill
            # value cost more than compressing it (colour: 0.22 -> 0.05 s for
            # 16 chunks of 1.9 MB); a result's chunks are rarely empty.
            ds.to_zarr(tmp, mode="w", consolidated=False, zarr_format=3,
                       encoding=_encoding(ds), write_empty_chunks=True)
            import zarr

            group = zarr.open_group(tmp, mode="r+")
            group.attrs["complete"] = True
            _consolidate(tmp)
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
    # Nested provenance (dicts, lists) is stored as JSON text.
    ds.attrs = decode_attrs(ds.attrs)
    verify_store(ds, path)
    return ds


def load_result(path: str | os.PathLike) -> xr.Dataset:
    """Open a finished result store lazily (attributes decoded) and check it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path} is not a result store (a .zarr directory)")
    return check_result(open_result(path), str(path))
