"""Noisy-intermediate distillation: the teacher's DDIM states are diffusers' DDIM steps, each sample stops
at its own noise level, the loss is GD's equation on those states, and it costs fewer teacher passes."""

import pytest
import torch

from lifelong.methods import IntermediateDistillation, TaskInfo
from lifelong.methods.intermediate_distillation import ddim_states
from lifelong.methods.losses import eps_mse, forward_diffuse
from lifelong.models.diffusion import DiffusionConfig, build_unet, guided_eps, make_ddim_scheduler, make_ddpm_scheduler

CFG = DiffusionConfig(image_size_px=8, in_channels=1, num_classes=6, block_out_channels=(8, 16))
GUIDED = DiffusionConfig(**{**CFG.to_dict(), "label_dropout": 0.2, "guidance_scale": 1.0})
TASK3 = TaskInfo(index=3, classes=[4, 5], seen_classes=[0, 1, 2, 3, 4, 5], previous_classes=[0, 1, 2, 3])


def _net(seed, cfg=CFG):
    torch.manual_seed(seed)
    return build_unet(cfg).eval()


def _rows(teacher):
    seen = []
    teacher.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    return seen


@pytest.mark.parametrize("cfg", [CFG, GUIDED])
def test_states_on_grid_levels_are_diffusers_ddim_steps(cfg):
    """t = T-1 is x_T itself; t = the grid's second level is one DDIM step of diffusers' scheduler; a level
    between grid points is the same step landing there (x0_pred and eps of the step from T-1)."""
    teacher = _net(1, cfg)
    y = torch.tensor([0, 1, 2, 3])
    sched = make_ddim_scheduler(cfg)
    sched.set_timesteps(2)
    hi, mid = (int(t) for t in sched.timesteps)  # 999, 499
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        eps = guided_eps(teacher, x_T, torch.full((4,), hi), y, cfg)
        step = sched.step(eps, hi, x_T, eta=0.0)
    states = ddim_states(teacher, y, torch.tensor([hi, mid, mid, hi]), cfg, 2, torch.Generator().manual_seed(7))
    assert torch.equal(states[[0, 3]], x_T[[0, 3]])
    torch.testing.assert_close(states[[1, 2]], step.prev_sample[[1, 2]], rtol=1e-5, atol=1e-5)

    t = 700  # between the grid levels: the step from 999 lands on 700
    abar = sched.alphas_cumprod
    expected = abar[t].sqrt() * step.pred_original_sample + (1 - abar[t]).sqrt() * eps
    got = ddim_states(teacher, y, torch.full((4,), t), cfg, 2, torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_each_sample_costs_only_the_steps_above_its_level():
    teacher = _net(1)
    rows = _rows(teacher)
    y = torch.tensor([0, 1, 2, 3])
    ddim_states(teacher, y, torch.tensor([999, 600, 499, 100]), CFG, 2, torch.Generator().manual_seed(0))
    assert rows == [3, 1]  # from 999: every sample below 999; from 499: the one below 499

    guided = _net(1, GUIDED)
    rows = _rows(guided)
    ddim_states(guided, y, torch.tensor([999, 600, 499, 100]), GUIDED, 2, torch.Generator().manual_seed(0))
    assert rows == [6, 2]  # guidance: conditional and null halves in one batch


def test_loss_is_gd_equation_on_the_teachers_own_states():
    torch.manual_seed(0)
    student, teacher = build_unet(CFG), _net(1)
    g = torch.Generator().manual_seed(123)
    x0, y = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1, torch.tensor([4, 5, 4, 5])
    lam, n = 0.5, TASK3.index
    method = IntermediateDistillation(CFG, weight=lam, replay_ddim_steps=2, generator_seed=11)
    method.before_task(TASK3, teacher)
    torch.manual_seed(99)
    out = method.loss(student, {"x0": x0, "y": y})

    gen = torch.Generator().manual_seed(11)  # the method's draws, in its order: y^, t, x_T
    y_hat = torch.tensor(TASK3.previous_classes)[torch.randint(4, (4,), generator=gen)]
    t = torch.randint(0, 1000, (4,), generator=gen)
    torch.manual_seed(99)
    with torch.no_grad():
        q = forward_diffuse(make_ddpm_scheduler(CFG), x0)
        l_data = eps_mse(q.eps, student(q.x_t, q.t, y))
        x_t = ddim_states(teacher, y_hat, t, CFG, 2, gen)
        l_replay = eps_mse(teacher(x_t, t, y_hat), student(x_t, t, y_hat))
    assert out["loss_data"].item() == pytest.approx(l_data.item(), rel=1e-5)
    assert out["loss_replay"].item() == pytest.approx(l_replay.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx((l_data / n + (1 - 1 / n) * lam * l_replay).item(), rel=1e-5)
