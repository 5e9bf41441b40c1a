"""``xtec ae`` and ``xtec rankaae`` subcommands.

A thin shell: argument parsing, loading, printing.  What the commands compute
or write lives in the library (:mod:`xtec.autoencoder.outputs`,
:func:`xtec.autoencoder.rankaae.default_descriptors`, :meth:`RankAAE.split`).
Nothing here imports PyTorch at module load (handlers import the library on
call), so ``xtec --help`` stays fast and works without the ``ml`` extra.
"""

from __future__ import annotations

import argparse
import json
import sys

from xtec.autoencoder.outputs import check_output
from xtec.errors import InputError, ParameterError

__all__ = ["check_output", "register"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {value}")
    return value


def _training_options(p: argparse.ArgumentParser, epochs: int) -> None:
    p.add_argument(
        "--epochs", type=_positive_int, default=epochs, help=f"training epochs (default {epochs})"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="random seed; same seed, same model on the CPU"
    )
    p.add_argument("--threads", type=_positive_int, default=None, help="PyTorch CPU threads")
    p.add_argument(
        "--no-progress", dest="progress", action="store_false", default=None, help="no progress bar"
    )


def register(subparsers) -> None:
    """Add the ``ae`` and ``rankaae`` subcommands to an argparse subparsers object."""
    # ------------------------------------------------------------------ ae
    ae = subparsers.add_parser(
        "ae",
        help="autoencoder feature space of XRD patterns",
        description="Feature-space autoencoder of 1-D XRD patterns (Utimula et al. 2023).",
    )
    sub = ae.add_subparsers(dest="ae_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("synth", help="write a synthetic alloy XRD series (CSV, NeXus or text)")
    p.add_argument("output", help="output file: .csv, .nxs (or .h5)")
    p.add_argument("--n", type=_positive_int, default=150, help="number of patterns (default 150)")
    p.add_argument(
        "--range",
        nargs=2,
        type=float,
        default=(0.0, 1.0),
        metavar=("LO", "HI"),
        help="composition range",
    )
    p.add_argument("--order", type=float, default=0.8, help="long-range site order in [0, 1]")
    p.add_argument("--no-vegard", action="store_true", help="keep the lattice parameter fixed")
    p.add_argument("--noise", type=float, default=0.01, help="relative noise level")
    p.add_argument(
        "--lab",
        action="store_true",
        help="add what a laboratory diffractometer does: sample displacement (up to 0.1 mm), "
        "zero shift, K-alpha2, background changes, texture",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_ae_synth)

    p = sub.add_parser("train", help="train a feature-space model on patterns")
    p.add_argument(
        "data", nargs="*", help="CSV, two-column text or NeXus files on one 2-theta grid"
    )
    p.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")
    p.add_argument(
        "--synthetic",
        type=_positive_int,
        metavar="N",
        help="train on N synthetic patterns instead of files",
    )
    p.add_argument("--latent-dim", type=_positive_int, default=2)
    p.add_argument(
        "--clusters", type=_positive_int, default=3, help="k-means clusters in the latent"
    )
    p.add_argument(
        "--descriptor",
        default=None,
        help="coordinate used as the reference for estimates (default: composition, if present)",
    )
    p.add_argument("--normalize", choices=("area", "max", "none"), default="area")
    p.add_argument(
        "--instrument",
        action="store_true",
        help="separate each pattern's zero shift and sample displacement from the lattice "
        "strain (laboratory diffractometers)",
    )
    p.add_argument(
        "--goniometer-radius",
        type=float,
        default=240.0,
        metavar="MM",
        help="goniometer radius for --instrument (default 240 mm)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=256,
        help="patterns per training step (default 256: up to 256 patterns, all at once)",
    )
    _training_options(p, 150)
    p.set_defaults(func=_ae_train)

    p = sub.add_parser("embed", help="latent coordinates, clusters and composition estimates")
    p.add_argument("model")
    p.add_argument("data", nargs="+")
    p.add_argument("-o", "--output", help="CSV table to write")
    p.add_argument(
        "--reference", nargs="+", help="patterns of known composition to use as the reference"
    )
    p.add_argument("--plot", help="PNG of the feature space")
    p.set_defaults(func=_ae_embed)

    p = sub.add_parser("relevance", help="rank the peaks of a pattern by latent shift when masked")
    p.add_argument("model")
    p.add_argument("data", nargs="+")
    p.add_argument("--index", type=int, default=0, help="which pattern of the data (default 0)")
    p.add_argument(
        "--window", type=float, help="full masking window in degrees (default: from peak widths)"
    )
    p.add_argument(
        "--prominence", type=float, default=0.02, help="peak prominence, fraction of the maximum"
    )
    p.add_argument("--plot", help="PNG of the pattern coloured by relevance")
    p.add_argument("-o", "--output", help="CSV table to write")
    p.set_defaults(func=_ae_relevance)

    p = sub.add_parser("interpolate", help="decode patterns between two patterns' latents")
    p.add_argument("model")
    p.add_argument("data", nargs="+")
    p.add_argument("--from", dest="start", type=int, default=0, help="index of the first pattern")
    p.add_argument("--to", dest="end", type=int, default=-1, help="index of the last pattern")
    p.add_argument("--steps", type=_positive_int, default=7)
    p.add_argument(
        "--along",
        choices=("line", "path"),
        default="line",
        help="straight latent segment, or the reference path",
    )
    p.add_argument(
        "-o", "--output", required=True, help="CSV or NeXus file of the generated patterns"
    )
    p.add_argument("--plot", help="PNG of the generated patterns")
    p.set_defaults(func=_ae_interpolate)

    # ------------------------------------------------------------------ rankaae
    rk = subparsers.add_parser(
        "rankaae",
        help="rank-constrained adversarial autoencoder of spectra",
        description="Rank-constrained adversarial autoencoder of spectra (Liang et al. 2023).",
    )
    sub = rk.add_subparsers(dest="rankaae_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("synth", help="write synthetic spectra with known descriptors")
    p.add_argument("output", help="output file: .nxs (or .h5) or .csv")
    p.add_argument("--n", type=_positive_int, default=2500)
    p.add_argument("--noise", type=float, default=0.005)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_rk_synth)

    p = sub.add_parser("train", help="train on spectra with descriptor coordinates")
    p.add_argument("data", nargs="*")
    p.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")
    p.add_argument(
        "--synthetic",
        type=_positive_int,
        metavar="N",
        help="train on N synthetic spectra instead of files",
    )
    p.add_argument(
        "--descriptors",
        help="comma-separated descriptor coordinates to constrain (default: all numeric ones not named nuisance_*)",
    )
    p.add_argument(
        "--free", type=int, default=1, help="unconstrained latent dimensions (default 1)"
    )
    p.add_argument("--test-fraction", type=_fraction, default=0.2)
    p.add_argument("--batch-size", type=_positive_int, default=512)
    p.add_argument(
        "--patience",
        type=int,
        default=0,
        help="hold back 10%% of the training spectra and stop after this many validation "
        "checks (every 2 epochs) without improvement; 0 trains all --epochs (default 0)",
    )
    _training_options(p, 60)
    p.set_defaults(func=_rk_train)

    p = sub.add_parser("report", help="Spearman per descriptor, reconstruction, sweeps")
    p.add_argument("model")
    p.add_argument("data", nargs="+")
    p.add_argument(
        "--split", choices=("test", "train", "all"), default="test", help="which spectra to score"
    )
    p.add_argument("--plot", help="PNG of decoded spectra as each latent dimension is swept")
    p.add_argument("--points", type=_positive_int, default=7, help="spectra per sweep")
    p.add_argument("--json", help="write the report as JSON")
    p.set_defaults(func=_rk_report)


# --------------------------------------------------------------------------- ae handlers


def _load(paths, kind: str):
    from xtec.autoencoder.data import load_curves

    return load_curves(paths, kind=kind)


def _pick(n: int, index: int, what: str = "--index") -> int:
    if not -n <= index < n:
        raise ParameterError(f"{what} {index} is out of range for {n} patterns")
    return index % n


def _ae_synth(args) -> int:
    from xtec.autoencoder.data import save_curves, synthetic_alloy_series
    from xtec.autoencoder.synthetic import LabEffects

    lattice = (2.94, 2.94) if args.no_vegard else (2.87, 3.01)
    lo, hi = args.range
    da = synthetic_alloy_series(
        args.n,
        composition_range=(lo, hi),
        order=args.order,
        lattice=lattice,
        noise=args.noise,
        seed=args.seed,
        lab=LabEffects() if args.lab else None,
    )
    save_curves(da, args.output)
    print(
        f"wrote {da.shape[0]} patterns x {da.shape[1]} points (composition {lo:g}..{hi:g}) to {args.output}"
    )
    return 0


def _ae_train(args) -> int:
    from xtec.autoencoder.feature_space import FeatureSpaceAE

    check_output(args.output)
    if args.synthetic:
        from xtec.autoencoder.data import synthetic_alloy_series

        data = synthetic_alloy_series(args.synthetic, seed=args.seed)
    elif args.data:
        data = _load(args.data, "pattern")
    else:
        raise InputError("give pattern files to train on, or --synthetic N")
    model = FeatureSpaceAE(
        latent_dim=args.latent_dim,
        n_clusters=args.clusters,
        epochs=args.epochs,
        batch_size=args.batch_size,
        normalize=args.normalize,
        correct_instrument=args.instrument,
        goniometer_radius=args.goniometer_radius,
        seed=args.seed,
        n_threads=args.threads,
        progress=args.progress,
    ).fit(data, descriptor=args.descriptor or "auto")
    model.save(args.output)
    sizes = ", ".join(
        str(int((model.labels_ == k).sum())) for k in range(len(model.cluster_centers_))
    )
    print(
        f"trained on {data.shape[0]} patterns x {data.shape[1]} points in {model.train_seconds_:.1f} s"
    )
    print(
        f"encoder input: {model.components_.shape[0]} principal components; latent dim {model.config.latent_dim}"
    )
    print(f"reconstruction MSE (normalised intensity): {model.reconstruction_mse_:.3g}")
    print(f"clusters: {sizes}")
    for name, est in model.estimators_.items():
        print(
            f"reference for {name} estimates: {data.shape[0]} patterns "
            f"(leave-one-out MAE {est.loo_mae():.4g})"
        )
    if not model.estimators_:
        print("no reference for estimates (the patterns have no composition coordinate)")
    print(f"model written to {args.output}")
    return 0


def _ae_embed(args) -> int:
    from xtec.autoencoder.feature_space import FeatureSpaceAE
    from xtec.autoencoder.outputs import estimate_errors, write_embed_table

    model = FeatureSpaceAE.load(args.model, progress=False)
    data = _load(args.data, "pattern")
    if args.reference:
        model.set_reference(
            _load(args.reference, "pattern"), descriptor=model.descriptor or "composition"
        )
    ds = model.embed(data)
    z = ds["latent"].values
    names = list(model.estimators_)
    strain = ds["strain"].values if "strain" in ds else None
    header = f"{'#':>4} " + " ".join(f"{'z' + str(j):>9}" for j in range(z.shape[1]))
    if strain is not None:
        header += f" {'strain':>9}"
    header += f" {'cluster':>7}"
    for name in names:
        header += f" {name + ' (estimate ± unc)':>30}"
    print(header)
    for i in range(min(z.shape[0], 20)):
        line = f"{i:>4} " + " ".join(f"{v:9.3f}" for v in z[i])
        if strain is not None:
            line += f" {strain[i]:9.5f}"
        line += f" {int(ds['cluster'].values[i]):>7}"
        for name in names:
            line += (
                f" {ds[name + '_estimate'].values[i]:>20.4f} ± "
                f"{ds[name + '_uncertainty'].values[i]:.4f}"
            )
        print(line)
    if z.shape[0] > 20:
        print(f"... ({z.shape[0]} patterns)")
    for name, (mae, cover) in estimate_errors(ds, data, names).items():
        print(
            f"mean absolute error of the {name} estimates: {mae:.4g} (within 1 sigma: {cover:.0%})"
        )
    est_name = f"{model.descriptor}_estimate"
    has_est = est_name in ds
    if args.output:
        write_embed_table(ds, names, args.output)
        print(f"table written to {args.output}")
    if args.plot:
        from xtec.autoencoder.plots import plot_latent

        colour = ds[est_name].values if has_est else ds["cluster"].values
        ref = None
        if model.estimator_ is not None and model.estimator_.columns in (None, (0, 1)):
            ref = model.estimator_.path_latent_ * model.latent_scale_
        plot_latent(
            z,
            args.plot,
            colour=colour,
            colour_label=est_name if has_est else "cluster",
            reference=ref,
        )
        print(f"plot written to {args.plot}")
    return 0


def _ae_relevance(args) -> int:
    from xtec.autoencoder.feature_space import FeatureSpaceAE, normalize_patterns

    model = FeatureSpaceAE.load(args.model, progress=False)
    data = _load(args.data, "pattern")
    i = _pick(data.shape[0], args.index)
    pattern = data.isel({data.dims[0]: i})
    rel = model.peak_relevance(pattern, prominence=args.prominence, window=args.window)
    order = rel["rank"].values.argsort()
    print(f"peak relevance of pattern {i} (latent shift in units of the training spread)")
    print(f"{'rank':>4} {'2theta':>8} {'height':>8} {'window':>17} {'shift':>8}")
    for j in order:
        print(
            f"{int(rel['rank'].values[j]):>4} {rel['position'].values[j]:8.2f} {rel['height'].values[j]:8.3f} "
            f"{rel['lo'].values[j]:8.2f}-{rel['hi'].values[j]:<8.2f} {rel['latent_shift'].values[j]:8.3f}"
        )
    if args.output:
        from xtec.autoencoder.outputs import write_relevance_table

        write_relevance_table(rel, args.output)
        print(f"table written to {args.output}")
    if args.plot:
        from xtec.autoencoder.plots import plot_relevance

        y = normalize_patterns(pattern.values[None], model.config.normalize)[0]
        plot_relevance(model.grid_, y, rel, args.plot, title=f"peak relevance, pattern {i}")
        print(f"plot written to {args.plot}")
    return 0


def _ae_interpolate(args) -> int:
    from xtec.autoencoder.data import save_curves
    from xtec.autoencoder.feature_space import FeatureSpaceAE

    if args.steps < 2:
        raise ParameterError("--steps must be at least 2")
    model = FeatureSpaceAE.load(args.model, progress=False)
    data = _load(args.data, "pattern")
    n = data.shape[0]
    a, b = _pick(n, args.start, "--from"), _pick(n, args.end, "--to")
    first = data.dims[0]
    gen = model.interpolate(
        data.isel({first: a}), data.isel({first: b}), n_steps=args.steps, along=args.along
    )
    out = gen.rename({"step": "pattern"})
    save_curves(out, args.output)
    print(f"decoded {args.steps} patterns between pattern {a} and pattern {b}")
    if model.descriptor and model.descriptor in gen.coords:
        est = ", ".join(f"{v:.3f}" for v in gen[model.descriptor].values)
        print(f"estimated {model.descriptor} along the path: {est}")
    print(f"patterns written to {args.output}")
    if args.plot:
        from xtec.autoencoder.plots import plot_curves

        label = model.descriptor if model.descriptor in gen.coords else "t"
        plot_curves(gen, args.plot, label=label, title="patterns decoded along the latent segment")
        print(f"plot written to {args.plot}")
    return 0


# --------------------------------------------------------------------------- rankaae handlers


def _rk_synth(args) -> int:
    from xtec.autoencoder.data import SPECTRUM_DESCRIPTORS, save_curves, synthetic_spectra

    da = synthetic_spectra(args.n, noise=args.noise, seed=args.seed)
    save_curves(da, args.output)
    print(f"wrote {da.shape[0]} spectra x {da.shape[1]} points to {args.output}")
    print(
        f"descriptors: {', '.join(SPECTRUM_DESCRIPTORS)} (and an undescribed 'nuisance_broadening')"
    )
    return 0


def _print_report(rep: dict) -> None:
    print(f"spectra scored: {rep['n_spectra']}")
    for name, rho in rep.get("spearman", {}).items():
        print(f"  Spearman({name}, its latent) = {rho:.3f}")
    print(f"reconstruction MAE: {rep['reconstruction_mae']:.4g}")
    print(
        f"largest |Spearman| between constrained latent dims: {rep['max_constrained_correlation']:.3f}"
    )
    print(f"largest |Spearman| between any latent dims: {rep['max_latent_correlation']:.3f}")


def _rk_train(args) -> int:
    from xtec.autoencoder.rankaae import RankAAE, default_descriptors

    check_output(args.output)
    if args.synthetic:
        from xtec.autoencoder.data import synthetic_spectra

        data = synthetic_spectra(args.synthetic, seed=args.seed)
    elif args.data:
        data = _load(args.data, "spectrum")
    else:
        raise InputError("give spectrum files to train on, or --synthetic N")
    first = data.dims[0]
    if args.descriptors:
        names = [s.strip() for s in args.descriptors.split(",") if s.strip()]
    else:
        names = default_descriptors(data)
    if args.free < 0:
        raise ParameterError("--free must be non-negative")
    if args.patience < 0:
        raise ParameterError("--patience must be non-negative")
    model = RankAAE(
        descriptors=names,
        n_free=args.free,
        epochs=args.epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        seed=args.seed,
        n_threads=args.threads,
        progress=args.progress,
    ).fit_split(data, args.test_fraction)
    model.save(args.output)
    print(
        f"trained on {len(model.train_index_)} spectra in {model.train_seconds_:.1f} s "
        f"({model.epochs_run_} epochs, best {model.best_epoch_}); constrained: {', '.join(names)}"
    )
    if len(model.test_index_):
        print("held-out split:")
        _print_report(model.report(data.isel({first: model.test_index_})))
    print(f"model written to {args.output}")
    return 0


def _rk_report(args) -> int:
    from xtec.autoencoder.rankaae import RankAAE

    model = RankAAE.load(args.model, progress=False)
    data = _load(args.data, "spectrum")
    data = model.split(data, args.split)
    rep = model.report(data)
    rep["split"] = args.split
    _print_report(rep)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rep, fh, indent=2)
        print(f"report written to {args.json}")
    if args.plot:
        from xtec.autoencoder.plots import plot_sweep

        plot_sweep(model.sweep(data, n_points=args.points), args.plot)
        print(f"plot written to {args.plot}")
    sys.stdout.flush()
    return 0
