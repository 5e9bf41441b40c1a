"""Patterns and spectra as xarray: loaders, writers and synthetic generators.

Everything here is NumPy/xarray only (no PyTorch), so data can be prepared and
inspected without the ``ml`` extra.

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

import numpy as np
import xarray as xr

from xtec.errors import InputError, ParameterError

log = logging.getLogger(__name__)

#: (first dim, grid dim) for each kind of curve.
DIMS = {"pattern": ("pattern", "two_theta"), "spectrum": ("spectrum", "energy")}

_NEXUS_SUFFIXES = {".nxs", ".nx5", ".nx", ".h5", ".hdf5", ".hdf"}
_TEXT_SUFFIXES = {".txt", ".dat", ".xy", ".xye", ".tsv"}
#: X-ray absorption exchange formats: XDI and Athena/Larch column files.
_XAS_SUFFIXES = {".xdi", ".xmu", ".nor", ".chik", ".chi"}
# Which column is the spectrum, by file type, first match wins.
_XAS_SIGNALS = {
    ".nor": ("norm", "flat", "mu", "xmu"),
    ".chik": ("chi", "chik", "chik1"),
    ".chi": ("chi", "chik"),
}
_XAS_DEFAULT_SIGNALS = ("mu", "xmu", "mutrans", "mufluor", "murefer", "norm", "flat")
_ENERGY_SCALE = {"ev": 1.0, "kev": 1000.0}

PathLike = str | os.PathLike


def _dims(kind: str) -> tuple[str, str]:
    try:
        return DIMS[kind]
    except KeyError:
        raise ParameterError(f"kind must be one of {sorted(DIMS)}, not {kind!r}") from None


def _as_float(text: str) -> float | None:
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
    parts = [_load_one(p, first, axis) for p in paths]
    if len(parts) == 1:
        return parts[0]
    grid = parts[0][axis].values
    for path, part in zip(paths[1:], parts[1:], strict=True):
        other = part[axis].values
        if other.shape != grid.shape or not np.allclose(other, grid, rtol=1e-6, atol=1e-9):
            raise InputError(
                f"{path}: its {axis} grid ({other.size} points, {other[0]:g}..{other[-1]:g}) "
                f"differs from that of {paths[0]} ({grid.size} points, "
                f"{grid[0]:g}..{grid[-1]:g}); resample onto one grid first"
            )
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


def _load_one(path: Path, first: str, axis: str) -> xr.DataArray:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a data file")
    suffix = path.suffix.lower()
    if suffix in _NEXUS_SUFFIXES:
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


def _descriptor_coords(first: str, columns: dict[str, list[str]]) -> dict:
    coords = {}
    for name, values in columns.items():
        numbers = [_as_float(v) for v in values]
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
    grid_cols = [i for i, h in enumerate(header) if _as_float(h) is not None]
    body = rows[1:]
    if grid_cols:
        # Wide layout: one row per curve.
        grid = np.array([float(header[i]) for i in grid_cols])
        values = np.empty((len(body), len(grid_cols)))
        for r, row in enumerate(body):
            for c, i in enumerate(grid_cols):
                v = _as_float(row[i])
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
    descriptors: dict[str, list[str]] = {}
    data = []
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                stripped = line.strip()
                if not stripped:
                    continue
                if stripped[0] in "#!;":
                    m = _COMMENT_KV.match(stripped)
                    if m:
                        descriptors[m.group(1)] = [m.group(2)]
                    continue
                fields = stripped.replace(",", " ").split()
                numbers = [_as_float(f) for f in fields]
                if len(fields) < 2 or any(n is None for n in numbers[:2]):
                    if not data:  # a header line of column names
                        continue
                    raise InputError(
                        f"{path}: line {lineno}: expected two numeric columns "
                        f"({axis} and intensity), got {stripped[:60]!r}"
                    )
                data.append(numbers[:2])
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read as a two-column text file ({exc})") from None
    if not data:
        raise InputError(
            f"{path}: no numeric data rows found (expected two columns: {axis}, intensity)"
        )
    table = np.asarray(data, dtype=float)
    coords = {first: [0], axis: table[:, 0], **_descriptor_coords(first, descriptors)}
    return xr.DataArray(table[None, :, 1], dims=(first, axis), coords=coords)


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
    fields: dict[str, str] = {}
    columns: dict[int, tuple[str, str]] = {}
    last_comment = ""
    rows: list[list[float]] = []
    try:
        with open(path, encoding="utf-8", errors="strict") as fh:
            for lineno, line in enumerate(fh, start=1):
                stripped = line.strip()
                if not stripped:
                    continue
                if stripped[0] in "#!;":
                    body = stripped.lstrip("#!; ").strip()
                    m = re.match(r"^([A-Za-z][\w]*)\.([\w\-]+)\s*:\s*(.*)$", body)
                    if m and not rows:
                        ns, tag, value = m.group(1), m.group(2), m.group(3).strip()
                        if ns.lower() == "column" and tag.isdigit():
                            parts = value.split()
                            label = parts[0].lower() if parts else f"col{tag}"
                            columns[int(tag)] = (label, parts[1].lower() if len(parts) > 1 else "")
                        else:
                            fields[f"{ns}.{tag}"] = value
                    elif body and not set(body) <= set("-/=*"):
                        last_comment = body
                    continue
                values = [_as_float(f) for f in stripped.replace(",", " ").split()]
                if any(v is None for v in values):
                    raise InputError(
                        f"{path}: line {lineno}: non-numeric value in the data: {stripped[:60]!r}"
                    )
                if rows and len(values) != len(rows[0]):
                    raise InputError(
                        f"{path}: line {lineno} has {len(values)} columns, the first data row "
                        f"has {len(rows[0])}"
                    )
                rows.append(values)
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read as an XAS column file ({exc})") from None
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
    signal = None
    for name in _XAS_SIGNALS.get(suffix, _XAS_DEFAULT_SIGNALS):
        if name in labels and labels.index(name) != gi:
            signal = table[:, labels.index(name)]
            break
    if signal is None:  # absorbance written as a formula, e.g. "log(i0/it)"
        formula = [i for i, lab in enumerate(labels) if re.match(r"^(ln|log)\(i0/i", lab)]
        if formula:
            signal = table[:, formula[0]]
    if signal is None and "i0" in labels:
        i0 = table[:, labels.index("i0")]
        with np.errstate(divide="ignore", invalid="ignore"):
            if "itrans" in labels:
                signal = np.log(i0 / table[:, labels.index("itrans")])
            elif "ifluor" in labels:
                signal = table[:, labels.index("ifluor")] / i0
    if signal is None:
        if n_col == 2:
            signal = table[:, 1 - gi]
        else:
            raise InputError(
                f"{path}: no spectrum column among {labels}; expected one of "
                f"{', '.join(_XAS_SIGNALS.get(suffix, _XAS_DEFAULT_SIGNALS))}"
            )
    coords: dict = {first: [0], axis: grid}
    attrs = {"source": str(path), "grid_label": labels[gi]}
    attrs["units_" + axis] = "1/angstrom" if labels[gi] == "k" else "eV"
    for key, value in fields.items():
        number = _as_float(value.split()[0]) if value.split() else None
        ns, tag = key.split(".", 1)
        if number is not None:
            name = tag if ns.lower() == "descriptor" else key.lower()
            coords[name] = (first, [number])
        else:
            attrs[key] = value
    return xr.DataArray(signal[None, :], dims=(first, axis), coords=coords, attrs=attrs)


def _find_nxdata(h5) -> object:
    import h5py

    def nx_class(obj) -> str:
        value = obj.attrs.get("NX_class", b"")
        return value.decode() if isinstance(value, bytes) else str(value)

    # Follow the NeXus "default" chain first, then take the first NXdata found.
    node = h5
    for _ in range(4):
        name = node.attrs.get("default")
        if name is None:
            break
        name = name.decode() if isinstance(name, bytes) else str(name)
        if name not in node or not isinstance(node[name], h5py.Group):
            break
        node = node[name]
        if nx_class(node) == "NXdata":
            return node
    found = []

    def visit(_name, obj):
        if isinstance(obj, h5py.Group) and nx_class(obj) == "NXdata":
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
        group = _find_nxdata(h5)
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
    if suffix in _NEXUS_SUFFIXES:
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


# --------------------------------------------------------------------------- synthetic XRD


def _cubic_reflections(two_theta_max: float, wavelength: float, a_min: float, hmax: int = 8):
    rng = np.arange(-hmax, hmax + 1)
    h, k, l = (g.ravel() for g in np.meshgrid(rng, rng, rng, indexing="ij"))  # noqa: E741
    keep = (h != 0) | (k != 0) | (l != 0)
    h, k, l = h[keep], k[keep], l[keep]  # noqa: E741
    # Keep every reflection that can fall inside the range for the smallest cell.
    s_max = np.sin(np.radians(two_theta_max / 2)) / wavelength
    g2 = h**2 + k**2 + l**2
    keep = np.sqrt(g2) / (2 * a_min) <= s_max * 1.02
    return h[keep], k[keep], l[keep]  # noqa: E741


def _form_factor(z: float, s: np.ndarray) -> np.ndarray:
    # A one-Gaussian stand-in for the tabulated atomic form factor: what matters
    # here is that it falls with sin(theta)/lambda and scales with Z.
    return z * (0.25 + 0.75 * np.exp(-10.0 * s**2))


def synthetic_alloy_series(
    n_patterns: int = 150,
    *,
    composition: Sequence[float] | np.ndarray | None = None,
    composition_range: tuple[float, float] = (0.0, 1.0),
    two_theta: np.ndarray | None = None,
    lattice: tuple[float, float] = (2.87, 3.01),
    z: tuple[float, float] = (26.0, 45.0),
    order: float = 0.8,
    wavelength: float = 1.5406,
    caglioti: tuple[float, float, float] = (0.04, -0.02, 0.04),
    size_broadening: float = 0.08,
    size_spread: float = 0.2,
    eta: float = 0.5,
    noise: float = 0.01,
    background: float = 0.02,
    seed: int | None = 0,
) -> xr.DataArray:
    """Simulate powder XRD of a B2 (CsCl-type) solid solution A(1-x)B(x).

    Physics kept, in the order it enters:

    * Vegard's law: cubic lattice parameter ``a(x) = a_A + (a_B - a_A) x``, so every
      peak shifts with composition, the high-angle ones most.
    * Site occupancies: B prefers the body-centre site; with long-range order
      ``order`` the B occupancies are ``p_beta = x + order*min(x, 1-x)`` and
      ``p_alpha = 2x - p_beta``.  Fundamental reflections (h+k+l even) scale as
      the mean scattering factor; superlattice reflections (h+k+l odd) as
      ``(p_beta - p_alpha)(f_B - f_A)``, so their relative intensity carries the
      composition even when the lattice parameter does not change.
    * Lorentz-polarisation factor, pseudo-Voigt peaks with a Caglioti width
      ``sqrt(U tan^2 + V tan + W)`` plus a random per-pattern size term
      (Scherrer-like, ``1/cos(theta)``), a decaying background and Gaussian noise
      of relative size ``noise``.

    Each pattern is scaled to a maximum of 1 before noise, as measured patterns
    usually are.

    Parameters
    ----------
    n_patterns
        Number of patterns; ignored when ``composition`` is given.
    composition
        Explicit B fractions, shape (n_patterns,); otherwise drawn uniformly from
        ``composition_range``.
    two_theta
        Grid in degrees, shape (n_grid,); default 20..100 deg in 0.05 deg steps.
    lattice, z
        Lattice parameters (angstrom) and atomic numbers of pure A and pure B.
        Equal lattice parameters switch Vegard's shifts off.
    order
        Long-range order in [0, 1]; 0 gives a random solid solution.
    seed
        Seed of the NumPy generator; the same seed gives the same series.

    Returns
    -------
    DataArray of shape (n_patterns, n_grid), dims ``("pattern", "two_theta")``,
    coordinates ``composition`` and ``lattice_parameter`` along ``pattern``.
    """
    rng = np.random.default_rng(seed)
    if composition is None:
        if n_patterns < 1:
            raise ParameterError(f"n_patterns must be at least 1, not {n_patterns}")
        lo, hi = composition_range
        if not 0.0 <= lo < hi <= 1.0:
            raise ParameterError(
                f"composition_range must satisfy 0 <= lo < hi <= 1, not {composition_range}"
            )
        x = np.sort(rng.uniform(lo, hi, n_patterns))
    else:
        x = np.asarray(composition, dtype=float).ravel()
        if x.size == 0 or np.any((x < 0) | (x > 1)):
            raise ParameterError("compositions must lie in [0, 1]")
    if not 0.0 <= order <= 1.0:
        raise ParameterError(f"order must lie in [0, 1], not {order}")
    if two_theta is None:
        two_theta = np.round(np.arange(20.0, 100.0 + 1e-9, 0.05), 6)
    tt = np.asarray(two_theta, dtype=float)
    h, k, l = _cubic_reflections(tt.max(), wavelength, min(lattice))  # noqa: E741
    g = np.sqrt(h**2 + k**2 + l**2)
    odd = (h + k + l) % 2 == 1
    u, v, w = caglioti
    out = np.empty((x.size, tt.size))
    a_of_x = lattice[0] + (lattice[1] - lattice[0]) * x
    for i, (xi, a) in enumerate(zip(x, a_of_x, strict=True)):
        s = g / (2 * a)  # sin(theta)/lambda
        sin_t = s * wavelength
        ok = sin_t < 1
        theta = np.arcsin(np.clip(sin_t, 0, 1))
        p_beta = xi + order * min(xi, 1 - xi)
        p_alpha = 2 * xi - p_beta
        fa, fb = _form_factor(z[0], s), _form_factor(z[1], s)
        f_alpha = (1 - p_alpha) * fa + p_alpha * fb
        f_beta = (1 - p_beta) * fa + p_beta * fb
        f = np.where(odd, f_alpha - f_beta, f_alpha + f_beta)
        lp = (1 + np.cos(2 * theta) ** 2) / (np.sin(theta) ** 2 * np.cos(theta) + 1e-12)
        dw = np.exp(-0.5 * s**2)
        intensity = np.where(ok, f**2 * lp * dw, 0.0)
        centre = np.degrees(2 * theta)
        inside = ok & (centre > tt.min() - 2) & (centre < tt.max() + 2) & (intensity > 0)
        tan_t = np.tan(theta[inside])
        size_term = (
            size_broadening * abs(1 + size_spread * rng.standard_normal()) / np.cos(theta[inside])
        )
        fwhm = np.sqrt(np.maximum(u * tan_t**2 + v * tan_t + w, 1e-6)) + size_term
        d = tt[None, :] - centre[inside, None]
        hw = fwhm[:, None] / 2
        gauss = np.exp(-np.log(2) * (d / hw) ** 2)
        lorentz = 1 / (1 + (d / hw) ** 2)
        y = (intensity[inside, None] * (eta * lorentz + (1 - eta) * gauss)).sum(axis=0)
        y /= y.max()
        bg = background * (1 + 2 * np.exp(-(tt - tt.min()) / 15.0))
        y = y + bg
        y = y + noise * np.sqrt(np.maximum(y, 0)) * rng.standard_normal(tt.size)
        out[i] = y
    return xr.DataArray(
        out,
        dims=DIMS["pattern"],
        coords={
            "pattern": np.arange(x.size),
            "two_theta": tt,
            "composition": ("pattern", x),
            "lattice_parameter": ("pattern", a_of_x),
        },
        name="intensity",
        attrs={
            "description": "synthetic B2 A(1-x)B(x) alloy series (Vegard's law, site order)",
            "units_two_theta": "degree",
            "wavelength": wavelength,
        },
    )


def reflection_positions(
    composition: float,
    *,
    lattice: tuple[float, float] = (2.87, 3.01),
    wavelength: float = 1.5406,
    two_theta_range: tuple[float, float] = (20.0, 100.0),
) -> list[tuple[tuple[int, int, int], float, bool]]:
    """Peak positions of the B2 series at one composition.

    Returns a list of ``((h, k, l), two_theta, is_superlattice)`` for the distinct
    reflection families inside the range, sorted by angle.
    """
    a = lattice[0] + (lattice[1] - lattice[0]) * composition
    h, k, l = _cubic_reflections(two_theta_range[1], wavelength, min(lattice))  # noqa: E741
    seen = {}
    for hh, kk, ll in zip(h, k, l, strict=True):
        key = tuple(
            sorted((abs(int(hh)), abs(int(kk)), abs(int(ll)))),
        )[::-1]
        if key in seen:
            continue
        sin_t = np.sqrt(hh**2 + kk**2 + ll**2) * wavelength / (2 * a)
        if sin_t >= 1:
            continue
        tt = float(np.degrees(2 * np.arcsin(sin_t)))
        if two_theta_range[0] <= tt <= two_theta_range[1]:
            seen[key] = (key, tt, (hh + kk + ll) % 2 == 1)
    return sorted(seen.values(), key=lambda r: r[1])


# --------------------------------------------------------------------------- synthetic spectra

#: Descriptors of :func:`synthetic_spectra`, in order.
SPECTRUM_DESCRIPTORS = ("edge_shift", "white_line", "pre_edge", "bond_length")


def synthetic_spectra(
    n_spectra: int = 2000,
    *,
    energy: np.ndarray | None = None,
    noise: float = 0.005,
    seed: int | None = 0,
) -> xr.DataArray:
    """Simulate XANES-like K-edge spectra whose shape follows known descriptors.

    Four descriptors, drawn independently and uniformly in [0, 1], each drive one
    feature (a stand-in for the local-structure descriptors of the RankAAE study):

    ``edge_shift``
        edge position, +0..6 eV (oxidation-state-like);
    ``white_line``
        height of the main absorption peak just above the edge (coordination-like);
    ``pre_edge``
        intensity of a pre-edge peak 8 eV below the edge (centrosymmetry-like);
    ``bond_length``
        frequency of the post-edge oscillation (an EXAFS-like ``sin(2 k R)``).

    A fifth, undescribed factor (the overall broadening) varies too, so that a
    free latent dimension has something to capture.

    Returns
    -------
    DataArray of shape (n_spectra, n_energy), dims ``("spectrum", "energy")``,
    with one coordinate per descriptor and ``nuisance_broadening`` (not a
    descriptor: the CLI leaves ``nuisance_*`` coordinates unconstrained) along ``spectrum``.
    Energies default to 256 points from -20 to 60 eV relative to the edge.
    """
    if n_spectra < 1:
        raise ParameterError(f"n_spectra must be at least 1, not {n_spectra}")
    rng = np.random.default_rng(seed)
    e = np.linspace(-20.0, 60.0, 256) if energy is None else np.asarray(energy, dtype=float)
    d = rng.uniform(0.0, 1.0, size=(n_spectra, len(SPECTRUM_DESCRIPTORS)))
    broad = rng.uniform(0.0, 1.0, size=n_spectra)
    e0 = 6.0 * d[:, 0:1]
    width = 1.2 + 1.0 * broad[:, None]
    ee = e[None, :] - e0
    from scipy.special import erf

    step = 0.5 * (1 + erf(ee / (width * np.sqrt(2))))
    white = (0.3 + 1.2 * d[:, 1:2]) * np.exp(-0.5 * ((ee - 3.0) / (1.5 * width)) ** 2)
    pre = (0.05 + 0.35 * d[:, 2:3]) * np.exp(-0.5 * ((ee + 8.0) / (0.6 * width)) ** 2)
    k = np.sqrt(np.clip(ee - 5.0, 0, None) / 3.81)  # 1/angstrom for energies in eV
    radius = 1.8 + 0.8 * d[:, 3:4]
    exafs = 0.15 * np.sin(2 * k * radius * 1.9) * np.exp(-0.08 * k**2 * 4) * (ee > 5.0) * step
    mu = step + white + pre + exafs
    mu = mu + noise * rng.standard_normal(mu.shape)
    coords = {
        "spectrum": np.arange(n_spectra),
        "energy": e,
        "nuisance_broadening": ("spectrum", broad),
    }
    for j, name in enumerate(SPECTRUM_DESCRIPTORS):
        coords[name] = ("spectrum", d[:, j])
    return xr.DataArray(
        mu,
        dims=DIMS["spectrum"],
        coords=coords,
        name="absorption",
        attrs={
            "description": "synthetic XANES-like spectra with known descriptors",
            "units_energy": "eV",
        },
    )


#: Descriptors of :func:`synthetic_exafs_xanes`, in order.
EXAFS_DESCRIPTORS = ("coordination", "bond_length", "bond_spread")


def synthetic_exafs_xanes(
    n_spectra: int = 2500,
    *,
    energy: np.ndarray | None = None,
    noise: float = 0.004,
    seed: int | None = 0,
) -> xr.DataArray:
    """Fe K-edge-like spectra from the EXAFS equation of one Fe-O shell.

    A second, differently built generator for judging RankAAE away from
    :func:`synthetic_spectra`.  Three descriptors, drawn independently:
    ``coordination`` N (4-6), mean Fe-O ``bond_length`` R (1.90-2.20 A) and its
    spread ``bond_spread`` sigma (0.02-0.12 A).  Above the edge,
    ``chi(k) = N S0^2 |f(k)| / (k R^2) exp(-2 k^2 sigma^2) exp(-2R/lambda)
    sin(2kR + phi(k))`` with ``k = sqrt(0.2625 (E - E0))``; a shape resonance
    at ``E0 + 150 / R^2`` eV (Natoli's rule) whose height grows with N; a
    pre-edge peak whose intensity falls with N (tetrahedral sites are not
    centrosymmetric).  An undescribed energy-calibration offset (+-0.7 eV,
    ``nuisance_calibration``) varies too.

    Returns
    -------
    DataArray (spectrum, energy), 199 points from -20 to 80 eV by default, with
    the descriptor coordinates and ``nuisance_calibration``.
    """
    from scipy.special import erf

    if n_spectra < 1:
        raise ParameterError(f"n_spectra must be at least 1, not {n_spectra}")
    rng = np.random.default_rng(seed)
    e = np.linspace(-20.0, 80.0, 199) if energy is None else np.asarray(energy, dtype=float)
    cn = rng.uniform(4.0, 6.0, n_spectra)[:, None]
    r = rng.uniform(1.90, 2.20, n_spectra)[:, None]
    sig = rng.uniform(0.02, 0.12, n_spectra)[:, None]
    cal = rng.uniform(-0.7, 0.7, n_spectra)[:, None]
    ee = e[None, :] - cal
    step = 0.5 * (1 + erf(ee / 1.5))
    k = np.sqrt(0.2625 * np.clip(ee, 0.0, None))
    amp = 0.9 * np.exp(-((k - 4.0) ** 2) / 18.0)  # |f(k)| of oxygen, roughly
    phase = -1.2 + 0.25 * k  # phi(k)
    chi = (
        cn
        * 0.8
        * amp
        / (np.maximum(k, 0.3) * r**2)
        * np.exp(-2 * k**2 * sig**2)
        * np.exp(-2 * r / 8.0)
        * np.sin(2 * k * r + phase)
    )
    onset = 0.5 * (1 + erf((ee - 4.0) / 3.0))  # EXAFS grows in past the XANES region
    resonance = 150.0 / r**2
    white = (0.25 * cn / 6.0 + 0.15) * np.exp(-0.5 * ((ee - resonance + 30.0) / 3.0) ** 2)
    pre = 0.25 * (6.0 - cn) / 2.0 * np.exp(-0.5 * ((ee + 12.0) / 0.8) ** 2)
    mu = step * (1 + 0.6 * chi * onset) + white + pre + 0.04
    mu = mu + noise * rng.standard_normal(mu.shape)
    coords = {
        "spectrum": np.arange(n_spectra),
        "energy": e,
        "coordination": ("spectrum", cn[:, 0]),
        "bond_length": ("spectrum", r[:, 0]),
        "bond_spread": ("spectrum", sig[:, 0]),
        "nuisance_calibration": ("spectrum", cal[:, 0]),
    }
    return xr.DataArray(
        mu,
        dims=DIMS["spectrum"],
        coords=coords,
        name="absorption",
        attrs={"description": "Fe K-edge-like spectra, EXAFS equation of one Fe-O shell"},
    )
