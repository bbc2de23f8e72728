import io
import json

import pytest
import torch
from torch import nn

from lifelong.models.gan import GANConfig, GANNets, build_gan, load_gan_state, save_gan_state


def _cfg(condition, size=8, **kw):
    return GANConfig(condition=condition, image_size_px=size, in_channels=kw.pop("in_channels", 1), num_classes=4,
                     z_dim=4, width=8, **kw)


def _nets(cfg, seed=0):
    torch.manual_seed(seed)
    return build_gan(cfg)


@pytest.mark.parametrize("size", [8, 16])
def test_label_nets_shapes(size):
    cfg = _cfg("label", size, in_channels=3)
    nets = _nets(cfg)
    assert isinstance(nets, GANNets) and set(nets) == {"G", "D"}
    assert nets.generator_side == ["G"] and nets.discriminator_side == ["D"]
    z, y = torch.randn(4, 4), torch.tensor([0, 1, 2, 3])
    x = nets["G"](z, y)
    assert x.shape == (4, 3, size, size) and x.abs().max() <= 1
    assert nets["D"](x, y).shape == (4,)


@pytest.mark.parametrize("size", [8, 16])
def test_image_nets_shapes(size):
    cfg = _cfg("image", size)
    nets = _nets(cfg)
    assert set(nets) == {"G", "E", "D", "D2"}
    assert nets.generator_side == ["G", "E"] and nets.discriminator_side == ["D", "D2"]
    a, z = torch.rand(4, 1, size, size) * 2 - 1, torch.randn(4, 4)
    b = nets["G"](a, z)
    assert b.shape == a.shape and b.abs().max() <= 1
    mu, logvar = nets["E"](b)
    assert mu.shape == logvar.shape == (4, 4)
    for d in ("D", "D2"):
        logits = nets[d](b)
        assert logits.ndim == 4 and logits.shape[:2] == (4, 1) and logits.shape[2] >= 1


def test_no_batchnorm_or_spectral_norm():
    for cond in ("label", "image"):
        for m in _nets(_cfg(cond)).modules():
            assert not isinstance(m, nn.modules.batchnorm._BatchNorm)
            assert not any("weight_orig" in n for n, _ in m.named_parameters(recurse=False))


def test_sample_label_and_image():
    nets = _nets(_cfg("label"))
    y = torch.tensor([0, 3])
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    x1, x2 = nets.sample(y=y, generator=g()), nets.sample(y=y, generator=g())
    assert x1.shape == (2, 1, 8, 8) and torch.equal(x1, x2)
    z = torch.randn(2, 4, generator=g())
    assert torch.equal(nets.sample(y=y, z=z), x1)
    with pytest.raises(ValueError):
        nets.sample(a=torch.zeros(2, 1, 8, 8))

    nets = _nets(_cfg("image"))
    a = torch.rand(3, 1, 8, 8) * 2 - 1
    b = nets.sample(a=a)
    assert b.shape == a.shape and not b.requires_grad
    assert torch.equal(nets.sample(a=a, z=torch.zeros(3, 4)), nets["G"](a, torch.zeros(3, 4)).detach())


@pytest.mark.parametrize("condition", ["label", "image"])
def test_save_load_round_trip_reproduces_outputs(condition):
    cfg = _cfg(condition, piggyback_ratio=0.25, piggyback_tasks=0)
    nets = _nets(cfg, seed=3)
    buf = io.BytesIO()
    torch.save(save_gan_state(nets, cfg), buf)
    buf.seek(0)
    d = torch.load(buf, weights_only=True)
    assert d["family"] == "gan" and d["config"] == cfg.to_dict()
    loaded = load_gan_state(d)
    assert loaded.cfg == cfg
    cond = {"y": torch.tensor([0, 1, 2])} if condition == "label" else {"a": torch.rand(3, 1, 8, 8)}
    z = torch.randn(3, 4)
    assert torch.equal(nets.sample(z=z, **cond), loaded.sample(z=z, **cond))
    for k, v in nets.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


def test_load_uses_the_given_builder():
    cfg = _cfg("label")
    d = save_gan_state(_nets(cfg), cfg)
    seen = []
    loaded = load_gan_state(d, build=lambda c: seen.append(c) or build_gan(c))
    assert seen == [cfg] and isinstance(loaded, GANNets)
    with pytest.raises(ValueError, match="family"):
        load_gan_state({**d, "family": "diffusion"})


def test_config_dict_round_trip_and_validation():
    cfg = GANConfig(condition="image", gan_loss="hinge", piggyback_ratio=0.25, piggyback_tasks=3)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert GANConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown keys"):
        GANConfig.from_dict({**d, "image_size": 32})
    with pytest.raises(ValueError, match="power of two"):
        GANConfig(condition="label", image_size_px=12)
    with pytest.raises(ValueError, match="condition"):
        GANConfig(condition="text")
    with pytest.raises(ValueError, match="gan_loss"):
        GANConfig(condition="label", gan_loss="wgan")


def test_label_stem_is_a_filter_bank_conv_and_old_files_keep_their_linear():
    from lifelong.models import piggyback

    cfg = _cfg("label")
    assert cfg.label_stem == "deconv" and isinstance(build_gan(cfg)["G"].fc, torch.nn.ConvTranspose2d)
    G = build_gan(cfg)["G"]
    piggyback.piggyback_(G, 0.25)
    assert isinstance(G.fc, piggyback.PiggybackConvTranspose2d)  # banked, not copied per task

    # A model file from before the option: its config has no label_stem, its G a Linear stem.
    old_cfg = _cfg("label", label_stem="linear")
    old = _nets(old_cfg, seed=4)
    d = save_gan_state(old, old_cfg)
    d["config"].pop("label_stem")
    loaded = load_gan_state(d)
    assert loaded.cfg.label_stem == "linear" and isinstance(loaded["G"].fc, torch.nn.Linear)
    y, z = torch.tensor([0, 1, 2]), torch.randn(3, 4)
    assert torch.equal(old.sample(z=z, y=y), loaded.sample(z=z, y=y))
    with pytest.raises(ValueError, match="label_stem"):
        GANConfig(condition="label", label_stem="dense")
