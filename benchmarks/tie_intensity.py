"""Do line intensities beat the prior on ties within an absence class?  (issue 28, item 3)

Statistics half only.  Every pattern is analysed with the shipped model; among those
whose true space group lies in the answer's absence class (``Analysis.groups``) and
whose class mixes centrosymmetric and non-centrosymmetric groups, counts how often the
true group comes first

* by the prior alone (the shipped order), and
* by the prior plus ``weight`` x the Wilson centric/acentric log-likelihood ratio of
  the indexed lines (:func:`xtec.classifier.ties.centric_log_ratio`).

    nice python benchmarks/tie_intensity.py [--lab /tmp/xtec_stat_lab.pkl] [--clean] \
        [--workers 2] [--out benchmarks/results/classifier_ties.json]

``--clean`` adds the noise-free patterns of the statistics half (simulated here).
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from pathlib import Path

import numpy as np

WEIGHTS = (0.25, 0.5, 1.0, 2.0)


def _lab_job(pats):
    from xtec.classifier.intake import radiation
    from xtec.classifier.predictor import DEFAULT_MODEL, load_classifier

    model = load_classifier(DEFAULT_MODEL)
    rad = radiation("Cu")
    out = []
    for p in pats:
        _, an, _ = model.analyse_counts(p["x"], p["y"], rad)
        out.append(_row(p["space_group"], an, rad.wavelength))
    return out


def _clean_job(items):
    from xtec.classifier.predictor import DEFAULT_MODEL, load_classifier

    model = load_classifier(DEFAULT_MODEL)
    clf = model.classifier
    out = []
    for sg, pattern in items:
        an = clf.analyse(clf.lines(model.grid.two_theta, np.asarray(pattern, float) ** 2))
        out.append(_row(sg, an, clf.wavelength))
    return out


def _row(sg: int, an, wavelength: float) -> dict:
    from xtec.classifier.ties import centric_log_ratio

    return {
        "sg": int(sg),
        "indexed": bool(an.indexed),
        "groups": [int(g) for g in an.groups],
        "censored": centric_log_ratio(an, wavelength),
        "observed_lines_only": centric_log_ratio(an, wavelength, censored=False),
    }


def _clean_items():
    from bench_classifier import real_structures  # (this folder)

    from xtec.classifier.realdata import split_of
    from xtec.classifier.simulator import PowderSimulator

    model, unique, _, _ = real_structures()
    stat = [s for s in unique if split_of(s.structure_type) == "statistics"]
    sim = PowderSimulator(model.grid, precision="double")
    return [(s.space_group, sim.simulate([s.crystal], [50.0])[0]) for s in stat]


def _random_items(n: int, seed: int = 0):
    """Clean patterns of random crystals (atoms on general positions: Wilson's case) of
    groups that share absences with a group of the other kind (centric / acentric)."""
    from xtec.classifier.generator import CrystalGenerator
    from xtec.classifier.predictor import DEFAULT_MODEL, load_classifier
    from xtec.classifier.simulator import PowderSimulator

    model = load_classifier(DEFAULT_MODEL)
    sim = PowderSimulator(model.grid, precision="double")
    gen = CrystalGenerator(
        space_groups=RANDOM_GROUPS, wyckoff_weighting="general", max_sites=4, seed=seed
    )
    items = []
    for k in range(n):
        c = gen.generate(RANDOM_GROUPS[k % len(RANDOM_GROUPS)])
        items.append((c.space_group, sim.simulate([c], [50.0])[0]))
    return items


# Pairs of one absence class: C2/c Cc, Pnma Pna2_1, Fm-3m F-43m, C2/m Cm, I4/mmm I-42m.
RANDOM_GROUPS = (15, 9, 62, 33, 225, 216, 12, 8, 139, 121)


def tally(rows: list[dict], log_prior: np.ndarray) -> dict:
    """True group first among its absence class: prior alone vs prior + statistic."""
    from xtec.classifier.ties import centrosymmetric, reorder_by_centricity

    cs = centrosymmetric()
    ties = [
        r
        for r in rows
        if r["indexed"]
        and r["sg"] in r["groups"]
        and len({bool(cs[g - 1]) for g in r["groups"]}) == 2
    ]
    out = {"patterns": len(rows), "true_in_mixed_class": len(ties)}
    prior_first = [reorder_by_centricity(log_prior, r["groups"], 0.0)[0] == r["sg"] for r in ties]
    out["prior_alone_first"] = int(sum(prior_first))
    true_centric = np.array([cs[r["sg"] - 1] for r in ties], bool)
    out["true_centric"] = int(true_centric.sum())
    for variant in ("censored", "observed_lines_only"):
        ratio = np.array([r[variant] for r in ties])
        row = {"ratio_sign_right": int(np.sum((ratio > 0) == true_centric))}
        for w in WEIGHTS:
            first = [
                reorder_by_centricity(log_prior, r["groups"], r[variant], w)[0] == r["sg"]
                for r in ties
            ]
            row[f"with_statistic_w{w:g}_first"] = int(sum(first))
        out[variant] = row
    return out


def _run(job, chunks, workers):
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers) as ex:
        return [r for chunk in ex.map(job, chunks) for r in chunk]


def main(argv=None) -> int:
    from xtec.classifier.predictor import DEFAULT_MODEL, load_classifier

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lab", default="/tmp/xtec_stat_lab.pkl", help="tune_lab.py's cache")
    ap.add_argument("--clean", action="store_true")
    ap.add_argument("--random", type=int, default=0, help="random crystals too (a check)")
    ap.add_argument("--no-lab", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    log_prior = load_classifier(DEFAULT_MODEL).classifier.log_prior
    t0 = time.perf_counter()
    result = {"weights": list(WEIGHTS)}
    if not args.no_lab:
        pats = pickle.loads(Path(args.lab).read_bytes())
        rows = _run(_lab_job, [pats[i : i + 4] for i in range(0, len(pats), 4)], args.workers)
        result["lab"] = tally(rows, log_prior)
    if args.random:
        items = _random_items(args.random)
        rows = _run(_clean_job, [items[i : i + 8] for i in range(0, len(items), 8)], args.workers)
        result["random_crystals"] = tally(rows, log_prior)
    if args.clean:
        items = _clean_items()
        rows = _run(_clean_job, [items[i : i + 8] for i in range(0, len(items), 8)], args.workers)
        result["clean"] = tally(rows, log_prior)
    result["wall_s"] = round(time.perf_counter() - t0)
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
