"""1-D patterns and spectra as xarray: the one owner of their file formats.

Both the autoencoders (:func:`load_curves`, :func:`save_curves`) and the
space-group classifier (:func:`xtec.classifier.data.read_pattern`, through
:func:`text_rows` and :func:`find_nxdata`) read curves here, so every text
parser, NeXus suffix and NXdata lookup exists once.  NumPy/xarray only (no
PyTorch); h5py is imported when a NeXus file is read or written.

Layout conventions
------------------
A set of 1-D curves is a 2-D :class:`xarray.DataArray` with dims
``("pattern", "two_theta")`` for diffraction patterns or ``("spectrum", "energy")``
for spectra.  Known descriptors (composition, oxidation state, ...) are
coordinates along the first dim.

File formats
------------
CSV, "wide" layout (what :func:`save_curves` writes)
    one row per curve; columns whose header is a number are grid points, the
    others are descriptors (numeric) or labels (text).
CSV, "column" layout
    no numeric header; the first column is the grid, every further column is one
    curve named by its header.
Two-column text (``.txt``, ``.dat``, ``.xy``, ``.xye``)
    one curve per file: grid and intensity columns (a third column is ignored);
    header comments ``# name = value`` become descriptors.
NeXus (``.nxs``, ``.nx5``, ``.h5``, ``.hdf5``)
    an NXdata group whose signal is 2-D (curve, grid) or 1-D; the axis of the
    last dim is the grid, and other 1-D fields as long as the first dim are
    descriptors.
XAS exchange formats (``.xdi``, ``.xmu``, ``.nor``, ``.chik``)
    one spectrum per file, see :func:`_load_xas`.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from xtec.errors import InputError, ParameterError
from xtec.io import xas

if TYPE_CHECKING:  # h5py is imported when a NeXus file is read or written
    import h5py

log = logging.getLogger(__name__)

#: (first dim, grid dim) for each kind of curve.
DIMS = {"pattern": ("pattern", "two_theta"), "spectrum": ("spectrum", "energy")}

#: Suffixes read as NeXus/HDF5, by both the autoencoders and the classifier.
NEXUS_SUFFIXES = frozenset({".nxs", ".nx5", ".nx", ".h5", ".hdf5", ".hdf"})
#: First characters of a comment line in every text format here.
COMMENT_CHARS = "#!;'%"
#: X-ray absorption exchange formats: XDI and Athena/Larch column files.
_XAS_SUFFIXES = {".xdi", ".xmu", ".nor", ".chik", ".chi"}
_ENERGY_SCALE = {"ev": 1.0, "kev": 1000.0}

PathLike = str | os.PathLike


def _dims(kind: str) -> tuple[str, str]:
    try:
        return DIMS[kind]
    except KeyError:
        raise ParameterError(f"kind must be one of {sorted(DIMS)}, not {kind!r}") from None


def as_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------- loading


def load_curves(paths: PathLike | Sequence[PathLike], kind: str = "pattern") -> xr.DataArray:
    """Read curves on a common grid from one file or several files.

    Parameters
    ----------
    paths
        A CSV, two-column text or NeXus file, or a list of them; the curves of all
        files are stacked and must share their grid.
    kind
        ``"pattern"`` (dims ``("pattern", "two_theta")``) or ``"spectrum"``
        (dims ``("spectrum", "energy")``).

    Returns
    -------
    DataArray of shape (n_curves, n_grid), float64, grid increasing, with
    descriptor coordinates along the first dim.

    Raises
    ------
    InputError
        Missing or unreadable file, wrong columns, non-finite values, or files
        whose grids differ.
    """
    first, axis = _dims(kind)
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError("no input files given")
    parts = [load_one(p, first, axis) for p in paths]
    if len(parts) == 1:
        return parts[0]
    grid = parts[0][axis].values
    for path, part in zip(paths[1:], parts[1:], strict=True):
        check_grid(part[axis].values, grid, f"{path}: its {axis} grid", f"that of {paths[0]}")
    names = set(parts[0].coords) - {first, axis}
    for part in parts[1:]:
        names &= set(part.coords) - {first, axis}
    parts = [
        p.assign_coords({axis: grid}).drop_vars(set(p.coords) - names - {first, axis})
        for p in parts
    ]
    out = xr.concat(parts, dim=first)
    out[first] = np.arange(out.sizes[first])
    return out


def check_grid(grid: np.ndarray, expected: np.ndarray, what: str, whose: str) -> None:
    """Raise one :class:`InputError` line unless ``grid`` (m,) equals ``expected`` (m,)
    within 1e-6 relative (curves can only be stacked or fed to a model on its grid).

    The message reads ``"{what} (m points, lo..hi) differs from {whose} (...)"``.
    """
    grid, expected = np.asarray(grid, dtype=float), np.asarray(expected, dtype=float)
    if grid.shape != expected.shape or not np.allclose(grid, expected, rtol=1e-6, atol=1e-9):
        raise InputError(
            f"{what} ({grid.size} points, {grid[0]:g}..{grid[-1]:g}) differs from {whose} "
            f"({expected.size} points, {expected[0]:g}..{expected[-1]:g}); "
            "resample onto one grid first"
        )


def load_one(path: Path, first: str, axis: str) -> xr.DataArray:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a data file")
    suffix = path.suffix.lower()
    if suffix in NEXUS_SUFFIXES:
        da = _load_nexus(path, first, axis)
    elif suffix == ".csv":
        da = _load_csv(path, first, axis)
    elif suffix in _XAS_SUFFIXES:
        da = _load_xas(path, first, axis)
    else:
        da = _load_text(path, first, axis)
    return _validate(da, path, first, axis)


def _validate(da: xr.DataArray, path: Path, first: str, axis: str) -> xr.DataArray:
    grid = np.asarray(da[axis].values, dtype=float)
    if grid.size < 2:
        raise InputError(f"{path}: needs at least 2 {axis} points, found {grid.size}")
    if not np.all(np.isfinite(da.values)):
        raise InputError(f"{path}: contains missing or non-finite intensities")
    steps = np.diff(grid)
    if np.all(steps < 0):
        da = da.isel({axis: slice(None, None, -1)})
    elif not np.all(steps > 0):
        raise InputError(f"{path}: the {axis} column is not strictly monotonic")
    da.name = da.name or "intensity"
    da.attrs.setdefault("source", str(path))
    return da


def text_rows(path: Path, what: str) -> tuple[list[tuple[int, list[str]]], list[tuple[int, str]]]:
    """Split a text file into data rows and comment lines.

    Blank lines are dropped; a line whose first non-blank character is one of
    :data:`COMMENT_CHARS` is a comment; every other line is a row of fields
    separated by whitespace, commas or semicolons.

    Returns
    -------
    ``(rows, comments)``: ``rows`` as ``(line number, fields)`` and
    ``comments`` as ``(line number, stripped line)``, both in file order, so
    a caller can tell header comments (before the first row) from later ones.

    Raises
    ------
    InputError
        One line, ``"{path}: cannot read as {what} ({reason})"``, for a file
        that cannot be opened or is not UTF-8 text.
    """
    rows: list[tuple[int, list[str]]] = []
    comments: list[tuple[int, str]] = []
    try:
        with open(path, encoding="utf-8", errors="strict") as fh:
            for lineno, line in enumerate(fh, start=1):
                stripped = line.strip()
                if not stripped:
                    continue
                if stripped[0] in COMMENT_CHARS:
                    comments.append((lineno, stripped))
                else:
                    rows.append((lineno, _FIELD_SEPARATORS.split(stripped)))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read as {what} ({exc})") from None
    return rows, comments


_FIELD_SEPARATORS = re.compile(r"[\s,;]+")


def _descriptor_coords(first: str, columns: dict[str, list[str]]) -> dict:
    coords = {}
    for name, values in columns.items():
        numbers = [as_float(v) for v in values]
        if all(n is not None for n in numbers):
            coords[name] = (first, np.asarray(numbers, dtype=float))
        else:
            coords[name] = (first, np.asarray(values, dtype=str))
    return coords


def _load_csv(path: Path, first: str, axis: str) -> xr.DataArray:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.reader(fh) if r and not r[0].lstrip().startswith("#")]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read as CSV ({exc})") from None
    if len(rows) < 2:
        raise InputError(f"{path}: needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    width = len(header)
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) != width:
            raise InputError(f"{path}: row {lineno} has {len(row)} fields, the header has {width}")
    grid_cols = [i for i, h in enumerate(header) if as_float(h) is not None]
    body = rows[1:]
    if grid_cols:
        # Wide layout: one row per curve.
        grid = np.array([float(header[i]) for i in grid_cols])
        values = np.empty((len(body), len(grid_cols)))
        for r, row in enumerate(body):
            for c, i in enumerate(grid_cols):
                v = as_float(row[i])
                if v is None:
                    raise InputError(
                        f"{path}: row {r + 2}, column {header[i]!r}: {row[i]!r} is not a number"
                    )
                values[r, c] = v
        other = {
            header[i]: [row[i].strip() for row in body] for i in range(width) if i not in grid_cols
        }
        coords = {first: np.arange(len(body)), axis: grid, **_descriptor_coords(first, other)}
        return xr.DataArray(values, dims=(first, axis), coords=coords)
    # Column layout: the first column is the grid, each other column one curve.
    if width < 2:
        raise InputError(
            f"{path}: expected a grid column and at least one intensity column, "
            f"or numeric column headers (one row per curve)"
        )
    try:
        table = np.array([[float(v) for v in row] for row in body])
    except ValueError:
        raise InputError(f"{path}: non-numeric value in a column-layout CSV") from None
    return xr.DataArray(
        table[:, 1:].T,
        dims=(first, axis),
        coords={first: np.arange(width - 1), axis: table[:, 0], "label": (first, header[1:])},
    )


_COMMENT_KV = re.compile(r"^\s*[#!;]+\s*([A-Za-z_][\w.\-]*)\s*[=:]\s*(\S.*?)\s*$")


def _load_text(path: Path, first: str, axis: str) -> xr.DataArray:
    rows, comments = text_rows(path, "a two-column text file")
    descriptors: dict[str, list[str]] = {}
    for _, comment in comments:
        m = _COMMENT_KV.match(comment)
        if m:
            descriptors[m.group(1)] = [m.group(2)]
    data = []
    for lineno, fields in rows:
        numbers = [as_float(f) for f in fields[:2]]
        if len(fields) < 2 or any(n is None for n in numbers):
            if not data:  # a header line of column names
                continue
            raise InputError(
                f"{path}: line {lineno}: expected two numeric columns "
                f"({axis} and intensity), got {' '.join(fields)[:60]!r}"
            )
        data.append(numbers)
    if not data:
        raise InputError(
            f"{path}: no numeric data rows found (expected two columns: {axis}, intensity)"
        )
    table = np.asarray(data, dtype=float)
    coords = {first: [0], axis: table[:, 0], **_descriptor_coords(first, descriptors)}
    return xr.DataArray(table[None, :, 1], dims=(first, axis), coords=coords)


def _sort_energies(grid: np.ndarray, *columns):
    """``grid`` increasing with repeated values averaged, and ``columns`` (each (n,) or None) alike."""
    if np.all(np.diff(grid) > 0):
        return grid, columns
    values, inverse, counts = np.unique(grid, return_inverse=True, return_counts=True)
    out = []
    for col in columns:
        if col is None:
            out.append(None)
            continue
        out.append(np.bincount(inverse, weights=col, minlength=values.size) / counts)
    return values, tuple(out)


def _load_xas(path: Path, first: str, axis: str) -> xr.DataArray:
    """One spectrum from an XDI file or an Athena/Larch column file.

    XDI (``.xdi``, XDI/1.0): ``# Column.N: label [units]`` names the columns
    and gives the energy units (eV or keV, converted to eV); ``# Namespace.tag:
    value`` fields with a numeric value become descriptors named
    ``namespace.tag`` (lower case), except the ``Descriptor`` namespace, whose
    tags are used bare; text fields are kept in ``attrs``.  Athena/Larch files
    (``.xmu``, ``.nor``, ``.chik``): the last comment line before the data
    names the columns.  The signal is ``mu`` (``.xmu``, ``.xdi``; or
    ``ln(i0/itrans)``, ``ifluor/i0`` from raw intensities), ``norm`` (``.nor``)
    or ``chi`` (``.chik``, whose grid is k in 1/angstrom).
    """
    suffix = path.suffix.lower()
    lines, comments = text_rows(path, "an XAS column file")
    first_row = lines[0][0] if lines else math.inf
    fields: dict[str, str] = {}
    columns: dict[int, tuple[str, str]] = {}
    last_comment = ""
    for lineno, comment in comments:
        if lineno > first_row:
            continue  # XDI fields and column names come before the data
        body = comment.lstrip(COMMENT_CHARS + " ").strip()
        m = re.match(r"^([A-Za-z][\w]*)\.([\w\-]+)\s*:\s*(.*)$", body)
        if m:
            ns, tag, value = m.group(1), m.group(2), m.group(3).strip()
            if ns.lower() == "column" and tag.isdigit():
                parts = value.split()
                label = parts[0].lower() if parts else f"col{tag}"
                columns[int(tag)] = (label, parts[1].lower() if len(parts) > 1 else "")
            else:
                fields[f"{ns}.{tag}"] = value
        elif body and not set(body) <= set("-/=*"):
            last_comment = body
    rows: list[list[float]] = []
    for lineno, words in lines:
        values = [as_float(f) for f in words]
        if any(v is None for v in values):
            raise InputError(
                f"{path}: line {lineno}: non-numeric value in the data: {' '.join(words)[:60]!r}"
            )
        if rows and len(values) != len(rows[0]):
            raise InputError(
                f"{path}: line {lineno} has {len(values)} columns, the first data row "
                f"has {len(rows[0])}"
            )
        rows.append(values)
    if len(rows) < 2:
        raise InputError(f"{path}: no data rows found (expected columns of energy and mu)")
    table = np.asarray(rows, dtype=float)
    n_col = table.shape[1]
    if columns:
        labels = [columns.get(i + 1, (f"col{i + 1}", ""))[0] for i in range(n_col)]
        units = [columns.get(i + 1, ("", ""))[1] for i in range(n_col)]
    else:
        labels = [w.lower() for w in last_comment.split()][:n_col]
        if len(labels) != n_col:
            labels = [f"col{i + 1}" for i in range(n_col)]
        units = [""] * n_col
    grid_names = ("energy", "e", "k", "ev") if suffix not in (".chik", ".chi") else ("k",)
    gi = next((labels.index(g) for g in grid_names if g in labels), 0)
    grid = table[:, gi].copy()
    unit = units[gi]
    if unit in _ENERGY_SCALE:
        grid *= _ENERGY_SCALE[unit]
    elif unit and labels[gi] != "k":
        raise InputError(f"{path}: energy units {unit!r} not understood (expected eV or keV)")
    signal, how, reference = xas.absorption(labels, table, suffix, gi)
    if signal is None:
        if n_col != 2:
            raise InputError(
                f"{path}: no absorption among the columns {labels}: needs "
                f"{xas.missing_channels(labels)}"
            )
        signal, how = table[:, 1 - gi], f"column {labels[1 - gi]!r}"
    if labels[gi] != "k":
        # Scans are measured in order but saved with repeats or out of order
        # at times (a restarted region): sorted, repeated energies averaged,
        # as XAS programs do before anything else.
        grid, (signal, reference) = _sort_energies(grid, signal, reference)
    coords: dict = {first: [0], axis: grid}
    if reference is not None:
        coords["reference"] = ((first, axis), reference[None, :])
    attrs = {"source": str(path), "grid_label": labels[gi], "absorption": how}
    attrs["units_" + axis] = "1/angstrom" if labels[gi] == "k" else "eV"
    for key, value in fields.items():
        number = as_float(value.split()[0]) if value.split() else None
        ns, tag = key.split(".", 1)
        if number is not None:
            name = tag if ns.lower() == "descriptor" else key.lower()
            coords[name] = (first, [number])
        else:
            attrs[key] = value
    return xr.DataArray(signal[None, :], dims=(first, axis), coords=coords, attrs=attrs)


def find_nxdata(h5: h5py.File | h5py.Group) -> h5py.Group | None:
    """The NXdata group to read in an open h5py file, or None.

    The NeXus ``default`` attribute chain is followed from the root (at most
    four levels); the first group on it that is an NXdata or names a
    ``signal`` is the answer.  Otherwise the first such group in the file (in
    h5py's visiting order) is.
    """
    import h5py

    def is_data(obj) -> bool:
        if not isinstance(obj, h5py.Group):
            return False
        value = obj.attrs.get("NX_class", b"")
        nx_class = value.decode() if isinstance(value, bytes) else str(value)
        return nx_class == "NXdata" or obj.attrs.get("signal") is not None

    node = h5
    for _ in range(4):
        name = node.attrs.get("default")
        if name is None:
            break
        name = name.decode() if isinstance(name, bytes) else str(name)
        if name not in node or not isinstance(node[name], h5py.Group):
            break
        node = node[name]
        if is_data(node):
            return node
    found = []

    def visit(_name, obj):
        if not found and is_data(obj):
            found.append(obj)

    h5.visititems(visit)
    return found[0] if found else None


def _load_nexus(path: Path, first: str, axis: str) -> xr.DataArray:
    import h5py

    def text(value) -> str:
        if isinstance(value, bytes):
            return value.decode()
        if isinstance(value, np.ndarray):
            return [text(v) for v in value.tolist()]
        return str(value)

    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: cannot open as NeXus/HDF5 ({exc})") from None
    with h5:
        group = find_nxdata(h5)
        if group is None:
            raise InputError(f"{path}: no NXdata group found")
        signal_name = text(group.attrs.get("signal", ""))
        if not signal_name or signal_name not in group:
            raise InputError(f"{path}: NXdata group {group.name} has no valid 'signal' attribute")
        signal = np.asarray(group[signal_name][()], dtype=float)
        if signal.ndim == 1:
            signal = signal[None, :]
        if signal.ndim != 2:
            raise InputError(
                f"{path}: signal {signal_name!r} has {signal.ndim} dims; expected (curve, {axis})"
            )
        axes = group.attrs.get("axes")
        axes = [axes] if isinstance(axes, str | bytes) else text(axes) if axes is not None else []
        axes = [text(a) for a in axes]
        axis_name = axes[-1] if axes and axes[-1] in group else None
        if axis_name is None:
            for candidate in (axis, "two_theta", "energy", "x"):
                if candidate in group:
                    axis_name = candidate
                    break
        if axis_name is None:
            raise InputError(f"{path}: NXdata group {group.name} has no axis for the last dim")
        grid = np.asarray(group[axis_name][()], dtype=float)
        if grid.shape != (signal.shape[1],):
            raise InputError(
                f"{path}: axis {axis_name!r} has {grid.size} points, the signal has {signal.shape[1]}"
            )
        coords = {first: np.arange(signal.shape[0]), axis: grid}
        for name, item in group.items():
            if name in (signal_name, axis_name) or not isinstance(item, h5py.Dataset):
                continue
            if item.ndim == 1 and item.shape[0] == signal.shape[0] and name != first:
                values = item[()]
                if values.dtype.kind in "SOU":
                    coords[name] = (first, np.asarray(text(values), dtype=str))
                else:
                    coords[name] = (first, np.asarray(values, dtype=float))
        title = group.attrs.get("long_name") or signal_name
    return xr.DataArray(signal, dims=(first, axis), coords=coords, name=text(title))


# --------------------------------------------------------------------------- writing


def save_curves(da: xr.DataArray, path: PathLike) -> Path:
    """Write curves to CSV (wide layout), NeXus or, for one curve, two-column text.

    The format follows the suffix; what is written reads back with
    :func:`load_curves` to the same values, grid and numeric descriptors.
    """
    path = Path(path)
    if da.ndim != 2:
        raise ParameterError(f"expected a 2-D (curve, grid) array, got dims {da.dims}")
    first, axis = da.dims
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = [n for n, c in da.coords.items() if c.dims == (first,) and n != first]
    if suffix in NEXUS_SUFFIXES:
        import h5py

        with h5py.File(path, "w") as h5:
            h5.attrs["default"] = "entry"
            entry = h5.create_group("entry")
            entry.attrs["NX_class"] = "NXentry"
            entry.attrs["default"] = "data"
            group = entry.create_group("data")
            group.attrs["NX_class"] = "NXdata"
            group.attrs["signal"] = "intensity"
            group.attrs["axes"] = [".", axis]
            group.create_dataset("intensity", data=np.asarray(da.values, dtype=float))
            group.create_dataset(axis, data=np.asarray(da[axis].values, dtype=float))
            for name in extra:
                values = da[name].values
                if values.dtype.kind in "US":
                    values = values.astype("S")
                group.create_dataset(name, data=values)
    elif suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(extra + [repr(float(v)) for v in da[axis].values])
            for i in range(da.sizes[first]):
                row = [str(da[name].values[i]) for name in extra]
                writer.writerow(row + [repr(float(v)) for v in da.values[i]])
    else:
        if da.sizes[first] != 1:
            raise ParameterError(
                f"{path}: a two-column text file holds one curve; use .csv or .nxs for {da.sizes[first]}"
            )
        lines = [f"# {name} = {da[name].values[0]}" for name in extra]
        lines.append(f"# {axis} intensity")
        lines += [
            f"{x!r} {y!r}"
            for x, y in zip(da[axis].values.tolist(), da.values[0].tolist(), strict=True)
        ]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
