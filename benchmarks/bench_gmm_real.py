"""The EM start on measured data this project did not make.

scikit-learn's bundled real datasets (digits, breast cancer, wine, iris;
standardised; digits with noise of sd 0.05 added, since some of its pixels
are constant), diagonal and full covariances, K = 2-8, seeds 0-2: the final
mean log-likelihood of xtec's ``GaussianMixture`` with k-means++ followed by
``--lloyd`` Lloyd steps (the first value is the reference), and of
scikit-learn's ``GaussianMixture`` with its own defaults, same ``reg_covar``.
Both are scored by ``score`` on the same X.  These problems have many local
optima, so single fits differ either way; the mean difference over all fits
and the counts of better / worse fits are what the table reports.

    python benchmarks/bench_gmm_real.py [--lloyd 20,8,4]

Prints a table and writes benchmarks/results/gmm_real.json.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def real_sets() -> dict[str, np.ndarray]:
    from sklearn import datasets
    from sklearn.preprocessing import StandardScaler

    out = {}
    for name, loader in (("digits", datasets.load_digits),
                         ("breast_cancer", datasets.load_breast_cancer),
                         ("wine", datasets.load_wine), ("iris", datasets.load_iris)):
        X = StandardScaler().fit_transform(loader().data).astype(np.float32)
        if name == "digits":
            X = X + np.random.default_rng(0).normal(0, 0.05, X.shape).astype(np.float32)
        out[name] = X
    return out


def main(argv=None) -> dict:
    from sklearn.mixture import GaussianMixture as SkGMM

    import xtec.mixture.start as em_start
    from xtec.mixture import GaussianMixture

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lloyd", default="20,8,4", help="Lloyd steps after k-means++ seeding")
    ap.add_argument("--ks", default="2,3,4,5,6,7,8")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--reg-covar", type=float, default=1e-3)
    ap.add_argument("--out", default=str(RESULTS / "gmm_real.json"))
    args = ap.parse_args(argv)
    steps = [int(v) for v in args.lloyd.split(",")]
    ks = [int(v) for v in args.ks.split(",")]
    seeding = em_start.kmeans_plusplus
    scores = {**{f"xtec_lloyd{s}": [] for s in steps}, "sklearn": []}
    seconds = {name: 0.0 for name in scores}
    fits = []
    try:
        for name, X in real_sets().items():
            for cov in ("diag", "full"):
                for k in ks:
                    for seed in range(args.seeds):
                        fits.append((name, cov, k, seed))
                        for s in steps:
                            em_start.kmeans_plusplus = (
                                lambda X_, k_, rng, n_lloyd=s, s=s, **kw: seeding(X_, k_, rng, s,
                                                                                  **kw))
                            with warnings.catch_warnings():
                                warnings.simplefilter("ignore")
                                t0 = time.perf_counter()
                                g = GaussianMixture(k, covariance_type=cov, random_state=seed,
                                                    reg_covar=args.reg_covar).fit(X)
                            seconds[f"xtec_lloyd{s}"] += time.perf_counter() - t0
                            scores[f"xtec_lloyd{s}"].append(float(g.score(X)))
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            t0 = time.perf_counter()
                            sk = SkGMM(k, covariance_type=cov, random_state=seed,
                                       reg_covar=args.reg_covar).fit(X.astype(np.float64))
                        seconds["sklearn"] += time.perf_counter() - t0
                        scores["sklearn"].append(float(sk.score(X.astype(np.float64))))
    finally:
        em_start.kmeans_plusplus = seeding
    ref = np.array(scores[f"xtec_lloyd{steps[0]}"])
    summary = {}
    print(f"{len(fits)} fits; mean log-likelihood against xtec with {steps[0]} Lloyd steps")
    print(f"  {'estimator':18} {'mean diff':>10} {'better':>7} {'worse':>6} {'seconds':>8}")
    for name, v in scores.items():
        d = np.array(v) - ref
        summary[name] = {"mean_diff": float(d.mean()), "better": int(np.sum(d > 1e-4)),
                         "worse": int(np.sum(d < -1e-4)), "seconds": seconds[name]}
        print(f"  {name:18} {d.mean():+10.4f} {summary[name]['better']:7d} "
              f"{summary[name]['worse']:6d} {seconds[name]:8.1f}")
    out = {"fits": fits, "scores": scores, "summary": summary, "reference": steps[0],
           "reg_covar": args.reg_covar}
    Path(args.out).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
