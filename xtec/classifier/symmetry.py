"""Space-group numbers to crystal systems; pure functions, no dependencies."""

from __future__ import annotations

import numpy as np

from xtec.errors import ParameterError

#: The seven crystal systems, in order of the space-group numbers they cover.
CRYSTAL_SYSTEMS: tuple[str, ...] = (
    "triclinic",
    "monoclinic",
    "orthorhombic",
    "tetragonal",
    "trigonal",
    "hexagonal",
    "cubic",
)
# Last space-group number of each crystal system (International Tables).
_SYSTEM_ENDS = np.array([2, 15, 74, 142, 167, 194, 230])


def crystal_system_index(space_group: int | np.ndarray) -> int | np.ndarray:
    """Index into :data:`CRYSTAL_SYSTEMS` of space group(s) 1..230 (scalar or array)."""
    sg = np.asarray(space_group)
    if np.any((sg < 1) | (sg > 230)):
        raise ParameterError(f"space-group numbers must lie in 1..230, got {space_group}")
    idx = np.searchsorted(_SYSTEM_ENDS, sg)
    return int(idx) if idx.ndim == 0 else idx


def crystal_system(space_group: int) -> str:
    """Name of the crystal system of ``space_group`` (1..230)."""
    return CRYSTAL_SYSTEMS[crystal_system_index(int(space_group))]


def system_scores(probs: np.ndarray, space_groups) -> np.ndarray:
    """Crystal-system probabilities (n, 7): sums of the space-group probabilities."""
    idx = np.asarray(crystal_system_index(np.asarray(space_groups)))
    out = np.zeros((len(probs), len(CRYSTAL_SYSTEMS)))
    for k in range(len(CRYSTAL_SYSTEMS)):
        out[:, k] = probs[:, idx == k].sum(1)
    return out
