"""Frame registration: the lattice's thermal expansion, estimated and undone.

A series is transformed with one orientation matrix, so as the lattice expands
with temperature every reflection moves towards the origin of reciprocal space:
(h, k, l) appears at (h, k, l) * s(T) with s = a(T_ref) / a(T) per axis.  A peak
at H = 6 moves by 0.05 r.l.u. over 20-300 K at 3e-5/K, a voxel at 0.05 r.l.u.
steps: its flank voxels then see the peak leave (their intensity falls with T,
which looks like an order parameter) and the clustering follows the motion,
not the physics.

This module measures s per frame and per axis from the data itself and
resamples every frame onto the reference frame's lattice (the coldest):

1. :func:`reference_peaks`: the brightest local maxima of the reference frame
   (one frame read; Bragg peaks, a hundred times brighter than anything else),
   per block so that a volume of any size is searched in chunks;
2. :func:`peak_positions`: in a small box around each, per frame, the position
   of the maximum to a fraction of a voxel (a parabola through the log
   intensities of the maximum and its two neighbours on each axis: exact for
   a Gaussian resolution function);
3. :func:`fit_lattice_scale`: per frame and axis the scale s that maps the
   reference positions onto the frame's (least squares through the origin,
   outliers dropped), and its noise;
4. :func:`register_frames`: frame j resampled at q * s_j (linear interpolation
   along each axis with a cubic kernel, chunk-wise with a halo as wide as
   the largest shift).

``--register auto`` (the default) resamples only when the expansion moves the
farthest peak measured by more than ``REGISTER_AUTO`` voxels *and* many times
the estimate's own noise; a series without expansion is therefore left exactly
as read (labels bit-identical).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np

from xtec.backend import namespace, to_numpy
from xtec.preprocess.kernels import kernels
from xtec.runtime.chunks import block_offsets, read_boxes

log = logging.getLogger(__name__)

REGISTER_MODES = ("auto", "on", "off")
#: peaks of the reference frame used (the brightest local maxima)
N_PEAKS = 48
#: a peak must stand this many times above its box's median in the reference
PEAK_CONTRAST = 20.0
#: ``auto`` registers when the estimated expansion moves the farthest peak
#: measured by more than this (voxels) and by ``REGISTER_SIGMAS`` times the
#: estimate's noise.  Measured (docs/measured.md): clean series 0.002-0.014
#: voxel; 3e-5/K at |Q| <= 2 0.17-0.25 voxel, where the peaks stay in their
#: voxels, expansion costs no CDW F1 and resampling cost XTEC-d 0.03 (its
#: interpolation changes the noise frame by frame); at H = 4..8 1.18 voxel,
#: where resampling wins (XTEC-d 0.58 -> 0.82).
REGISTER_AUTO = 0.5
REGISTER_SIGMAS = 5.0
#: an axis needs peaks this far (rms, r.l.u.) from the origin for its scale
MIN_LEVER = 0.5
#: and this many peaks measured in a frame
MIN_PEAKS = 2
#: the box around each peak reaches the shift of this expansion (1/K) over the
#: series' temperature span, plus two voxels (at least 3, at most 8 voxels)
MAX_EXPANSION = 1e-4
#: the parabola needs both neighbours of the maximum at least this share of its
#: height above the box's median (a Gaussian of one voxel's width: 0.6)
NEIGHBOUR_MIN = 0.02


@dataclass
class Registration:
    """The lattice scale of each frame against the reference frame.

    temperature (T,); scale (T, 3): per frame and axis (L, K, H) the factor s by
    which a reflection's reference position q appears at q * s (1 where not
    measured); noise (3,): the per-frame scale's standard error per axis;
    reference: the index of the reference frame; reach (3,): the largest |q|
    of the peaks used per axis (r.l.u.); step (3,): the grid's steps;
    n_peaks: peaks used; applied: whether the run resampled the frames.
    """

    temperature: np.ndarray
    scale: np.ndarray
    noise: np.ndarray
    reference: int
    reach: np.ndarray
    step: np.ndarray
    n_peaks: int
    applied: bool = False

    @property
    def strain(self) -> np.ndarray:
        """(T, 3) a(T) / a(T_ref) - 1 per axis (0 where not measured)."""
        return 1.0 / self.scale - 1.0

    def expansion(self) -> np.ndarray:
        """(3,) linear expansion coefficient per axis (1/K): the slope of the
        strain over T - T_ref, through zero (least squares)."""
        dt = self.temperature - self.temperature[self.reference]
        den = float((dt**2).sum())
        return (self.strain * dt[:, None]).sum(0) / den if den > 0 else np.zeros(3)

    def displacement(self) -> np.ndarray:
        """(3,) the largest shift (voxels) of the farthest peak measured, per axis."""
        return np.abs(self.scale - 1.0).max(0) * self.reach / self.step

    def significance(self) -> np.ndarray:
        """(3,) the largest |s - 1| per axis over its noise."""
        return np.abs(self.scale - 1.0).max(0) / np.maximum(self.noise, 1e-12)

    def describe(self) -> str:
        a = self.expansion()
        d = self.displacement()
        return (f"lattice expansion from {self.n_peaks} peaks: "
                + ", ".join(f"{ax} {v:.3g}/K ({s:.2f} voxel)" for ax, v, s in
                            zip(("L", "K", "H"), a, d)))


def _axis_index(q: np.ndarray, x) -> np.ndarray:
    """Fractional index of the coordinates x on the monotonic axis q."""
    q = np.asarray(q, np.float64)
    if q[-1] < q[0]:
        return (q.size - 1) - np.interp(x, q[::-1], np.arange(q.size, dtype=np.float64))
    return np.interp(x, q, np.arange(q.size, dtype=np.float64))


def _local_maxima_all(b: np.ndarray, base: float):
    """Every local maximum (3x3x3, edges replicated) of ``b`` above ``base``:
    (values, C-order flat indices)."""
    from scipy.ndimage import maximum_filter

    peak = (b == maximum_filter(b, size=3, mode="nearest")) & (b > base)
    flat = np.flatnonzero(peak)
    return b.ravel()[flat], flat


def _local_maxima_among(b: np.ndarray, cand: np.ndarray, base: float):
    """Those of the flat indices ``cand`` that are local maxima of ``b`` above ``base``."""
    cand = np.ascontiguousarray(cand, np.int64)
    keep = kernels().local_maxima_among(np.ascontiguousarray(b), cand, base)
    return b.ravel()[cand[keep]], cand[keep]


def _bright_voxels(flat: np.ndarray, want: int) -> np.ndarray:
    """C-order flat indices of every voxel at or above a level that about 2 x
    ``want`` voxels reach (the level read off a strided sample: one pass over
    the block, where a selection of the ``want`` brightest took several)."""
    if flat.size <= 4 * want:
        return np.arange(flat.size)
    step = max(1, flat.size // (64 * want))
    sample = flat[::step]
    k = max(sample.size - max(2 * want // step, 1), 0)
    return np.flatnonzero(flat >= np.partition(sample, k)[k])


def _block_maxima(block, offset, n: int):
    """The ``n`` brightest local maxima (3x3x3, strictly above the median of
    the block) of one block: (values (m,), global indices (m, 3)).

    Looked for among the block's brightest voxels first (a full 3x3x3 maximum
    filter of the mean volume took a second per 15 million voxels): where
    those hold n maxima, every brighter maximum is among them, so the answer
    is the filter's; else the whole block is filtered."""
    b = np.nan_to_num(np.asarray(to_numpy(block), np.float32), nan=0.0)
    if b.size == 0:
        return np.zeros(0, np.float32), np.zeros((0, 3), np.int64)
    flat = b.ravel()
    cand = _bright_voxels(flat, 64 * n)
    # Fewer than half the voxels at or above a level: the level is above the
    # median, and so is every candidate (no median to compute).
    base = -np.inf if 2 * cand.size < flat.size else float(np.median(b))
    looked = cand.size <= 512 * n  # else a plateau at the level: filter the block
    vals, where = (_local_maxima_among(b, cand, base) if looked
                   else (np.zeros(0, np.float32), np.zeros(0, np.int64)))
    if vals.size < n and not (looked and cand.size == flat.size):
        vals, where = _local_maxima_all(b, float(np.median(b)))
    top = np.lexsort((where, -vals))[:n]  # brightest first, ties in C order
    idx = np.stack(np.unravel_index(where[top], b.shape), axis=1)
    return vals[top], idx + np.asarray(offset, np.int64)


def block_maxima(block, offset, n_peaks: int = N_PEAKS):
    """The candidates one block (l, k, h) at ``offset`` gives :func:`reference_peaks`
    for ``n_peaks`` peaks: its 4 x ``n_peaks`` brightest local maxima (values,
    global indices); what the first pass computes with each block's means
    (:func:`xtec.preprocess.trajectories.summarize`, ``peaks``)."""
    return _block_maxima(block, offset, 4 * n_peaks)


def reference_peaks(frame: da.Array, n: int = N_PEAKS, separation: int = 3,
                    maxima: list | None = None) -> np.ndarray:
    """Indices (m, 3) of the ``n`` brightest local maxima of one frame (L, K, H),
    no two closer than ``separation`` voxels on every axis (the brighter kept:
    noise and gaps make several maxima of one peak), searched block by block
    (a maximum on a block's face may be missed: enough for a lattice's many peaks).
    ``maxima``: :func:`block_maxima` of each block of ``frame`` in np.ndindex
    order, where the caller has them (then ``frame`` is not read)."""
    if maxima is None:
        blocks = frame.to_delayed()
        f = dask.delayed(block_maxima, pure=True)
        maxima = dask.compute(*[f(blocks[p], offset, n)
                                for p, offset in block_offsets(frame.chunks).items()])
    vals = np.concatenate([p[0] for p in maxima])
    idx = np.concatenate([p[1] for p in maxima])
    keep: list[int] = []
    for i in np.argsort(-vals, kind="stable"):
        if all(np.abs(idx[i] - idx[k]).max() > separation for k in keep):
            keep.append(int(i))
        if len(keep) == n:
            break
    return idx[keep]


def box_radius(axes, temperature) -> int:
    """Half-width (voxels) of the box that follows a peak: the shift of
    ``MAX_EXPANSION`` at the grid's largest |q| over the temperature span, plus 2."""
    span = float(np.ptp(temperature))
    shift = max(float(np.abs(q).max()) * MAX_EXPANSION * span / _step(q) for q in axes)
    return int(np.clip(math.ceil(shift) + 2, 3, 8))


def box_radii(peaks: np.ndarray, axes, temperature) -> np.ndarray:
    """Half-widths (m, 3) of the box that follows each peak, per axis: the shift of
    ``MAX_EXPANSION`` at the peak's own |q| on that axis over the temperature
    span, plus 2 (at most 8).  A peak near q = 0 on an axis hardly moves along it:
    where a file chunk is one plane of that axis, each plane of a box is a chunk
    read (on the benchmark's series the boxes of one radius for all, 8, cost a
    third of a pass)."""
    span = float(np.ptp(temperature))
    out = np.empty((len(peaks), 3), np.int64)
    for a, q in enumerate(axes):
        q = np.asarray(q, np.float64)
        reach = np.abs(q[np.asarray(peaks, np.int64)[:, a]]) if len(peaks) else np.zeros(0)
        out[:, a] = np.clip(np.ceil(reach * MAX_EXPANSION * span / _step(q)) + 2, 2, 8)
    return out


def _step(q) -> float:
    q = np.asarray(q, np.float64)
    return float(np.abs(np.diff(q)).mean()) if q.size > 1 else 1.0


def _subvoxel(boxes: np.ndarray, contrast: float) -> np.ndarray:
    """Fractional index (T, 3) of the maximum of each frame's box in ``boxes``
    (T, l, k, h), NaN where the peak does not stand out by ``contrast`` or its
    maximum lies on the box's face.  All frames at once: per frame, a box's
    median and a few neighbours (1,152 frames' boxes per run of the benchmark's
    series took 0.21 s one by one)."""
    b = np.asarray(boxes, np.float64)
    n_t, shape = b.shape[0], b.shape[1:]
    flat = b.reshape(n_t, -1)
    base = np.median(flat, axis=1) if flat.shape[1] else np.zeros(n_t)
    arg = np.argmax(flat, axis=1) if flat.shape[1] else np.zeros(n_t, np.int64)
    t = np.arange(n_t)
    peak = flat[t, arg] if flat.shape[1] else np.zeros(n_t)
    c = np.stack(np.unravel_index(arg, shape), axis=1)  # (T, 3)
    found = (peak > contrast * np.maximum(base, 1e-12)) & (peak > 0)
    top = peak - base
    out = np.full((n_t, 3), np.nan)
    inside = found & ((c > 0) & (c < np.asarray(shape) - 1)).all(axis=1)
    if not inside.any():
        return out
    t, c, base, top = t[inside], c[inside], base[inside], top[inside]
    with np.errstate(divide="ignore", invalid="ignore"):
        for ax in range(3):
            step = np.zeros(3, np.int64)
            step[ax] = 1
            lo, hi = c - step, c + step
            side0 = b[(t, *lo.T)] - base
            side2 = b[(t, *hi.T)] - base
            # A neighbour in a gap (or nothing but background): no parabola there.
            ok = np.minimum(side0, side2) >= NEIGHBOUR_MIN * top
            # log of the background-subtracted intensities: a Gaussian's parabola
            y0, y1, y2 = np.log(side0), np.log(top), np.log(side2)
            den = y0 - 2.0 * y1 + y2
            off = np.where(den < 0, 0.5 * (y0 - y2) / den, np.nan)
            ok &= np.abs(off) <= 0.6
            out[t, ax] = np.where(ok, c[:, ax] + off, np.nan)
    return out


def peak_positions(data: da.Array, peaks: np.ndarray, radius,
                   contrast: float = PEAK_CONTRAST / 4,
                   scheduler: str | None = None) -> np.ndarray:
    """Fractional voxel index (T, m, 3) of each peak's maximum in each frame, NaN
    where not found (the peak faded, or left its box); ``radius``: the boxes'
    half-width, one for all or (m, 3) per peak and axis (:func:`box_radii`).
    Each chunk of ``data`` the boxes touch is read once (:func:`read_boxes`,
    with ``scheduler``)."""
    shape = data.shape[1:]
    boxes = []
    radii = np.broadcast_to(np.asarray(radius, np.int64), (len(peaks), 3))
    for p, r in zip(peaks, radii):
        lo = tuple(max(int(i) - int(w), 0) for i, w in zip(p, r))
        hi = tuple(min(int(i) + int(w) + 1, n) for i, w, n in zip(p, r, shape))
        boxes.append((lo, hi))
    out = np.full((data.shape[0], len(peaks), 3), np.nan)
    for j, (v, (lo, _)) in enumerate(zip(read_boxes(data, boxes, scheduler), boxes)):
        out[:, j] = _subvoxel(v, contrast) + np.asarray(lo)
    return out


def fit_lattice_scale(ref: np.ndarray, pos: np.ndarray,
                      temperature=None) -> tuple[np.ndarray, np.ndarray]:
    """Per frame and axis the scale s with pos ~ s * ref through the origin.

    ref (m, 3) and pos (T, m, 3) in r.l.u. (NaN: not measured).  Least squares,
    then again without residuals beyond 4 robust sigmas.  Returns (scale (T, 3),
    noise (3,)): a frame with fewer than ``MIN_PEAKS`` peaks ``MIN_LEVER`` from
    the origin (rms) on an axis gets the scale of its neighbours in T (linear
    between them: the superlattice peaks fade above Tc), an axis without any
    1 and noise inf; the noise is the median over frames of the fit's
    standard error.
    """
    n_t = pos.shape[0]
    scale = np.full((n_t, 3), np.nan)
    noise = np.full(3, np.inf)
    for ax in range(3):
        r = ref[:, ax]
        err = []
        for t in range(n_t):
            x = pos[t, :, ax]
            use = np.isfinite(x) & np.isfinite(r)
            for _ in range(3):
                if use.sum() < MIN_PEAKS or math.sqrt(np.mean(r[use] ** 2)) < MIN_LEVER:
                    break
                s = float((r[use] * x[use]).sum() / (r[use] ** 2).sum())
                res = x - s * r
                sigma = 1.4826 * float(np.median(np.abs(res[use]))) + 1e-9
                scale[t, ax] = s
                keep = use & (np.abs(res) <= 4.0 * sigma)
                if keep.sum() == use.sum():
                    if use.sum() > 2:  # two points fit exactly: no error estimate
                        err.append(sigma / math.sqrt(float((r[use] ** 2).sum())))
                    break
                use = keep
        done = np.isfinite(scale[:, ax])
        if done.any():
            t = np.arange(n_t, dtype=np.float64) if temperature is None else \
                np.asarray(temperature, np.float64)
            order = np.argsort(t[done], kind="stable")
            scale[:, ax] = np.interp(t, t[done][order], scale[done, ax][order])
            noise[ax] = float(np.median(err)) if err else np.inf
        else:
            scale[:, ax] = 1.0
    return scale, noise


def estimate_registration(data: da.Array, temperature, axes, n_peaks: int = N_PEAKS,
                          reference: int | None = None,
                          peaks_in: da.Array | None = None,
                          boxes_from: da.Array | None = None,
                          maxima: list | None = None,
                          box_scheduler: str | None = None) -> Registration:
    """Measure each frame's lattice scale against the ``reference`` frame (default
    the coldest) from the data (module docstring): the ``n_peaks`` brightest
    peaks of ``peaks_in`` (a volume (L, K, H) in memory, such as the mean over
    T; default the reference frame, one frame read), then a box of a few voxels
    around each in every frame, read from ``boxes_from`` (default ``data``: the
    same series, chunked as the file is, reads far less, :func:`read_boxes`);
    ``maxima``: :func:`block_maxima` of each block of ``peaks_in``, where the
    first pass found them (``n_peaks`` = N_PEAKS); ``box_scheduler``: the Dask
    scheduler that reads the boxes (None: the current one)."""
    t = np.asarray(temperature, np.float64)
    ref = int(np.argmin(t)) if reference is None else int(reference)
    axes = [np.asarray(q, np.float64) for q in axes]
    radius = box_radius(axes, t)
    peaks = reference_peaks(data[ref] if peaks_in is None else peaks_in, n_peaks, radius,
                            maxima if peaks_in is not None else None)
    idx = peak_positions(data if boxes_from is None else boxes_from, peaks,
                         box_radii(peaks, axes, t), scheduler=box_scheduler)
    # Fractional indices -> r.l.u. on each axis (linear between grid points).
    pos = np.stack([np.interp(idx[..., a], np.arange(q.size), q) for a, q in enumerate(axes)],
                   axis=-1)
    pos[np.isnan(idx)] = np.nan
    ref_pos = pos[ref]
    scale, noise = fit_lattice_scale(ref_pos, pos, t)
    scale[ref] = 1.0
    used = np.isfinite(ref_pos).all(axis=1)
    reach = np.array([float(np.abs(ref_pos[used, a]).max()) if used.any() else 0.0
                      for a in range(3)])
    reach[~np.isfinite(noise)] = 0.0
    return Registration(t, scale, noise, ref, reach, np.array([_step(q) for q in axes]),
                        int(used.sum()))


def register_series(mode: str, temperature, axes, data: da.Array, mean: da.Array,
                    boxes_from: da.Array | None = None, maxima: list | None = None,
                    box_scheduler: str | None = None
                    ) -> tuple[Registration | None, da.Array]:
    """The frames' lattice scale (None with ``mode="off"``) and the series
    resampled onto the reference frame's lattice where ``mode`` asks for it
    (peaks searched in ``mean``, the first pass's mean volume; boxes around them
    read from ``boxes_from``, :func:`estimate_registration`; ``maxima``: the
    first pass's :func:`block_maxima` of ``mean``'s blocks, if it found them;
    ``box_scheduler``: what reads the boxes, None for the current scheduler)."""
    if mode == "off":
        return None, data
    reg = estimate_registration(data, temperature, axes, peaks_in=mean,
                                boxes_from=boxes_from, maxima=maxima,
                                box_scheduler=box_scheduler)
    log.info(reg.describe())
    if not wants_register(mode, reg):
        log.info("frames not registered (--register %s)", mode)
        return reg, data
    if not np.isfinite(reg.noise).any():
        log.warning("--register on: no peaks to measure the lattice by; frames not registered")
        return reg, data
    reg.applied = True
    log.info("frames registered onto the lattice at %g K", reg.temperature[reg.reference])
    return reg, register_frames(data, reg, axes)


def wants_register(mode: str, reg: Registration | None) -> bool:
    """Whether a run resamples its frames: ``on``/``off`` as asked; ``auto`` when
    the expansion moves the farthest measured peak by more than
    ``REGISTER_AUTO`` voxels and ``REGISTER_SIGMAS`` times the noise on some axis."""
    if mode == "off" or reg is None:
        return False
    if mode == "on":
        return True
    shift = reg.displacement()
    hit = (shift > REGISTER_AUTO) & (reg.significance() > REGISTER_SIGMAS)
    return bool(hit.any())


#: resampling kernel: "cubic" (Keys, a = -0.5, bounded by its four samples) or
#: "linear"; measured in docs/measured.md
KERNEL = "cubic"


def _taps(src: np.ndarray, n: int, kernel: str):
    """Sample indices (k, n) and weights (k, n) of the 1-D resampling at the
    fractional positions ``src`` on an axis of ``n`` samples (ends clamped)."""
    i0 = np.floor(src).astype(np.int64)
    t = src - i0
    if kernel == "linear":
        idx = np.stack([i0, i0 + 1])
        w = np.stack([1.0 - t, t])
    else:
        a = -0.5
        idx = np.stack([i0 - 1, i0, i0 + 1, i0 + 2])
        w = np.stack([a * (t**3 - 2 * t**2 + t), (a + 2) * t**3 - (a + 3) * t**2 + 1,
                      -(a + 2) * t**3 + (2 * a + 3) * t**2 - a * t, -a * (t**3 - t**2)])
    return np.clip(idx, 0, n - 1), w.astype(np.float32)


def _resample_axis(x, ax: int, idx: np.ndarray, w: np.ndarray):
    """x (L, K, H) resampled along ``ax`` with the taps ``idx``/``w`` (k, n): the
    weighted sum, bounded by the samples it uses (a cubic kernel's overshoot
    would make negative intensities next to a gap)."""
    xp = namespace(x)
    shape = [1, 1, 1]
    shape[ax] = idx.shape[1]
    parts = [xp.take(x, xp.asarray(i), axis=ax) for i in idx]
    out = sum(p * xp.asarray(wi.reshape(shape)) for p, wi in zip(parts, w))
    if len(parts) > 2:
        lo, hi = parts[0], parts[0]
        for p in parts[1:]:
            lo, hi = xp.minimum(lo, p), xp.maximum(hi, p)
        out = xp.clip(out, lo, hi)
    return out


def _resample_block(x, scale: np.ndarray, axes, halo, grid_chunks, kernel=KERNEL,
                    block_id=None):
    """One overlapped block (T, L, K, H) of the series resampled at q * s_j
    (frame j of the block, separably along each axis; sources beyond the
    block's halo clamped, which only reaches the halo that map_overlap trims)."""
    xp = namespace(x)
    t0 = int(sum(grid_chunks[0][:block_id[0]]))
    out = x.astype(xp.float32, copy=True)
    for j in range(x.shape[0]):
        s = scale[t0 + j]
        frame = out[j]
        for ax in range(3):
            if s[ax] == 1.0:
                continue
            q = axes[ax]
            start = int(sum(grid_chunks[ax + 1][:block_id[ax + 1]])) - halo[ax]
            n = x.shape[ax + 1]
            glob = np.arange(start, start + n)
            src = _axis_index(q, q[np.clip(glob, 0, q.size - 1)] * s[ax])
            # the halo's own positions where they fall off the grid
            src = np.where((glob < 0) | (glob >= q.size), glob, src) - start
            idx, w = _taps(np.clip(src, 0.0, n - 1.0), n, kernel)
            frame = _resample_axis(frame, ax, idx, w)
        out[j] = frame
    return out


def _merge_small(chunks, width: int) -> tuple[int, ...]:
    """``chunks`` with every chunk narrower than ``width`` merged into its
    neighbour (the previous one, or the next for the first)."""
    out: list[int] = []
    for c in chunks:
        if out and (c < width or out[-1] < width):
            out[-1] += c
        else:
            out.append(c)
    return tuple(out)


def register_frames(data: da.Array, reg: Registration, axes, kernel: str = KERNEL) -> da.Array:
    """The series (T, L, K, H) with frame j resampled onto the reference lattice:
    its value at q is the frame's at q * s_j (lazy; chunk-wise with a halo as
    wide as the largest shift, edges clamped)."""
    axes = [np.asarray(q, np.float64) for q in axes]
    shift = [float((np.abs(q).max() * np.abs(reg.scale[:, a] - 1.0).max()) / _step(q))
             for a, q in enumerate(axes)]
    halo = tuple(min(int(math.ceil(v)) + 2, n) if v > 0 else 0
                 for v, n in zip(shift, data.shape[1:]))
    # map_overlap needs every chunk at least as wide as the halo
    small = {a + 1: _merge_small(data.chunks[a + 1], h) for a, h in enumerate(halo)
             if h > min(data.chunks[a + 1])}
    if small:
        data = data.rechunk(small)
    return da.map_overlap(_resample_block, data, depth={0: 0, 1: halo[0], 2: halo[1],
                                                          3: halo[2]},
                          boundary="nearest", trim=True, dtype=np.float32,
                          meta=data._meta.astype(np.float32) if hasattr(data._meta, "astype")
                          else None, scale=np.asarray(reg.scale, np.float64), axes=axes,
                          halo=halo, grid_chunks=data.chunks, kernel=kernel)


def registration_variables(reg: Registration | None,
                           temperature=None) -> tuple[dict, dict]:
    """Result variables along ``temperature`` (``lattice_strain_Ql``, ``_Qk``,
    ``_Qh``: a(T) / a(T_ref) - 1 as measured, at the frames of ``temperature``
    where given: those the result keeps) and attributes (``register``:
    whether the frames were resampled; ``expansion`` per axis in 1/K;
    ``register_reference_temperature``, ``register_shift_voxels``,
    ``register_peaks``)."""
    if reg is None:
        return {}, {"register": False}
    dim = ("temperature",)
    strain = reg.strain
    if temperature is not None:  # frames left out after the estimate (lost parts)
        strain = strain[np.isin(reg.temperature, np.asarray(temperature, np.float64))]
    names = ("Ql", "Qk", "Qh")
    variables = {f"lattice_strain_{n}": (dim, strain[:, a].astype(np.float64))
                 for a, n in enumerate(names)}
    attrs = {"register": bool(reg.applied),
             "expansion": {n: float(v) for n, v in zip(names, reg.expansion())},
             "register_reference_temperature": float(reg.temperature[reg.reference]),
             "register_shift_voxels": {n: float(v) for n, v in zip(names, reg.displacement())},
             "register_peaks": int(reg.n_peaks)}
    return variables, attrs
