"""Evaluation of a classifier on real structures: files to patterns to figures.

``xtec classify evaluate`` is a shell over these functions: collect structure files
(:func:`structure_files`), parse and simulate them (:func:`simulate_files`, every refused
file comes back with its reason), and compare the model with the majority-class,
nearest-neighbour and chance baselines (:func:`evaluate_structures`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from xtec.classifier.baselines import nearest_neighbour_figures
from xtec.classifier.metrics import chance_level, majority_baseline, ranked_space_groups, summarise
from xtec.classifier.simulator import PowderSimulator
from xtec.classifier.structures import (
    installed_structure_files,
    load_structures,
    structure_patterns,
)
from xtec.classifier.symmetry import system_scores
from xtec.errors import InputError, ParameterError

log = logging.getLogger(__name__)


def check_options(workers: int, nn_baseline: int, crystallite_size: float) -> None:
    """Refuse impossible evaluation settings before any file is read."""
    if workers < 1 or nn_baseline < 0 or crystallite_size <= 0:
        raise ParameterError(
            "--workers must be >= 1, --nn-baseline >= 0 and --crystallite-size > 0"
        )


def structure_files(cif_dirs=(), installed: bool = False) -> list[Path]:
    """``.cif`` files under each of ``cif_dirs`` (recursive) and, with ``installed``, the
    structure files shipped by installed packages.  Raises InputError when a folder is
    missing or empty, or when nothing is found."""
    files: list[Path] = []
    for d in cif_dirs:
        if not Path(d).is_dir():
            raise InputError(f"--cif-dir: not a directory: {d}")
        found = sorted(Path(d).rglob("*.cif"))
        if not found:
            raise InputError(f"--cif-dir: no .cif files in {d}")
        files += found
    if installed:
        files += installed_structure_files()
    if not files:
        raise InputError("nothing to evaluate: give --cif-dir DIR and/or --installed")
    return files


def simulate_files(files, grid, crystallite_size: float = 50.0):
    """Parse and simulate structure files on ``grid`` (double precision).

    Returns the patterns (n, n_points), the structures kept and one ``"name: reason"``
    line per file refused.  Raises InputError when no file can be simulated.
    """
    structures, skipped = load_structures(files)
    sim = PowderSimulator(grid, precision="double")
    x, structures, sim_skipped = structure_patterns(structures, sim, crystallite_size)
    skipped += sim_skipped
    if not structures:
        raise InputError(
            f"none of the {len(files)} structure files can be simulated: " + "; ".join(skipped)
        )
    return x, structures, skipped


def evaluate_structures(
    model, x, structures, nn_baseline: int, seed: int, workers: int, progress=None
) -> dict:
    """Model, majority-class, nearest-neighbour and chance figures on simulated patterns.

    ``nn_baseline`` synthetic patterns make the nearest-neighbour bank (0: none);
    ``progress`` is an optional callable taking the number of bank patterns just made.
    """
    true = np.array([s.space_group for s in structures])
    types = [s.structure_type for s in structures]
    sgs = np.asarray(model.space_groups)
    probs = model.predict_proba(x)
    report = {
        "model": summarise(
            true, ranked_space_groups(probs, sgs), types, system_scores(probs, sgs).argmax(1)
        ),
        "majority_class": majority_baseline(true, types),
        "chance": chance_level(true, sgs),
    }
    report["model"]["kind"] = model.kind
    if nn_baseline > 0:
        report["nearest_neighbour"] = nearest_neighbour_figures(
            model, nn_baseline, seed, workers, x, true, types, progress
        )
    return report


def evaluate_files(
    model,
    files,
    crystallite_size: float = 50.0,
    nn_baseline: int = 2000,
    seed: int = 0,
    workers: int = 1,
    progress=None,
) -> dict:
    """:func:`simulate_files` then :func:`evaluate_structures`; the report also holds the
    number of ``files`` and the ``skipped`` lines."""
    check_options(workers, nn_baseline, crystallite_size)
    x, structures, skipped = simulate_files(files, model.grid, crystallite_size)
    report = evaluate_structures(model, x, structures, nn_baseline, seed, workers, progress)
    report["files"] = len(files)
    report["skipped"] = skipped
    return report
