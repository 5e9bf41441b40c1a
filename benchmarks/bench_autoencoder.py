"""Measure the numbers quoted in docs/autoencoder.md.

    python benchmarks/bench_autoencoder.py [--parts composition rankaae xas] [--seeds 0]
                                           [--threads 1] [--json benchmarks/results/autoencoder.json]

composition
    Composition (and phase-fraction) estimation on series the feature-space
    autoencoder was not tuned on: pymatgen ``XRDCalculator`` patterns
    (:mod:`xtec.autoencoder.series`; 20-100 deg, 4,001 points, Cu K-alpha,
    Gaussian peaks, Poisson noise) of a 12.8 % fcc (Cu-Au) and a 15.1 % bcc
    (Fe-Nb) solid solution, an ordering transition, two coexisting phases,
    and instrument effects (zero shift, width and background changes), plus
    the module's own B2 series.  76 evenly spaced compositions per series, 50
    for training (two of every three) and 26 held out (the third, both ends
    included).  Beside the autoencoder as it is now: the autoencoder as it was
    (2-theta grid, no alignment), composition from the first-peak position
    through Vegard's law, and k-nearest neighbours (k=3) on the raw patterns.
rankaae
    RankAAE on 2,500 spectra (2,000 train / 500 held out) of the module's
    generator and of a second one (EXAFS equation of one Fe-O shell): the
    defaults (60 epochs on a cosine learning-rate schedule; timed before and
    after the old loop, the mean compared), and the training loop as it was
    before issue 15 (a frozen copy below, 200 epochs, batch 256) on the same
    split, after a warm-up; time, epochs, spectra per second, held-out
    Spearman and latent correlations.
rankaae_terms (not in the default parts)
    CPU milliseconds per RankAAE training step (batch 512) for each loss term
    added alone to the reconstruction, and the rank loss as it was beside it.
lab (not in the default parts)
    Composition on ideal and laboratory-like series (sample displacement,
    zero shift, K-alpha2, background, texture, bowing) of a large and a small
    lattice change, in the module's generator (11.5 %, 0.63 %) and in
    pymatgen's (CuAu 12.8 %, FeCo 0.26 %), the autoencoder with and without the
    instrument terms beside the first-/last-peak Vegard rules and kNN.
xas
    Real XAS files from Debian's ``ifeffit-doc`` and the ``araucaria`` sdist
    (downloaded to ~/.cache/xtec-bench like a fresh machine would) read as
    mu(E) by :func:`xtec.io.curves.load_curves`, normalised, and compared with
    Larch's ``pre_edge`` (tests/data/xas_larch_reference.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from xtec.autoencoder.data import (
    EXAFS_DESCRIPTORS,
    SPECTRUM_DESCRIPTORS,
    load_curves,
    synthetic_alloy_series,
    synthetic_exafs_xanes,
    synthetic_spectra,
)
from xtec.autoencoder.feature_space import FeatureSpaceAE, normalize_patterns
from xtec.autoencoder.rankaae import RankAAE, split_indices
from xtec.autoencoder.series import held_out_split, pymatgen_series
from xtec.errors import InputError

CACHE = Path(os.environ.get("XTEC_BENCH_CACHE", Path.home() / ".cache" / "xtec-bench"))

# --------------------------------------------------------------------------- baselines


def first_peak_vegard(train, test, last: bool = False) -> np.ndarray:
    """Composition from the d-spacing of the first (or, ``last``, the last) strong
    peak, linear fit on the training set: the one-line Vegard rule.

    The last peak is what a sceptic picks on a laboratory series: a sample
    displacement moves peaks by ``cos(theta)``, a lattice change by
    ``tan(theta)``, so the highest angle is the least disturbed.
    """
    from scipy.ndimage import uniform_filter1d

    def position(da):
        x = normalize_patterns(da.values)
        tt = da.two_theta.values
        step = float(np.median(np.diff(tt)))
        out = []
        for row in x:
            sm = uniform_filter1d(row - np.percentile(row, 20), 5)
            if last:
                sm, grid = sm[::-1], tt[::-1]
            else:
                grid = tt
            # the last peak standing out of the background, or the first strong one
            j = int(np.argmax(sm > (0.1 if last else 0.5) * sm.max()))
            k = j + int(np.argmax(sm[j : j + int(1.0 / step)]))
            out.append(grid[k])
        return 1.0 / np.sin(np.radians(np.asarray(out) / 2))  # proportional to d

    coef = np.polyfit(position(train), train.composition.values, 1)
    return np.polyval(coef, position(test))


def knn_raw(train, test, name: str = "composition", k: int = 3) -> np.ndarray:
    a = np.sqrt(np.clip(normalize_patterns(train.values), 0, None))
    b = np.sqrt(np.clip(normalize_patterns(test.values), 0, None))
    d = ((b[:, None, :] - a[None]) ** 2).sum(-1)
    nn = np.argsort(d, axis=1)[:, :k]
    return train[name].values[nn].mean(1)


# --------------------------------------------------------------------------- composition


def series_list() -> dict:
    x = np.linspace(0.0, 1.0, 76)
    return {
        "fcc_CuAu_12.8pct (pymatgen)": lambda s: pymatgen_series("fcc", x, seed=s),
        "bcc_FeNb_15.1pct (pymatgen)": lambda s: pymatgen_series("bcc", x, seed=s),
        "ordering_B2_FeAl (pymatgen)": lambda s: pymatgen_series("ordering", x, seed=s),
        "two_phase_fcc+bcc (pymatgen)": lambda s: pymatgen_series("two_phase", x, seed=s),
        "instrument_CuPd_7.6pct (pymatgen)": lambda s: pymatgen_series(
            "fcc",
            x,
            elements=("Cu", "Pd"),
            lattice=(3.615, 3.89),
            zero_shift=0.02,
            width_change=0.3,
            background_change=0.5,
            seed=s,
        ),
        "B2 own generator (4.9pct)": lambda s: synthetic_alloy_series(composition=x, seed=s),
    }


def score(est, truth, unc=None) -> dict:
    err = np.abs(np.asarray(est) - truth)
    out = {"mae": round(float(err.mean()), 5), "max_error": round(float(err.max()), 4)}
    if unc is not None:
        out["within_1sigma"] = round(float(np.mean(err <= unc)), 3)
        out["mean_sigma"] = round(float(np.mean(unc)), 5)
    return out


#: The training schedule as it was before issue 15 (batches of 32, lr 2e-3, no
#: warm-up): "before" models keep it, so they do what they did then.
BEFORE_TRAINING = dict(batch_size=32, lr=2e-3, warmup=0.0)


def bench_composition(seed: int, threads: int, epochs: int) -> dict:
    results = {}
    for name, make in series_list().items():
        da = make(seed)
        tri, tei = held_out_split(da.shape[0])
        train, test = da.isel(pattern=tri), da.isel(pattern=tei)
        truth = test.composition.values
        row = {"n_train": int(train.shape[0]), "n_test": int(test.shape[0])}
        row["vegard_first_peak"] = score(first_peak_vegard(train, test), truth)
        row["knn_raw_k3"] = score(knn_raw(train, test), truth)
        for label, extra in (
            (
                "ae_before (2-theta grid, no alignment)",
                dict(grid="two_theta", align=False, subtract_background=False, **BEFORE_TRAINING),
            ),
            ("ae", {}),
        ):
            start = time.perf_counter()
            model = FeatureSpaceAE(
                epochs=epochs, seed=seed, n_threads=threads, progress=False, **extra
            ).fit(train)
            seconds = time.perf_counter() - start
            ds = model.embed(test)
            res = score(ds.composition_estimate.values, truth, ds.composition_uncertainty.values)
            res["train_seconds"] = round(seconds, 1)
            if model.estimator_ is not None and model.estimator_.columns is not None:
                res["estimator_columns"] = list(model.estimator_.columns)
            if "phase_fraction_estimate" in ds:
                res["phase_fraction"] = score(
                    ds.phase_fraction_estimate.values,
                    test.phase_fraction.values,
                    ds.phase_fraction_uncertainty.values,
                )
            row[label] = res
        if "phase_fraction" in da.coords:
            row["knn_raw_k3_phase_fraction"] = score(
                knn_raw(train, test, "phase_fraction"), test.phase_fraction.values
            )
        results[name] = row
        print(json.dumps({"series": name, **row}), flush=True)
    return results


# --------------------------------------------------------------------------- laboratory series

#: Series of a large and a small lattice change, in the module's generator and
#: in pymatgen's (an independent simulator); the laboratory variant adds
#: LabEffects (displacement up to 0.1 mm on 240 mm, zero shift up to 0.01 deg,
#: K-alpha2, background, texture in the module's generator) and a bowing.
#: name -> (make(composition, seed, lab), bowing)
LAB_SERIES = {
    "own B2 large 11.5pct": (
        lambda x, s, lab: synthetic_alloy_series(
            composition=x, seed=s, lab=lab, lattice=(2.87, 3.20), z=(26.0, 45.0)
        ),
        0.02,
    ),
    "own B2 small 0.63pct (Fe/Co-like contrast)": (
        lambda x, s, lab: synthetic_alloy_series(
            composition=x, seed=s, lab=lab, lattice=(2.866, 2.884), z=(26.0, 27.0)
        ),
        0.004,
    ),
    "pymatgen fcc CuAu large 12.8pct": (
        lambda x, s, lab: pymatgen_series("fcc", x, seed=s, lab=lab),
        0.02,
    ),
    "pymatgen bcc FeCo small 0.26pct": (
        lambda x, s, lab: pymatgen_series(
            "bcc", x, elements=("Fe", "Co"), lattice=(2.866, 2.8585), seed=s, lab=lab
        ),
        0.002,
    ),
}


def bench_lab(seed: int, threads: int, epochs: int) -> dict:
    """Composition on ideal and laboratory-like series, beside the baselines.

    76 compositions 0..1, 50 trained on, 26 held out (as in ``composition``).
    Methods: the first- and last-peak Vegard rules, k-nearest neighbours on the
    raw patterns, the autoencoder with its defaults and with
    ``correct_instrument=True`` (per-pattern zero shift and displacement
    separated from the strain).
    """
    from xtec.autoencoder.synthetic import LabEffects

    x = np.linspace(0.0, 1.0, 76)
    results = {}
    for name, (make, bowing) in LAB_SERIES.items():
        for kind in ("ideal", "laboratory"):
            lab = LabEffects(bowing=bowing) if kind == "laboratory" else None
            da = make(x, seed, lab)
            tri, tei = held_out_split(da.shape[0])
            train, test = da.isel(pattern=tri), da.isel(pattern=tei)
            truth = test.composition.values
            row = {
                "vegard_first_peak": score(first_peak_vegard(train, test), truth),
                "vegard_last_peak": score(first_peak_vegard(train, test, last=True), truth),
                "knn_raw_k3": score(knn_raw(train, test), truth),
            }
            for label, extra in (("ae", {}), ("ae_instrument", {"correct_instrument": True})):
                start = time.perf_counter()
                model = FeatureSpaceAE(
                    epochs=epochs, seed=seed, n_threads=threads, progress=False, **extra
                ).fit(train)
                ds = model.embed(test)
                res = score(
                    ds.composition_estimate.values, truth, ds.composition_uncertainty.values
                )
                res["train_seconds"] = round(time.perf_counter() - start, 1)
                if "displacement_estimate" in ds and "displacement" in test.coords:
                    d_err = ds.displacement_estimate.values - test.displacement.values
                    res["displacement_rms_error_mm"] = round(float(np.sqrt(np.mean(
                        (d_err - d_err.mean()) ** 2))), 4)
                row[label] = res
            results[f"{name} {kind}"] = row
            print(json.dumps({"lab_series": f"{name} {kind}", "seed": seed, **row}), flush=True)
    return results


# --------------------------------------------------------------------------- RankAAE


BEFORE_HYPERPARAMETERS = dict(
    weight_decay=1e-2,
    input_noise=0.02,
    w_rank=1.0,
    w_adversarial=0.1,
    w_cycle=0.5,
    w_smooth=5.0,
    smooth_sigma=2.0,
)


def fit_before(model: RankAAE, spectra, epochs: int, batch_size: int = 256) -> RankAAE:
    """The RankAAE training loop as it was before issue 15 (frozen copy, commit f1df623).

    Fixed epoch count, batch 256, lr 2e-3, the rank loss on full (B, B, K)
    weight tensors, smoothness by padding and a convolution, every loss term
    synchronised to a Python float each step.

    Why a copy and not a configuration of :func:`xtec.autoencoder.rankaae.train`:
    this loop is not numerically one of today's.  Its rank loss (autograd
    through every pair) and smoothness (a convolution, MSE against the copy)
    are other computations than the functions in
    :mod:`xtec.autoencoder.rankaae.losses`, its input noise is added before
    standardising, its cycle term takes the whole batch, it has no
    decorrelation term and a constant learning rate.  What it measures is the
    old implementation's speed and accuracy, so it stays as it was.
    """
    import torch

    from xtec.autoencoder.rankaae import build, grad_reverse
    from xtec.nn import deterministic

    def rank_loss_before(z, d):
        b, k = z.shape
        dz = z[:, None, :] - z[None, :, :]
        dd = d[:, None, :] - d[None, :, :]
        valid = torch.isfinite(dd)
        sd = torch.where(valid, torch.sign(torch.nan_to_num(dd)), torch.zeros_like(dd))
        s = dz * sd
        with torch.no_grad():
            conc = s > 0
            disc = (s < 0) & (sd != 0)
            n_conc = conc.sum(dim=(0, 1)).clamp(min=1).to(z.dtype)
            n_disc = disc.sum(dim=(0, 1)).to(z.dtype)
            w_conc = (n_disc / n_conc).clamp(max=1.0)
            w = torch.where(conc, w_conc[None, None, :].expand_as(s), torch.ones_like(s))
        return -(w * s).sum() / (b * (b - 1) * k)

    from types import SimpleNamespace

    # The hyper-parameters as they were (commit f1df623), not today's defaults.
    cfg = SimpleNamespace(**{**vars(model.config), **BEFORE_HYPERPARAMETERS})
    x, d = model._arrays(spectra, need_descriptors=True)
    n, m = x.shape
    model.grid_ = np.asarray(spectra[spectra.dims[-1]].values, dtype=float)
    model.grid_name_ = str(spectra.dims[-1])
    model.x_mean_ = x.mean(0)
    model.x_std_ = float(x.std()) or 1.0
    grl = grad_reverse()
    half = max(1, int(np.ceil(3 * cfg.smooth_sigma)))
    t = torch.arange(-half, half + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (t / cfg.smooth_sigma) ** 2)
    kernel = (kernel / kernel.sum()).view(1, 1, -1)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    mse = torch.nn.functional.mse_loss
    k = len(cfg.descriptors)
    start = time.perf_counter()
    with deterministic(cfg.seed, model.n_threads):
        net = build(m, model.config)  # the architecture is unchanged
        opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(cfg.seed)
        xt = torch.as_tensor(x, dtype=torch.float32)
        dt = torch.as_tensor(d, dtype=torch.float32)
        mean = torch.as_tensor(model.x_mean_, dtype=torch.float32)
        bs = min(batch_size, n)
        pad = kernel.shape[-1] // 2
        for _epoch in range(epochs):
            net.train()
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n - 1, bs):
                idx = perm[i : i + bs]
                if idx.numel() < 2:
                    continue
                xb, db = xt[idx], dt[idx]
                noisy = xb + cfg.input_noise * torch.randn(xb.shape, generator=gen)
                z = net["encoder"]((noisy - mean) / model.x_std_)
                rec = net["decoder"](z)
                l_rec = mse(rec, xb)
                l_rank = rank_loss_before(z[:, :k], db)
                prior = torch.randn(z.shape, generator=gen)
                logits = net["discriminator"](torch.cat([prior, grl(z)]))
                target = torch.cat([torch.ones(len(z), 1), torch.zeros(len(z), 1)])
                l_adv = bce(logits, target)
                z_back = net["encoder"]((net["decoder"](prior) - mean) / model.x_std_)
                l_cyc = mse(z_back, prior)
                smooth = torch.nn.functional.conv1d(
                    torch.nn.functional.pad(rec[:, None, :], (pad, pad), mode="replicate"),
                    kernel,
                )[:, 0]
                l_smooth = mse(rec, smooth)
                loss = (
                    l_rec
                    + cfg.w_rank * l_rank
                    + cfg.w_adversarial * l_adv
                    + cfg.w_cycle * l_cyc
                    + cfg.w_smooth * l_smooth
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
                for value in (loss, l_rec, l_rank, l_adv, l_cyc, l_smooth):
                    float(value.detach())
    net.eval()
    model.net_ = net
    model.train_seconds_ = time.perf_counter() - start
    model.epochs_run_ = epochs
    return model


def _rank_report(model, test, n_train, seconds) -> dict:
    rep = model.report(test)
    epochs = int(model.epochs_run_)
    return {
        "train_seconds": round(seconds, 2),
        "epochs": epochs,
        "best_epoch": getattr(model, "best_epoch_", None),
        "spectra_per_second": round(n_train * epochs / seconds, 1),
        "spearman": {k: round(v, 4) for k, v in rep["spearman"].items()},
        "min_spearman": round(min(rep["spearman"].values()), 4),
        "mean_spearman": round(float(np.mean(list(rep["spearman"].values()))), 4),
        "max_constrained_correlation": round(rep["max_constrained_correlation"], 3),
        "max_latent_correlation": round(rep["max_latent_correlation"], 3),
        "reconstruction_mae": round(rep["reconstruction_mae"], 4),
    }


def bench_rankaae(seed: int, threads: int, before_epochs: int, generators: list[str]) -> dict:
    out = {}
    makers = {
        "module spectra (synthetic_spectra)": (synthetic_spectra, SPECTRUM_DESCRIPTORS),
        "other generator (synthetic_exafs_xanes)": (synthetic_exafs_xanes, EXAFS_DESCRIPTORS),
    }
    for name, (make, descriptors) in makers.items():
        if not any(g in name for g in generators):
            continue
        spectra = make(2500, seed=0)
        train_idx, test_idx = split_indices(spectra.shape[0], 0.2, seed)
        train, test = spectra.isel(spectrum=train_idx), spectra.isel(spectrum=test_idx)
        row = {}
        kw = dict(descriptors=descriptors, n_free=1, seed=seed, n_threads=threads, progress=False)
        # Warm-up (torch's first-use costs), so that neither timed run pays them.
        RankAAE(**{**kw, "epochs": 1}).fit(train.isel(spectrum=slice(0, 64)))
        fits = []
        # The defaults run before and after the old loop; their mean time is
        # compared, so that a load change during the run cancels to first order.
        for when in ("first", "last"):
            if when == "last" and before_epochs:
                start = time.perf_counter()
                old = fit_before(RankAAE(**kw), train, before_epochs)
                row[f"before_{before_epochs}_epochs"] = _rank_report(
                    old, test, train.shape[0], time.perf_counter() - start
                )
                print(json.dumps({"rankaae": name, "before": row[f"before_{before_epochs}_epochs"]}))
            start = time.perf_counter()
            model = RankAAE(**kw).fit(train)
            fits.append((model, time.perf_counter() - start))
        seconds = float(np.mean([t for _, t in fits]))
        row["defaults"] = _rank_report(fits[0][0], test, train.shape[0], seconds)
        row["defaults"]["train_seconds_each"] = [round(t, 2) for _, t in fits]
        row["defaults"]["same_model_both_runs"] = bool(
            np.array_equal(fits[0][0].transform(test), fits[-1][0].transform(test))
        )
        print(json.dumps({"rankaae": name, "defaults": row["defaults"]}), flush=True)
        if before_epochs:
            b, a = row[f"before_{before_epochs}_epochs"], row["defaults"]
            row["speedup_whole_training"] = round(b["train_seconds"] / a["train_seconds"], 2)
            row["throughput_ratio"] = round(a["spectra_per_second"] / b["spectra_per_second"], 2)
            row["min_spearman_change"] = round(a["min_spearman"] - b["min_spearman"], 4)
            row["mean_spearman_change"] = round(a["mean_spearman"] - b["mean_spearman"], 4)
            print(
                json.dumps({"rankaae": name, **{k: v for k, v in row.items() if k != "defaults"}}),
                flush=True,
            )
        out[name] = row
    return out


def bench_rankaae_terms(threads: int, batch: int = 512, repeats: int = 5, steps: int = 10) -> dict:
    """CPU milliseconds per training step, each loss term added alone to the reconstruction.

    The library's own pieces (network, fused AdamW, rank loss by sorting,
    decorrelation, smoothing operator) on the module's spectra, the cycle and
    smoothness terms on ``cycle_batch`` / ``smooth_batch`` samples as in
    :meth:`RankAAE.fit`; the rank loss as it was (autograd through the
    (B, B, K) pairs, sub-batches of 256) beside it.  Medians over ``repeats``
    rounds, the cases interleaved so that a load change hits them alike.
    """
    import torch

    from xtec.autoencoder.rankaae import (
        RankAAEConfig,
        adversarial_loss,
        build,
        cycle_loss,
        decorrelation_loss,
        grad_reverse,
        optimizer,
        rank_correlation_target,
        rank_loss,
        smoothing_operator,
        smoothness_loss,
    )

    def rank_loss_pairs(z, d):  # the (B, B, K) autograd form, as at the start of issue 15
        sd = torch.nan_to_num(torch.sign(d[:, None, :] - d[None, :, :]), nan=0.0)
        s = (z[:, None, :] - z[None, :, :]) * sd
        total = 2.0 * (z * sd.sum(dim=1)).sum(dim=0)
        discordant = -torch.relu(-s).sum(dim=(0, 1))
        with torch.no_grad():
            w = ((s < 0).sum((0, 1)) / (s > 0).sum((0, 1)).clamp(min=1)).clamp(max=1.0)
        b, k = z.shape
        return -(w * total + (1.0 - w) * discordant).sum() / (b * (b - 1) * k)

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    spectra = synthetic_spectra(2000, seed=0)
    cfg = RankAAEConfig(descriptors=SPECTRUM_DESCRIPTORS)
    x = torch.as_tensor(spectra.values, dtype=torch.float32)
    d = torch.as_tensor(
        np.stack([spectra[n].values for n in SPECTRUM_DESCRIPTORS], 1), dtype=torch.float32
    )
    mean, std = x.mean(0), float(x.std())
    xs = (x - mean) / std
    torch.manual_seed(0)
    net = build(x.shape[1], cfg)
    opt = optimizer(net, cfg)
    grl = grad_reverse()
    smooth_op = smoothing_operator(x.shape[1], cfg.smooth_sigma).T.contiguous()
    mse = torch.nn.functional.mse_loss
    k = len(SPECTRUM_DESCRIPTORS)

    def step(i, term):
        xb, db = x[i : i + batch], d[i : i + batch]
        z = net["encoder"](xs[i : i + batch] + 0.02 / std * torch.randn(xb.shape))
        rec = net["decoder"](z)
        loss = mse(rec, xb)
        if term == "rank":
            loss = loss + rank_loss(z[:, :k], db, cfg.rank_batch)
        elif term == "rank, by (B, B, K) pairs (previous form)":
            loss = loss + sum(
                rank_loss_pairs(z[j : j + 256, :k], db[j : j + 256]) for j in range(0, batch, 256)
            ) / len(range(0, batch, 256))
        elif term == "adversarial":
            loss = loss + adversarial_loss(net["discriminator"], z, torch.randn(z.shape), grl)
        elif term.startswith("cycle + smoothness"):
            n = cfg.cycle_batch if "128" in term else batch
            prior = torch.randn(z.shape)[:n]
            loss = loss + cycle_loss(net["encoder"], net["decoder"], prior, mean, std)
            loss = loss + smoothness_loss(rec[:n], smooth_op)
        elif term == "decorrelation":
            loss = loss + decorrelation_loss(z, rank_correlation_target(db, z.shape[1]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    cases = [
        "reconstruction only",
        "rank",
        "rank, by (B, B, K) pairs (previous form)",
        "adversarial",
        "cycle + smoothness on 128 samples",
        "cycle + smoothness on the whole batch",
        "decorrelation",
    ]
    times: dict = {c: [] for c in cases}
    rng = np.random.default_rng(0)
    for _ in range(repeats):
        for case in cases:
            for _ in range(2):
                step(int(rng.integers(0, 2000 - batch)), case)
            start = time.process_time()
            for _ in range(steps):
                step(int(rng.integers(0, 2000 - batch)), case)
            times[case].append((time.process_time() - start) / steps * 1e3)
    torch.set_num_threads(previous)
    base = float(np.median(times["reconstruction only"]))
    out = {"batch": batch, "threads": threads, "ms_per_step_reconstruction_only": round(base, 2)}
    out["ms_added_per_term"] = {
        c: round(float(np.median(times[c])) - base, 2) for c in cases[1:]
    }
    print(json.dumps({"rankaae_terms": out}), flush=True)
    return out


# --------------------------------------------------------------------------- feature-space throughput


def bench_feature_space_throughput(seed: int, threads: int, epochs: int) -> dict:
    """Training throughput (patterns x epochs per second) on the module's B2 series.

    Whole ``fit`` (preprocessing, alignment and the leave-one-out estimator
    included), the model as it was against the defaults.
    """
    train = synthetic_alloy_series(150, seed=1)
    before = dict(grid="two_theta", align=False, subtract_background=False,
                  decode_components=False, **BEFORE_TRAINING)
    # Both models once on a few patterns first: the first fit in a process
    # pays one-off imports (torch's optimiser pulls in torch._dynamo, 3-5 s),
    # which must not land on whichever model is timed first.  Then the
    # defaults are timed on both sides of the earlier model (mean of the two).
    for extra in (before, {}):
        FeatureSpaceAE(epochs=1, seed=seed, n_threads=threads, progress=False, **extra).fit(
            train[:40]
        )
    out = {}
    runs: dict = {}
    for label, extra in (
        ("defaults", {}),
        ("before (full-grid decoder, 2-theta grid, no alignment)", before),
        ("defaults", {}),
    ):
        start, cpu = time.perf_counter(), time.process_time()
        FeatureSpaceAE(epochs=epochs, seed=seed, n_threads=threads, progress=False, **extra).fit(
            train
        )
        runs.setdefault(label, []).append(
            (time.perf_counter() - start, time.process_time() - cpu)
        )
    for label, times in runs.items():
        seconds = float(np.mean([w for w, _ in times]))
        out[label] = {
            "train_seconds": round(seconds, 2),
            "patterns_per_second": round(train.shape[0] * epochs / seconds, 1),
            # CPU seconds of the process: on a shared machine less moved by
            # other jobs than the wall clock.
            "cpu_seconds": round(float(np.mean([c for _, c in times])), 2),
        }
    a, b = out["defaults"], out["before (full-grid decoder, 2-theta grid, no alignment)"]
    out["speedup"] = round(b["train_seconds"] / a["train_seconds"], 2)
    out["speedup_cpu"] = round(b["cpu_seconds"] / a["cpu_seconds"], 2)
    print(json.dumps({"feature_space_throughput": out}), flush=True)
    return out


# --------------------------------------------------------------------------- real XAS files


def fetch_real_xas() -> list[Path]:
    """Debian ifeffit-doc examples and the araucaria sdist test data, cached."""
    CACHE.mkdir(parents=True, exist_ok=True)
    ifeffit = CACHE / "ifeffit"
    if not ifeffit.exists():
        subprocess.run(
            ["apt-get", "download", "ifeffit-doc"], cwd=CACHE, check=True, capture_output=True
        )
        deb = next(CACHE.glob("ifeffit-doc_*.deb"))
        subprocess.run(["dpkg", "-x", str(deb), str(ifeffit)], check=True)
    ara = CACHE / "araucaria"
    if not ara.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                "araucaria",
                "-d",
                str(ara),
                "araucaria==0.1.11",
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(["tar", "xzf", next(ara.glob("*.tar.gz")), "-C", str(ara)], check=True)
    data = ifeffit / "usr/share/doc/ifeffit/examples/data"
    files = sorted(data.glob("*.xmu")) + sorted(data.glob("*.chi"))
    files += sorted(ara.glob("*/araucaria/testdata/*.xdi"))
    files += sorted(ara.glob("*/araucaria/testdata/*.xmu"))
    return files


def bench_xas() -> dict:
    """Every real XAS file read as mu(E) (or chi(k)), and its normalisation against Larch's.

    Larch's ``pre_edge`` results are in tests/data/xas_larch_reference.json
    (benchmarks/xas_larch_reference.py writes them where xraylarch is installed);
    the deviation is the largest |norm - norm_Larch| over the file, in units of
    the edge step, with E0 found by each program on its own.
    """
    from xtec.autoencoder.spectra import normalize_edge

    try:
        files = fetch_real_xas()
    except (subprocess.CalledProcessError, StopIteration, OSError) as exc:
        print(json.dumps({"xas": f"could not fetch real files: {exc}"}))
        return {"error": str(exc)}
    ref_path = Path(__file__).resolve().parents[1] / "tests" / "data" / "xas_larch_reference.json"
    reference = json.loads(ref_path.read_text())["files"] if ref_path.is_file() else {}
    out = {}
    for path in files:
        try:
            da = load_curves(path, kind="spectrum")
        except InputError as exc:
            out[path.name] = {"loaded": False, "message": str(exc).split(": ", 1)[-1]}
            continue
        g = da[da.dims[-1]].values
        row = {
            "loaded": True,
            "points": int(g.size),
            "grid": [round(float(g[0]), 2), round(float(g[-1]), 2)],
            "grid_label": da.attrs.get("grid_label"),
            "absorption": da.attrs.get("absorption"),
            "reference_channel": "reference" in da.coords,
        }
        if da.attrs.get("grid_label") != "k":
            r = normalize_edge(g, da.values[0])
            row |= {"e0": round(r.e0, 2), "edge_step": round(r.edge_step, 4)}
            if path.name in reference:
                ref = reference[path.name]
                worst = float(np.max(np.abs(r.norm[::5] - np.asarray(ref["norm"]))))
                row |= {
                    "larch_e0": round(ref["e0"], 2),
                    "larch_edge_step": round(ref["edge_step"], 4),
                    "max_norm_difference_vs_larch": round(worst, 5),
                }
        out[path.name] = row
    n_ok = sum(v["loaded"] for v in out.values())
    diffs = [v["max_norm_difference_vs_larch"] for v in out.values() if "max_norm_difference_vs_larch" in v]
    summary = {
        "loaded": f"{n_ok} of {len(out)}",
        "mu_files_compared_with_larch": len(diffs),
        "worst_norm_difference_vs_larch": max(diffs) if diffs else None,
    }
    print(json.dumps({"xas_real_files": summary}), flush=True)
    return {"summary": summary, "files": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["composition", "rankaae", "throughput", "xas"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=150, help="feature-space AE epochs (the CLI's)")
    ap.add_argument(
        "--before-epochs",
        type=int,
        default=200,
        help="epochs of the RankAAE loop as it was (0: skip it)",
    )
    ap.add_argument("--generators", nargs="+", default=["module", "other"])
    ap.add_argument("--json", help="write all results to this JSON file")
    args = ap.parse_args()
    results: dict = {"threads": args.threads, "cpu_count": os.cpu_count(), "seeds": {}}
    for seed in args.seeds:
        r: dict = {}
        if "composition" in args.parts:
            r["composition"] = bench_composition(seed, args.threads, args.epochs)
        if "rankaae" in args.parts:
            r["rankaae"] = bench_rankaae(seed, args.threads, args.before_epochs, args.generators)
        if "rankaae_terms" in args.parts:
            r["rankaae_terms"] = bench_rankaae_terms(args.threads)
        if "lab" in args.parts:
            r["lab"] = bench_lab(seed, args.threads, args.epochs)
        if "throughput" in args.parts:
            r["feature_space_throughput"] = bench_feature_space_throughput(
                seed, args.threads, args.epochs
            )
        results["seeds"][str(seed)] = r
    if "xas" in args.parts:
        results["xas_real_files"] = bench_xas()
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
