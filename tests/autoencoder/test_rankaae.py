"""RankAAE: physically organised latents on synthetic spectra with known descriptors."""

from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from xtec.autoencoder.data import (  # noqa: E402
    EXAFS_DESCRIPTORS,
    SPECTRUM_DESCRIPTORS,
    load_curves,
    save_curves,
    synthetic_exafs_xanes,
    synthetic_spectra,
)
from xtec.autoencoder.rankaae import RankAAE, rank_loss, spearman_matrix  # noqa: E402
from xtec.errors import InputError, ParameterError  # noqa: E402


@pytest.fixture(scope="module")
def spectra(tmp_path_factory):
    path = save_curves(
        synthetic_spectra(1500, seed=0), tmp_path_factory.mktemp("spec") / "spectra.nxs"
    )
    return load_curves(path, kind="spectrum")


@pytest.fixture(scope="module")
def trained(spectra):
    start = time.perf_counter()
    model = RankAAE(descriptors=SPECTRUM_DESCRIPTORS, n_free=1, seed=0, n_threads=1, progress=False)
    model.fit_split(spectra, test_fraction=0.2)
    model.wall_seconds = time.perf_counter() - start
    return model


def test_latents_follow_their_descriptors_on_held_out_spectra(spectra, trained):
    assert len(SPECTRUM_DESCRIPTORS) >= 3
    test = spectra.isel(spectrum=trained.test_index_)
    assert not set(trained.test_index_) & set(trained.train_index_)
    report = trained.report(test)
    for name in SPECTRUM_DESCRIPTORS:
        assert report["spearman"][name] >= 0.9, report
    assert report["max_constrained_correlation"] < 0.3, report
    # The free dimension is independent of the constrained ones too.
    assert report["max_latent_correlation"] < 0.3, report
    assert report["reconstruction_mae"] < 0.1, report
    # The default schedule: every epoch, on every training spectrum, no validation split.
    assert trained.epochs_run_ == trained.best_epoch_ == trained.config.epochs
    assert "validation" not in trained.history_


def test_early_stopping_keeps_the_best_validated_weights():
    data = synthetic_spectra(400, seed=6)
    model = RankAAE(
        descriptors=SPECTRUM_DESCRIPTORS[:2],
        epochs=30,
        patience=2,
        eval_every=1,
        batch_size=64,
        n_threads=1,
        progress=False,
    ).fit(data)
    val = model.history_["validation"]  # (checks, 4): epoch, min Spearman, excess corr, score
    assert val.shape[1] == 4 and len(val) == model.epochs_run_
    best = int(np.argmax(val[:, 3]))
    assert model.best_epoch_ == int(val[best, 0]) <= model.epochs_run_
    # Stopped `patience` checks after the best one, or at the epoch cap.
    assert model.epochs_run_ == min(model.best_epoch_ + 2, 30) or model.epochs_run_ == 30


@pytest.mark.slow
def test_defaults_hold_on_spectra_from_another_generator():
    """EXAFS-equation spectra (coordination, bond length, bond spread), defaults only."""
    spectra = synthetic_exafs_xanes(1500, seed=5)
    model = RankAAE(descriptors=EXAFS_DESCRIPTORS, n_free=1, seed=0, n_threads=1, progress=False)
    model.fit_split(spectra, test_fraction=0.2)
    report = model.report(spectra.isel(spectrum=model.test_index_))
    for name in EXAFS_DESCRIPTORS:
        assert report["spearman"][name] >= 0.9, report
    assert report["max_constrained_correlation"] < 0.3, report
    assert report["max_latent_correlation"] < 0.3, report


def test_sweep_changes_the_right_feature(spectra, trained):
    test = spectra.isel(spectrum=trained.test_index_)
    sweep = trained.sweep(test, n_points=5)
    assert sweep.dims == ("latent", "step", "energy")
    assert list(sweep.latent.values) == [*SPECTRUM_DESCRIPTORS, "free0"]
    e = sweep.energy.values
    # Sweeping the edge_shift dimension moves the edge (half-height crossing) to higher energy.
    edge = sweep.sel(latent="edge_shift").values
    crossing = [e[np.argmax(row > 0.5)] for row in edge]
    assert crossing[-1] - crossing[0] > 2.0
    # Sweeping white_line raises the peak just above the edge.
    wl = sweep.sel(latent="white_line").values.max(axis=1)
    assert wl[-1] - wl[0] > 0.3


def test_rank_loss_prefers_ordered_latents():
    d = torch.linspace(0, 1, 32)[:, None]
    ordered = rank_loss((d - d.mean()) / d.std(), d)
    reversed_ = rank_loss(-(d - d.mean()) / d.std(), d)
    # Perfect order satisfies the constraint (the balanced weight of concordant
    # pairs drops to zero with no discordant ones); reversed order is penalised.
    assert float(ordered) == 0.0 < float(reversed_)
    noisy = (d + 0.3 * torch.randn(d.shape, generator=torch.Generator().manual_seed(0))) / d.std()
    assert float(rank_loss(noisy, d)) < float(reversed_)
    # Unknown descriptors (NaN) are skipped, not propagated.
    d_nan = d.clone()
    d_nan[::3] = float("nan")
    assert torch.isfinite(rank_loss(d.clone().requires_grad_(), d_nan))
    # Discordant pairs are not drowned by concordant ones: one swapped pair still
    # gives a gradient on the swapped points comparable to the others.
    z = d.clone().squeeze(1)
    z[[3, 4]] = z[[4, 3]]
    z = z[:, None].requires_grad_()
    rank_loss(z, d).backward()
    g = z.grad.abs().squeeze()
    assert g[3] > 0.5 * g.median()


def _rank_loss_by_pairs(z, d):
    """The loss's definition, differentiated through every (i, j, k) pair."""
    b, k = z.shape
    sd = torch.nan_to_num(torch.sign(d[:, None, :] - d[None, :, :]), nan=0.0)
    s = (z[:, None, :] - z[None, :, :]) * sd
    n_disc = (s < 0).sum(dim=(0, 1)).to(z.dtype)
    n_conc = (s > 0).sum(dim=(0, 1)).clamp(min=1).to(z.dtype)
    w = (n_disc / n_conc).clamp(max=1.0)
    return -(w * s.sum(dim=(0, 1)) + (1 - w) * s.clamp(max=0).sum(dim=(0, 1))).sum() / (
        b * (b - 1) * k
    )


@pytest.mark.parametrize("b, chunk", [(37, None), (300, 128), (64, 64)])
def test_rank_loss_by_sorting_equals_the_pairwise_definition(b, chunk):
    g = torch.Generator().manual_seed(b)
    d = torch.rand(b, 3, generator=g, dtype=torch.float64)
    d[::5, 1] = float("nan")  # unknown descriptors
    d[:, 2] = torch.round(4 * d[:, 2])  # a discrete descriptor: many ties
    z0 = d.nan_to_num(0.5) + 0.4 * torch.randn(b, 3, generator=g, dtype=torch.float64)
    z_fast, z_ref = z0.clone().requires_grad_(), z0.clone().requires_grad_()
    fast = rank_loss(z_fast, d, chunk)
    size = chunk or b
    chunks = range(0, b, size)
    ref = sum(_rank_loss_by_pairs(z_ref[j : j + size], d[j : j + size]) for j in chunks)
    ref = ref / len(chunks)
    fast.backward()
    ref.backward()
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(z_fast.grad, z_ref.grad, rtol=1e-10, atol=1e-12)


def test_spearman_matrix():
    rng = np.random.default_rng(0)
    a = rng.random((200, 2))
    rho = spearman_matrix(a, np.column_stack([a[:, 0] ** 3, -a[:, 1]]))
    np.testing.assert_allclose(np.diag(rho), [1.0, -1.0])
    # With missing values, pair by pair, the same as scipy on the complete rows.
    from scipy.stats import spearmanr

    b = a.copy()
    b[::7, 1] = np.nan
    ok = np.isfinite(b[:, 1])
    got = spearman_matrix(b)[0, 1]
    np.testing.assert_allclose(got, spearmanr(a[ok, 0], a[ok, 1]).statistic)
    np.testing.assert_allclose(spearman_matrix(a)[0, 1], spearmanr(a[:, 0], a[:, 1]).statistic)


def test_same_seed_same_model_and_safe_round_trip(tmp_path):
    data = synthetic_spectra(300, seed=4)
    kw = dict(
        descriptors=SPECTRUM_DESCRIPTORS[:3], epochs=2, batch_size=64, n_threads=1, progress=False
    )
    a = RankAAE(seed=3, **kw).fit_split(data, 0.2)
    b = RankAAE(seed=3, **kw).fit_split(data, 0.2)
    c = RankAAE(seed=4, **kw).fit_split(data, 0.2)
    np.testing.assert_array_equal(a.transform(data), b.transform(data))
    assert not np.array_equal(a.transform(data), c.transform(data))
    path = tmp_path / "r.safetensors"
    a.save(path)
    loaded = RankAAE.load(path)
    np.testing.assert_array_equal(loaded.transform(data), a.transform(data))
    np.testing.assert_array_equal(loaded.test_index_, a.test_index_)
    assert loaded.config == a.config


def test_bad_inputs(tmp_path):
    data = synthetic_spectra(50, seed=1)
    with pytest.raises(InputError, match="not in the data"):
        RankAAE(descriptors=["no_such"], epochs=1).fit(data)
    with pytest.raises(ParameterError):
        RankAAE(descriptors=[])
    with pytest.raises(ParameterError):
        RankAAE(descriptors=["a", "a"])
    model = RankAAE(descriptors=["edge_shift"], epochs=1, batch_size=16, progress=False).fit(data)
    with pytest.raises(InputError, match="grid"):
        model.report(synthetic_spectra(5, energy=np.linspace(-20, 60, 100)))
