"""Scoring a clustering result against a synthetic series' truth, on physics.

On the realistic series (:func:`xtec.datasets.make_realistic_series`) a
partition index over all families is not a meaningful target: a halo's
trajectories change with distance from its peak, so the voxels of one planted
family legitimately fall into several clusters.  What a user asks of a result
is physical:

* did a cluster appear for each family that matters (its *best-cluster F1*:
  the F1 of the one cluster that best matches the family's planted voxels)?
* is the transition temperature fitted to the order-parameter cluster right
  (through ``ds.xtec.fit_order_parameter``, as a user would do it)?

The adjusted Rand index is reported only on the separated series, where every
signal voxel has exactly one class and a partition index means something.

Example::

    from xtec.results.evaluate import evaluate_result
    ev = evaluate_result("result.zarr", series)
    print(ev.format())
    ev.families["cdw"].f1, ev.tc_rel_error
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from xtec.datasets import BRAGG, CDW, CLASS_NAMES, CRITICAL, TDS

#: Families scored by default (the background is not a family to find).
SCORED_FAMILIES = (BRAGG, CDW, CRITICAL, TDS)


@dataclass
class ClusterMatch:
    """The cluster that best matches one family's planted voxels.

    ``cluster`` is -1 when no cluster overlaps the family; ``n_truth`` counts
    the planted (signal) voxels of the family, ``n_cluster`` the voxels of the
    matched cluster.
    """

    family: str
    cluster: int
    f1: float
    precision: float
    recall: float
    n_truth: int
    n_cluster: int


def best_cluster_f1(labels: np.ndarray, truth: np.ndarray) -> tuple[int, float, float, float]:
    """The cluster whose voxels best match ``truth``, by F1.

    Parameters
    ----------
    labels : int array of shape (n_l, n_k, n_h)
        Cluster per voxel, negative where a voxel was not clustered.
    truth : bool array of the same shape
        The family's planted voxels.

    Returns
    -------
    (cluster, f1, precision, recall); cluster -1 and zeros when nothing matches.
    Voxels of the family that the threshold dropped count as misses.
    """
    labels = np.asarray(labels)
    truth = np.asarray(truth, bool)
    if labels.shape != truth.shape:
        raise ValueError(f"labels {labels.shape} and truth {truth.shape} differ in shape")
    clustered = labels >= 0
    n_labels = int(labels.max()) + 1 if clustered.any() else 0
    size = np.bincount(labels[clustered], minlength=n_labels)
    hit = np.bincount(labels[clustered & truth], minlength=n_labels)
    n_truth = int(truth.sum())
    if n_truth == 0 or not hit.any():
        return -1, 0.0, 0.0, 0.0
    f1 = 2.0 * hit / np.maximum(size + n_truth, 1)
    c = int(np.argmax(f1))
    return c, float(f1[c]), float(hit[c] / max(size[c], 1)), float(hit[c] / n_truth)


@dataclass
class Evaluation:
    """Physics-level scores of one result (see the module docstring).

    families : family name -> :class:`ClusterMatch`
    tc, tc_fit, tc_err : planted Tc, fitted Tc and its one-sigma error (K)
    tc_cluster : the cluster the order-parameter fit used (the accessor's choice)
    ari : adjusted Rand index over kept signal voxels, separated series only
    """

    families: dict
    tc: float
    tc_fit: float = math.nan
    tc_err: float = math.nan
    tc_cluster: int = -1
    ari: float | None = None
    kind: str = "separated"
    notes: list = field(default_factory=list)

    @property
    def tc_rel_error(self) -> float:
        """|Tc fitted - Tc planted| / Tc planted (NaN when no fit)."""
        return abs(self.tc_fit - self.tc) / self.tc if np.isfinite(self.tc_fit) else math.nan

    def to_dict(self) -> dict:
        return dict(
            kind=self.kind,
            families={k: vars(v) for k, v in self.families.items()},
            tc=self.tc, tc_fit=self.tc_fit, tc_err=self.tc_err, tc_cluster=self.tc_cluster,
            tc_rel_error=self.tc_rel_error, ari=self.ari, notes=list(self.notes),
        )

    def format(self) -> str:
        """A small text table: per family best cluster and F1, then Tc (and ARI)."""
        lines = [f"{'family':>9} {'planted':>8} {'cluster':>7} {'F1':>6} {'prec':>6} {'recall':>6}"]
        for m in self.families.values():
            lines.append(f"{m.family:>9} {m.n_truth:>8} {m.cluster:>7} {m.f1:>6.3f} "
                         f"{m.precision:>6.3f} {m.recall:>6.3f}")
        if np.isfinite(self.tc_fit):
            lines.append(f"Tc: planted {self.tc:g} K, fitted {self.tc_fit:.2f} \u00b1 "
                         f"{self.tc_err:.2f} K on cluster {self.tc_cluster} "
                         f"({100 * self.tc_rel_error:.2f}% off)")
        else:
            lines.append(f"Tc: planted {self.tc:g} K, no order-parameter fit")
        if self.ari is not None:
            lines.append(f"adjusted Rand index against the planted classes: {self.ari:.3f} "
                         "(kept signal voxels)")
        else:
            lines.append("adjusted Rand index: not meaningful on this series (halos overlap "
                         "the families)")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def evaluate_result(result, series, families=SCORED_FAMILIES) -> Evaluation:
    """Score a result store against the truth of the series it was made from.

    Parameters
    ----------
    result : path of a result store, or the ``xarray.Dataset`` opened from it
    series : :class:`xtec.datasets.SyntheticSeries`
    families : class codes to score (default Bragg, CDW, critical, TDS)
    """
    import xarray as xr

    from xtec.errors import XtecError

    ds = result if isinstance(result, xr.Dataset) else _open(result)
    labels = np.asarray(ds["labels"].values)
    if labels.shape != series.classes.shape:
        raise ValueError(f"result grid {labels.shape} differs from the series' "
                         f"{series.classes.shape}")
    planted = series.signal
    matches = {}
    for f in families:
        truth = planted & (series.classes == f)
        c, f1, p, r = best_cluster_f1(labels, truth)
        matches[CLASS_NAMES[f]] = ClusterMatch(
            CLASS_NAMES[f], c, f1, p, r, int(truth.sum()), int((labels == c).sum()) if c >= 0 else 0)
    ev = Evaluation(matches, float(series.tc), kind=series.kind)
    try:
        fit = ds.xtec.fit_order_parameter()
        ev.tc_fit, ev.tc_err, ev.tc_cluster = float(fit.tc), float(fit.tc_err), int(fit.cluster)
    except XtecError as exc:  # no cluster falls on warming, or the fit failed
        ev.notes.append(f"order-parameter fit: {exc}")
    if series.kind == "separated":
        from sklearn.metrics import adjusted_rand_score

        kept = planted & (labels >= 0)
        if kept.any():
            ev.ari = float(adjusted_rand_score(series.classes[kept], labels[kept]))
    return ev


def _open(path):
    from xtec.io.store import open_result

    return open_result(path)
