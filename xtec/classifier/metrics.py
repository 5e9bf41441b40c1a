"""Accuracy figures of ranked space-group answers, and the constant-guess baselines.

Top-1 / top-5 space group and crystal-system accuracy overall, per structure type (a
prototype that occurs many times counts once), per space group and per crystal system;
the majority-class baseline (always answer the most frequent groups) and chance.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from xtec.classifier.symmetry import CRYSTAL_SYSTEMS, crystal_system_index, system_scores


def majority_ranking(space_groups: np.ndarray, n: int = 5) -> np.ndarray:
    """The ``n`` most frequent space groups of ``space_groups`` (ties: lower number)."""
    sg, counts = np.unique(np.asarray(space_groups), return_counts=True)
    order = np.lexsort((sg, -counts))
    top = sg[order][:n]
    return np.r_[top, np.setdiff1d(np.arange(1, 231), top)[: n - len(top)]]


def majority_baseline(true_sg: np.ndarray, types: list[str], reference=None) -> dict:
    """Always answer the most frequent groups of ``reference`` (default: the evaluated set
    itself, the strongest constant guess); crystal system: the most frequent one."""
    ref = np.asarray(true_sg if reference is None else reference)
    top = majority_ranking(ref)
    ranked = np.broadcast_to(top, (len(true_sg), len(top)))
    systems = np.asarray(crystal_system_index(ref))
    sys_pred = np.full(len(true_sg), np.bincount(systems, minlength=7).argmax())
    out = summarise(np.asarray(true_sg), ranked, types, sys_pred)
    out["answers"] = top.tolist()
    return out


def ranked_space_groups(scores: np.ndarray, space_groups) -> np.ndarray:
    """Space-group numbers ordered by decreasing score, shape (n, n_classes)."""
    return np.asarray(space_groups)[np.argsort(-scores, axis=1, kind="stable")]


def summarise(
    true_sg: np.ndarray, ranked: np.ndarray, types: list[str], system_pred: np.ndarray
) -> dict:
    """Top-1/top-5 overall, per structure type, per space group and per crystal system.

    ``ranked`` (n, >=5) predicted space groups best first; ``system_pred`` (n,) predicted
    crystal-system indices.  "by_type" averages within each structure type first, so a
    prototype that occurs many times counts once.
    """
    true_sg = np.asarray(true_sg)
    hit1 = ranked[:, 0] == true_sg
    hit5 = (ranked[:, :5] == true_sg[:, None]).any(1)
    true_sys = np.asarray(crystal_system_index(true_sg))
    sys_hit = system_pred == true_sys
    groups = defaultdict(list)
    for i, t in enumerate(types):
        groups[t].append(i)
    per_type = np.array(
        [[hit1[g].mean(), hit5[g].mean(), sys_hit[g].mean()] for g in groups.values()]
    )

    def table(keys):
        rows = {}
        for k in sorted(set(keys.tolist())):
            m = keys == k
            rows[k] = {
                "n": int(m.sum()),
                "top1": float(hit1[m].mean()),
                "top5": float(hit5[m].mean()),
                "system_top1": float(sys_hit[m].mean()),
            }
        return rows

    by_system = table(true_sys)
    return {
        "n_structures": len(true_sg),
        "n_types": len(groups),
        "top1": float(hit1.mean()),
        "top5": float(hit5.mean()),
        "system_top1": float(sys_hit.mean()),
        "by_type": {
            "top1": float(per_type[:, 0].mean()),
            "top5": float(per_type[:, 1].mean()),
            "system_top1": float(per_type[:, 2].mean()),
        },
        "per_space_group": {int(k): v for k, v in table(true_sg).items()},
        "per_crystal_system": {CRYSTAL_SYSTEMS[int(k)]: v for k, v in by_system.items()},
    }


def chance_level(true_sg: np.ndarray, space_groups) -> dict:
    """Expected top-1/top-5 of a uniform random guess among the model's classes."""
    n = len(space_groups)
    inside = np.isin(true_sg, space_groups).mean()
    return {"top1": float(inside / n), "top5": float(inside * min(5, n) / n), "system_top1": 1 / 7}


def top_class_systems(scores: np.ndarray, space_groups) -> np.ndarray:
    """Crystal-system indices (n,) of the best-scoring class of each row of ``scores``.

    The crystal system of a baseline that gives scores, not probabilities (a one-hot on
    its best class).
    """
    onehot = np.zeros_like(scores)
    onehot[np.arange(len(scores)), scores.argmax(1)] = 1
    return system_scores(onehot, space_groups).argmax(1)
