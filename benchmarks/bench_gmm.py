"""GMM benchmark: xtec's EM against scikit-learn on the published tutorial's size.

457,679 trajectories x 24 temperatures, K=4, diagonal covariances (the XTEC
tutorial's thresholded Sr3Rh4Sn13 slice).  Both estimators start from the same
initial parameters and run the same fixed number of EM iterations (tol=0, so
neither stopping rule fires), in the same process, alternating repeats, so the
ratio is fair on a noisy machine.  Initialisation is timed separately.

    python benchmarks/bench_gmm.py [--n 457679] [--iters 50] [--repeats 3]

Prints a table and writes benchmarks/results/gmm.json.
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


def trajectories(n: int, t: int = 24, seed: int = 0) -> np.ndarray:
    """Rescaled trajectories of a synthetic series, tiled to n rows."""
    from xtec.datasets import make_series

    s = make_series(seed=seed, temperatures=np.linspace(20, 300, t))
    m = s.intensity.mean(0)
    keep = m > np.percentile(m[m > 0], 60)
    x = (s.intensity[:, keep] / m[keep] - 1.0).T.astype(np.float32)
    reps = int(np.ceil(n / x.shape[0]))
    rng = np.random.default_rng(seed)
    x = np.concatenate([x] * reps)[:n]
    return np.ascontiguousarray(x + rng.normal(0, 0.01, x.shape).astype(np.float32))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=457_679)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "gmm.json"))
    args = ap.parse_args(argv)

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture as SkGMM

    from xtec.mixture import GaussianMixture, data_stats, m_step

    X = trajectories(args.n)
    n, t = X.shape
    # Shared starting point: xtec's k-means++ on its subsample.
    init = GaussianMixture(args.k, n_init=1, max_iter=1, random_state=0)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        init.fit(X)
    t_init_xtec = time.perf_counter() - t0
    p0 = init.params_

    def run_xtec():
        p = p0
        for _ in range(args.iters):
            st = data_stats(X, p)
            p = m_step(st, 1e-6)
        return st.loglik / n

    def run_sklearn():
        g = SkGMM(args.k, covariance_type="diag", tol=0.0, max_iter=args.iters,
                  weights_init=p0.weights, means_init=p0.means,
                  precisions_init=1.0 / p0.covariances, reg_covar=1e-6)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            g.fit(X.astype(np.float64))  # sklearn computes in float64 either way
        return float(g.lower_bound_)

    run_xtec()  # compile the kernels outside the timing
    times = {"xtec": [], "sklearn": []}
    results = {}
    for _ in range(args.repeats):
        for name, fn in (("xtec", run_xtec), ("sklearn", run_sklearn)):
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    out = {
        "n": n, "t": t, "k": args.k, "iterations": args.iters, "repeats": args.repeats,
        "xtec_s": best["xtec"], "sklearn_s": best["sklearn"],
        "xtec_ms_per_iter": 1e3 * best["xtec"] / args.iters,
        "sklearn_ms_per_iter": 1e3 * best["sklearn"] / args.iters,
        "speedup": best["sklearn"] / best["xtec"],
        "xtec_init_s": t_init_xtec,
        "mean_loglik": results,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "all_times": times,
    }
    print(f"GMM EM, {n} x {t}, K={args.k}, {args.iters} iterations (best of {args.repeats})")
    print(f"{'':10}{'total s':>10}{'ms/iter':>10}")
    print(f"{'xtec':10}{best['xtec']:10.3f}{out['xtec_ms_per_iter']:10.1f}")
    print(f"{'sklearn':10}{best['sklearn']:10.3f}{out['sklearn_ms_per_iter']:10.1f}")
    print(f"speed-up xtec / scikit-learn: {out['speedup']:.1f}x  "
          f"(final mean log-likelihood {results['xtec']:.6f} vs {results['sklearn']:.6f})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
