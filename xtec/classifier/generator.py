"""Random crystals from a space group's Wyckoff positions (synthetic training data).

The recipe follows Schopmans et al. (2023): draw a space group, a set of elements and
Wyckoff positions, free coordinates uniformly in the unit cell, a lattice of the
group's crystal system whose volume follows from the atoms' covalent radii, expand the
asymmetric unit with the group's operations and keep the crystal only if spglib finds
the same space group.  Space-group data (Wyckoff positions and their operations) come
from pyxtal, covalent radii from ase; nothing is hand-typed.
"""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass, field

import numpy as np

from xtec.classifier.symmetry import CRYSTAL_SYSTEMS, crystal_system_index
from xtec.errors import ParameterError, XtecError

log = logging.getLogger(__name__)

# Noble gases rarely sit in crystal structures; Z > 94 have no form factors in the table.
_NOBLE = {2, 10, 18, 36, 54, 86}
DEFAULT_ELEMENTS: tuple[int, ...] = tuple(z for z in range(1, 95) if z not in _NOBLE)


@dataclass
class Crystal:
    """A periodic structure in its conventional cell.

    Attributes
    ----------
    lattice : ndarray, shape (3, 3)
        Lattice vectors a, b, c as rows, in angstrom.
    frac_coords : ndarray, shape (n_atoms, 3)
        Fractional coordinates in [0, 1).
    numbers : ndarray of int, shape (n_atoms,)
        Atomic numbers.
    occupancies : ndarray, shape (n_atoms,)
        Site occupancies (1 for generated crystals).
    space_group : int
        International number 1..230 (0 when unknown).
    rotations : ndarray of int, shape (n_ops, 3, 3), optional
        Point-group rotations in the cell's basis (from spglib); the simulator uses
        them to compute one structure factor per set of equivalent reflections.
    """

    lattice: np.ndarray
    frac_coords: np.ndarray
    numbers: np.ndarray
    occupancies: np.ndarray = field(default=None)  # type: ignore[assignment]
    space_group: int = 0
    rotations: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.lattice = np.asarray(self.lattice, dtype=float).reshape(3, 3)
        self.frac_coords = np.asarray(self.frac_coords, dtype=float).reshape(-1, 3)
        self.numbers = np.asarray(self.numbers, dtype=int).reshape(-1)
        if self.occupancies is None:
            self.occupancies = np.ones(len(self.numbers))
        self.occupancies = np.asarray(self.occupancies, dtype=float).reshape(-1)
        if not (len(self.frac_coords) == len(self.numbers) == len(self.occupancies)):
            raise ParameterError("frac_coords, numbers and occupancies differ in length")

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.lattice)))

    @classmethod
    def from_pymatgen(cls, structure, space_group: int = 0) -> Crystal:
        """Build from a pymatgen ``Structure``; disordered sites become several atoms."""
        coords, numbers, occus = [], [], []
        for site in structure:
            for sp, occu in site.species.items():
                coords.append(site.frac_coords)
                numbers.append(sp.Z)
                occus.append(occu)
        return cls(structure.lattice.matrix, np.mod(coords, 1.0), numbers, occus, space_group)


@dataclass(frozen=True)
class _Wyckoff:
    multiplicity: int
    dof: int
    rotations: np.ndarray  # (m, 3, 3)
    translations: np.ndarray  # (m, 3)


@functools.cache
def wyckoff_positions(space_group: int) -> tuple[_Wyckoff, ...]:
    """Wyckoff positions of ``space_group`` (standard setting) from pyxtal, general first.

    Each position carries its operations as arrays so that applying them to one random
    point ``r`` gives the whole orbit: ``rotations @ r + translations``.
    """
    from pyxtal.symmetry import Group

    out = []
    for wp in Group(int(space_group)).Wyckoff_positions:
        aff = np.array([op.affine_matrix for op in wp.ops])
        out.append(_Wyckoff(int(wp.multiplicity), int(wp.get_dof()), aff[:, :3, :3], aff[:, :3, 3]))
    return tuple(out)


def _covalent_radii() -> np.ndarray:
    from ase.data import covalent_radii

    return np.asarray(covalent_radii)


def random_lattice(
    system: str, volume: float, rng: np.random.Generator, max_ratio: float = 2.0
) -> np.ndarray:
    """Lattice vectors (3, 3) of crystal ``system`` with the given ``volume``.

    Axis lengths are log-uniform within a factor ``max_ratio`` of each other; angles
    are free only where the system allows (monoclinic: unique axis b, beta in 90..120;
    trigonal and hexagonal: hexagonal axes, gamma 120; triclinic: 60..120).
    """
    abc = np.exp(rng.uniform(-np.log(max_ratio), np.log(max_ratio), 3) / 2)
    alpha = beta = gamma = 90.0
    if system == "triclinic":
        for _ in range(100):
            alpha, beta, gamma = rng.uniform(60.0, 120.0, 3)
            if _cell_volume_factor(alpha, beta, gamma) > 0.5:
                break
    elif system == "monoclinic":
        beta = rng.uniform(90.0, 120.0)
    elif system in ("trigonal", "hexagonal"):
        abc[1] = abc[0]
        gamma = 120.0
    elif system == "tetragonal":
        abc[1] = abc[0]
    elif system == "cubic":
        abc[:] = 1.0
    m = _lattice_matrix(*abc, alpha, beta, gamma)
    return m * (volume / abs(np.linalg.det(m))) ** (1 / 3)


def _cell_volume_factor(alpha: float, beta: float, gamma: float) -> float:
    ca, cb, cg = np.cos(np.radians([alpha, beta, gamma]))
    return float(np.sqrt(max(1 - ca**2 - cb**2 - cg**2 + 2 * ca * cb * cg, 0.0)))


def _lattice_matrix(a, b, c, alpha, beta, gamma) -> np.ndarray:
    # Same convention as pymatgen's Lattice.from_parameters (c along z after a, b).
    ca, cb, cg = np.cos(np.radians([alpha, beta, gamma]))
    sg = np.sin(np.radians(gamma))
    ax = np.array([a, 0.0, 0.0])
    bx = np.array([b * cg, b * sg, 0.0])
    cx = c * cb
    cy = c * (ca - cb * cg) / sg
    cz = np.sqrt(max(c**2 - cx**2 - cy**2, 1e-12))
    return np.array([ax, bx, [cx, cy, cz]])


def spglib_space_group(
    crystal: Crystal, symprec: float = 1e-3, keep_rotations: bool = False
) -> int:
    """Space-group number that spglib finds for ``crystal`` (0 if it finds none).

    With ``keep_rotations`` the point-group rotations found are stored on the crystal.
    """
    import spglib

    with warnings.catch_warnings():
        # spglib >= 2.5 warns about its legacy error handling (None on failure).
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            ds = spglib.get_symmetry_dataset(
                (crystal.lattice, crystal.frac_coords, crystal.numbers), symprec=symprec
            )
        except Exception:  # noqa: BLE001 - spglib's new-style SpglibError
            ds = None
    if ds is None:
        return 0
    if keep_rotations:
        crystal.rotations = np.unique(np.asarray(ds.rotations), axis=0)
    return int(ds.number)


class CrystalGenerator:
    """Draws random crystals of chosen space groups, verified by spglib.

    Parameters
    ----------
    space_groups : sequence of int, optional
        Space groups to draw from (default all 1..230).
    space_group_weights : sequence of float, optional
        Sampling weights of ``space_groups`` (default uniform); e.g. database frequencies.
    elements : sequence of int, optional
        Atomic numbers to draw from (default Z 1..94 without noble gases).
    element_weights : sequence of float, optional
        Sampling weights of ``elements`` (default uniform).
    max_sites : int
        Most Wyckoff sites (asymmetric-unit atoms) per crystal; drawn uniformly in 1..max.
    n_sites_weights : sequence of float, optional
        Probabilities of 1, 2, ... ``max_sites`` sites (default uniform), e.g. counted
        from real structures (:meth:`xtec.classifier.statistics.FrequencyTable.generator_kwargs`).
    max_elements : int
        Most distinct elements per crystal.
    max_atoms : int
        Most atoms in the conventional cell.
    wyckoff_weighting : {"uniform", "general"}
        "uniform": every allowed Wyckoff position equally likely; "general": the
        general position twice as likely as each special one.
    density_factor : (float, float)
        Range of cell volume / sum of covalent-sphere volumes.
    symprec : float
        spglib tolerance of the space-group check.
    max_tries : int
        Draws per crystal before giving up on a space group.
    seed : int or numpy Generator, optional
    """

    def __init__(
        self,
        space_groups=None,
        space_group_weights=None,
        elements=None,
        element_weights=None,
        max_sites: int = 8,
        max_elements: int = 4,
        max_atoms: int = 120,
        wyckoff_weighting: str = "uniform",
        n_sites_weights=None,
        density_factor: tuple[float, float] = (1.5, 3.5),
        symprec: float = 1e-3,
        max_tries: int = 200,
        seed=None,
    ) -> None:
        self.space_groups = (
            np.arange(1, 231) if space_groups is None else np.asarray(space_groups, dtype=int)
        )
        if self.space_groups.size == 0 or np.any(
            (self.space_groups < 1) | (self.space_groups > 230)
        ):
            raise ParameterError("space_groups must be numbers in 1..230")
        self.sg_p = _weights(space_group_weights, len(self.space_groups), "space_group_weights")
        self.elements = np.asarray(DEFAULT_ELEMENTS if elements is None else elements, dtype=int)
        if self.elements.size == 0 or np.any((self.elements < 1) | (self.elements > 94)):
            raise ParameterError("elements must be atomic numbers in 1..94")
        self.el_p = _weights(element_weights, len(self.elements), "element_weights")
        for name, v in (
            ("max_sites", max_sites),
            ("max_elements", max_elements),
            ("max_atoms", max_atoms),
        ):
            if int(v) < 1:
                raise ParameterError(f"{name} must be at least 1, got {v}")
        if wyckoff_weighting not in ("uniform", "general"):
            raise ParameterError("wyckoff_weighting must be 'uniform' or 'general'")
        if not 0 < density_factor[0] <= density_factor[1]:
            raise ParameterError("density_factor must be an increasing pair of positive numbers")
        self.max_sites, self.max_elements, self.max_atoms = (
            int(max_sites),
            int(max_elements),
            int(max_atoms),
        )
        self.wyckoff_weighting = wyckoff_weighting
        self.sites_p = (
            None
            if n_sites_weights is None
            else _weights(n_sites_weights, self.max_sites, "n_sites_weights")
        )
        self.density_factor = tuple(density_factor)
        self.symprec, self.max_tries = float(symprec), int(max_tries)
        self.rng = np.random.default_rng(seed)
        self._radii = _covalent_radii()

    def sample_space_group(self) -> int:
        return int(self.rng.choice(self.space_groups, p=self.sg_p))

    def generate(self, space_group: int | None = None) -> Crystal:
        """One crystal of ``space_group`` (drawn from the weights if None), spglib-verified."""
        sg = self.sample_space_group() if space_group is None else int(space_group)
        if not 1 <= sg <= 230:
            raise ParameterError(f"space group must lie in 1..230, got {sg}")
        for _ in range(self.max_tries):
            crystal = self._draw(sg)
            if crystal is not None and spglib_space_group(crystal, self.symprec, True) == sg:
                return crystal
        raise XtecError(
            f"no crystal of space group {sg} passed the spglib check in {self.max_tries} tries"
        )

    def generate_many(self, n: int, space_group: int | None = None) -> list[Crystal]:
        return [self.generate(space_group) for _ in range(n)]

    def _draw(self, sg: int) -> Crystal | None:
        rng = self.rng
        wps = wyckoff_positions(sg)
        if self.sites_p is None:
            n_sites = int(rng.integers(1, self.max_sites + 1))
        else:
            n_sites = int(rng.choice(self.max_sites, p=self.sites_p)) + 1
        n_el = int(rng.integers(1, min(self.max_elements, n_sites) + 1))
        pool = (
            rng.choice(self.elements, size=n_el, replace=False, p=self.el_p)
            if n_el <= len(self.elements)
            else self.elements
        )
        mult = np.array([w.multiplicity for w in wps])
        base_w = np.ones(len(wps))
        if self.wyckoff_weighting == "general":
            base_w[0] = 2.0
        used_fixed = np.zeros(len(wps), bool)
        coords, numbers = [], []
        n_atoms = 0
        for i in range(n_sites):
            allowed = (mult <= self.max_atoms - n_atoms) & ~used_fixed
            if not allowed.any():
                break
            w = base_w * allowed
            k = int(rng.choice(len(wps), p=w / w.sum()))
            wp = wps[k]
            if wp.dof == 0:
                used_fixed[k] = True
            r = rng.random(3)
            pts = np.mod(wp.rotations @ r + wp.translations, 1.0)
            coords.append(pts)
            # Every element of the pool appears at least once.
            z = pool[i] if i < n_el else rng.choice(pool)
            numbers.append(np.full(len(pts), z))
            n_atoms += len(pts)
        if not coords:
            return None
        numbers = np.concatenate(numbers)
        volume = rng.uniform(*self.density_factor) * np.sum(
            4 / 3 * np.pi * self._radii[numbers] ** 3
        )
        system = CRYSTAL_SYSTEMS[crystal_system_index(sg)]
        lattice = random_lattice(system, volume, rng)
        return Crystal(lattice, np.concatenate(coords), numbers, None, sg)


def _weights(w, n: int, name: str) -> np.ndarray:
    if w is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(w, dtype=float)
    if w.shape != (n,) or np.any(w < 0) or w.sum() <= 0:
        raise ParameterError(f"{name} must be {n} non-negative numbers with a positive sum")
    return w / w.sum()
