"""Combining mixture components into clusters (Baudry et al., JCGS 19, 2010).

A Gaussian mixture with K chosen by BIC fits as many components as the data's
*shape* needs, not as many as there are physical families: a diffuse halo,
whose trajectories change continuously with distance from its peak, takes
several overlapping components, while a small, tight family (Bragg peaks) may
only get its own component once K is larger than the number of families.
Merging the overlapping components afterwards keeps the tight family apart
and rejoins the halo.

:func:`entropy_merge` merges, greedily, the pair of components whose union
lowers the entropy of the responsibilities the most (the components that share
the most voxels), down to one cluster, and records the entropy after every
merge.  :func:`entropy_elbow` picks the number of clusters where that entropy
curve bends (a two-segment piecewise-linear fit, as Baudry et al. suggest):
before it merges remove much ambiguity, after it little.

Pure functions of the responsibilities (N, K) from any fitted mixture; no
estimator state is touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class MergeResult:
    """A hierarchy of merges of K components.

    merges : list of (a, b) component-group ids merged at each step (b into a),
        ids of the original components (the group keeps the smaller id)
    entropy : (K,) entropy of the merged responsibilities with K, K-1, ..., 1 clusters
    n_components : K
    """

    merges: list
    entropy: np.ndarray
    n_components: int

    def mapping(self, n_clusters: int) -> np.ndarray:
        """(K,) merged cluster of every component when ``n_clusters`` are kept.

        Clusters are numbered 0..n_clusters-1 in order of their smallest
        original component (so the canonical component order carries over).
        """
        if not 1 <= n_clusters <= self.n_components:
            raise ValueError(f"n_clusters must lie in 1..{self.n_components} (got {n_clusters})")
        group = np.arange(self.n_components)
        for a, b in self.merges[: self.n_components - n_clusters]:
            group[group == b] = a
        _, out = np.unique(group, return_inverse=True)
        return out.astype(np.int64)

    def groups(self, n_clusters: int) -> list[list[int]]:
        """The original components of each merged cluster."""
        m = self.mapping(n_clusters)
        return [np.flatnonzero(m == c).tolist() for c in range(n_clusters)]


def _xlogx(p: np.ndarray) -> np.ndarray:
    return p * np.log(np.where(p > 0, p, 1.0))


def entropy_merge(resp: np.ndarray) -> MergeResult:
    """Greedy entropy-criterion merging of mixture components.

    Parameters
    ----------
    resp : array of shape (n_samples, n_components)
        Responsibilities (rows sum to 1) of a fitted mixture.

    Returns
    -------
    MergeResult with K - 1 merges and the entropy -sum_i sum_k t_ik log t_ik
    after each (entropy[0] is the unmerged mixture's).
    """
    t = np.asarray(resp, dtype=np.float64)
    if t.ndim != 2 or t.shape[1] < 1:
        raise ValueError(f"resp must have shape (n_samples, n_components) (got {t.shape})")
    k = t.shape[1]
    cols = {j: t[:, j].copy() for j in range(k)}
    xl = {j: float(_xlogx(c).sum()) for j, c in cols.items()}
    entropy = [-sum(xl.values())]
    merges = []
    while len(cols) > 1:
        best, pair = -np.inf, None
        ids = sorted(cols)
        for i, a in enumerate(ids):
            for b in ids[i + 1:]:
                # Entropy removed by merging a and b: sum of their x log x terms
                # taken apart minus together (>= 0: the union is less ambiguous).
                gain = float(_xlogx(cols[a] + cols[b]).sum()) - xl[a] - xl[b]
                if gain > best:
                    best, pair = gain, (a, b)
        a, b = pair
        cols[a] = cols[a] + cols.pop(b)
        xl.pop(b)
        xl[a] = float(_xlogx(cols[a]).sum())
        merges.append((a, b))
        entropy.append(-sum(xl.values()))
    return MergeResult(merges, np.asarray(entropy), k)


def entropy_elbow(result: MergeResult) -> int:
    """Number of clusters where the entropy-versus-clusters curve bends.

    Fits two straight lines to the entropy as a function of the number of
    clusters (K down to 1), split at every inner point, and returns the split
    with the smallest total squared residual.  Needs K >= 3; returns K otherwise.
    """
    ent = np.asarray(result.entropy, dtype=np.float64)
    k = result.n_components
    if k < 3:
        return k
    n_clusters = np.arange(k, 0, -1, dtype=np.float64)
    best, best_m = np.inf, k
    for split in range(1, k - 1):  # the bend lies at n_clusters[split]
        sse = 0.0
        for sl in (slice(0, split + 1), slice(split, k)):
            x, y = n_clusters[sl], ent[sl]
            if x.size > 1:
                coef = np.polyfit(x, y, 1)
                sse += float(((np.polyval(coef, x) - y) ** 2).sum())
        if sse < best:
            best, best_m = sse, int(n_clusters[split])
    return best_m


def shape_groups(means: np.ndarray, min_amplitude: float = 0.2,
                 max_distance: float = 0.05) -> np.ndarray:
    """Group components whose mean trajectories have the same shape.

    Components whose mean trajectory varies by at least ``min_amplitude``
    (standard deviation over temperature, in rescaled units) are joined by
    average-linkage clustering on the correlation distance 1 - r of their means,
    cut at ``max_distance``: one order parameter seen at different strengths
    above the background (a CDW peak's centre and its resolution tail) has one
    shape and several amplitudes, and a mixture splits it by amplitude.  Nearly
    flat components keep their own group (their shape is noise).

    Parameters
    ----------
    means : array of shape (n_components, n_temperatures)

    Returns
    -------
    (n_components,) int group of each component, numbered by smallest member.
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    mu = np.asarray(means, dtype=np.float64)
    k = mu.shape[0]
    group = np.arange(k)
    strong = np.flatnonzero(mu.std(axis=1) >= min_amplitude)
    if strong.size > 1:
        d = np.clip(1.0 - np.corrcoef(mu[strong]), 0.0, 2.0)
        np.fill_diagonal(d, 0.0)
        link = linkage(squareform(d, checks=False), "average")
        cut = fcluster(link, max_distance, "distance")
        for c in np.unique(cut):
            members = strong[cut == c]
            group[members] = members.min()
    _, out = np.unique(group, return_inverse=True)
    return out.astype(np.int64)


@dataclass
class MergedMixture:
    """Result of :func:`merge_components`.

    mapping : (K,) merged cluster of each fitted component
    groups : list of lists, the components of each merged cluster
    entropy : MergeResult of the entropy stage (over the K components)
    entropy_mapping : (K,) clusters after the entropy stage only
    """

    mapping: np.ndarray
    groups: list
    entropy: MergeResult
    entropy_mapping: np.ndarray

    @property
    def n_clusters(self) -> int:
        return len(self.groups)


def merge_components(means: np.ndarray, resp: np.ndarray, *, min_amplitude: float = 0.2,
                     max_distance: float = 0.05) -> MergedMixture:
    """Merge mixture components into clusters: by entropy, then by shape.

    1. :func:`entropy_merge` stopped at :func:`entropy_elbow`: overlapping
       components (a halo, or a family whose trajectories form a continuum of
       noise levels) rejoin; well separated ones stay apart.
    2. :func:`shape_groups` on the merged means (responsibility-weighted)
       joins strongly varying clusters of one shape (an order parameter split
       by amplitude: a superlattice peak's centre and its resolution tail).

    Parameters
    ----------
    means : (K, T) component means; resp : (N, K) responsibilities.
    """
    means = np.asarray(means, dtype=np.float64)
    resp = np.asarray(resp, dtype=np.float64)
    if resp.ndim != 2 or means.ndim != 2 or resp.shape[1] != means.shape[0]:
        raise ValueError(f"resp (N, K) and means (K, T) disagree: {resp.shape}, {means.shape}")
    ent = entropy_merge(resp)
    first = ent.mapping(entropy_elbow(ent))
    n1 = int(first.max()) + 1
    mass = resp.sum(axis=0)
    merged_means = np.stack([
        np.average(means[first == c], axis=0, weights=mass[first == c] + 1e-12)
        for c in range(n1)])
    second = shape_groups(merged_means, min_amplitude, max_distance)
    mapping = second[first]
    n = int(mapping.max()) + 1
    groups = [np.flatnonzero(mapping == c).tolist() for c in range(n)]
    return MergedMixture(mapping, groups, ent, first)
