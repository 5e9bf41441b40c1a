"""Hysteresis for peak averaging: regions grown below the threshold (issue 27).

The KL cutoff drops the faint flanks of superlattice peaks whose mean intensity
equals that of the (far more numerous) thermal-diffuse voxels: a cut on the mean
alone cannot keep the one without the other.  Connection to a peak can: a voxel
below the cutoff but above a lower level joins the component (of the threshold
mask) it is face-connected to through such voxels.  Two guards, both measured
(docs/measured.md, *Hysteresis*):

* a sub-cutoff patch that touches two or more components joins none of them (a
  Bragg peak's diffuse halo would otherwise bridge it to a superlattice peak and
  merge their trajectories);
* a grown voxel takes its component's cluster only when its own trajectory is
  predicted in that cluster by the fitted mixture (otherwise -1): the halo
  around a superlattice peak is partly thermal-diffuse scattering.

The components, their trajectories and the fit are those of the threshold mask
(the core): growing changes which voxels are painted, not the clustering, so
the cluster profiles (and the order-parameter fit on them) are unchanged.
Everything is labelled over the whole volume (:func:`label_components`), so the
labels do not depend on the chunking.
"""

from __future__ import annotations

import math

import dask
import dask.array as da
import numpy as np

from xtec.backend import to_numpy
from xtec.errors import ParameterError
from xtec.preprocess import clean_block, rescale_block
from xtec.preprocess.threshold import Threshold, above_cutoff_block
from xtec.runtime.chunks import map_blocks_dropping
from xtec.spatial.peaks import label_components


def lower_level(threshold: Threshold, sigmas: float) -> float | None:
    """The hysteresis level in log intensity: the mean of the Gaussian fitted to the
    background below the cutoff plus ``sigmas`` of its standard deviations.

    None when there is no such Gaussian (a cutoff given as an intensity, or none)
    or the level is not below the cutoff: nothing is grown.
    """
    if not sigmas >= 0:
        raise ParameterError(f"peak_grow must be 'off' or a number of sigmas >= 0 (got {sigmas!r})")
    mu, sd = threshold.gaussian
    if not (math.isfinite(mu) and math.isfinite(sd) and math.isfinite(threshold.cutoff)):
        return None
    level = mu + sigmas * sd
    return level if level < threshold.cutoff else None


def _pairs_block(grown, core):
    """Unique (grown-patch id, core component id) pairs of one block's core voxels."""
    grown, core = np.asarray(grown), np.asarray(core)
    hit = core > 0
    if not hit.any():
        return np.zeros((0, 2), np.int64)
    return np.unique(np.stack([grown[hit].astype(np.int64), core[hit].astype(np.int64)], 1),
                     axis=0)


def _region_block(core, grown, keys, vals):
    """Core ids where the core is; elsewhere the id of the one component the voxel's
    patch touches (0: none, or more than one)."""
    core, grown = np.asarray(core), np.asarray(grown)
    out = core.copy()
    pos = np.searchsorted(keys, grown)
    pos = np.minimum(pos, max(len(keys) - 1, 0))
    found = (grown > 0) & (core == 0) & (len(keys) > 0)
    if len(keys):
        found &= keys[pos] == grown
    out[found] = vals[pos[found]]
    return out


def grow_components(core: da.Array, mean: da.Array, level: float) -> da.Array:
    """Component ids grown below the cutoff (hysteresis).

    core : dask (L, K, H) component ids of the threshold mask (0 = none, 26-connected,
    :func:`~xtec.spatial.peaks.label_components`); mean : (L, K, H) mean intensity;
    level : the lower level in log intensity (:func:`lower_level`).

    A voxel outside the core with log(mean) above ``level`` takes the id of the one
    core component its patch touches, the patch being the voxels above ``level``
    face-connected to it (core voxels included); a patch touching several
    components grows none.  Returns (L, K, H) ids of the core's dtype.
    """
    core = da.asarray(core)
    mean = da.asarray(mean)
    if mean.chunks != core.chunks:
        mean = mean.rechunk(core.chunks)
    above = mean.map_blocks(above_cutoff_block, level, dtype=bool) | (core > 0)
    patches, _ = label_components(above, connectivity=6)
    f = dask.delayed(_pairs_block, pure=True)
    parts = dask.compute(*[f(p, c) for p, c in zip(patches.to_delayed().ravel(),
                                                    core.to_delayed().ravel())])
    pairs = np.unique(np.concatenate(parts), axis=0) if parts else np.zeros((0, 2), np.int64)
    ids, first, n_touched = np.unique(pairs[:, 0], return_index=True, return_counts=True)
    alone = n_touched == 1
    keys, vals = ids[alone], pairs[first[alone], 1].astype(core.dtype)
    return core.map_blocks(_region_block, patches, keys, vals, dtype=core.dtype)


def _paint_block(x, region, core, lut, gmm, rescale):
    """Cluster per voxel of one block: the core painted with its component's cluster,
    grown voxels only where their own trajectory is predicted in that cluster."""
    region, core = np.asarray(to_numpy(region)), np.asarray(to_numpy(core))
    out = lut[region]
    grown = np.flatnonzero((region > 0) & (core == 0))
    if grown.size:
        t = x.shape[0]
        traj = clean_block(np.asarray(to_numpy(x)).reshape(t, -1)[:, grown])
        X = np.ascontiguousarray(to_numpy(rescale_block(traj, rescale)).T, dtype=np.float32)
        own = np.asarray(gmm.predict(X))
        flat = out.reshape(-1)
        flat[grown] = np.where(own == flat[grown], flat[grown], lut[0])
    return out


def paint_grown(data: da.Array, region: da.Array, core: da.Array,
                component_cluster: np.ndarray, gmm, rescale: str,
                fill: int = -1, dtype=np.int16) -> da.Array:
    """Voxel volume of cluster ids over grown components (see the module's note).

    data : dask (T, L, K, H) intensities (as clustered); region : grown ids
    (:func:`grow_components`); core : the threshold mask's ids; component_cluster :
    (n,) cluster of component i + 1; gmm : the fitted mixture; rescale : as the
    trajectories were rescaled.
    """
    data = da.asarray(data)
    if data.numblocks[0] != 1:
        data = data.rechunk({0: -1})
    region = da.asarray(region).rechunk(data.chunks[1:])
    core = da.asarray(core).rechunk(data.chunks[1:])
    lut = np.concatenate([[fill], np.asarray(component_cluster)]).astype(dtype)
    return map_blocks_dropping(_paint_block, data, 0, region, core, lut, gmm, rescale,
                               dtype=dtype, meta=np.empty((0,) * 3, dtype))


def grown_labels(data: da.Array, mean: da.Array, threshold: Threshold, peaks, sigmas: float,
                 rescale: str) -> tuple[da.Array, dict]:
    """Labels of a peak-averaging result painted over grown components.

    peaks : the :class:`~xtec.spatial.peaks.PeakResult` of the threshold mask;
    sigmas : the lower level (:func:`lower_level`).  Returns the (L, K, H) int16
    labels and the result's attributes (the level as an intensity, left out where
    nothing could be grown: then the labels are the core's).
    """
    level = lower_level(threshold, sigmas)
    attrs = {"peak_grow": float(sigmas)}
    if level is None:
        return peaks.paint(), attrs
    attrs["peak_grow_level"] = math.exp(level)
    region = grow_components(peaks.labels, mean, level)
    return paint_grown(data, region, peaks.labels, peaks.component_cluster, peaks.gmm,
                       rescale), attrs
