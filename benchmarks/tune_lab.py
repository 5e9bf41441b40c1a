"""Lab patterns of the *statistics* half, for tuning the indexing (never the evaluation half).

``bench_classifier.py --mode lab`` measures the evaluation half; any choice made while
improving the indexing is made here instead, on laboratory patterns of structures whose
types are counted into the prior (the statistics half), drawn exactly as the lab mode
draws them (impurity partners from the same half).  The patterns are simulated once and
cached (``--cache``), so that a change to the analysis is re-measured in minutes.

    nice python benchmarks/tune_lab.py [--n 120] [--workers 2] [--cache /tmp/stat_lab.pkl] \
        [--out /tmp/tune.json]

Prints strict top-1 / top-5 / crystal system ("not indexed" counted wrong), the status
counts, the share of the most frequent answer and the seconds per pattern.
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from pathlib import Path

import numpy as np
from bench_classifier import analysis_status, real_structures, strict  # (this folder)


def build(n: int, seed: int) -> list[dict]:
    """``n`` lab patterns of the statistics half (first ``n`` structures, seeded)."""
    from xtec.classifier.laboratory import LabSimulator
    from xtec.classifier.realdata import split_of

    unique = real_structures()[1]
    stat = [s for s in unique if split_of(s.structure_type) == "statistics"]
    rng = np.random.default_rng(seed)
    other = [stat[j] for j in rng.permutation(len(stat))]
    out = []
    for k, (s, o) in enumerate(zip(stat[:n], other[:n], strict=True)):
        x, y, info = LabSimulator(seed=np.random.default_rng([seed, 11, k])).simulate(
            s.crystal, o.crystal
        )
        out.append(
            {
                "file": s.path.name,
                "space_group": int(s.space_group),
                "impurity": o.path.name if "impurity_level" in info else None,
                "x": x,
                "y": y,
                "info": info,
            }
        )
    return out


def _analyse(job):
    from xtec.classifier.intake import radiation
    from xtec.classifier.predictor import DEFAULT_MODEL, load_classifier

    pats, overrides = job
    model = load_classifier(DEFAULT_MODEL)
    for key, value in overrides.items():
        setattr(model.classifier.params, key, value)
    out = []
    for p in pats:
        t = time.process_time()
        probs, an, _ = model.analyse_counts(p["x"], p["y"], radiation("Cu"))
        cell = None if an.fit is None else [an.fit.system, an.fit.lengths()]
        out.append((probs, analysis_status(an), time.process_time() - t, cell))
    return out


def main(argv=None) -> int:
    from concurrent.futures import ProcessPoolExecutor

    from xtec.classifier import metrics as mt
    from xtec.classifier.symmetry import CRYSTAL_SYSTEMS, crystal_system_index, system_scores

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cache", default="/tmp/xtec_stat_lab.pkl")
    ap.add_argument("--only", default=None, help="comma-separated pattern indices")
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="override an ExtinctionParams field of the shipped model (repeatable)",
    )
    args = ap.parse_args(argv)
    cache = Path(args.cache)
    if cache.is_file():
        pats = pickle.loads(cache.read_bytes())
    else:
        pats = build(args.n, args.seed)
        cache.write_bytes(pickle.dumps(pats))
    pats = pats[: args.n]
    idx = list(range(len(pats)))
    if args.only:
        idx = [int(i) for i in args.only.split(",")]
    sel = [pats[i] for i in idx]
    t0 = time.perf_counter()
    overrides = {k: json.loads(v) for k, v in (p.split("=", 1) for p in args.param)}
    jobs = [(sel[i : i + 2], overrides) for i in range(0, len(sel), 2)]
    with ProcessPoolExecutor(args.workers) as ex:
        res = [r for chunk in ex.map(_analyse, jobs) for r in chunk]
    wall = time.perf_counter() - t0
    probs = np.array([r[0] for r in res])
    status = [r[1] for r in res]
    true = np.array([p["space_group"] for p in sel])
    sg = np.arange(1, 231)
    ranked = mt.ranked_space_groups(probs, sg)
    sys_pred = system_scores(probs, sg).argmax(1)
    ranked, sys_pred, bad = strict(ranked, sys_pred, status)
    top1 = float(np.mean(ranked[:, 0] == true))
    top5 = float(np.mean((ranked[:, :5] == true[:, None]).any(1)))
    sys_ok = sys_pred == np.asarray(crystal_system_index(true))
    answers, counts = np.unique(ranked[~bad, 0], return_counts=True)
    print(
        f"n={len(sel)} strict top-1 {top1:.3f} top-5 {top5:.3f} system {sys_ok.mean():.3f}; "
        f"{ {k: status.count(k) for k in sorted(set(status))} }; most frequent answer "
        f"{answers[counts.argmax()]} ({counts.max() / len(sel):.3f}); "
        f"CPU {np.mean([r[2] for r in res]):.2f} s/pattern (max {max(r[2] for r in res):.1f}), "
        f"wall {wall:.0f} s"
    )
    rows = []
    for i, p, r, rk, ok in zip(idx, sel, res, ranked, sys_ok, strict=True):
        rows.append(
            {
                "i": i,
                "file": p["file"],
                "sg": p["space_group"],
                "system": CRYSTAL_SYSTEMS[int(crystal_system_index(p["space_group"]))],
                "impurity": p["impurity"],
                "status": r[1],
                "top5": [int(v) for v in rk[:5]],
                "system_ok": bool(ok),
                "cpu_s": round(r[2], 2),
                "cell": r[3],
            }
        )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
