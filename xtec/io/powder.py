"""Powder patterns as diffractometers write them, for the classifier: GSAS files
(STD, ESD, FXYE), ``start step end`` files, and everything :mod:`xtec.io.curves`
reads (text, CSV, NeXus), with the wavelength where the file records it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from xtec.errors import InputError
from xtec.io.curves import NEXUS_SUFFIXES, PathLike, as_float, load_one, text_rows

#: GSAS powder-data suffixes (BANK records: STD, ESD or FXYE data, constant step).
GSAS_SUFFIXES = frozenset({".gsa", ".gss", ".gsas", ".raw", ".fxye", ".xra"})
#: Header keys (case-insensitive) whose numeric value is the wavelength in angstrom.
WAVELENGTH_KEYS = ("wavelength", "lambda", "lambda1", "lam1", "lam", "alpha1", "kalpha1")
_WAVELENGTH_TEXT = re.compile(
    r"(?:wavelength|lambda1?|lam1?|k-?alpha1?)\s*[=:]?\s*(\d+\.\d+)", re.IGNORECASE
)


class PowderPattern(tuple):
    """``(two_theta, intensity, wavelength)``: degrees, counts and angstrom (None when
    the file does not say), plus ``.format`` naming what was read."""

    format: str = ""

    def __new__(cls, two_theta, intensity, wavelength=None, fmt=""):
        obj = super().__new__(cls, (two_theta, intensity, wavelength))
        obj.format = fmt
        return obj


def read_powder(path: PathLike) -> PowderPattern:
    """One powder pattern: 2-theta (degrees), intensity and the wavelength if recorded.

    Reads GSAS files (:data:`GSAS_SUFFIXES`: ``BANK`` with ``CONST`` steps in
    centidegrees and ``STD``/``ESD`` records, or ``FXYE``), "start step end" files (a
    first line with the three numbers, then the counts, several per line, as in the
    Rietveld round-robin data), and everything :func:`load_curves` reads (two- or
    three-column text, CSV, NeXus) holding one pattern.  The wavelength comes from a
    header comment such as ``# wavelength = 1.5406`` (or ``lambda``, ``Lam1``, ``K-alpha1``),
    a NeXus ``wavelength``/``incident_wavelength`` field or a GSAS comment.  The
    2-theta axis must increase (a file written from high to low angle is reversed, as
    :func:`load_curves` does); anything else is an :class:`InputError` of one line.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a data file")
    suffix = path.suffix.lower()
    if suffix in GSAS_SUFFIXES:
        x, y, lam = _read_gsas(path)
        fmt = "GSAS"
    elif suffix in NEXUS_SUFFIXES:
        x, y = _one_curve(path)
        lam, fmt = _nexus_wavelength(path), "NeXus"
    else:
        sse = _read_start_step_end(path) if suffix != ".csv" else None
        if sse is not None:
            x, y, lam = sse
            fmt = "start-step-end"
        else:
            x, y = _one_curve(path)
            lam, fmt = _text_wavelength(path), "CSV" if suffix == ".csv" else "text"
    if x.size < 2:
        raise InputError(f"{path}: needs at least 2 two_theta points, found {x.size}")
    steps = np.diff(x)
    if np.all(steps < 0):
        x, y = x[::-1], y[::-1]
    elif not np.all(steps > 0):
        i = int(np.flatnonzero(steps <= 0)[0])
        raise InputError(
            f"{path}: the 2-theta axis goes backwards ({x[i + 1]:g} after {x[i]:g}); "
            "one increasing scan per file"
        )
    return PowderPattern(x, y, lam, fmt)


def _one_curve(path: Path) -> tuple[np.ndarray, np.ndarray]:
    da = load_one(path, "pattern", "two_theta")
    if da.sizes["pattern"] != 1:
        names = da.coords.get("label")
        which = f" ({', '.join(map(str, names.values[:4]))})" if names is not None else ""
        if path.suffix.lower() != ".csv" or da.sizes["pattern"] != 2 or names is None:
            raise InputError(
                f"{path}: holds {da.sizes['pattern']} curves{which}; give one pattern per file"
            )
        # 2-theta, intensity, sigma: the third column is the uncertainty.
    return np.asarray(da["two_theta"].values, float), np.asarray(da.values[0], float)


def _text_wavelength(path: Path) -> float | None:
    try:
        rows, comments = text_rows(path, "text")
    except InputError:
        return None
    for _, line in comments:
        m = _WAVELENGTH_TEXT.search(line)
        if m:
            return _check_wavelength(path, float(m.group(1)))
    return None


def _check_wavelength(path: Path, lam: float) -> float:
    if not 0.05 < lam < 10:
        raise InputError(f"{path}: recorded wavelength {lam:g} is not in angstrom (0.05..10)")
    return lam


def _nexus_wavelength(path: Path) -> float | None:
    import h5py

    found = []

    def visit(name, obj):
        if found or not isinstance(obj, h5py.Dataset):
            return
        if name.rsplit("/", 1)[-1].lower() in ("wavelength", "incident_wavelength"):
            if obj.size == 1 and obj.dtype.kind in "fiu":
                found.append(float(np.asarray(obj[()]).ravel()[0]))

    with h5py.File(path, "r") as h5:
        h5.visititems(visit)
    return _check_wavelength(path, found[0]) if found else None


def _read_start_step_end(path: Path):
    """``start step end [title]`` then the counts, or None when the file is not so."""
    rows, comments = text_rows(path, "a pattern file")
    if len(rows) < 2:
        return None
    head = [as_float(f) for f in rows[0][1][:3]]
    if len(head) < 3 or any(v is None for v in head):
        return None
    start, step, end = head
    if not (step > 0 and end > start):
        return None
    n = round((end - start) / step) + 1
    if n < 10 or abs((end - start) / step + 1 - n) > 1e-3:
        return None
    values = [as_float(f) for _, fields in rows[1:] for f in fields]
    if len(values) != n or any(v is None for v in values):
        return None
    lam = None
    m = _WAVELENGTH_TEXT.search(" ".join(rows[0][1][3:]) + " " + " ".join(c for _, c in comments))
    if m:
        lam = _check_wavelength(path, float(m.group(1)))
    return start + step * np.arange(n), np.asarray(values), lam


def _read_gsas(path: Path) -> tuple[np.ndarray, np.ndarray, float | None]:
    try:
        lines = path.read_text(encoding="utf-8", errors="strict").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read as GSAS ({exc})") from None
    lam = None
    for line in lines[:40]:
        m = _WAVELENGTH_TEXT.search(line)
        if m and lam is None:
            lam = _check_wavelength(path, float(m.group(1)))
    bank = next((i for i, ln in enumerate(lines) if ln.startswith("BANK")), None)
    if bank is None:
        raise InputError(f"{path}: no BANK record (not a GSAS powder file)")
    f = lines[bank].split()
    try:
        nchan = int(f[2])
        binning = f[4].upper()
        if binning == "FXYE":
            kind = "FXYE"
        else:
            start, step = float(f[5]) / 100, float(f[6]) / 100
            kind = f[-1].upper() if f[-1].upper() in ("STD", "ESD", "FXYE") else "STD"
    except (IndexError, ValueError):
        raise InputError(f"{path}: cannot read the BANK record {lines[bank]!r}") from None
    if binning not in ("CONST", "CONS", "FXYE"):
        raise InputError(f"{path}: GSAS binning {binning} is not read (CONST or FXYE only)")
    body = [ln for ln in lines[bank + 1 :] if ln.strip() and not ln.startswith(("BANK", "#"))]
    try:
        if kind == "FXYE":
            table = np.array([[float(v) for v in ln.split()[:2]] for ln in body])
            x, y = table[:, 0] / 100, table[:, 1]
        else:
            width = 8
            cells = [ln[i : i + width] for ln in body for i in range(0, 80, width)]
            cells = [c for c in cells if c.strip()]
            if kind == "STD":
                y = []
                for c in cells:
                    if "(" in c:  # "n(count)": count over n detectors, kept as the count
                        c = c.split("(", 1)[1].rstrip(") ")
                    y.append(float(c))
                y = np.array(y)
            else:
                y = np.array([float(c) for c in cells[0::2]])
            y = y[:nchan]
            x = start + step * np.arange(len(y))
    except (ValueError, IndexError):
        raise InputError(f"{path}: GSAS data records are not numbers") from None
    if len(y) < nchan:
        raise InputError(f"{path}: BANK announces {nchan} points, the file holds {len(y)}")
    return x, y, lam
