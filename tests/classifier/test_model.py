"""Model, online training, checkpoint/resume and determinism."""

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
pytest.importorskip("pyxtal")
pytest.importorskip("spglib")

from xtec.classifier.data import SyntheticConfig, SyntheticStream  # noqa: E402
from xtec.classifier.model import ModelConfig, ResNet1D, load_model, save_model, system_matrix  # noqa: E402
from xtec.classifier.training import TrainConfig, topk_metrics, train  # noqa: E402
from xtec.errors import InputError, ParameterError  # noqa: E402

SGS = [2, 14, 62, 139, 194, 225]


def _configs(n_points=1001, **train_kw):
    data = SyntheticConfig(space_groups=SGS, max_sites=3, max_atoms=40, n_points=n_points)
    model = ModelConfig(space_groups=SGS, width=8, blocks=[1, 1], n_points=n_points)
    kw = dict(steps=4, batch_size=8, workers=0, val_size=16, checkpoint_every=2, seed=3)
    kw.update(train_kw)
    return model, data, TrainConfig(**kw)


def test_forward_shape_and_depth_is_configurable():
    shallow = ResNet1D(ModelConfig(space_groups=SGS, width=8, blocks=[1]))
    deep = ResNet1D(ModelConfig(space_groups=SGS, width=8, blocks=[2, 2, 2]))
    x = torch.rand(3, 8501)
    assert shallow(x).shape == deep(x).shape == (3, len(SGS))
    assert sum(p.numel() for p in deep.parameters()) > sum(p.numel() for p in shallow.parameters())
    with pytest.raises(ParameterError):
        ModelConfig(space_groups=[0])
    with pytest.raises(ParameterError):
        ModelConfig(width=12, groups=8)
    with pytest.raises(ParameterError):
        ModelConfig(stem_stride=0)


def test_stem_stride_sets_the_downsampling_and_old_configs_keep_theirs():
    # Configurations saved before stem_stride existed (the earlier example network) rebuild
    # the stride-4 stem they were trained with.
    old = ModelConfig.from_dict({"space_groups": SGS, "width": 8, "blocks": [1]})
    assert old.stem_stride == 4
    for stride in (4, 16):
        model = ResNet1D(ModelConfig(space_groups=SGS, width=8, blocks=[1], stem_stride=stride))
        conv = model.stem[0]
        assert conv.stride[0] == stride and conv.kernel_size[0] == 2 * stride + 1
        # Every input point reaches the features: the kernels overlap, leaving no gap.
        x = torch.zeros(1, 2, 8501, requires_grad=True)
        torch.nn.functional.conv1d(
            x, torch.ones_like(conv.weight), stride=stride, padding=conv.padding[0]
        ).sum().backward()
        assert bool((x.grad >= 1).all())
        # Stem and max-pool together downsample by 2 * stride.
        assert model.stem(x.detach()).shape[-1] == math.ceil(8501 / (2 * stride))


@pytest.mark.parametrize("stem_stride", [4, 16])
def test_forward_equals_reference_forward_and_its_gradients(stem_stride):
    # forward (stem as matrix products, in-place ReLUs) is the same function as the
    # module-by-module forward_reference, with the same weights, in values and gradients.
    torch.manual_seed(0)
    cfg = ModelConfig(
        space_groups=SGS, width=16, blocks=[1, 2, 1], n_points=2001, stem_stride=stem_stride
    )
    model = ResNet1D(cfg)
    x, y = torch.rand(5, 2001), torch.tensor([0, 1, 2, 3, 5])
    out = []
    for fwd in (model.forward_reference, model):
        model.zero_grad()
        logits = fwd(x)
        torch.nn.functional.cross_entropy(logits, y).backward()
        out.append([logits.detach()] + [p.grad.clone() for p in model.parameters()])
    for ref, new in zip(*out):
        torch.testing.assert_close(new, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_reference(x), rtol=1e-5, atol=1e-5)


def test_trainer_sets_passive_openmp_waits_unless_the_user_chose(tmp_path):
    import os
    import subprocess
    import sys

    code = "import os, xtec.classifier.training; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert got.stdout.strip() == "PASSIVE", got.stderr
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert got.stdout.strip() == "ACTIVE", got.stderr


def test_save_load_roundtrip(tmp_path):
    model = ResNet1D(ModelConfig(space_groups=SGS, width=8, blocks=[1, 1]))
    save_model(model, tmp_path, {"note": "x"})
    loaded, cfg = load_model(tmp_path)
    x = torch.rand(2, 8501)
    model.eval()
    torch.testing.assert_close(model(x), loaded(x))
    assert cfg["note"] == "x" and cfg["model"]["space_groups"] == SGS
    with pytest.raises(InputError):
        load_model(tmp_path / "missing")


def test_topk_metrics():
    logits = torch.tensor([[3.0, 2, 1, 0, -1, -2], [0, 1, 2, 3, 4, 5]])
    target = torch.tensor([0, 0])
    smat = system_matrix(SGS)
    m = topk_metrics(logits, target, smat, smat[target].argmax(1))
    assert m["top1"] == 0.5 and m["top5"] == 0.5
    assert m["system_top1"] == 0.5


def test_stream_labels_match_space_groups():
    _, data, _ = _configs()
    x, y = next(iter(SyntheticStream(data, batch_size=5, seed=0)))
    assert x.shape == (5, 1001) and x.dtype == torch.float32
    assert set(y.tolist()) <= set(range(len(SGS)))


def test_train_checkpoint_resume_and_determinism(tmp_path):
    model_cfg, data, tc = _configs()
    h1 = train(tmp_path / "a", model_cfg, data, tc, progress=False)
    h2 = train(tmp_path / "b", model_cfg, data, tc, progress=False)
    a, _ = load_model(tmp_path / "a")
    b, _ = load_model(tmp_path / "b")
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=False):
        torch.testing.assert_close(va, vb, msg=ka)
    assert h1["val"] == [
        {**v, "elapsed_s": h1["val"][i]["elapsed_s"]} for i, v in enumerate(h2["val"])
    ]
    assert [v["step"] for v in h1["val"]] == [2, 4]
    for key in ("top1", "top5", "system_top1"):
        assert 0 <= h1["val"][-1][key] <= 1
    # Resume to more steps: continues from step 4 and records the new checkpoints.
    _, _, tc6 = _configs(steps=6)
    h3 = train(tmp_path / "a", model_cfg, data, tc6, resume=True, progress=False)
    assert [v["step"] for v in h3["val"]] == [2, 4, 6]
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["step"] == 6 and cfg["data"]["space_groups"] == SGS
    c, _ = load_model(tmp_path / "a")
    changed = any(
        not torch.equal(va, vc)
        for va, vc in zip(a.state_dict().values(), c.state_dict().values(), strict=False)
    )
    assert changed
    # Stopping early keeps the longer run's trajectory: same weights as the first 2 steps of it.
    _, _, tc_stop = _configs(stop_after=2)
    h_stop = train(tmp_path / "stop", model_cfg, data, tc_stop, progress=False)
    assert [{**v, "elapsed_s": 0} for v in h_stop["val"]] == [{**h1["val"][0], "elapsed_s": 0}]
    _, _, tc2 = _configs(steps=2)
    train(tmp_path / "two", model_cfg, data, tc2, progress=False)
    s, _ = load_model(tmp_path / "stop")
    assert json.loads((tmp_path / "stop" / "config.json").read_text())["step"] == 2
    assert any(
        not torch.equal(vs, vt)
        for vs, vt in zip(
            s.state_dict().values(),
            load_model(tmp_path / "two")[0].state_dict().values(),
            strict=True,
        )
    )
    with pytest.raises(InputError):
        train(tmp_path / "none", model_cfg, data, tc, resume=True, progress=False)


def test_two_workers_are_deterministic(tmp_path):
    model_cfg, data, tc = _configs(steps=2, workers=2, checkpoint_every=2)
    train(tmp_path / "a", model_cfg, data, tc, progress=False)
    train(tmp_path / "b", model_cfg, data, tc, progress=False)
    a, _ = load_model(tmp_path / "a")
    b, _ = load_model(tmp_path / "b")
    x = torch.from_numpy(np.random.default_rng(0).random((2, 1001), dtype=np.float32))
    torch.testing.assert_close(a(x), b(x))
