"""``xtec classify``: train, predict and evaluate the space-group classifier.

Nothing heavy is imported at module load; each handler imports what it needs so that
``xtec --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from xtec.errors import ParameterError

PRETRAINED = Path(__file__).parent / "pretrained"


def register(subparsers) -> None:
    """Add the ``classify`` command and its train / predict / evaluate subcommands."""
    p = subparsers.add_parser(
        "classify",
        help="space groups from powder patterns (trained on synthetic crystals)",
        description="Space-group classifier trained on synthetic crystals generated on the fly.",
    )
    sub = p.add_subparsers(dest="classify_command", metavar="SUBCOMMAND")
    sub.required = True

    t = sub.add_parser("train", help="train a classifier online on generated patterns")
    t.add_argument(
        "-o", "--output", dest="out", help="output directory (model, checkpoints, history)"
    )
    t.add_argument("--out", dest="out", help=argparse.SUPPRESS)  # earlier spelling
    t.add_argument("--steps", type=int, default=1000, help="batches to train (default 1000)")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of AdamW")
    t.add_argument("--width", type=int, default=16, help="channels of the first ResNet stage")
    t.add_argument("--blocks", default="1,1,1,1", help="residual blocks per stage, e.g. 2,2,2,2")
    t.add_argument("--head-bins", type=int, default=8, help="2-theta bins before the linear head")
    t.add_argument(
        "--stem-stride",
        type=int,
        default=16,
        help="stride of the first convolution (the stem downsamples by twice this; "
        "default 16: 0.32 degrees per feature point, a training step 6x cheaper than stride 4)",
    )
    t.add_argument("--space-groups", default="1-230", help="classes, e.g. 1-230 or 2,14,62,225")
    t.add_argument("--max-sites", type=int, default=8, help="most Wyckoff sites per crystal")
    t.add_argument("--max-atoms", type=int, default=120, help="most atoms per conventional cell")
    t.add_argument("--n-points", type=int, default=8501, help="2-theta points, 5..90 degrees")
    t.add_argument("--workers", type=int, default=1, help="data-generating processes")
    t.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    t.add_argument("--val-size", type=int, default=512, help="synthetic validation patterns")
    t.add_argument("--checkpoint-every", type=int, default=200, help="batches between checkpoints")
    t.add_argument("--time-limit", type=float, default=None, help="stop after this many minutes")
    t.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop at this step (the learning-rate schedule still spans --steps)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)

    q = sub.add_parser(
        "predict",
        help="space groups of powder patterns (lab or synchrotron, counts)",
        description="Find the lines (background, counting noise, K-alpha2), index them "
        "(zero shift refined), rank the space groups by their absences and frequency.",
    )
    q.add_argument(
        "patterns",
        nargs="+",
        metavar="PATTERN",
        help="xy/xye/dat text, CSV, GSAS (.gsa/.raw/.fxye), start-step-end or NeXus files",
    )
    q.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    q.add_argument("--top", type=int, default=5, help="candidates to list (default 5)")
    q.add_argument(
        "--wavelength",
        default=None,
        help="anode (Cu, Co, Mo, Ag, Cr, Fe: K-alpha1+2; CuKa1: K-alpha1 only) or angstrom "
        "(monochromatic); default: the file's, else Cu",
    )
    q.add_argument(
        "--ka2",
        choices=["auto", "strip", "none"],
        default=None,
        help="K-alpha2: auto (doublet model: resolved K-alpha2 lines dropped, blends moved to "
        "K-alpha1), strip (Rachinger), none; default: the model's (auto)",
    )
    q.add_argument(
        "--axis",
        choices=["2theta", "q", "d", "energy"],
        default="2theta",
        help="first column: 2-theta (deg, default), q (1/A), d (A) or energy (keV, "
        "energy-dispersive)",
    )
    q.add_argument(
        "--energy-angle",
        type=float,
        default=None,
        help="2-theta (deg) of an energy-dispersive scan",
    )
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.add_argument(
        "--plot",
        default=None,
        metavar="PNG",
        help="draw the pattern, background, lines found and indexed positions (one file: "
        "PNG; several: PNG_<n>.png)",
    )
    q.set_defaults(func=_predict)

    e = sub.add_parser("evaluate", help="accuracy on real structures from CIF files")
    e.add_argument(
        "--cif-dir", action="append", default=[], help="folder of .cif files (repeatable)"
    )
    e.add_argument(
        "--installed",
        action="store_true",
        help="use the structures shipped by pyxtal, Dans_Diffraction, pymatgen, ase",
    )
    e.add_argument("--model", default=None, help="model directory (default: the shipped model)")
    e.add_argument(
        "--nn-baseline",
        type=int,
        default=2000,
        metavar="N",
        help="nearest-neighbour baseline on N synthetic patterns (default 2000; 0: none)",
    )
    e.add_argument(
        "--workers", type=int, default=1, help="processes generating the baseline's patterns"
    )
    e.add_argument(
        "--crystallite-size", type=float, default=50.0, help="nm, for the simulated patterns"
    )
    e.add_argument("--seed", type=int, default=0, help="seed of the baseline's synthetic patterns")
    e.add_argument("--per-group", action="store_true", help="print the per-space-group table")
    e.add_argument(
        "-o", "--output", dest="json", default=None, help="also write all figures to this JSON file"
    )
    e.add_argument("--json", dest="json", help=argparse.SUPPRESS)  # earlier spelling
    e.set_defaults(func=_evaluate)


def parse_space_groups(text: str) -> list[int]:
    """``"1-230"``, ``"2,14,225"`` or mixed ranges to a sorted list of numbers."""
    out: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = (int(v) for v in part.split("-", 1))
                out.update(range(a, b + 1))
            elif part:
                out.add(int(part))
    except ValueError:
        raise ParameterError(
            f"--space-groups: cannot read {text!r}; use e.g. 1-230 or 2,14,225"
        ) from None
    if not out or min(out) < 1 or max(out) > 230:
        raise ParameterError("--space-groups must name numbers in 1..230")
    return sorted(out)


def _train(args) -> int:
    from xtec.classifier.data import SyntheticConfig
    from xtec.classifier.model import ModelConfig
    from xtec.classifier.training import TrainConfig, train

    if not args.out:
        raise ParameterError("classify train: -o/--output DIR is required")
    sgs = parse_space_groups(args.space_groups)
    try:
        blocks = [int(b) for b in args.blocks.split(",")]
    except ValueError:
        raise ParameterError(f"--blocks: cannot read {args.blocks!r}; use e.g. 1,1,1,1") from None
    data = SyntheticConfig(
        space_groups=sgs, max_sites=args.max_sites, max_atoms=args.max_atoms, n_points=args.n_points
    )
    model = ModelConfig(
        space_groups=sgs,
        width=args.width,
        blocks=blocks,
        head_bins=args.head_bins,
        stem_stride=args.stem_stride,
        n_points=args.n_points,
    )
    tc = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        workers=args.workers,
        threads=args.threads,
        seed=args.seed,
        val_size=args.val_size,
        checkpoint_every=args.checkpoint_every,
        time_limit=None if args.time_limit is None else 60 * args.time_limit,
        stop_after=args.stop_after,
    )
    command = "xtec " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else None
    hist = train(
        args.out,
        model,
        data,
        tc,
        resume=args.resume,
        progress=not args.no_progress,
        command=command,
    )
    last = hist["val"][-1] if hist["val"] else {}
    if last:
        print(
            f"step {last['step']}: synthetic validation top-1 {last['top1']:.3f}, "
            f"top-5 {last['top5']:.3f}, crystal system {last['system_top1']:.3f}"
        )
    print(f"model saved in {args.out}")
    return 0


def _predict(args) -> int:
    from xtec.classifier.predictor import plot_files, predict_files

    keep = [] if args.plot else None
    results = predict_files(
        args.patterns,
        args.model,
        args.top,
        wavelength=args.wavelength,
        ka2=args.ka2,
        keep=keep,
        axis=args.axis,
        energy_angle=args.energy_angle,
    )
    if args.plot:
        for r, f in zip(results, plot_files(args.plot, results, keep), strict=True):
            r["plot"] = str(f)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        cands = ", ".join(f"{c['number']} ({c['probability']:.2f})" for c in r["space_groups"])
        status = f" [{r['status']}]" if "status" in r else ""
        if r.get("status") == "not indexed":
            print(f"{r['file']}: not indexed, no space group given (prior's guesses: {cands})")
        else:
            print(
                f"{r['file']}: {r['crystal_system']} ({r['crystal_system_probability']:.2f}); "
                f"space groups {cands}{status}"
            )
        if "reason" in r:
            print(f"  {r['reason']}")
        if "plot" in r:
            print(f"  figure written to {r['plot']}")
    return 0


def _evaluate(args) -> int:
    from tqdm.auto import tqdm

    from xtec.classifier import evaluate as ev
    from xtec.classifier.predictor import load_classifier

    files = ev.structure_files(args.cif_dir, args.installed)
    model = load_classifier(args.model)
    bar = tqdm(
        total=args.nn_baseline,
        desc="baseline patterns",
        unit="pattern",
        disable=args.nn_baseline == 0,
    )
    with bar:
        report = ev.evaluate_files(
            model,
            files,
            args.crystallite_size,
            args.nn_baseline,
            args.seed,
            args.workers,
            progress=bar.update,
        )
    for line in report["skipped"]:
        print(f"skipped {line}", file=sys.stderr)
    _print_report(report, args.per_group)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        print(f"figures written to {args.json}")
    return 0


def _print_report(report: dict, per_group: bool) -> None:
    m = report["model"]
    print(
        f"{m['n_structures']} structures of {m['n_types']} structure types ({len(report['skipped'])} files skipped)"
    )
    header = f"{'':24s} {'top-1':>7s} {'top-5':>7s} {'system':>7s}   {'by type: top-1':>14s} {'top-5':>7s} {'system':>7s}"
    print(header)
    rows = [
        ("model", m),
        ("majority class", report.get("majority_class")),
        ("nearest neighbour", report.get("nearest_neighbour")),
        ("chance", report["chance"]),
    ]
    for name, r in rows:
        if r is None:
            continue
        bt = r.get("by_type", r)
        print(
            f"{name:24s} {r['top1']:7.3f} {r['top5']:7.3f} {r['system_top1']:7.3f}   "
            f"{bt['top1']:14.3f} {bt['top5']:7.3f} {bt['system_top1']:7.3f}"
        )
    print("\nper crystal system (model):")
    for name, r in m["per_crystal_system"].items():
        print(
            f"  {name:14s} n={r['n']:4d}  top-1 {r['top1']:.3f}  top-5 {r['top5']:.3f}"
            f"  system {r['system_top1']:.3f}"
        )
    if per_group:
        print("\nper space group (model):")
        for sg, r in m["per_space_group"].items():
            print(f"  {sg:4d} n={r['n']:3d}  top-1 {r['top1']:.3f}  top-5 {r['top5']:.3f}")
