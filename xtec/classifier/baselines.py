"""The nearest-neighbour baseline: the space group of the most similar synthetic pattern.

A bank of synthetic patterns (from the model's own generator settings; frequency-aware
for the extinction model) is max-pooled and compared by cosine similarity.  The bank is
seeded per chunk, so it does not depend on the number of worker processes.
"""

from __future__ import annotations

import numpy as np

from xtec.classifier.data import SyntheticConfig, synthetic_batch
from xtec.classifier.metrics import ranked_space_groups, summarise, top_class_systems
from xtec.errors import InputError


def pool_features(patterns: np.ndarray, factor: int = 8) -> np.ndarray:
    """Max-pooled, L2-normalised patterns for cosine similarity, shape (n, n_points // factor)."""
    n, m = patterns.shape
    p = patterns[:, : m - m % factor].reshape(n, -1, factor).max(-1).astype(np.float32)
    return p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)


def _bank_chunk(args) -> tuple[np.ndarray, np.ndarray]:
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


def nn_data_config(model) -> SyntheticConfig:
    """Generator settings of the baseline's bank for ``model`` (on the model's grid).

    For the extinction model the synthetic crystals follow the same real-world
    frequencies as its prior; for a network, its own training data settings.
    """
    g = model.grid
    grid = {
        "two_theta_min": g.two_theta_min,
        "two_theta_max": g.two_theta_max,
        "n_points": g.n_points,
        "wavelength": g.wavelength,
    }
    if model.kind == "extinction":
        kw = model.table.generator_kwargs()
        kw.pop("max_sites")
        return SyntheticConfig(**kw, **grid)
    d = dict(model.config.get("data", {"space_groups": model.space_groups.tolist()}))
    return SyntheticConfig.from_dict({**d, **grid})


def nearest_neighbour_figures(
    model, n: int, seed: int, workers: int, x, true, types, progress=None
) -> dict:
    """Figures of the nearest-neighbour baseline (bank of ``n`` patterns) on patterns ``x``."""
    data = nn_data_config(model)
    feats, labels = synthetic_bank(data, n, seed, workers, progress=progress)
    space_groups = data.space_groups
    nn_model = NearestNeighbourBaseline(space_groups).fit_features(feats, labels)
    scores = nn_model.scores(x)
    sys_pred = top_class_systems(scores, space_groups)
    out = summarise(true, ranked_space_groups(scores, space_groups), types, sys_pred)
    out["bank_size"] = int(n)
    return out
