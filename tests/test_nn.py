"""xtec.nn: the one learning-rate schedule (each trainer's old rates to the bit) and model files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from xtec.errors import InputError  # noqa: E402
from xtec.nn import load_model_file, read_safetensors, save_model_file, warmup_cosine  # noqa: E402

# --- frozen copies of the three schedules the trainers used before xtec.nn


def _old_classifier(steps):
    warm = max(1, steps // 30)
    return lambda s: float(
        min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )


def _old_feature_space(lr, epochs, warmup=0.0, final=0.05):
    eta_min = lr * final
    rates = [lr]
    for e in range(1, epochs):
        rates.append(
            (1 + math.cos(math.pi * e / epochs))
            / (1 + math.cos(math.pi * (e - 1) / epochs))
            * (rates[-1] - eta_min)
            + eta_min
        )
    ramp = round(warmup * epochs)
    return [r * min(1.0, (e + 1) / (ramp + 1)) for e, r in enumerate(rates)]


def _old_rankaae(lr, warmup, lr_final, epochs, steps_per_epoch):
    total = max(1, epochs * steps_per_epoch)
    warm = min(total, max(1, int(round(warmup * total))))
    t = np.arange(total, dtype=float)
    ramp = (t + 1) / warm
    phase = np.clip((t - warm) / max(1, total - warm), 0.0, 1.0)
    decay = lr_final + (1.0 - lr_final) * 0.5 * (1.0 + np.cos(np.pi * phase))
    return lr * np.where(t < warm, ramp, decay)


@pytest.mark.parametrize("steps", [1, 2, 29, 30, 31, 100, 1000, 10_000])
def test_classifier_schedule_unchanged(steps):
    from xtec.classifier.training import _warmup_cosine

    old, new = _old_classifier(steps), _warmup_cosine(steps)
    assert [new(s) for s in range(steps + 5)] == [old(s) for s in range(steps + 5)]


@pytest.mark.parametrize("epochs", [1, 2, 7, 150, 300, 1500])
@pytest.mark.parametrize("warmup", [0.0, 0.05, 0.1, 0.3])
@pytest.mark.parametrize("lr", [2e-3, 1e-2])
def test_feature_space_schedule_unchanged(epochs, warmup, lr):
    from xtec.autoencoder.feature_space import learning_rates

    assert learning_rates(lr, epochs, warmup) == _old_feature_space(lr, epochs, warmup)


@pytest.mark.parametrize("epochs,steps_per_epoch", [(1, 1), (6, 1), (60, 5), (60, 4), (1500, 56)])
@pytest.mark.parametrize("warmup,lr_final", [(0.0, 0.05), (0.05, 0.05), (0.2, 0.0), (0.05, 1.0)])
def test_rankaae_schedule_unchanged(epochs, steps_per_epoch, warmup, lr_final):
    from xtec.autoencoder.rankaae import RankAAEConfig, _lr_schedule

    cfg = RankAAEConfig(
        descriptors=("a",), epochs=epochs, lr=1e-2, warmup=warmup, lr_final=lr_final
    )
    new = _lr_schedule(cfg, steps_per_epoch)
    old = _old_rankaae(1e-2, warmup, lr_final, epochs, steps_per_epoch)
    assert new.dtype == old.dtype and np.array_equal(new, old)


def test_warmup_cosine_shape_and_ends():
    r = warmup_cosine(100, lr=2.0, warmup=10, final=0.1)
    assert len(r) == 100 and r[0] == pytest.approx(2.0 * 0.1, rel=1e-3)
    assert max(r) <= 2.0 and r[-1] > 0.2
    after = warmup_cosine(100, lr=1.0, warmup=10, final=0.1, decay_after_warmup=True)
    assert after[9] == 1.0 and after[10] == 1.0 and after[-1] == pytest.approx(0.1, abs=1e-3)
    assert len(warmup_cosine(10, n=12)) == 12


def test_model_file_round_trip_and_refusals(tmp_path):
    net = torch.nn.Linear(3, 2)
    path = save_model_file(
        tmp_path / "m.safetensors",
        "toy",
        {"a": 1},
        net.state_dict(),
        {"g": np.arange(4.0)},
        {"x": "y"},
    )
    config, state, arrays, extras = load_model_file(path, "toy")
    assert config == {"a": 1} and extras == {"x": "y"}
    assert all(state[k].equal(v) for k, v in net.state_dict().items())
    np.testing.assert_array_equal(arrays["g"], np.arange(4.0))
    assert not list(tmp_path.glob(".*partial"))
    with pytest.raises(InputError, match="expected a other model"):
        load_model_file(path, "other")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a model file"):
        read_safetensors(bad)
    with pytest.raises(InputError, match="no such model file"):
        read_safetensors(tmp_path / "none.safetensors")


PRETRAINED = Path(__file__).resolve().parents[1] / "xtec" / "classifier" / "pretrained"


@pytest.mark.skipif(not (PRETRAINED / "model.safetensors").is_file(), reason="no shipped network")
def test_shipped_network_loads_and_predicts_the_same_after_resave(tmp_path):
    from safetensors.torch import load_file

    from xtec.classifier.model import load_model, save_model

    model, cfg = load_model(PRETRAINED)  # the earlier directory form
    raw = load_file(str(PRETRAINED / "model.safetensors"))
    assert all(model.state_dict()[k].equal(v) for k, v in raw.items())
    assert cfg == json.loads((PRETRAINED / "config.json").read_text())
    save_model(model, tmp_path / "re", {k: v for k, v in cfg.items() if k != "model"})
    metadata, _ = read_safetensors(tmp_path / "re" / "model.safetensors")
    assert metadata["xtec_model"] == "classifier_resnet1d"
    again, cfg2 = load_model(tmp_path / "re")
    assert cfg2 == cfg
    x = torch.rand(3, model.config.n_points, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert model(x).equal(again(x))
