"""Classifier benchmarks: data throughput, real-structure accuracy, training-step speed.

``--mode throughput`` (default): generates random crystals (all 230 space groups, uniform), times
generator + simulator per pattern, then times pymatgen's ``XRDCalculator`` (Cu K-alpha1,
2-theta 5..90) on the very same crystals, single process, and prints patterns per
second per core and the ratio.  Writes ``benchmarks/results/classifier.json``.

    python benchmarks/bench_classifier.py [--n 300] [--seed 0]

``--mode real``: the shipped classifier on real structures whose structure types are not
in its statistics (the "evaluation" half of :mod:`xtec.classifier.realdata`: Debian
libavogadro-data, PyPI crystals, the structure files of pyxtal, Dans_Diffraction,
pymatgen and ase), beside the majority-class baselines, nearest neighbours (synthetic
frequency-aware patterns, and the real structures of the statistics half), the shipped
example ResNet (plus any ``--network NAME=DIR``) and chance: top-1, top-5, crystal system,
by structure type and per crystal system.  Writes ``benchmarks/results/classifier_real.json``.

    python benchmarks/bench_classifier.py --mode real [--workers 2] [--nn-bank 10000] \
        [--network earlier=DIR]

``--mode lab``: the same evaluation half simulated as a laboratory diffractometer records
it (:mod:`xtec.classifier.laboratory`: Cu K-alpha1+2, pseudo-Voigt widths, zero shift up
to 0.05 degrees, sample displacement, background with low-angle rise and amorphous hump,
Poisson counts with the strongest peak at 1e4-4e4, preferred orientation in half the
patterns, an impurity phase in 30 %, 2-theta ranges and steps drawn per pattern), read by
the shipped model as ``xtec classify predict`` reads a file; figures as ranked and strict
("not indexed" counted wrong), the share of the most frequent answer, and the
majority-class and nearest-neighbour baselines (the statistics half in lab mode, and
frequency-aware synthetic patterns) on the same lab patterns.  Writes
``benchmarks/results/classifier_lab.json``.

    nice python benchmarks/bench_classifier.py --mode lab [--workers 2] [--nn-bank 10000]

``--mode train-step``: patterns per second through one ResNet training step (forward,
backward, AdamW), by thread count and batch size, in three variants: ``reference``, the
earlier example network (width 24, stem stride 4) as ``xtec classify train`` ran it before
(``ResNet1D.forward_reference``, OpenMP's default wait policy); ``fast``, the same network
with ``ResNet1D.forward`` and the trainer's settings; ``shipped``, the shipped network
(``xtec/classifier/pretrained``) the way the trainer runs it now.  Each run is a fresh
process, the variants alternating, medians of ``--repeats``; with the equivalence of the two
forwards, each network's FLOPs per step and the data pipeline's own rate.  Writes
``benchmarks/results/classifier_train_step.json``.

    nice -n 5 python benchmarks/bench_classifier.py --mode train-step [--impl all] [--repeats 3]
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

RESULTS = Path(__file__).parent / "results"
STEP_VARIANTS = ("reference", "fast", "shipped")
# The two networks the train-step mode compares, by the variant that runs each as it is run.
NETWORKS = {"earlier_network": "reference", "shipped_network": "shipped"}
# The example network shipped until the stem stride became a setting (issue 15's "today").
EARLIER_NETWORK = {
    "width": 24,
    "blocks": [1, 1, 1, 1],
    "groups": 8,
    "head_bins": 8,
    "stem_stride": 4,
}


def _network_config(variant: str) -> dict:
    """The model configuration a train-step variant runs: the shipped one's grid and classes."""
    from xtec.classifier.predictor import NETWORK_DIR

    cfg = json.loads((NETWORK_DIR / "config.json").read_text())["model"]
    return cfg if variant == "shipped" else {**cfg, **EARLIER_NETWORK}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--mode", choices=["throughput", "real", "lab", "train-step"], default="throughput"
    )
    ap.add_argument("--n", type=int, default=300, help="crystals (default 300)")
    ap.add_argument("--batch", type=int, default=64, help="simulator batch size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2, help="processes (real mode)")
    ap.add_argument("--nn-bank", type=int, default=10000, help="synthetic NN patterns (real)")
    ap.add_argument("--limit", type=int, default=None, help="first N evaluation structures")
    ap.add_argument(
        "--network",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="real: also evaluate this network directory (repeatable)",
    )
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--impl",
        choices=["all", *STEP_VARIANTS],
        default="all",
        help="train-step: which variants (default all, side by side)",
    )
    ap.add_argument("--repeats", type=int, default=3, help="train-step: runs per configuration")
    ap.add_argument("--steps", type=int, default=5, help="train-step: timed steps per run")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.mode == "real":
        return real(args)
    if args.mode == "lab":
        return lab(args)
    if args.mode == "train-step":
        return train_step(args)
    args.out = args.out or str(RESULTS / "classifier.json")

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


def _predict_chunk(job):
    from xtec.classifier.predictor import load_classifier

    directory, x = job
    return load_classifier(directory).predict_proba(x)


def _nn_synthetic(model, args, x, true, types) -> dict:
    """Nearest neighbour among ``args.nn_bank`` frequency-aware synthetic patterns."""
    from xtec.classifier import baselines as bl
    from xtec.classifier import metrics as mt

    data = bl.nn_data_config(model)
    feats, labels = bl.synthetic_bank(data, args.nn_bank, args.seed, args.workers)
    scores = bl.NearestNeighbourBaseline(data.space_groups).fit_features(feats, labels).scores(x)
    out = mt.summarise(
        true,
        mt.ranked_space_groups(scores, data.space_groups),
        types,
        mt.top_class_systems(scores, data.space_groups),
    )
    out["bank_size"] = args.nn_bank
    return out


def _row(name, r):
    bt = r.get("by_type", r)
    return (
        f"{name:34s} {r['top1']:6.3f} {r['top5']:6.3f} {r['system_top1']:6.3f}   "
        f"{bt['top1']:6.3f} {bt['top5']:6.3f} {bt['system_top1']:6.3f}"
    )


def real(args) -> int:
    """Accuracy on real structures of types never counted into the prior."""
    from concurrent.futures import ProcessPoolExecutor

    from xtec.classifier import baselines as bl
    from xtec.classifier import metrics as mt
    from xtec.classifier import structures as st_mod
    from xtec.classifier.predictor import DEFAULT_MODEL, NETWORK_DIR, load_classifier
    from xtec.classifier.realdata import collect_files, deduplicate, split_of
    from xtec.classifier.simulator import PowderSimulator
    from xtec.classifier.statistics import count
    from xtec.classifier.symmetry import system_scores

    t0 = time.perf_counter()
    files, missing = collect_files()
    structures, skipped = [], {}
    for name, fs in files.items():
        st, sk = st_mod.load_structures(fs)
        for s in st:
            s.source = name
        structures += st
        skipped[name] = sk
    unique = deduplicate(structures)
    model = load_classifier(DEFAULT_MODEL)
    sim = PowderSimulator(model.grid, precision="double")
    x, unique, sim_skipped = st_mod.structure_patterns(unique, sim, 50.0)
    skipped["simulation"] = sim_skipped
    split = np.array([split_of(s.structure_type) for s in unique])
    ev_idx = np.flatnonzero(split == "evaluation")[: args.limit]
    st_idx = np.flatnonzero(split == "statistics")
    load_s = time.perf_counter() - t0

    # The shipped prior must be exactly the statistics half's counts (no evaluation type).
    recount = count([unique[i] for i in st_idx], "")
    prior_matches = recount.space_groups == model.table.space_groups
    eval_types = {unique[i].structure_type for i in ev_idx}
    assert not eval_types & {unique[i].structure_type for i in st_idx}

    xe = x[ev_idx]
    true = np.array([unique[i].space_group for i in ev_idx])
    types = [unique[i].structure_type for i in ev_idx]
    sg = np.arange(1, 231)
    t = time.perf_counter()
    chunks = [(str(DEFAULT_MODEL), xe[i : i + 8]) for i in range(0, len(xe), 8)]
    with ProcessPoolExecutor(args.workers) as ex:
        probs = np.concatenate(list(ex.map(_predict_chunk, chunks)))
    model_s = time.perf_counter() - t

    def summary(p, space_groups=sg):
        space_groups = np.asarray(space_groups)
        return mt.summarise(
            true,
            mt.ranked_space_groups(p, space_groups),
            types,
            system_scores(p, space_groups).argmax(1),
        )

    rep = {"model": summary(probs)}
    rep["model"]["seconds_per_pattern"] = model_s * args.workers / len(xe)
    rep["majority_class_evaluation_set"] = mt.majority_baseline(true, types)
    rep["majority_class_statistics_half"] = mt.majority_baseline(
        true, types, [unique[i].space_group for i in st_idx]
    )
    # Nearest neighbour among the real structures of the statistics half.
    nn_real = bl.NearestNeighbourBaseline(sg).fit(
        x[st_idx], [unique[i].space_group for i in st_idx]
    )
    s_real = nn_real.scores(xe)
    rep["nearest_neighbour_real_statistics_half"] = mt.summarise(
        true,
        mt.ranked_space_groups(s_real, sg),
        types,
        mt.top_class_systems(s_real, sg),
    )
    # Nearest neighbour among frequency-aware synthetic patterns.
    t = time.perf_counter()
    rep["nearest_neighbour_synthetic"] = _nn_synthetic(model, args, xe, true, types)
    nn_s = time.perf_counter() - t
    networks = []
    if (NETWORK_DIR / "model.safetensors").is_file():
        networks.append(("resnet_shipped", NETWORK_DIR))
    for spec in args.network:
        name, _, directory = spec.rpartition("=")
        networks.append((f"resnet_{name or Path(directory).name}", Path(directory)))
    for name, directory in networks:
        net = load_classifier(directory)
        rep[name] = summary(net.predict_proba(xe), net.space_groups)
        cfg = json.loads((directory / "config.json").read_text())
        rep[name]["network"] = {
            "dir": str(directory.name),
            "model": {k: v for k, v in cfg["model"].items() if k != "space_groups"},
            "patterns_seen": cfg.get("patterns_seen"),
            "command": cfg.get("command"),
        }
    rep["chance"] = mt.chance_level(true, sg)

    print(
        f"{len(structures)} structures read ({sum(len(v) for v in skipped.values())} files "
        f"skipped), {len(unique)} after deduplication; evaluation half: {len(ev_idx)} "
        f"structures of {rep['model']['n_types']} types; statistics half: {len(st_idx)}"
    )
    print(f"{'':34s} {'top-1':>6s} {'top-5':>6s} {'system':>6s}   by type: top-1, top-5, system")
    for k, r in rep.items():
        print(_row(k, r))
    print("per crystal system (model):")
    for k, r in rep["model"]["per_crystal_system"].items():
        print(
            f"  {k:13s} n={r['n']:4d} top-1 {r['top1']:.3f} top-5 {r['top5']:.3f} "
            f"system {r['system_top1']:.3f}"
        )
    m, mj = rep["model"], rep["majority_class_evaluation_set"]
    targets = {
        "top1>=0.30": m["top1"] >= 0.30,
        "top5>=0.60": m["top5"] >= 0.60,
        "system>=0.70": m["system_top1"] >= 0.70,
        "top1>=3x_majority": m["top1"] >= 3 * mj["top1"],
    }
    print("targets:", targets)
    res = {
        "results": rep,
        "targets": targets,
        "model_dir": str(DEFAULT_MODEL.name),
        "prior_equals_statistics_half_counts": bool(prior_matches),
        "sources": {k: len(v) for k, v in files.items()},
        "sources_unavailable": missing,
        "n_read": len(structures),
        "n_unique": len(unique),
        "n_evaluation": int(len(ev_idx)),
        "n_statistics": int(len(st_idx)),
        "skipped": skipped,
        "seconds": {"load_and_simulate": load_s, "model": model_s, "nn_synthetic": nn_s},
        "crystallite_size_nm": 50.0,
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }
    out = Path(args.out or RESULTS / "classifier_real.json")
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"written {out}")
    return 0


def _lab_chunk(job):
    from xtec.classifier.data import resample
    from xtec.classifier.intake import radiation
    from xtec.classifier.laboratory import LabSimulator
    from xtec.classifier.predictor import load_classifier

    directory, items, analyse = job
    model = load_classifier(directory)
    out = []
    for i, crystal, other, seed in items:
        x, y, info = LabSimulator(seed=np.random.default_rng(seed)).simulate(crystal, other)
        grid_pattern = resample(x, y, model.grid)
        if not analyse:
            out.append((i, None, None, info, grid_pattern))
            continue
        probs, an, _ = model.analyse_counts(x, y, radiation("Cu"))
        out.append((i, probs, analysis_status(an), info, grid_pattern))
    return out


def analysis_status(an) -> str:
    """How a pattern's analysis ended: indexed, more than one phase, not indexed."""
    return "more than one phase" if an.phases > 1 else ("indexed" if an.indexed else "not indexed")


def strict(ranked, sys_pred, status):
    """The rankings and crystal systems with every "not indexed" answer made wrong
    (no group, no system), and which answers those were."""
    bad = np.array([s_ == "not indexed" for s_ in status])
    return np.where(bad[:, None], 0, ranked), np.where(bad, -1, sys_pred), bad


def real_structures():
    """Every installed real structure, deduplicated and simulated on the shipped
    model's grid: (the model, the structures that simulate, the source files by
    source, the sources missing)."""
    from xtec.classifier import structures as st_mod
    from xtec.classifier.predictor import DEFAULT_MODEL, load_classifier
    from xtec.classifier.realdata import collect_files, deduplicate
    from xtec.classifier.simulator import PowderSimulator

    files, missing = collect_files()
    structures = []
    for fs in files.values():
        structures += st_mod.load_structures(fs)[0]
    model = load_classifier(DEFAULT_MODEL)
    sim = PowderSimulator(model.grid, precision="double")
    _, unique, _ = st_mod.structure_patterns(deduplicate(structures), sim, 50.0)
    return model, unique, files, missing


def _lab_patterns(directory, structures, others, seed, workers, analyse):
    from concurrent.futures import ProcessPoolExecutor

    items = [
        (k, s.crystal, o.crystal, [seed, 11, k])
        for k, (s, o) in enumerate(zip(structures, others, strict=True))
    ]
    jobs = [(str(directory), items[i : i + 4], analyse) for i in range(0, len(items), 4)]
    with ProcessPoolExecutor(workers) as ex:
        return [r for chunk in ex.map(_lab_chunk, jobs) for r in chunk]


def lab(args) -> int:
    """Accuracy on laboratory-style patterns of the evaluation half (see the module doc)."""
    from xtec.classifier import baselines as bl
    from xtec.classifier import metrics as mt
    from xtec.classifier.laboratory import LabSettings
    from xtec.classifier.predictor import DEFAULT_MODEL
    from xtec.classifier.realdata import split_of
    from xtec.classifier.symmetry import system_scores

    t0 = time.perf_counter()
    model, unique, files, missing = real_structures()
    split = np.array([split_of(s.structure_type) for s in unique])
    ev_idx = np.flatnonzero(split == "evaluation")[: args.limit]
    st_idx = np.flatnonzero(split == "statistics")
    rng = np.random.default_rng(args.seed)
    # An impurity candidate for every pattern: another structure of the same half.
    ev = [unique[i] for i in ev_idx]
    stat = [unique[i] for i in st_idx]
    ev_other = [ev[j] for j in rng.permutation(len(ev))]
    st_other = [stat[j] for j in rng.permutation(len(stat))]
    t = time.perf_counter()
    res = _lab_patterns(DEFAULT_MODEL, ev, ev_other, args.seed, args.workers, True)
    model_s = time.perf_counter() - t
    probs = np.array([r[1] for r in res])
    status = [r[2] for r in res]
    xe = np.array([r[4] for r in res])
    true = np.array([s.space_group for s in ev])
    types = [s.structure_type for s in ev]
    sg = np.arange(1, 231)
    ranked = mt.ranked_space_groups(probs, sg)
    sys_pred = system_scores(probs, sg).argmax(1)
    rep = {"model_as_ranked": mt.summarise(true, ranked, types, sys_pred)}
    # Strict: a pattern reported "not indexed" is wrong whatever its ranking says.
    strict_ranked, strict_sys, bad = strict(ranked, sys_pred, status)
    rep["model"] = mt.summarise(true, strict_ranked, types, strict_sys)
    rep["model"]["seconds_per_pattern"] = model_s * args.workers / len(ev)
    # A "not indexed" answer gives no space group (predict's ``answer`` is None): the
    # share of the most frequent answer counts the groups actually given, over all
    # patterns; the top of the ranking (what the answer was before) is reported beside.
    answers, counts = np.unique(ranked[~bad, 0], return_counts=True)
    share_all = np.unique(ranked[:, 0], return_counts=True)
    rep["model"]["status"] = {k: int(status.count(k)) for k in sorted(set(status))}
    rep["model"]["most_frequent_answer"] = {
        "space_group": int(answers[counts.argmax()]) if len(counts) else None,
        "share_of_all_patterns": float(counts.max() / len(ev)) if len(counts) else 0.0,
        "top_of_ranking_space_group": int(share_all[0][share_all[1].argmax()]),
        "top_of_ranking_share": float(share_all[1].max() / len(ev)),
    }
    rep["majority_class_evaluation_set"] = mt.majority_baseline(true, types)
    # Nearest neighbour among the statistics half, simulated in lab mode too.
    st_res = _lab_patterns(DEFAULT_MODEL, stat, st_other, args.seed + 1, args.workers, False)
    xs = np.array([r[4] for r in st_res])
    nn_real = bl.NearestNeighbourBaseline(sg).fit(xs, [s.space_group for s in stat])
    s_real = nn_real.scores(xe)
    rep["nearest_neighbour_real_statistics_half_lab"] = mt.summarise(
        true, mt.ranked_space_groups(s_real, sg), types, mt.top_class_systems(s_real, sg)
    )
    rep["nearest_neighbour_synthetic"] = _nn_synthetic(model, args, xe, true, types)
    rep["chance"] = mt.chance_level(true, sg)
    print(f"{len(ev)} evaluation structures of {rep['model']['n_types']} types, lab patterns")
    print(f"{'':34s} {'top-1':>6s} {'top-5':>6s} {'system':>6s}   by type: top-1, top-5, system")
    for k, r in rep.items():
        print(_row(k, r))
    m = rep["model"]
    print("status:", m["status"], "most frequent answer:", m["most_frequent_answer"])
    print("per crystal system (strict):")
    for k, r in m["per_crystal_system"].items():
        print(
            f"  {k:13s} n={r['n']:4d} top-1 {r['top1']:.3f} top-5 {r['top5']:.3f} system {r['system_top1']:.3f}"
        )
    targets = {
        "top1>=0.40": m["top1"] >= 0.40,
        "top5>=0.65": m["top5"] >= 0.65,
        "system>=0.65": m["system_top1"] >= 0.65,
        "no_answer_over_15%": m["most_frequent_answer"]["share_of_all_patterns"] <= 0.15,
    }
    print("targets:", targets)
    res_json = {
        "results": rep,
        "targets": targets,
        "lab_settings": LabSettings().to_dict(),
        "per_pattern": [
            {
                "file": str(s.path.name),
                "space_group": int(s.space_group),
                "status": r[2],
                "answer": None if r[2] == "not indexed" else int(a),
                "top_of_ranking": int(a),
                **{k: v for k, v in r[3].items() if k != "texture"},
            }
            for s, r, a in zip(ev, res, ranked[:, 0], strict=True)
        ],
        "model_config": json.loads((DEFAULT_MODEL / "config.json").read_text()),
        "sources": {k: len(v) for k, v in files.items()},
        "sources_unavailable": missing,
        "n_evaluation": len(ev),
        "n_statistics": len(stat),
        "seed": args.seed,
        "seconds": {"total": time.perf_counter() - t0, "model": model_s},
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }
    out = Path(args.out or RESULTS / "classifier_lab.json")
    out.write_text(json.dumps(res_json, indent=1) + "\n")
    print(f"written {out}")
    return 0


def _step_child(impl: str, threads: int, batch: int, seed: int, steps: int) -> dict:
    """One configuration in this (fresh) process; prints and returns its step times.

    ``reference``: the earlier network's module-by-module forward with OpenMP's default wait
    policy (what ``xtec classify train`` ran before).  ``fast`` and ``shipped``:
    :meth:`ResNet1D.forward` with the settings :mod:`xtec.classifier.training` applies on
    import (before torch is loaded), on the earlier and the shipped network.
    """
    if impl != "reference":
        import xtec.classifier.training  # noqa: F401 - sets OMP_WAIT_POLICY before torch loads
    import torch

    from xtec.classifier.model import ModelConfig, ResNet1D

    cfg = _network_config(impl)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = ResNet1D(ModelConfig.from_dict(cfg))
    forward = model.forward_reference if impl == "reference" else model
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.rand(batch, cfg["n_points"])
    y = torch.randint(0, len(cfg["space_groups"]), (batch,))
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(forward(x), y)
        loss.backward()
        opt.step()
        if i >= 2:  # first steps allocate
            times.append(time.perf_counter() - t)
    return {
        "impl": impl,
        "threads": threads,
        "batch": batch,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "step_s": times,
    }


def _equivalence(seed: int) -> dict:
    """Largest relative differences between the two forwards (logits, loss gradients)."""
    import torch

    from xtec.classifier.model import ModelConfig, ResNet1D

    def rel(a, b):
        return float((a - b).abs().max() / a.abs().max())

    out = {}
    for name, variant in NETWORKS.items():
        cfg = _network_config(variant)
        torch.manual_seed(seed)
        model = ResNet1D(ModelConfig.from_dict(cfg))
        x = torch.rand(16, cfg["n_points"])
        y = torch.randint(0, len(cfg["space_groups"]), (16,))
        res = {}
        for path, fwd in (("reference", model.forward_reference), ("fast", model)):
            model.zero_grad()
            logits = fwd(x)
            torch.nn.functional.cross_entropy(logits, y).backward()
            res[path] = [logits.detach()] + [p.grad.clone() for p in model.parameters()]
        out[name] = {
            "logits_max_rel_diff": rel(res["reference"][0], res["fast"][0]),
            "grad_max_rel_diff": max(
                rel(a, b) for a, b in zip(res["reference"][1:], res["fast"][1:])
            ),
        }
    return out


def train_step(args) -> int:
    """Patterns per second of one ResNet training step, earlier and shipped side by side.

    Every (variant, threads, batch) runs in its own fresh process (OpenMP's wait policy is
    fixed when torch loads), the variants in rotating order, ``--repeats`` times; medians.
    """
    import subprocess
    import sys

    if args.child:
        impl, threads, batch = args.child.split(",")
        print(json.dumps(_step_child(impl, int(threads), int(batch), args.seed, args.steps)))
        return 0
    impls = list(STEP_VARIANTS) if args.impl == "all" else [args.impl]
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    runs = []
    for threads in (1, 2):
        for batch in (32, 64):
            for r in range(args.repeats):
                # Rotate the order so that no variant always runs first (host drift).
                for impl in impls[r % len(impls) :] + impls[: r % len(impls)]:
                    cmd = [
                        sys.executable,
                        __file__,
                        "--mode",
                        "train-step",
                        "--seed",
                        str(args.seed),
                        "--steps",
                        str(args.steps),
                        "--child",
                        f"{impl},{threads},{batch}",
                    ]
                    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                    run = json.loads(res.stdout.strip().splitlines()[-1])
                    run["s_per_step"] = float(np.median(run["step_s"]))
                    runs.append(run)
                    print(
                        f"  {impl:9s} threads {threads} batch {batch}: "
                        f"{1e3 * run['s_per_step']:.0f} ms/step",
                        flush=True,
                    )
    rows = []
    for threads in (1, 2):
        for batch in (32, 64):
            row = {"threads": threads, "batch": batch}
            for impl in impls:
                sel = [
                    r["s_per_step"]
                    for r in runs
                    if (r["impl"], r["threads"], r["batch"]) == (impl, threads, batch)
                ]
                med = float(np.median(sel))
                row[impl] = {
                    "s_per_step": med,
                    "patterns_per_s": batch / med,
                    "s_per_step_runs": sel,
                }
            if "reference" in row:
                # Speed-up over the reference step, as the median of per-repeat ratios
                # (each repeat's variants ran back to back) and as the ratio of medians.
                for impl in impls[1:]:
                    ref = row["reference"]["s_per_step_runs"]
                    got = row[impl]["s_per_step_runs"]
                    row[f"ratio_{impl}"] = row["reference"]["s_per_step"] / row[impl]["s_per_step"]
                    row[f"ratio_{impl}_paired_median"] = float(
                        np.median([a / b for a, b in zip(ref, got)])
                    )
            rows.append(row)
            print(
                f"threads {threads} batch {batch}: "
                + ", ".join(
                    f"{i} {row[i]['patterns_per_s']:6.1f} patterns/s "
                    f"({1e3 * row[i]['s_per_step']:.0f} ms)"
                    for i in impls
                )
                + "".join(
                    f", {k[6:]} {v:.2f}x"
                    for k, v in row.items()
                    if k.startswith("ratio_") and not k.endswith("paired_median")
                )
            )
    equivalence = _equivalence(args.seed)
    print(f"equivalence (same weights): {equivalence}")
    pipeline = RESULTS / "classifier.json"
    data_rate = (
        json.loads(pipeline.read_text())["xtec_patterns_per_s_per_core"]
        if pipeline.is_file()
        else None
    )
    if data_rate:
        best = max(r[impls[-1]]["patterns_per_s"] for r in rows if r["threads"] == 1)
        print(
            f"data pipeline (classifier.json): {data_rate:.1f} patterns/s/core; one thread "
            f"of the {impls[-1]} step takes {best / data_rate:.1f} data cores to feed"
        )
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from xtec.classifier.model import ModelConfig, ResNet1D

    gflop, params = {}, {}
    for name, variant in NETWORKS.items():
        cfg = _network_config(variant)
        model = ResNet1D(ModelConfig.from_dict(cfg))
        with FlopCounterMode(display=False) as fc:
            torch.nn.functional.cross_entropy(
                model.forward_reference(torch.rand(32, cfg["n_points"])), torch.zeros(32).long()
            ).backward()
        gflop[name] = fc.get_total_flops() / 1e9
        params[name] = sum(p.numel() for p in model.parameters())
        print(
            f"{name}: {gflop[name]:.2f} GFLOP per training step at batch 32 "
            f"(forward + backward), {params[name]:,} parameters"
        )
    out = Path(args.out or RESULTS / "classifier_train_step.json")
    out.write_text(
        json.dumps(
            {
                "model": {name: _network_config(v) for name, v in NETWORKS.items()},
                "steps": rows,
                "runs": runs,
                "equivalence": equivalence,
                "gflop_per_step_batch32": gflop,
                "parameters": params,
                "data_pipeline_patterns_per_s_per_core": data_rate,
                "repeats": args.repeats,
                "timed_steps_per_run": args.steps,
                "cpu": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(),
                "load_average_after_run": list(os.getloadavg()),
            },
            indent=1,
        )
        + "\n"
    )
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
