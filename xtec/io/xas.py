"""Which columns of an XAS file are the absorption, and mu(E) from raw channels (NumPy).

XAS column files (XDI, Athena/Larch, beamline scans) hold either mu(E) itself
or the detector channels it is computed from, as every XAS program does first:

* transmission ``mu = ln(I0 / It)``;
* fluorescence ``mu = If / I0``;
* the reference foil behind the sample, ``mu_ref = ln(It / Iref)``, which
  calibrates the energy (see :mod:`xtec.autoencoder.spectra`).

Channel names vary by program and beamline; :data:`CHANNELS` lists the
spellings recognised.  The file readers are in :mod:`xtec.io.curves`.
"""

from __future__ import annotations

import re

import numpy as np

#: Columns that hold the spectrum itself, by file type, first match wins.
SIGNALS = {
    ".nor": ("norm", "flat", "mu", "xmu"),
    ".chik": ("chi", "chik", "chik1"),
    ".chi": ("chi", "chik", "chi(k)"),
}
DEFAULT_SIGNALS = ("mu", "xmu", "mutrans", "mufluor", "norm", "flat")
#: Columns that hold a reference spectrum already computed.
REFERENCE_SIGNALS = ("mu_ref", "murefer", "muref", "mu_std", "refer")

#: Detector channels by role, lower-case spellings of Athena, Larch, XDI
#: ("mutrans" etc. are SIGNALS) and beamlines.  ``vfc01``..``vfc04`` are the
#: voltage-to-frequency counters of PETRA III P65, wired as I0, It, Iref and If
#: (the order araucaria's P65 reader documents); they are read so only when
#: all four are present.
CHANNELS = {
    "i0": ("i0", "io", "imon", "i_0", "mon"),
    "it": ("it", "itrans", "i1", "it1", "i_t"),
    "iref": ("iref", "it2", "i2", "irefer", "i_ref"),
    "if": ("if", "ifluor", "ifl", "fluo", "fluor", "i_f"),
}
P65_CHANNELS = {"i0": "vfc01", "it": "vfc02", "iref": "vfc03", "if": "vfc04"}


def find_channels(labels: list[str]) -> dict[str, int]:
    """Column index of each detector role found among ``labels`` (lower case)."""
    found = {}
    for role, names in CHANNELS.items():
        for name in names:
            if name in labels:
                found[role] = labels.index(name)
                break
    if not found and all(v in labels for v in P65_CHANNELS.values()):
        found = {role: labels.index(v) for role, v in P65_CHANNELS.items()}
    return found


def _log_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(a / b)


def absorption(
    labels: list[str], table: np.ndarray, suffix: str, grid_column: int
) -> tuple[np.ndarray | None, str, np.ndarray | None]:
    """The spectrum of an XAS table, how it was obtained, and the reference spectrum.

    Parameters
    ----------
    labels
        Lower-case column names, one per column of ``table`` (n, c).
    suffix
        The file's suffix (it chooses ``norm`` for ``.nor``, ``chi`` for ``.chi``).
    grid_column
        The energy (or k) column, never taken as the spectrum.

    Returns
    -------
    ``(signal (n,) or None, description, reference (n,) or None)``.  The
    signal is a spectrum column when there is one, else transmission from I0
    and It, else fluorescence from If and I0; the reference is a reference
    column or ``ln(It / Iref)``.  None when the table has no absorption at all.
    """
    signal, how = None, ""
    for name in SIGNALS.get(suffix, DEFAULT_SIGNALS):
        if name in labels and labels.index(name) != grid_column:
            signal, how = table[:, labels.index(name)], f"column {name!r}"
            break
    if signal is None:  # absorbance written as a formula, e.g. "log(i0/it)"
        formula = [i for i, lab in enumerate(labels) if re.match(r"^(ln|log)\(i0/i", lab)]
        if formula:
            signal, how = table[:, formula[0]], f"column {labels[formula[0]]!r}"
    ch = find_channels(labels)
    if signal is None and "i0" in ch and "it" in ch:
        signal, how = _log_ratio(table[:, ch["i0"]], table[:, ch["it"]]), "transmission ln(I0/It)"
    if signal is None and "i0" in ch and "if" in ch:
        with np.errstate(divide="ignore", invalid="ignore"):
            signal = table[:, ch["if"]] / table[:, ch["i0"]]
        how = "fluorescence If/I0"
    reference = None
    for name in REFERENCE_SIGNALS:
        if name in labels:
            reference = table[:, labels.index(name)]
            break
    if reference is None and "it" in ch and "iref" in ch:
        reference = _log_ratio(table[:, ch["it"]], table[:, ch["iref"]])
    return signal, how, reference


def missing_channels(labels: list[str]) -> str:
    """What an XAS table without absorption lacks, in words, for a one-line refusal."""
    ch = find_channels(labels)
    if "i0" in ch:
        return "a transmitted (It) or fluorescence (If) channel beside I0"
    if "it" in ch or "if" in ch:
        return "the incident-intensity channel I0"
    return f"a mu column ({', '.join(DEFAULT_SIGNALS)}) or detector channels (I0 with It or If)"
