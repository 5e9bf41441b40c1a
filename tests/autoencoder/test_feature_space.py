"""Feature-space autoencoder: composition estimates, peak relevance, interpolation, persistence."""

from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from xtec.autoencoder.data import load_curves, save_curves, synthetic_alloy_series  # noqa: E402
from xtec.autoencoder.feature_space import (  # noqa: E402
    ConcentrationEstimator,
    FeatureSpaceAE,
    cross_correlation_shift,
    find_peaks,
    learning_rates,
    mask_window,
    remove_baseline,
)
from xtec.errors import InputError, ParameterError  # noqa: E402

FAST = dict(epochs=150, seed=0, n_threads=1, progress=False)


@pytest.fixture(scope="module")
def alloy(tmp_path_factory):
    """150 training patterns (the size of the published study) and 50 held out, via files."""
    d = tmp_path_factory.mktemp("alloy")
    train = save_curves(synthetic_alloy_series(150, seed=1), d / "train.csv")
    test = save_curves(synthetic_alloy_series(50, seed=2), d / "test.nxs")
    return load_curves(train), load_curves(test)


@pytest.fixture(scope="module")
def alloy_model(alloy):
    train, _ = alloy
    start = time.perf_counter()
    model = FeatureSpaceAE(**FAST).fit(train)
    model.wall_seconds = time.perf_counter() - start
    return model


def test_held_out_compositions_from_the_feature_space(alloy, alloy_model):
    train, test = alloy
    est, unc = alloy_model.estimate(test)
    truth = test.composition.values
    err = np.abs(est - truth)
    span = train.composition.values.max() - train.composition.values.min()
    assert err.mean() < 0.02 * span, f"MAE {err.mean():.4f} of range {span:.3f}"
    # The uncertainty is of the right size: most errors lie within 3 sigma.
    assert np.all(unc > 0)
    assert np.mean(err <= 3 * unc) > 0.7


def test_clusters_follow_composition(alloy_model, alloy):
    train, _ = alloy
    labels = alloy_model.labels_
    x = train.composition.values
    means = [x[labels == k].mean() for k in np.unique(labels)]
    # Each cluster is a composition band: the spread inside is well below the total.
    inside = np.mean([x[labels == k].std() for k in np.unique(labels)])
    assert len(means) == 3 and inside < 0.6 * x.std()


def test_interpolation_generates_intermediate_patterns(alloy_model, alloy):
    _, test = alloy
    i, j = int(np.argmin(test.composition.values)), int(np.argmax(test.composition.values))
    line = alloy_model.interpolate(test[i], test[j], n_steps=5)
    assert line.dims == ("step", "two_theta") and line.shape[0] == 5
    path = alloy_model.interpolate(test[i], test[j], n_steps=5, along="path")
    comp = path.composition.values
    assert np.all(np.diff(comp) > 0)
    np.testing.assert_allclose(comp[2], 0.5 * (comp[0] + comp[-1]), atol=0.03)
    # The middle pattern has its strongest peak between those of the end members.
    tt = path.two_theta.values
    peaks = [tt[np.argmax(p)] for p in path.values]
    assert min(peaks[0], peaks[-1]) <= peaks[2] <= max(peaks[0], peaks[-1])
    # Decoding a pattern's own latent gives back the pattern (normalised).
    # The model removes the background, so compare what stands above it.
    ds = alloy_model.embed(test[[3]])
    rec = alloy_model.decode(ds.latent.values, ds.strain.values)
    norm = test.values[[3]] / test.values[3].mean()
    peaks_only = [remove_baseline(np.sqrt(np.clip(y, 0, None)), 41)[0] for y in (rec, norm)]
    assert np.corrcoef(*peaks_only)[0, 1] > 0.99


def _planted_series(n=150, seed=4):
    """Patterns that do not change with composition except for one planted weak peak."""
    base = synthetic_alloy_series(n, lattice=(2.95, 2.95), order=0.0, size_spread=0.0, seed=seed)
    x = base.composition.values
    tt = base.two_theta.values
    return base + 0.3 * x[:, None] * np.exp(-0.5 * ((tt - 36.0) / 0.12) ** 2)


def test_peak_relevance_ranks_the_planted_peak_first():
    data = _planted_series()
    model = FeatureSpaceAE(**FAST).fit(data)
    for i in (75, 140):  # mid and high composition
        rel = model.peak_relevance(data[i])
        pos = rel.position.values
        planted = int(np.argmin(np.abs(pos - 36.0)))
        strong = int(np.argmax(rel.height.values))
        assert abs(pos[strong] - 43.4) < 0.5  # the (110) fundamental, unchanged by composition
        assert rel.height.values[strong] > 3 * rel.height.values[planted]
        assert rel["rank"].values[planted] == 1
        assert rel.latent_shift.values[planted] > 2 * rel.latent_shift.values[strong]


def test_peak_relevance_finds_the_superlattice_peak():
    # Fixed lattice parameter: only site order (superlattice intensities) carries x.
    data = synthetic_alloy_series(
        150, lattice=(2.95, 2.95), composition_range=(0.0, 0.5), order=1.0, size_spread=0.0, seed=3
    )
    model = FeatureSpaceAE(**FAST).fit(data)
    rel = model.peak_relevance(data[120])
    top = int(np.argmin(rel["rank"].values))
    assert abs(rel.position.values[top] - 30.3) < 0.5  # (100), not the stronger (110)
    assert rel.height.values[top] < rel.height.values.max()


def test_masking_helpers():
    grid = np.linspace(0, 10, 201)
    y = 0.1 * grid + np.exp(-0.5 * ((grid - 5) / 0.2) ** 2)
    masked = mask_window(y, grid, 4, 6)
    inside = (grid >= 4) & (grid <= 6)
    np.testing.assert_allclose(masked[inside], 0.1 * grid[inside], atol=0.02)
    np.testing.assert_array_equal(masked[~inside], y[~inside])
    peaks = find_peaks(y, grid)
    assert len(peaks) == 1 and abs(peaks[0].position - 5) < 0.05


def test_concentration_estimator_on_a_known_curve():
    t = np.linspace(0, 1, 120)
    latent = np.column_stack([np.cos(2.5 * t), np.sin(2.5 * t)])  # a curved path
    est = ConcentrationEstimator().fit(latent, t)
    q = np.linspace(0.05, 0.95, 9)
    value, unc = est.predict(np.column_stack([np.cos(2.5 * q), np.sin(2.5 * q)]))
    np.testing.assert_allclose(value, q, atol=0.01)
    knn = ConcentrationEstimator(method="knn").fit(latent, t)
    np.testing.assert_allclose(
        knn.predict(np.column_stack([np.cos(2.5 * q), np.sin(2.5 * q)]))[0], q, atol=0.02
    )
    with pytest.raises(ParameterError):
        ConcentrationEstimator(method="spline")


def test_leave_one_out_at_once_equals_one_estimator_per_reference():
    """The vectorised leave-one-out gives, to the bit, what fitting an estimator
    on the other references and projecting the held-out one gives."""
    rng = np.random.default_rng(0)
    v = rng.uniform(size=61)
    v[:9] = v[9]  # ties in the values: the stable order decides the path
    z = np.column_stack([np.cos(3 * v), np.sin(3 * v), v]) + 0.05 * rng.normal(size=(61, 3))
    for method, smoothing, columns in (("path", None, None), ("path", 4, (0, 1)), ("knn", None, None)):
        est = ConcentrationEstimator(method, 6, smoothing, columns).fit(z, v)
        zs = z if columns is None else z[:, list(columns)]
        residual, distance = np.empty(v.size), np.empty(v.size)
        for i in range(v.size):
            keep = np.arange(v.size) != i
            other = ConcentrationEstimator(method, 6, smoothing).fit(zs[keep], v[keep], loo=False)
            e, d, _ = other._project(zs[i : i + 1])
            residual[i], distance[i] = e[0] - v[i], d[0]
        np.testing.assert_array_equal(est.ref_residual_, residual)
        np.testing.assert_array_equal(est.ref_distance_, distance)
        # Any block size (memory bound) gives the same.
        small = est._leave_one_out(zs, v, block=7)
        np.testing.assert_array_equal(small[0], residual)
        np.testing.assert_array_equal(small[1], distance)


def test_fast_fft_length_gives_the_lags_of_the_doubled_one():
    """The cross-correlation padded to a fast length finds the lags that the
    zero-padding to 2 m (the earlier code) found, to rounding, on grids of prime
    sizes (1,601 and 4,001 points as in the module's and pymatgen's series)."""

    def doubled(t, template, max_lag):  # the earlier implementation
        m = t.shape[1]
        max_lag = int(max(1, min(max_lag, m - 2)))
        c = np.fft.irfft(np.fft.rfft(t, 2 * m) * np.conj(np.fft.rfft(template, 2 * m)), 2 * m)
        cc = np.concatenate([c[:, -max_lag:], c[:, : max_lag + 1]], axis=1)
        j = np.clip(np.argmax(cc, axis=1), 1, cc.shape[1] - 2)
        a, b, d = (cc[np.arange(t.shape[0]), j + o] for o in (-1, 0, 1))
        den = a - 2 * b + d
        frac = np.where(den < 0, 0.5 * (a - d) / np.where(den < 0, den, 1.0), 0.0)
        return (j - max_lag) + np.clip(frac, -0.5, 0.5)

    rng = np.random.default_rng(1)
    for m, max_lag in ((1601, 300), (4001, 492), (37, 5), (50, 200)):
        x = np.arange(m, dtype=float)
        template = np.exp(-0.5 * ((x - m / 2) / 3) ** 2) + np.exp(-0.5 * ((x - m / 3) / 2) ** 2)
        reach = min(max_lag, m - 2)
        shifts = np.concatenate([[-reach, reach], rng.uniform(-reach, reach, 30)])
        t = np.stack([np.interp(x + s, x, template) for s in shifts])
        t += 0.01 * rng.normal(size=t.shape)
        np.testing.assert_allclose(
            cross_correlation_shift(t, template, max_lag), doubled(t, template, max_lag),
            rtol=0, atol=1e-9,
        )


def test_learning_rates_are_those_of_the_cosine_scheduler():
    """Without a warm-up, the per-epoch rates equal torch's CosineAnnealingLR
    stepped once per epoch, to the bit (so a model trained with warmup=0 is the
    one trained with that scheduler); the warm-up ramps them up linearly."""
    for epochs in (1, 2, 7, 150):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=1e-4)
        expected = []
        for _ in range(epochs):
            expected.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert learning_rates(2e-3, epochs) == expected
    warm = learning_rates(1e-2, 100, warmup=0.1)
    cosine = learning_rates(1e-2, 100)
    np.testing.assert_allclose(warm[:10], np.array(cosine[:10]) * np.arange(1, 11) / 11)
    assert warm[10:] == cosine[10:] and max(warm) <= 1e-2
    with pytest.raises(ParameterError):
        FeatureSpaceAE(warmup=1.0)


def test_training_latents_equal_a_fresh_transform(alloy_model, alloy):
    """fit() encodes the training patterns from the coefficients it trained on
    instead of aligning them again; a fresh transform gives the same bits."""
    train, _ = alloy
    np.testing.assert_array_equal(alloy_model.transform(train), alloy_model.latent_)


def test_same_seed_same_model_on_cpu():
    data = synthetic_alloy_series(40, seed=5)
    from threadpoolctl import threadpool_info

    threads, pools = torch.get_num_threads(), threadpool_info()
    kw = dict(epochs=20, n_threads=1, progress=False)
    a = FeatureSpaceAE(seed=11, **kw).fit(data)
    b = FeatureSpaceAE(seed=11, **kw).fit(data)
    c = FeatureSpaceAE(seed=12, **kw).fit(data)
    np.testing.assert_array_equal(a.latent_, b.latent_)
    for (_, pa), (_, pb) in zip(
        a.net_.state_dict().items(), b.net_.state_dict().items(), strict=True
    ):
        assert torch.equal(pa, pb)
    assert not np.array_equal(a.latent_, c.latent_)
    # Training leaves the caller's torch and BLAS/OpenMP settings alone.
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == threads
    assert threadpool_info() == pools


def test_save_and_load_safely(tmp_path, alloy_model, alloy):
    from safetensors import safe_open

    _, test = alloy
    path = tmp_path / "model.safetensors"
    alloy_model.save(path)
    with safe_open(str(path), framework="pt") as fh:  # plain tensors + JSON metadata
        assert fh.metadata()["xtec_model"] == "feature_space_ae"
    loaded = FeatureSpaceAE.load(path)
    np.testing.assert_array_equal(loaded.transform(test), alloy_model.transform(test))
    np.testing.assert_array_equal(loaded.estimate(test)[0], alloy_model.estimate(test)[0])
    assert loaded.config == alloy_model.config
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(InputError):
        FeatureSpaceAE.load(tmp_path / "junk.safetensors")
    with pytest.raises(InputError, match="no such model"):
        FeatureSpaceAE.load(tmp_path / "none.safetensors")


def test_grid_mismatch_and_bad_parameters(alloy_model):
    other = synthetic_alloy_series(3, two_theta=np.linspace(20, 100, 500))
    with pytest.raises(InputError, match="grid"):
        alloy_model.transform(other)
    with pytest.raises(ParameterError):
        FeatureSpaceAE(latent_dim=0)
    with pytest.raises(ParameterError):
        FeatureSpaceAE(normalize="bogus")
    with pytest.raises(ParameterError):
        FeatureSpaceAE(not_a_parameter=1)
