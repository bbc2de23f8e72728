import copy

import pytest
import torch

from lifelong.methods import (METHODS, GenerativeDistillation, GenerativeReplay, IntermediateDistillation, TaskInfo,
                              make_method)
from lifelong.methods.losses import eps_mse, forward_diffuse
from lifelong.methods.replay import distillation_target, replay_target, sample_replay
from lifelong.models.diffusion import DiffusionConfig, build_unet, make_ddpm_scheduler

CFG = DiffusionConfig(image_size_px=8, in_channels=1, num_classes=6, block_out_channels=(8, 16))
TASK1 = TaskInfo(index=1, classes=[0, 1], seen_classes=[0, 1], previous_classes=[])
TASK3 = TaskInfo(index=3, classes=[4, 5], seen_classes=[0, 1, 2, 3, 4, 5], previous_classes=[0, 1, 2, 3])


def _net(seed):
    torch.manual_seed(seed)
    return build_unet(CFG)


def _batch(b=4):
    g = torch.Generator().manual_seed(123)
    x0 = torch.rand(b, 1, 8, 8, generator=g) * 2 - 1
    y = torch.tensor([4, 5, 4, 5][:b])
    return x0, y


def test_registry_and_typo_error_lists_names():
    assert set(METHODS["diffusion"]) == {"finetune", "joint", "generative_replay", "generative_distillation",
                                         "intermediate_distillation", "piggyback"}
    assert set(METHODS["gan"]) == {"finetune", "joint", "standalone", "lifelong_gan", "piggyback_gan"}
    m = make_method("generative_distillation", CFG, weight=0.75)  # the config's type picks the family
    assert isinstance(m, GenerativeDistillation) and m.weight == 0.75 and m.needs_teacher
    with pytest.raises(ValueError) as err:
        make_method("generative_distilation", CFG)
    for name in METHODS["diffusion"]:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="diffusion method 'lifelong_gan'"):
        make_method("lifelong_gan", CFG)  # a GAN method cannot train a diffusion model


def test_sample_replay_draws_previous_classes_only():
    teacher = _net(1)
    x_hat, y_hat = sample_replay(teacher, [2, 3], 16, CFG, steps=2, generator=torch.Generator().manual_seed(0))
    assert x_hat.shape == (16, 1, 8, 8) and y_hat.shape == (16,)
    assert set(y_hat.tolist()) <= {2, 3}


def test_gd_target_is_teacher_eps_and_gr_target_is_true_noise():
    teacher = _net(1)
    torch.manual_seed(0)
    x_hat, y_hat = sample_replay(teacher, [0, 1], 4, CFG, steps=2, generator=torch.Generator().manual_seed(0))
    q = forward_diffuse(make_ddpm_scheduler(CFG), x_hat)
    with torch.no_grad():
        eps_teacher = teacher(q.x_t, q.t, y_hat)

    gd, gr = GenerativeDistillation(CFG), GenerativeReplay(CFG)
    for m in (gd, gr):
        m.before_task(TASK3, teacher)
    assert torch.equal(distillation_target(teacher, q, y_hat), eps_teacher)
    assert torch.equal(gd.replay_target(q, y_hat), eps_teacher)
    assert torch.equal(replay_target(q), q.eps)
    assert torch.equal(gr.replay_target(q, y_hat), q.eps)
    assert not torch.allclose(eps_teacher, q.eps)


@pytest.mark.parametrize("cls, uses_teacher_eps", [(GenerativeDistillation, True), (GenerativeReplay, False)])
def test_replay_loss_matches_the_equation(cls, uses_teacher_eps):
    """loss = (1/n) L_data + (1 - 1/n) lambda L_replay, recomputed by hand from the same seeds."""
    student, teacher = _net(0), _net(1)
    x0, y = _batch()
    lam, n = 0.5, TASK3.index
    method = cls(CFG, weight=lam, replay_ddim_steps=2, generator_seed=11)
    method.before_task(TASK3, teacher)
    torch.manual_seed(99)
    out = method.loss(student, {"x0": x0, "y": y})

    sched = make_ddpm_scheduler(CFG)
    torch.manual_seed(99)
    with torch.no_grad():
        q = forward_diffuse(sched, x0)
        l_data = eps_mse(q.eps, student(q.x_t, q.t, y))
        x_hat, y_hat = sample_replay(teacher, TASK3.previous_classes, 4, CFG, 2, torch.Generator().manual_seed(11))
        qr = forward_diffuse(sched, x_hat)
        target = teacher(qr.x_t, qr.t, y_hat) if uses_teacher_eps else qr.eps
        l_replay = eps_mse(target, student(qr.x_t, qr.t, y_hat))
    assert out["loss_data"].item() == pytest.approx(l_data.item(), rel=1e-5)
    assert out["loss_replay"].item() == pytest.approx(l_replay.item(), rel=1e-5)
    expected = l_data / n + (1 - 1 / n) * lam * l_replay
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_gd_with_teacher_equal_to_student_leaves_only_the_data_term():
    student = _net(0)
    teacher = copy.deepcopy(student)
    x0, y = _batch()
    method = GenerativeDistillation(CFG, weight=2.0)
    method.before_task(TASK3, teacher)
    out = method.loss(student, {"x0": x0, "y": y})
    assert out["loss_replay"].item() == 0.0
    assert out["loss"].item() == pytest.approx(out["loss_data"].item() / TASK3.index, rel=1e-6)


@pytest.mark.parametrize("name", list(METHODS["diffusion"]))
def test_task_one_is_the_plain_data_loss_without_teacher(name):
    student = _net(0)
    x0, y = _batch()
    method = make_method(name, CFG)
    method.before_task(TASK1, None)
    torch.manual_seed(5)
    out = method.loss(student, {"x0": x0, "y": y})
    torch.manual_seed(5)
    with torch.no_grad():
        q = forward_diffuse(make_ddpm_scheduler(CFG), x0)
        l_data = eps_mse(q.eps, student(q.x_t, q.t, y))
    assert "loss_replay" not in out
    assert out["loss"].item() == pytest.approx(l_data.item(), rel=1e-6)
    assert out["loss"].requires_grad


@pytest.mark.parametrize("cls", [GenerativeDistillation, GenerativeReplay, IntermediateDistillation])
def test_replay_methods_refuse_a_missing_teacher(cls):
    with pytest.raises(ValueError, match="teacher"):
        cls(CFG).before_task(TASK3, None)


@pytest.mark.parametrize("cls", [GenerativeDistillation, GenerativeReplay, IntermediateDistillation])
def test_gradients_reach_the_student_only_and_batch_is_untouched(cls):
    student, teacher = _net(0), _net(1)
    x0, y = _batch()
    x0_before, y_before = x0.clone(), y.clone()
    method = cls(CFG)
    method.before_task(TASK3, teacher)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    out = method.loss(student, {"x0": x0, "y": y})
    out["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert not out["loss_data"].requires_grad and not out["loss_replay"].requires_grad
    assert torch.equal(x0, x0_before) and torch.equal(y, y_before)
    assert method.after_task() == {} and method.teacher is None


def test_gd_with_guidance_drops_replay_labels_in_target_and_student_alike():
    """With classifier-free guidance, L_data and L_replay see the null label at rate p_uncond, and the
    teacher's target uses the same (dropped) labels as the student, so its unconditional eps is kept too."""
    from lifelong.models.diffusion import drop_labels

    cfg = DiffusionConfig(**{**CFG.to_dict(), "label_dropout": 0.5, "guidance_scale": 1.0})
    torch.manual_seed(0)
    student = build_unet(cfg)
    torch.manual_seed(1)
    teacher = build_unet(cfg)
    x0, y = _batch()
    method = GenerativeDistillation(cfg, weight=1.0, replay_ddim_steps=2, generator_seed=11)
    method.before_task(TASK3, teacher)
    torch.manual_seed(99)
    out = method.loss(student, {"x0": x0, "y": y})

    sched = make_ddpm_scheduler(cfg)
    torch.manual_seed(99)
    with torch.no_grad():
        q = forward_diffuse(sched, x0)
        y_in = drop_labels(y, cfg)
        l_data = eps_mse(q.eps, student(q.x_t, q.t, y_in))
        x_hat, y_hat = sample_replay(teacher, TASK3.previous_classes, 4, cfg, 2, torch.Generator().manual_seed(11))
        qr = forward_diffuse(sched, x_hat)
        y_hat = drop_labels(y_hat, cfg)
        l_replay = eps_mse(teacher(qr.x_t, qr.t, y_hat), student(qr.x_t, qr.t, y_hat))
    assert out["loss_data"].item() == pytest.approx(l_data.item(), rel=1e-5)
    assert out["loss_replay"].item() == pytest.approx(l_replay.item(), rel=1e-5)
    assert bool((y_in == cfg.null_label).any() or (y_hat == cfg.null_label).any())  # this seed drops some labels
