"""Real crystal structures from structure files (CIF, pymatgen JSON), typed and simulated.

Real structures ship with several installed packages (pyxtal, Dans_Diffraction,
pymatgen, ase); :func:`installed_structure_files` finds them without downloads.
Every structure is keyed by its structure type (space group, occupied Wyckoff letters
and anonymous formula), so that repeated prototypes (copper, gold, aluminium...) can
count once.  Nothing a file contains raises: refused files come back with the reason.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from xtec.classifier.generator import Crystal
from xtec.classifier.simulator import PowderSimulator, scattering_table

log = logging.getLogger(__name__)

# (package, folder inside it, file pattern) of structures that installed packages ship.
_INSTALLED = [
    ("pyxtal", "database/cifs", "*.cif"),
    ("Dans_Diffraction", "Structures", "*.cif"),
    ("pymatgen", "util/structures", "*.json"),
    ("ase", "test/testdata/minerals", "*.cif"),
]


def installed_structure_files() -> list[Path]:
    """CIF/JSON structure files shipped by the installed packages (sorted, may be empty)."""
    files = []
    for pkg, sub, pattern in _INSTALLED:
        spec = find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(next(iter(spec.submodule_search_locations))) / sub
        files.extend(sorted(root.glob(pattern)))
    return files


@dataclass
class RealStructure:
    """A parsed structure with its space group and structure-type key."""

    path: Path
    crystal: Crystal
    space_group: int
    structure_type: str
    formula: str


def structure_problem(structure) -> str | None:
    """Why a pymatgen ``Structure`` cannot be simulated, or None if it can.

    Elements need X-ray form factors (Z 1..94 in pymatgen's table); a site label read
    as an element (an NH4 group read as nihonium, Z=113), dummy atoms (X) and vacancy
    placeholders are refused.  Deuterium scatters X-rays as hydrogen does and is
    simulated as such; a magnetic CIF is simulated from its atoms (X-rays do not see
    the moments).  Partial occupancies are simulated; a site whose
    occupancies add up to more than 1 is refused.
    """
    from pymatgen.core.periodic_table import DummySpecies

    _, known = scattering_table()
    for site in structure:
        total = 0.0
        for sp, occu in site.species.items():
            symbol = getattr(sp, "symbol", str(sp))
            if isinstance(sp, DummySpecies):
                return f"dummy atom {symbol} (not an element)"
            z = getattr(sp, "Z", None)
            if z is None or not 0 < int(z) < len(known) or not known[int(z)]:
                hint = " (a site label such as NH4 read as an element?)" if z and z > 103 else ""
                return f"element {symbol} (Z={z}) has no X-ray form factor{hint}"
            if not 0 < occu <= 1.0 + 1e-3:
                return f"site occupancy {occu:g} of {symbol} outside (0, 1]"
            total += occu
        if total > 1.05:
            return f"site occupancies add up to {total:.2f} (> 1)"
    if len(structure) == 0:
        return "no atoms"
    return None


def load_structure(path, symprec: float = 0.01, max_atoms: int = 1000):
    """One structure file to a :class:`RealStructure`; raises ValueError with the reason."""
    from pymatgen.core import Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    p = Path(path)
    with warnings.catch_warnings():
        # CIF parsers and spglib warn a lot about harmless things.
        warnings.simplefilter("ignore")
        try:
            s = Structure.from_file(str(p))
        except Exception as exc:  # noqa: BLE001 - third-party parsers raise anything
            msg = str(exc).strip().splitlines()[0][:100] if str(exc).strip() else ""
            raise ValueError(f"unreadable ({type(exc).__name__}: {msg})") from None
        problem = structure_problem(s)
        if problem:
            raise ValueError(problem)
        if len(s) > max_atoms:
            raise ValueError(f"{len(s)} atoms in the cell (> {max_atoms})")
        try:
            sga = SpacegroupAnalyzer(s, symprec=symprec)
            sg = int(sga.get_space_group_number())
            sym = sga.get_symmetrized_structure()
        except Exception as exc:  # noqa: BLE001 - spglib failures on odd cells
            raise ValueError(f"no space group found ({type(exc).__name__})") from None
        letters = sorted(ws for ws in sym.wyckoff_symbols)
        key = f"{sg}|{'-'.join(letters)}|{s.composition.anonymized_formula}"
        formula = s.composition.reduced_formula
    return RealStructure(p, Crystal.from_pymatgen(s, sg), sg, key, formula)


def load_structures(
    paths, symprec: float = 0.01, max_atoms: int = 1000
) -> tuple[list[RealStructure], list[str]]:
    """Parse structure files; returns the structures and one line per file skipped (and why).

    Nothing a file contains raises: every failure becomes a ``"name: reason"`` line.
    """
    out, skipped = [], []
    for p in paths:
        p = Path(p)
        try:
            out.append(load_structure(p, symprec, max_atoms))
        except Exception as exc:  # noqa: BLE001 - one bad file never stops the rest
            skipped.append(f"{p.name}: {exc}")
    return out, skipped


def structure_patterns(
    structures, simulator: PowderSimulator, crystallite_size: float = 50.0
) -> tuple[np.ndarray, list, list[str]]:
    """Simulated patterns (n, n_points) of real structures at one crystallite size (nm).

    Returns the patterns, the structures simulated and one line per structure that the
    simulator refused (and why).
    """
    rows, kept, skipped = [], [], []
    for s in structures:
        try:
            x = simulator.simulate([s.crystal], [crystallite_size])[0]
        except Exception as exc:  # noqa: BLE001 - one structure never stops the rest
            skipped.append(f"{s.path.name}: cannot simulate ({exc})")
            continue
        if not np.isfinite(x).all() or x.max() <= 0:
            skipped.append(f"{s.path.name}: no reflection between the grid's 2-theta limits")
            continue
        rows.append(x)
        kept.append(s)
    n = simulator.grid.n_points
    return (np.array(rows) if rows else np.zeros((0, n), np.float32)), kept, skipped
