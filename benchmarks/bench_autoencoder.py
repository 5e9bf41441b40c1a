"""Measure the numbers quoted in docs/autoencoder.md.

    python benchmarks/bench_autoencoder.py [--seeds 0 1 2] [--threads 1]

Feature-space AE: held-out composition MAE on the synthetic alloy series
(150 training, 50 held-out patterns), peak-relevance shifts of a planted peak and
of a stronger unchanging one, training time.  RankAAE: held-out Spearman per
descriptor, reconstruction MAE, inter-latent correlations, training time.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from xtec.autoencoder.data import SPECTRUM_DESCRIPTORS, synthetic_alloy_series, synthetic_spectra
from xtec.autoencoder.feature_space import FeatureSpaceAE
from xtec.autoencoder.rankaae import RankAAE


def bench_feature_space(seed: int, threads: int) -> dict:
    train = synthetic_alloy_series(150, seed=1)
    test = synthetic_alloy_series(50, seed=2)
    start = time.perf_counter()
    model = FeatureSpaceAE(epochs=150, seed=seed, n_threads=threads, progress=False).fit(train)
    seconds = time.perf_counter() - start
    est, unc = model.estimate(test)
    err = np.abs(est - test.composition.values)
    base = synthetic_alloy_series(150, lattice=(2.95, 2.95), order=0.0, size_spread=0.0, seed=4)
    x, tt = base.composition.values, base.two_theta.values
    planted = base + 0.3 * x[:, None] * np.exp(-0.5 * ((tt - 36.0) / 0.12) ** 2)
    rel_model = FeatureSpaceAE(epochs=150, seed=seed, n_threads=threads, progress=False).fit(
        planted
    )
    rel = rel_model.peak_relevance(planted[140])
    pos = rel.position.values
    p, s = int(np.argmin(np.abs(pos - 36.0))), int(np.argmax(rel.height.values))
    return {
        "train_seconds": round(seconds, 2),
        "components": int(model.components_.shape[0]),
        "mae": float(err.mean()),
        "max_error": float(err.max()),
        "mean_uncertainty": float(unc.mean()),
        "within_3sigma": float(np.mean(err <= 3 * unc)),
        "planted_rank": int(rel["rank"].values[p]),
        "planted_shift": float(rel.latent_shift.values[p]),
        "strong_peak_rank": int(rel["rank"].values[s]),
        "strong_peak_shift": float(rel.latent_shift.values[s]),
    }


def bench_rankaae(seed: int, threads: int) -> dict:
    spectra = synthetic_spectra(2500, seed=0)
    start = time.perf_counter()
    model = RankAAE(
        descriptors=SPECTRUM_DESCRIPTORS, n_free=1, seed=seed, n_threads=threads, progress=False
    )
    model.fit_split(spectra, 0.2)
    seconds = time.perf_counter() - start
    rep = model.report(spectra.isel(spectrum=model.test_index_))
    rep["train_seconds"] = round(seconds, 2)
    return rep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    for seed in args.seeds:
        print(
            json.dumps({"seed": seed, "feature_space": bench_feature_space(seed, args.threads)}),
            flush=True,
        )
        print(json.dumps({"seed": seed, "rankaae": bench_rankaae(seed, args.threads)}), flush=True)


if __name__ == "__main__":
    main()
