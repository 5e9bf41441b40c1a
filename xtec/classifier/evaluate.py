"""Evaluation on real structures (CIF files), grouped by structure type, and a baseline.

Real structures ship with several installed packages (pyxtal, Dans_Diffraction,
pymatgen, ase); :func:`installed_structure_files` finds them without downloads.
Structures are grouped by structure type (space group, occupied Wyckoff letters and
anonymous formula) so that repeated prototypes (copper, gold, aluminium...) count once
in the per-type figures.
"""

from __future__ import annotations

import logging
import warnings
from collections import defaultdict
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from xtec.classifier.generator import Crystal
from xtec.classifier.simulator import PowderSimulator
from xtec.classifier.symmetry import CRYSTAL_SYSTEMS, crystal_system_index
from xtec.errors import InputError

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

    from xtec.classifier.simulator import scattering_table

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


def majority_ranking(space_groups: np.ndarray, n: int = 5) -> np.ndarray:
    """The ``n`` most frequent space groups of ``space_groups`` (ties: lower number)."""
    sg, counts = np.unique(np.asarray(space_groups), return_counts=True)
    order = np.lexsort((sg, -counts))
    top = sg[order][:n]
    return np.r_[top, np.setdiff1d(np.arange(1, 231), top)[: n - len(top)]]


def majority_baseline(true_sg: np.ndarray, types: list[str], reference=None) -> dict:
    """Always answer the most frequent groups of ``reference`` (default: the evaluated set
    itself, the strongest constant guess); crystal system: the most frequent one."""
    ref = np.asarray(true_sg if reference is None else reference)
    top = majority_ranking(ref)
    ranked = np.broadcast_to(top, (len(true_sg), len(top)))
    systems = np.asarray(crystal_system_index(ref))
    sys_pred = np.full(len(true_sg), np.bincount(systems, minlength=7).argmax())
    out = summarise(np.asarray(true_sg), ranked, types, sys_pred)
    out["answers"] = top.tolist()
    return out


def ranked_space_groups(scores: np.ndarray, space_groups) -> np.ndarray:
    """Space-group numbers ordered by decreasing score, shape (n, n_classes)."""
    return np.asarray(space_groups)[np.argsort(-scores, axis=1, kind="stable")]


def summarise(
    true_sg: np.ndarray, ranked: np.ndarray, types: list[str], system_pred: np.ndarray
) -> dict:
    """Top-1/top-5 overall, per structure type, per space group and per crystal system.

    ``ranked`` (n, >=5) predicted space groups best first; ``system_pred`` (n,) predicted
    crystal-system indices.  "by_type" averages within each structure type first, so a
    prototype that occurs many times counts once.
    """
    true_sg = np.asarray(true_sg)
    hit1 = ranked[:, 0] == true_sg
    hit5 = (ranked[:, :5] == true_sg[:, None]).any(1)
    true_sys = np.asarray(crystal_system_index(true_sg))
    sys_hit = system_pred == true_sys
    groups = defaultdict(list)
    for i, t in enumerate(types):
        groups[t].append(i)
    per_type = np.array(
        [[hit1[g].mean(), hit5[g].mean(), sys_hit[g].mean()] for g in groups.values()]
    )

    def table(keys):
        rows = {}
        for k in sorted(set(keys.tolist())):
            m = keys == k
            rows[k] = {
                "n": int(m.sum()),
                "top1": float(hit1[m].mean()),
                "top5": float(hit5[m].mean()),
                "system_top1": float(sys_hit[m].mean()),
            }
        return rows

    by_system = table(true_sys)
    return {
        "n_structures": len(true_sg),
        "n_types": len(groups),
        "top1": float(hit1.mean()),
        "top5": float(hit5.mean()),
        "system_top1": float(sys_hit.mean()),
        "by_type": {
            "top1": float(per_type[:, 0].mean()),
            "top5": float(per_type[:, 1].mean()),
            "system_top1": float(per_type[:, 2].mean()),
        },
        "per_space_group": {int(k): v for k, v in table(true_sg).items()},
        "per_crystal_system": {CRYSTAL_SYSTEMS[int(k)]: v for k, v in by_system.items()},
    }


def chance_level(true_sg: np.ndarray, space_groups) -> dict:
    """Expected top-1/top-5 of a uniform random guess among the model's classes."""
    n = len(space_groups)
    inside = np.isin(true_sg, space_groups).mean()
    return {"top1": float(inside / n), "top5": float(inside * min(5, n) / n), "system_top1": 1 / 7}


def model_predict(model, patterns: np.ndarray, batch: int = 128) -> np.ndarray:
    """Space-group probabilities (n, n_classes) of patterns (n, n_points)."""
    import torch

    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(patterns, dtype=np.float32))
        out = [model(x[i : i + batch]).softmax(1) for i in range(0, len(x), batch)]
    return torch.cat(out).numpy() if out else np.zeros((0, len(model.config.space_groups)))


def system_scores(probs: np.ndarray, space_groups) -> np.ndarray:
    """Crystal-system probabilities (n, 7): sums of the space-group probabilities."""
    idx = np.asarray(crystal_system_index(np.asarray(space_groups)))
    out = np.zeros((len(probs), len(CRYSTAL_SYSTEMS)))
    for k in range(len(CRYSTAL_SYSTEMS)):
        out[:, k] = probs[:, idx == k].sum(1)
    return out


def pool_features(patterns: np.ndarray, factor: int = 8) -> np.ndarray:
    """Max-pooled, L2-normalised patterns for cosine similarity, shape (n, n_points // factor)."""
    n, m = patterns.shape
    p = patterns[:, : m - m % factor].reshape(n, -1, factor).max(-1).astype(np.float32)
    return p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)


def _bank_chunk(args) -> tuple[np.ndarray, np.ndarray]:
    from xtec.classifier.data import SyntheticConfig, synthetic_batch

    data_dict, n, seed, index, pool = args
    data = SyntheticConfig.from_dict(data_dict)
    g_seed, s_seed = np.random.SeedSequence([seed, 7, index]).spawn(2)
    gen = data.generator(np.random.default_rng(g_seed))
    sim = data.simulator(np.random.default_rng(s_seed))
    x, sg = synthetic_batch(data, n, gen, sim)
    return pool_features(x, pool), sg


def synthetic_bank(
    data_config,
    n: int,
    seed: int = 0,
    workers: int = 1,
    pool: int = 8,
    chunk: int = 256,
    progress=None,
):
    """Pooled features (n, n_points // pool) and space groups (n,) of ``n`` synthetic patterns.

    Chunk ``i`` is seeded by ``(seed, 7, i)``, so the bank does not depend on ``workers``.
    ``progress`` is an optional callable taking the number of patterns just added.
    """
    jobs = [
        (data_config.to_dict(), min(chunk, n - i), seed, k, pool)
        for k, i in enumerate(range(0, n, chunk))
    ]
    feats, labels = [], []
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as ex:
            for (f, sg), job in zip(ex.map(_bank_chunk, jobs), jobs, strict=True):
                feats.append(f)
                labels.append(sg)
                if progress:
                    progress(job[1])
    else:
        for job in jobs:
            f, sg = _bank_chunk(job)
            feats.append(f)
            labels.append(sg)
            if progress:
                progress(job[1])
    return np.concatenate(feats), np.concatenate(labels)


class NearestNeighbourBaseline:
    """Space group of the most similar synthetic pattern (cosine similarity).

    ``fit`` stores pooled synthetic patterns; ``scores`` gives, for every class, the best
    similarity among its stored patterns, so classes can be ranked for top-5.
    """

    def __init__(self, space_groups, pool: int = 8) -> None:
        self.space_groups = np.asarray(space_groups)
        self.pool = int(pool)
        self.bank = np.zeros((0, 0), np.float32)
        self.labels = np.zeros(0, int)

    def fit(self, patterns: np.ndarray, space_group_labels: np.ndarray) -> NearestNeighbourBaseline:
        self.bank = pool_features(patterns, self.pool)
        index = {int(s): i for i, s in enumerate(self.space_groups)}
        self.labels = np.array([index[int(s)] for s in space_group_labels])
        return self

    def fit_features(
        self, features: np.ndarray, space_group_labels: np.ndarray
    ) -> NearestNeighbourBaseline:
        """Store already pooled features (from :func:`pool_features` with the same ``pool``)."""
        index = {int(s): i for i, s in enumerate(self.space_groups)}
        self.bank = np.asarray(features, np.float32)
        self.labels = np.array([index[int(s)] for s in space_group_labels])
        return self

    def scores(self, patterns: np.ndarray) -> np.ndarray:
        """(n, n_classes) best cosine similarity per class (-1 where a class has none)."""
        if self.bank.size == 0:
            raise InputError("the nearest-neighbour baseline has no stored patterns")
        sim = pool_features(patterns, self.pool) @ self.bank.T  # (n, bank)
        out = np.full((len(patterns), len(self.space_groups)), -1.0)
        for c in np.unique(self.labels):
            out[:, c] = sim[:, self.labels == c].max(1)
        return out
