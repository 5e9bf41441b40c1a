"""Streaming dataset of synthetic patterns, and reading measured patterns from files."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from xtec.classifier.generator import CrystalGenerator
from xtec.classifier.simulator import PatternGrid, PowderSimulator, normalise
from xtec.errors import InputError
from xtec.io.curves import NEXUS_SUFFIXES, find_nxdata, text_rows

log = logging.getLogger(__name__)


@dataclass
class SyntheticConfig:
    """Generator and simulator settings of a synthetic stream (saved with models)."""

    space_groups: list[int] = field(default_factory=lambda: list(range(1, 231)))
    space_group_weights: list[float] | None = None
    elements: list[int] | None = None
    element_weights: list[float] | None = None
    n_sites_weights: list[float] | None = None
    max_sites: int = 8
    max_elements: int = 4
    max_atoms: int = 120
    crystallite_size: tuple[float, float] = (20.0, 100.0)
    two_theta_min: float = 5.0
    two_theta_max: float = 90.0
    n_points: int = 8501
    wavelength: float = 1.5406

    @classmethod
    def from_dict(cls, d: dict) -> SyntheticConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def grid(self) -> PatternGrid:
        return PatternGrid(self.two_theta_min, self.two_theta_max, self.n_points, self.wavelength)

    def generator(self, seed) -> CrystalGenerator:
        return CrystalGenerator(
            self.space_groups,
            self.space_group_weights,
            elements=self.elements,
            element_weights=self.element_weights,
            n_sites_weights=self.n_sites_weights,
            max_sites=self.max_sites,
            max_elements=self.max_elements,
            max_atoms=self.max_atoms,
            seed=seed,
        )

    def simulator(self, seed) -> PowderSimulator:
        return PowderSimulator(self.grid(), tuple(self.crystallite_size), seed=seed)

    def to_dict(self) -> dict:
        return asdict(self)


def synthetic_batch(
    config: SyntheticConfig, n: int, generator: CrystalGenerator, simulator: PowderSimulator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` patterns (n, n_points) float32 and their space-group numbers (n,)."""
    crystals = generator.generate_many(n)
    return simulator.simulate(crystals), np.array([c.space_group for c in crystals])


def _stream_class():
    # Defined lazily so that importing this module does not import torch.
    import torch
    from torch.utils.data import IterableDataset, get_worker_info

    class SyntheticStream(IterableDataset):
        """Endless batches (patterns, class indices) of freshly generated crystals.

        Every DataLoader worker draws its own stream, seeded by ``(seed, stream_id,
        worker id)``, so a seeded run is reproducible for a fixed number of workers;
        a resumed run passes a new ``stream_id`` so that it does not replay old data.
        """

        def __init__(self, config: SyntheticConfig, batch_size: int, seed: int, stream_id: int = 0):
            super().__init__()
            self.config, self.batch_size = config, int(batch_size)
            self.seed, self.stream_id = int(seed), int(stream_id)
            self.index = {sg: i for i, sg in enumerate(config.space_groups)}

        def __iter__(self):
            info = get_worker_info()
            wid = 0 if info is None else info.id
            ss = np.random.SeedSequence([self.seed, self.stream_id, wid])
            g_seed, s_seed = ss.spawn(2)
            gen = self.config.generator(np.random.default_rng(g_seed))
            sim = self.config.simulator(np.random.default_rng(s_seed))
            while True:
                x, sg = synthetic_batch(self.config, self.batch_size, gen, sim)
                y = np.array([self.index[s] for s in sg])
                yield torch.from_numpy(x), torch.from_numpy(y)

    return SyntheticStream


def SyntheticStream(config: SyntheticConfig, batch_size: int, seed: int, stream_id: int = 0):
    """See the class built by :func:`_stream_class` (a torch ``IterableDataset``)."""
    return _stream_class()(config, batch_size, seed, stream_id)


def read_pattern(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Two-theta (deg) and intensity of a measured pattern, both shape (n,).

    Reads whitespace-, comma- or semicolon-separated text (two columns; comment
    lines and header lines that are not numbers are skipped) and NeXus/HDF5
    files (the default NXdata signal and its first axis), through the shared
    readers of :mod:`xtec.io.curves`.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"pattern file not found: {p}")
    if p.suffix.lower() in NEXUS_SUFFIXES:
        x, y = _read_nexus(p)
    else:
        x, y = _read_text(p)
    if x.ndim != 1 or x.shape != y.shape or len(x) < 10:
        raise InputError(f"{p}: need two columns (2-theta, intensity) with at least 10 rows")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise InputError(f"{p}: contains values that are not finite numbers")
    order = np.argsort(x)
    return x[order], y[order]


def _read_text(p: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = []
    lines, _ = text_rows(p, "text")
    for n, fields in lines:
        try:
            vals = [float(v) for v in fields]
        except ValueError:
            if rows:
                raise InputError(f"{p}:{n}: not a number in {' '.join(fields)!r}") from None
            continue  # a header line before the data
        if len(vals) < 2:
            raise InputError(f"{p}:{n}: expected two columns (2-theta, intensity), got {len(vals)}")
        rows.append(vals[:2])
    if not rows:
        raise InputError(f"{p}: no numeric two-column data found")
    a = np.asarray(rows)
    return a[:, 0], a[:, 1]


def _read_nexus(p: Path) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    try:
        with h5py.File(p, "r") as f:
            group = find_nxdata(f)
            if group is None or group.attrs.get("signal") is None:
                raise InputError(f"{p}: no NXdata group with a signal found")
            sig = group.attrs.get("signal")
            sig = sig.decode() if isinstance(sig, bytes) else str(sig)
            axes = group.attrs.get("axes")
            if isinstance(axes, (bytes, str)):
                axes = [axes]
            if axes is None or len(axes) == 0:
                raise InputError(f"{p}: NXdata group {group.name} names no axes")
            ax = axes[0].decode() if isinstance(axes[0], bytes) else str(axes[0])
            return np.asarray(group[ax][...], float).ravel(), np.asarray(
                group[sig][...], float
            ).ravel()
    except OSError as exc:
        raise InputError(f"{p}: cannot read as NeXus/HDF5: {exc}") from exc
    except KeyError as exc:
        raise InputError(f"{p}: missing dataset {exc}") from exc


def resample(two_theta: np.ndarray, intensity: np.ndarray, grid: PatternGrid) -> np.ndarray:
    """Measured pattern on the model's grid (n_points,), background-free scale, normalised.

    Outside the measured range the pattern is zero.  Negative intensities are clipped.
    """
    tt = grid.two_theta
    if two_theta[-1] <= tt[0] or two_theta[0] >= tt[-1]:
        raise InputError(
            f"pattern covers 2-theta {two_theta[0]:.2f}..{two_theta[-1]:.2f}, "
            f"outside the model's {tt[0]:.1f}..{tt[-1]:.1f} degrees"
        )
    inside = (tt >= two_theta[0]) & (tt <= two_theta[-1])
    if inside.sum() < 10:
        raise InputError(
            f"pattern has fewer than 10 points of the model's grid inside its 2-theta range "
            f"{two_theta[0]:.2f}..{two_theta[-1]:.2f}"
        )
    y = np.interp(tt, two_theta, intensity, left=0.0, right=0.0)
    y = y - np.min(y[inside])
    if not np.max(y[inside]) > 0:
        raise InputError(
            "pattern is empty: every intensity is the same (e.g. all zero), nothing to classify"
        )
    return normalise(y[None], True)[0]
