import io
import json

import pytest
import torch

from lifelong.models.diffusion import (
    ConditionalUNet,
    DiffusionConfig,
    build_unet,
    ddim_sample,
    load_state,
    make_ddim_scheduler,
    make_ddpm_scheduler,
    save_state,
    to_uint8,
)

TINY = DiffusionConfig(image_size_px=8, in_channels=1, num_classes=4, block_out_channels=(8, 16))


def _model(cfg=TINY, seed=0):
    torch.manual_seed(seed)
    return build_unet(cfg)


@pytest.mark.parametrize(
    "size, channels, attention",
    [(16, (8, 16), False), (16, (8, 16, 16), True), (32, (8, 16), True), (32, (8, 16, 16, 32), False)],
)
def test_unet_forward_shape(size, channels, attention):
    cfg = DiffusionConfig(image_size_px=size, in_channels=3, num_classes=10, block_out_channels=channels, attention=attention)
    model = build_unet(cfg)
    x_t = torch.randn(2, 3, size, size)
    eps = model(x_t, torch.tensor([0, 999]), torch.tensor([1, 9]))
    assert isinstance(model, ConditionalUNet)
    assert type(eps) is torch.Tensor and eps.shape == x_t.shape


def test_config_dict_round_trip_is_json_safe():
    cfg = DiffusionConfig(block_out_channels=(64, 128, 256, 512), attention=True)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert DiffusionConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown keys"):
        DiffusionConfig.from_dict({**d, "image_size": 32})
    with pytest.raises(ValueError, match="halved"):
        DiffusionConfig(image_size_px=12, block_out_channels=(8, 16, 16, 16))


def test_schedulers_use_the_linear_betas():
    cfg = DiffusionConfig(beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000)
    for sched in (make_ddpm_scheduler(cfg), make_ddim_scheduler(cfg)):
        assert sched.betas[0].item() == pytest.approx(1e-4)
        assert sched.betas[-1].item() == pytest.approx(0.02)
        assert sched.config.clip_sample and sched.config.prediction_type == "epsilon"


@pytest.mark.parametrize("num_steps", [1, 2])
def test_ddim_sample_shape_range_and_start_at_pure_noise(num_steps):
    model = _model()
    x = ddim_sample(model, torch.tensor([0, 1, 2]), cfg=TINY, num_steps=num_steps, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 1, 8, 8)
    assert torch.isfinite(x).all() and x.min() >= -1 and x.max() <= 1
    sched = make_ddim_scheduler(TINY)
    sched.set_timesteps(num_steps)
    assert sched.timesteps[0] == TINY.num_train_timesteps - 1  # few steps must still start from x_T


def test_ddim_sample_is_deterministic_given_the_generator():
    model = _model()
    y = torch.tensor([3, 0])
    a = ddim_sample(model, y, cfg=TINY, num_steps=2, generator=torch.Generator().manual_seed(7))
    b = ddim_sample(model, y, cfg=TINY, num_steps=2, generator=torch.Generator().manual_seed(7))
    c = ddim_sample(model, y, cfg=TINY, num_steps=2, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_ddim_sample_follows_model_dtype():
    model = _model().to(torch.float64)
    x = ddim_sample(model, torch.tensor([1]), cfg=TINY, num_steps=2, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float64


def test_to_uint8():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0, -3.0])
    assert to_uint8(x).tolist() == [0, 128, 255, 255, 0]
    assert to_uint8(x).dtype == torch.uint8


def test_checkpoint_round_trip_with_weights_only():
    model = _model(seed=3)
    buf = io.BytesIO()
    torch.save(save_state(model, TINY), buf)
    buf.seek(0)
    restored = load_state(torch.load(buf, weights_only=True))
    x_t, t, y = torch.randn(2, 1, 8, 8), torch.tensor([5, 500]), torch.tensor([0, 3])
    with torch.no_grad():
        assert torch.equal(model(x_t, t, y), restored(x_t, t, y))


# --- classifier-free guidance ------------------------------------------------------------------------
CFG = DiffusionConfig(image_size_px=8, in_channels=1, num_classes=4, block_out_channels=(8, 16),
                      label_dropout=0.5, guidance_scale=2.0)


def test_guidance_adds_one_null_row_to_the_class_embedding():
    assert CFG.null_label == 4 and TINY.null_label is None
    assert _model(CFG).unet.class_embedding.num_embeddings == 5
    assert _model(TINY).unet.class_embedding.num_embeddings == 4


def test_guided_eps_is_the_papers_combination():
    from lifelong.models.diffusion import guided_eps

    model = _model(CFG).eval()
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([5, 500, 999]), torch.tensor([0, 2, 3])
    with torch.no_grad():
        eps_y, eps_null = model(x, t, y), model(x, t, torch.full_like(y, 4))
        got = guided_eps(model, x, t, y, CFG)
    torch.testing.assert_close(got, 3.0 * eps_y - 2.0 * eps_null, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, eps_y)  # the guidance changes the prediction
    plain = DiffusionConfig(**{**CFG.to_dict(), "guidance_scale": 0.0})
    torch.testing.assert_close(guided_eps(model, x, t, y, plain), eps_y)


def test_drop_labels_uses_the_null_label_at_rate_p_uncond():
    from lifelong.models.diffusion import drop_labels

    torch.manual_seed(0)
    y = torch.randint(0, 4, (20_000,))
    dropped = drop_labels(y, CFG)
    null = dropped == 4
    assert abs(float(null.float().mean()) - 0.5) < 0.02
    assert torch.equal(dropped[~null], y[~null])
    assert torch.equal(drop_labels(y, TINY), y)  # no guidance: labels untouched


def test_guidance_without_label_dropout_is_one_clear_error():
    with pytest.raises(ValueError, match="needs label_dropout > 0"):
        DiffusionConfig(guidance_scale=1.0)
    with pytest.raises(ValueError, match="label_dropout"):
        DiffusionConfig(label_dropout=1.0)


def test_a_checkpoint_without_guidance_keys_still_loads():
    d = save_state(_model(TINY), TINY)
    for key in ("label_dropout", "guidance_scale"):
        d["config"].pop(key)
    assert load_state(d).unet.class_embedding.num_embeddings == 4


def test_guided_ddim_sample_runs_both_halves_in_one_batch():
    calls = []
    model = _model(CFG).eval()
    model.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    ddim_sample(model, torch.tensor([0, 1, 3]), cfg=CFG, num_steps=2, generator=torch.Generator().manual_seed(0))
    assert calls == [6, 6]


def test_an_unconditional_unet_has_no_class_embedding_and_ignores_labels():
    cfg = DiffusionConfig(image_size_px=8, num_classes=4, block_out_channels=(8, 16), conditional=False)
    torch.manual_seed(0)
    net = build_unet(cfg).eval()
    assert net.unet.class_embedding is None
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 900])
    with torch.no_grad():
        assert torch.equal(net(x, t, torch.tensor([0, 1])), net(x, t, torch.tensor([3, 2])))
    assert load_state(save_state(net, cfg)).conditional is False  # the file says so
    with pytest.raises(ValueError, match="no labels to drop or guide"):
        DiffusionConfig(conditional=False, label_dropout=0.1)
    old = {k: v for k, v in cfg.to_dict().items() if k != "conditional"}  # a file from before the option
    assert DiffusionConfig.from_dict(old).conditional is True
