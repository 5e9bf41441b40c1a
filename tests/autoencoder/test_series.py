"""Feature-space autoencoder on series it was not tuned on (pymatgen's XRDCalculator).

Smaller than the benchmark (31 compositions, 2,001 points, 40 epochs) so that the
suite stays quick; benchmarks/bench_autoencoder.py runs the full sizes.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
pytest.importorskip("pymatgen")

from xtec.autoencoder.data import load_curves, save_curves  # noqa: E402
from xtec.autoencoder.feature_space import FeatureSpaceAE  # noqa: E402
from xtec.autoencoder.series import held_out_split, pymatgen_series  # noqa: E402
from xtec.cli.main import main  # noqa: E402

GRID = np.linspace(20.0, 100.0, 2001)
X = np.linspace(0.0, 1.0, 31)
FAST = dict(epochs=40, seed=0, n_threads=1, progress=False)

SERIES = {
    "fcc 12.8 %": dict(kind="fcc"),
    "bcc 15.1 %": dict(kind="bcc"),
    "ordering": dict(kind="ordering"),
    "two-phase": dict(kind="two_phase"),
    "instrument": dict(
        kind="fcc",
        elements=("Cu", "Pd"),
        lattice=(3.615, 3.89),
        zero_shift=0.02,
        width_change=0.3,
        background_change=0.5,
    ),
}


def _split(da):
    train, test = held_out_split(da.shape[0])
    return da.isel(pattern=train), da.isel(pattern=test)


@pytest.fixture(scope="module")
def estimates():
    out = {}
    for name, kw in SERIES.items():
        kw = dict(kw)
        da = pymatgen_series(kw.pop("kind"), X, two_theta=GRID, seed=1, **kw)
        train, test = _split(da)
        model = FeatureSpaceAE(**FAST).fit(train)
        out[name] = (model, test, model.embed(test))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SERIES))
def test_composition_within_two_percent_on_unseen_series(estimates, name):
    _, test, ds = estimates[name]
    err = np.abs(ds.composition_estimate.values - test.composition.values)
    assert err.mean() < 0.02, f"{name}: MAE {err.mean():.4f}"
    # The held-out set includes both ends of the range.
    assert test.composition.values.min() == 0.0 and test.composition.values.max() == 1.0


@pytest.mark.slow
def test_stated_uncertainty_covers_the_truth(estimates):
    covered = []
    for _, test, ds in estimates.values():
        err = np.abs(ds.composition_estimate.values - test.composition.values)
        assert np.all(ds.composition_uncertainty.values > 0)
        covered.append(err <= ds.composition_uncertainty.values)
    covered = np.concatenate(covered)
    assert covered.mean() >= 0.6, f"1-sigma coverage {covered.mean():.2f}"


@pytest.mark.slow
def test_two_phase_series_reports_a_phase_fraction(estimates):
    model, test, ds = estimates["two-phase"]
    assert "phase_fraction" in model.estimators_
    err = np.abs(ds.phase_fraction_estimate.values - test.phase_fraction.values)
    assert err.mean() < 0.03, f"phase fraction MAE {err.mean():.4f}"


@pytest.mark.slow
def test_large_shift_beats_the_two_theta_autoencoder():
    """The 12.8 % fcc series: the aligned log-d model against the old 2-theta one."""
    da = pymatgen_series("fcc", X, two_theta=GRID, seed=2)
    train, test = _split(da)
    truth = test.composition.values
    new = FeatureSpaceAE(**FAST).fit(train)
    old = FeatureSpaceAE(grid="two_theta", align=False, subtract_background=False, **FAST)
    old.fit(train)
    err_new = np.abs(new.estimate(test)[0] - truth).mean()
    err_old = np.abs(old.estimate(test)[0] - truth).mean()
    assert err_new < 0.02 < err_old
    # The strain it reads is the lattice change against the template: across the
    # series it spans the 12.8 % of Vegard's law.
    strain = new.embed(test).strain.values
    a = test.lattice_parameter.values
    np.testing.assert_allclose(
        (1 + strain) / (1 + strain[0]), a / a[0], rtol=2e-3, err_msg="strain is not a/a0"
    )


@pytest.mark.slow
def test_cli_embed_prints_phase_fraction_and_refuses_bad_references(tmp_path, capsys):
    da = pymatgen_series("two_phase", X, two_theta=GRID, seed=3)
    train, test = _split(da)
    tr, te = save_curves(train, tmp_path / "train.csv"), save_curves(test, tmp_path / "test.nxs")
    model = tmp_path / "m.safetensors"
    args = ["ae", "train", str(tr), "-o", str(model), "--epochs", "20", "--no-progress"]
    assert main(args) == 0
    assert "reference for phase_fraction estimates" in capsys.readouterr().out
    assert main(["ae", "embed", str(model), str(te), "-o", str(tmp_path / "e.csv")]) == 0
    out = capsys.readouterr().out
    assert "phase_fraction (estimate ± unc)" in out
    assert "mean absolute error of the phase_fraction estimates" in out
    header = (tmp_path / "e.csv").read_text().splitlines()[0]
    assert "phase_fraction_estimate" in header and "strain" in header
    # S3: a named descriptor that is not there, or a text value in the
    # composition column, is one line and exit 2, not a silently dropped reference.
    assert main([*args, "--descriptor", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'nope'" in err[0]
    text = tmp_path / "text.csv"
    lines = tr.read_text().splitlines()
    head = lines[0].split(",")
    row = lines[3].split(",")
    row[head.index("composition")] = "high"
    lines[3] = ",".join(row)
    text.write_text("\n".join(lines) + "\n")
    assert load_curves(text).composition.dtype.kind == "U"
    assert main(["ae", "train", str(text), "-o", str(model), "--epochs", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'high'" in err[0] and "composition" in err[0]


def test_train_output_that_cannot_be_written_is_refused_before_training(tmp_path, capsys):
    """T9: ``ae train -o`` into a folder that takes no files: one line, exit 2, at once."""
    data = tmp_path / "d.csv"
    assert main(["ae", "synth", str(data), "--n", "12"]) == 0
    capsys.readouterr()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for target in ("/proc/xtec-model.safetensors", str(blocker / "m.safetensors")):
        for cmd in (["ae", "train", str(data)], ["rankaae", "train", "--synthetic", "30"]):
            assert main([*cmd, "-o", target, "--epochs", "1", "--no-progress"]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "cannot write" in err[0], err
    assert not list(tmp_path.glob("*.partial"))
