import copy

import pytest
import torch

from lifelong.methods import make_method
from lifelong.methods.base import TaskInfo
from lifelong.methods.gan import (
    GANFineTune,
    GANMethod,
    GANStandalone,
    gan_loss_d,
    gan_loss_g,
    kl_to_standard_normal,
    mode_seeking_loss,
)
from lifelong.methods.lifelong_gan import LifelongGAN
from lifelong.models import piggyback
from lifelong.models.gan import GANConfig, build_gan

TASK1 = TaskInfo(index=1, classes=[0, 1], seen_classes=[0, 1], previous_classes=[])
TASK2 = TaskInfo(index=2, classes=[2, 3], seen_classes=[0, 1, 2, 3], previous_classes=[0, 1])
CONDITIONS = ["label", "image"]


def _cfg(condition):
    return GANConfig(condition=condition, image_size_px=8, in_channels=1, num_classes=4, z_dim=4, width=8)


def _nets(condition, seed=0):
    torch.manual_seed(seed)
    return build_gan(_cfg(condition))


def _batch(b=4):
    g = torch.Generator().manual_seed(123)
    x = torch.rand(b, 1, 8, 8, generator=g) * 2 - 1
    a = torch.rand(b, 1, 8, 8, generator=g) * 2 - 1
    return {"x": x, "y": torch.tensor([2, 3, 2, 3][:b]), "a": a}


def _params(nets, names):
    return [p for n in names if n in nets for p in nets[n].parameters() if p.requires_grad]


# --- losses ----------------------------------------------------------------------------------
def test_gan_losses_on_hand_made_logits():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([0.0, -2.0])
    # lsgan: mean((real-1)^2) + mean(fake^2) = (0 + 4)/2 + (0 + 4)/2
    assert gan_loss_d(real, fake, "lsgan").item() == pytest.approx(4.0)
    assert gan_loss_g(fake, "lsgan").item() == pytest.approx((1 + 9) / 2)
    # hinge: mean(relu(1 - real)) + mean(relu(1 + fake)) = (0 + 0)/2 + (1 + 0)/2
    assert gan_loss_d(real, fake, "hinge").item() == pytest.approx(0.5)
    assert gan_loss_g(fake, "hinge").item() == pytest.approx(1.0)
    assert gan_loss_d(torch.ones(3), torch.zeros(3), "lsgan").item() == 0.0
    with pytest.raises(ValueError, match="lsgan"):
        gan_loss_g(fake, "wgan")


def test_mode_seeking_loss_is_small_for_spread_and_large_for_collapsed_generators():
    z1, z2 = torch.zeros(2, 4), torch.ones(2, 4)  # mean |z1 - z2| = 1
    spread, collapsed = torch.full((2, 1, 2, 2), 0.5), torch.zeros(2, 1, 2, 2)
    assert mode_seeking_loss(spread, collapsed, z1, z2).item() == pytest.approx(1 / (0.5 + 1e-5))
    assert mode_seeking_loss(collapsed, collapsed, z1, z2).item() == pytest.approx(1e5)


def test_mode_seeking_adds_lambda_times_its_term_to_the_label_generator_loss():
    cfg = GANConfig(**{**_cfg("label").to_dict(), "mode_seeking": 0.5})
    torch.manual_seed(0)
    nets = build_gan(cfg)
    method = GANFineTune(cfg)
    method.before_task(TASK2, None)
    torch.manual_seed(7)
    out = method.loss(nets, _batch())
    torch.manual_seed(7)  # the same draws by hand: z, then z2
    z = torch.randn(4, cfg.z_dim)
    z2 = torch.randn_like(z)
    y = _batch()["y"]
    with torch.no_grad():
        fake, fake2 = nets["G"](z, y), nets["G"](z2, y)
        expected_ms = mode_seeking_loss(fake, fake2, z, z2)
        expected = gan_loss_g(nets["D"](fake, y), "lsgan") + 0.5 * expected_ms
    assert out["loss_ms"].item() == pytest.approx(expected_ms.item(), rel=1e-5)
    assert out["loss_g"].item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="mode_seeking"):
        GANConfig(condition="label", mode_seeking=-1.0)


def test_kl_to_standard_normal():
    assert kl_to_standard_normal(torch.zeros(3, 4), torch.zeros(3, 4)).item() == 0.0
    # one dim with mu = 1, logvar = 0: KL = 1/2
    mu = torch.zeros(2, 4)
    mu[:, 0] = 1.0
    assert kl_to_standard_normal(mu, torch.zeros(2, 4)).item() == pytest.approx(0.5)
    assert kl_to_standard_normal(torch.zeros(1, 2), torch.full((1, 2), 1.0)).item() > 0


# --- gradient routing ------------------------------------------------------------------------
@pytest.mark.parametrize("condition", CONDITIONS)
def test_loss_d_has_no_grad_path_into_generator_side(condition):
    nets = _nets(condition)
    method = GANFineTune(_cfg(condition))
    method.before_task(TASK1, None)
    torch.manual_seed(0)
    out = method.loss(nets, _batch())
    torch.autograd.backward(out["loss_d"], inputs=_params(nets, nets.discriminator_side))
    assert all(p.grad is not None for p in _params(nets, nets.discriminator_side))
    assert all(p.grad is None for p in _params(nets, nets.generator_side))
    # and loss_d cannot reach G at all: asking for its gradient fails
    with pytest.raises(RuntimeError):
        torch.autograd.grad(method.loss(nets, _batch())["loss_d"], _params(nets, ["G"]))


@pytest.mark.parametrize("condition", CONDITIONS)
def test_loss_keys_and_named_parts_are_detached(condition):
    method = GANFineTune(_cfg(condition))
    method.before_task(TASK1, None)
    out = method.loss(_nets(condition), _batch())
    assert {"loss_g", "loss_d"} <= set(out)
    assert ("loss_g_alone" in out) == (condition == "image")
    for k, v in out.items():
        assert v.ndim == 0 and torch.isfinite(v)
        assert v.requires_grad == (k in GANMethod.LOSS_TARGETS)


def test_latent_regression_trains_g_only():
    nets = _nets("image")
    method = GANFineTune(_cfg("image"))
    method.before_task(TASK1, None)
    out = method.loss(nets, _batch())
    torch.autograd.backward(out["loss_g_alone"], inputs=_params(nets, ("G",)))
    assert all(p.grad is None for p in _params(nets, ("E", "D", "D2")))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in nets["G"].parameters())


def test_method_flags():
    assert LifelongGAN.needs_teacher and not GANStandalone.needs_teacher
    with pytest.raises(ValueError, match="teacher"):
        LifelongGAN(_cfg("label")).before_task(TASK2, None)
    with pytest.raises(ValueError, match="auxiliary"):
        LifelongGAN(_cfg("image"), auxiliary="mixup")


def test_standalone_prepare_returns_fresh_weights():
    nets = _nets("image", seed=0)
    method = GANStandalone(_cfg("image"), generator_seed=0)
    fresh = method.prepare(nets, TASK2)
    assert fresh is not nets and fresh.cfg == nets.cfg
    for k, v in nets.state_dict().items():
        if v.ndim >= 2:  # conv and linear weights (norm affines start at 1 and 0)
            assert not torch.equal(v, fresh.state_dict()[k]), k
    again = method.prepare(nets, TASK2)  # seeded: same task, same weights; global RNG untouched
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in fresh.state_dict().items())


# --- Lifelong GAN --------------------------------------------------------------------------
@pytest.mark.parametrize("condition", CONDITIONS)
def test_distillation_is_zero_for_a_copy_and_positive_after_perturbing(condition):
    nets = _nets(condition)
    teacher = copy.deepcopy(nets)
    method = LifelongGAN(_cfg(condition), beta=0.5)
    method.before_task(TASK2, teacher)
    out = method.loss(nets, _batch())
    assert out["loss_distill"].item() == 0.0
    with torch.no_grad():
        for p in nets["G"].parameters():
            p.add_(0.01 * torch.randn_like(p))
    assert method.loss(nets, _batch())["loss_distill"].item() > 0


@pytest.mark.parametrize("condition", CONDITIONS)
def test_beta_zero_matches_finetune_and_task1_has_no_distillation(condition):
    nets, teacher = _nets(condition, seed=0), _nets(condition, seed=1)
    ft, lg = GANFineTune(_cfg(condition)), LifelongGAN(_cfg(condition), beta=0.0)
    ft.before_task(TASK2, None)
    lg.before_task(TASK2, teacher)
    torch.manual_seed(4)
    expected = ft.loss(nets, _batch())
    torch.manual_seed(4)
    got = lg.loss(nets, _batch())
    assert got["loss_distill"] > 0
    assert torch.equal(got["loss_g"], expected["loss_g"]) and torch.equal(got["loss_d"], expected["loss_d"])

    lg1 = LifelongGAN(_cfg(condition), beta=1.0)
    lg1.before_task(TASK1, None)
    torch.manual_seed(4)
    out1 = lg1.loss(nets, _batch())
    assert "loss_distill" not in out1 and torch.equal(out1["loss_g"], expected["loss_g"])


def test_label_distillation_uses_previous_classes_only(monkeypatch):
    nets, teacher = _nets("label", 0), _nets("label", 1)
    method = LifelongGAN(_cfg("label"))
    method.before_task(TASK2, teacher)
    seen = []
    forward = type(nets["G"]).forward

    def spy(self, z, y):
        seen.append(y.clone())
        return forward(self, z, y)

    monkeypatch.setattr(type(nets["G"]), "forward", spy)
    method.loss(nets, _batch())
    # calls: the GAN's G(z, y) on the current labels, then teacher and student on old labels
    assert set(seen[0].tolist()) <= {2, 3}
    assert all(set(y.tolist()) <= set(TASK2.previous_classes) for y in seen[1:]) and len(seen) == 3
    assert torch.equal(seen[1], seen[2])


# --- Piggyback GAN ---------------------------------------------------------------------------
@pytest.mark.parametrize("condition", CONDITIONS)
@pytest.mark.parametrize("warm_start", [True, False])
def test_piggyback_task2_starts_from_task1_generator_when_warm(condition, warm_start):
    nets = _nets(condition)
    method = make_method("piggyback_gan", _cfg(condition), filter_ratio=0.25, warm_start=warm_start)
    nets = method.prepare(nets, TASK1)
    g = torch.Generator().manual_seed(0)
    cond = {"y": torch.tensor([0, 1, 0, 1])} if condition == "label" else {"a": _batch()["a"]}
    z = torch.randn(4, 4, generator=g)
    task1 = nets.sample(z=z, **cond)
    nets = method.prepare(nets, TASK2)
    assert piggyback.active_task(nets["G"]) == 2 and nets.cfg.piggyback_tasks == 2
    task2 = nets.sample(z=z, **cond)
    assert torch.allclose(task2, task1, atol=1e-6) == warm_start  # cold: random new filters
    piggyback.set_task(nets["G"], 1)
    assert torch.equal(nets.sample(z=z, **cond), task1)
