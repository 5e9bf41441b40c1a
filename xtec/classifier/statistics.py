"""Space-group, site and element frequencies counted from real structures.

The table (``statistics.json`` beside the shipped model) is counted from the
"statistics" half of the real structures of :mod:`xtec.classifier.realdata` (whole
structure types on one side; the "evaluation" half is never counted).  It serves as the
classifier's prior over space groups and as the frequency-aware mode of the crystal
generator (:meth:`FrequencyTable.generator_kwargs`).

Regenerate with ``python -m xtec.classifier.realdata OUT.json``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from xtec.classifier.generator import DEFAULT_ELEMENTS, wyckoff_positions
from xtec.errors import InputError

log = logging.getLogger(__name__)


@dataclass
class FrequencyTable:
    """Counts from real structures (one count per structure after deduplication).

    Attributes
    ----------
    space_groups : dict[int, int]
        Structures per space-group number.
    n_sites : dict[int, int]
        Structures per number of symmetry-distinct sites (Wyckoff sites).
    elements : dict[int, int]
        Structures containing each atomic number.
    general_fraction : float
        Fraction of all Wyckoff sites on the general position.
    source : str
        What was counted (packages, versions, split rule).
    n_structures : int
    """

    space_groups: dict = field(default_factory=dict)
    n_sites: dict = field(default_factory=dict)
    elements: dict = field(default_factory=dict)
    general_fraction: float = 0.0
    source: str = ""
    n_structures: int = 0

    def prior(self, smoothing: float = 0.5) -> np.ndarray:
        """Probabilities of space groups 1..230 (counts + ``smoothing``), shape (230,)."""
        c = np.full(230, float(smoothing))
        for sg, n in self.space_groups.items():
            c[int(sg) - 1] += n
        return c / c.sum()

    def generator_kwargs(self, smoothing: float = 0.5, max_sites: int = 8) -> dict:
        """Keyword arguments of :class:`~xtec.classifier.generator.CrystalGenerator` that
        draw space groups, numbers of sites and elements by these frequencies."""
        els = np.asarray(DEFAULT_ELEMENTS)
        ew = np.array([self.elements.get(int(z), 0) + smoothing for z in els], float)
        sites = np.array(
            [self.n_sites.get(k, 0) + smoothing for k in range(1, max_sites + 1)], float
        )
        return {
            "space_groups": list(range(1, 231)),
            "space_group_weights": self.prior(smoothing).tolist(),
            "elements": els.tolist(),
            "element_weights": (ew / ew.sum()).tolist(),
            "n_sites_weights": (sites / sites.sum()).tolist(),
            "max_sites": max_sites,
        }

    def to_json(self, path: str | Path) -> None:
        d = asdict(self)
        for k in ("space_groups", "n_sites", "elements"):
            d[k] = {str(a): int(b) for a, b in sorted(d[k].items(), key=lambda t: int(t[0]))}
        Path(path).write_text(json.dumps(d, indent=1) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> FrequencyTable:
        try:
            d = json.loads(Path(path).read_text())
            for k in ("space_groups", "n_sites", "elements"):
                d[k] = {int(a): int(b) for a, b in d[k].items()}
            return cls(**d)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"{path}: not a frequency table ({exc})") from None


def count(structures, source: str) -> FrequencyTable:
    """Frequencies of space groups, site counts and elements of ``structures``."""
    sg, sites, els = Counter(), Counter(), Counter()
    n_general = n_total = 0
    for s in structures:
        sg[s.space_group] += 1
        letters = s.structure_type.split("|")[1].split("-")
        sites[len(letters)] += 1
        for z in set(s.crystal.numbers.tolist()):
            els[int(z)] += 1
        general = f"{wyckoff_positions(s.space_group)[0].multiplicity}"
        for w in letters:
            n_total += 1
            # Wyckoff symbols are multiplicity + letter; the general position has the
            # largest multiplicity of the group.
            n_general += w[:-1] == general
    return FrequencyTable(
        dict(sg), dict(sites), dict(els), n_general / max(n_total, 1), source, len(structures)
    )
