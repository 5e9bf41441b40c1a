"""Throughput of the synthetic-data pipeline against pymatgen's XRDCalculator.

One run: generates random crystals (all 230 space groups, uniform), times
generator + simulator per pattern, then times pymatgen's ``XRDCalculator`` (Cu K-alpha1,
2-theta 5..90) on the very same crystals, single process, and prints patterns per
second per core and the ratio.  Writes ``benchmarks/results/classifier.json``.

    python benchmarks/bench_classifier.py [--n 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="crystals (default 300)")
    ap.add_argument("--batch", type=int, default=64, help="simulator batch size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "classifier.json"))
    args = ap.parse_args(argv)

    # One core: keep BLAS single-threaded for both sides.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from pymatgen.analysis.diffraction.xrd import XRDCalculator
    from pymatgen.core import Lattice, Structure

    from xtec.classifier.generator import CrystalGenerator, wyckoff_positions
    from xtec.classifier.simulator import CU_KA1, PowderSimulator

    gen = CrystalGenerator(seed=args.seed)
    sim = PowderSimulator(seed=args.seed)
    t = time.perf_counter()
    for sg in range(1, 231):
        wyckoff_positions(sg)  # one-off space-group tables from pyxtal
    warmup_s = time.perf_counter() - t
    sim.simulate(gen.generate_many(4))

    t = time.perf_counter()
    crystals = gen.generate_many(args.n)
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(0, args.n, args.batch):
        sim.simulate(crystals[i : i + args.batch])
    sim_s = time.perf_counter() - t

    calc = XRDCalculator(wavelength=CU_KA1)
    structures = [Structure(Lattice(c.lattice), c.numbers, c.frac_coords) for c in crystals]
    per = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s in structures:
            t = time.perf_counter()
            calc.get_pattern(s, two_theta_range=(5, 90))
            per.append(time.perf_counter() - t)
    pmg_s = float(np.sum(per))

    ours = args.n / (gen_s + sim_s)
    theirs = args.n / pmg_s
    res = {
        "n_crystals": args.n,
        "atoms_per_cell_median": float(np.median([len(c.numbers) for c in crystals])),
        "atoms_per_cell_mean": float(np.mean([len(c.numbers) for c in crystals])),
        "xtec_generator_ms_per_crystal": 1e3 * gen_s / args.n,
        "xtec_simulator_ms_per_pattern": 1e3 * sim_s / args.n,
        "xtec_patterns_per_s_per_core": ours,
        "pymatgen_ms_per_pattern_mean": 1e3 * pmg_s / args.n,
        "pymatgen_ms_per_pattern_median": 1e3 * float(np.median(per)),
        "pymatgen_patterns_per_s_per_core": theirs,
        "ratio": ours / theirs,
        "one_off_space_group_tables_s": warmup_s,
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }
    print(
        f"crystals: {args.n} (atoms per cell: median {res['atoms_per_cell_median']:.0f}, mean {res['atoms_per_cell_mean']:.1f})"
    )
    print(
        f"xtec generator + simulator: {ours:8.1f} patterns/s/core "
        f"({res['xtec_generator_ms_per_crystal']:.2f} ms generate + {res['xtec_simulator_ms_per_pattern']:.2f} ms simulate)"
    )
    print(
        f"pymatgen XRDCalculator:     {theirs:8.1f} patterns/s/core "
        f"(mean {res['pymatgen_ms_per_pattern_mean']:.1f} ms, median {res['pymatgen_ms_per_pattern_median']:.1f} ms; peaks only, no profile)"
    )
    print(f"ratio: {res['ratio']:.1f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
