import io
import math

import pytest
import torch
from torch import nn

from lifelong.models.piggyback import (
    PiggybackConv2d,
    PiggybackConvTranspose2d,
    TaskSpecific,
    add_task,
    is_piggyback,
    num_tasks,
    piggyback_,
    rebuild,
    set_task,
    task_parameter_count,
    task_parameters,
    total_parameter_count,
)


def _generator() -> nn.Module:
    # z: (B, 8) -> (B, 16*4*4) -> (B, 16, 4, 4) -> (B, 8, 8, 8) -> (B, 3, 8, 8)
    return nn.Sequential(
        nn.Linear(8, 16 * 4 * 4),
        nn.Unflatten(1, (16, 4, 4)),
        nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1),
        nn.GroupNorm(4, 8),
        nn.ReLU(),
        nn.Conv2d(8, 3, 3, padding=1),
        nn.Tanh(),
    )


def _train(model: nn.Module, z: torch.Tensor, steps: int = 5) -> None:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    target = torch.rand(z.shape[0], 3, 8, 8) * 2 - 1
    for _ in range(steps):
        loss = (model(z) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize(
    "conv, filters",
    [
        (nn.Conv2d(3, 8, 3, padding=1), lambda w: w),  # weight (out, in, k, k): filter j = w[j]
        (nn.ConvTranspose2d(3, 8, 4, stride=2, padding=1), lambda w: w.transpose(0, 1)),  # w[:, j]
    ],
)
def test_one_hot_mixing_column_copies_that_bank_filter(conv, filters):
    torch.manual_seed(0)
    layer = PiggybackConv2d(conv, 0.25) if isinstance(conv, nn.Conv2d) else PiggybackConvTranspose2d(conv, 0.25)
    layer.add_task()
    layer.add_task()  # task 3: bank = U_1 (8 filters) + U_2 (m = 2 filters)
    n, m = layer.n, layer.m
    assert (n, m) == (8, 2) and layer.mix[1].shape == (n + m, n - m)
    w1, w2 = filters(layer.weight_for(1)), filters(layer.weight_for(2))
    with torch.no_grad():
        layer.mix[1][:, 0] = 0.0
        layer.mix[1][5, 0] = 1.0  # piggyback filter 0 <- bank filter 5 = U_1[5]
        layer.mix[1][:, 3] = 0.0
        layer.mix[1][n + 1, 3] = 1.0  # piggyback filter 3 <- bank filter n+1 = U_2[1]
    w3 = filters(layer.weight_for(3))
    assert torch.equal(w1, filters(conv.weight))  # task 1 is the wrapped layer
    assert torch.equal(w3[m + 0], w1[5])
    assert torch.equal(w3[m + 3], w2[1])
    assert torch.equal(w3[:m], layer.free[2])  # the free filters come first


def test_old_tasks_bit_identical_after_training_and_reload():
    torch.manual_seed(0)
    model = piggyback_(_generator(), 0.25)
    assert is_piggyback(model) and num_tasks(model) == 1
    assert isinstance(model[0], TaskSpecific) and isinstance(model[3], TaskSpecific)
    z = torch.randn(4, 8)
    _train(model, z)
    out1 = model(z).detach().clone()

    add_task(model)
    assert model[2].active_task == 2
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in task_parameters(model, 2)}
    before = model(z).detach().clone()
    _train(model, z)
    assert not torch.equal(model(z), before)  # task 2 learned something
    add_task(model)
    _train(model, z)

    set_task(model, 1)
    assert torch.equal(model(z), out1)

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    loaded = rebuild(_generator, 0.25, tasks=3)
    assert list(loaded.state_dict()) == list(model.state_dict())
    loaded.load_state_dict(torch.load(buf, weights_only=True))
    for t in (1, 2, 3):
        set_task(model, t)
        set_task(loaded, t)
        assert torch.equal(loaded(z), model(z))
    set_task(loaded, 1)
    assert torch.equal(loaded(z), out1)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 1.0])
def test_parameter_counts_match_formula(ratio):
    model = piggyback_(nn.Sequential(nn.Conv2d(3, 10, 3), nn.ConvTranspose2d(10, 6, 4, bias=False)), ratio)
    # standalone: 10*3*9 + 10 and 10*6*16 (the transpose's filters are (in, k, k) = (10, 4, 4))
    standalone = [(10, 3 * 9, 10), (6, 10 * 16, 0)]  # (n, c*k*k, bias)
    assert task_parameter_count(model, 1) == sum(n * ckk + b for n, ckk, b in standalone)
    add_task(model)
    add_task(model)
    for t in (2, 3):
        expected = 0
        for n, ckk, b in standalone:
            m = math.ceil(ratio * n)
            bank = n + (t - 2) * m
            expected += m * ckk + bank * (n - m) + b
        assert task_parameter_count(model, t) == expected
    assert total_parameter_count(model) == sum(p.numel() for p in model.parameters())
    if ratio == 1.0:  # no piggyback filters: every task is a standalone layer
        assert model[0].m == model[0].n and model[0].mix[0].numel() == 0
        assert task_parameter_count(model, 3) == task_parameter_count(model, 1)


def test_ceil_ratio_is_robust_to_float_error():
    assert PiggybackConv2d(nn.Conv2d(1, 10, 1), 0.3).m == 3  # 0.3 * 10 = 3.0000000000000004


def test_weight_assembly_ignores_autocast():
    torch.manual_seed(0)
    model = piggyback_(_generator(), 0.25)
    add_task(model)
    z = torch.randn(2, 8)
    w = model[5].weight_for(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model[5].weight_for(2), w)
        out = model(z)
    assert out.shape == (2, 3, 8, 8) and torch.isfinite(out).all()


def test_reflect_padding_matches_wrapped_conv():
    conv = nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect")
    x = torch.randn(1, 2, 5, 5)
    assert torch.equal(PiggybackConv2d(conv, 0.5)(x), conv(x))


def test_errors():
    with pytest.raises(ValueError, match="GroupNorm or InstanceNorm"):
        piggyback_(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), 0.25)
    with pytest.raises(ValueError, match="groups=2"):
        PiggybackConv2d(nn.Conv2d(4, 4, 3, groups=2), 0.25)
    with pytest.raises(ValueError, match="groups=2"):
        piggyback_(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), 0.25)
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\]"):
            piggyback_(_generator(), bad)
    model = piggyback_(_generator(), 0.25)
    add_task(model)
    for t in (0, 3):
        with pytest.raises(ValueError, match=r"valid tasks are 1\.\.2"):
            set_task(model, t)
    with pytest.raises(ValueError, match="already piggyback"):
        piggyback_(model, 0.25)
    with pytest.raises(ValueError, match="not a piggyback model"):
        num_tasks(_generator())


@pytest.mark.parametrize("which", ["label_gan", "image_gan", "diffusion_unet"])
def test_every_generator_of_the_project_keeps_its_old_task(which):
    # The piggyback form of each generator lifelong trains: the two GAN generators and, beyond the
    # paper, the diffusion UNet. Task 1 must survive a trained task 2 bit for bit.
    from lifelong.models.diffusion import DiffusionConfig, build_unet
    from lifelong.models.gan import GANConfig, build_gan

    torch.manual_seed(0)
    if which == "diffusion_unet":
        model = build_unet(DiffusionConfig(image_size_px=8, num_classes=4, block_out_channels=(8, 16)))
        inputs = (torch.randn(3, 1, 8, 8), torch.tensor([1, 500, 999]), torch.tensor([0, 1, 3]))
    else:
        cond = "label" if which == "label_gan" else "image"
        model = build_gan(GANConfig(condition=cond, image_size_px=8, num_classes=4, z_dim=4, width=8))["G"]
        z = torch.randn(3, 4)
        inputs = (z, torch.tensor([0, 1, 3])) if cond == "label" else (torch.rand(3, 1, 8, 8) * 2 - 1, z)
    with torch.no_grad():
        plain = model(*inputs)
    piggyback_(model, 0.25)
    with torch.no_grad():
        task1 = model(*inputs)
    assert torch.equal(task1, plain)  # wrapping changes nothing
    add_task(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = model(*inputs).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert not torch.equal(model(*inputs), task1)
        set_task(model, 1)
        assert torch.equal(model(*inputs), task1)
    assert task_parameter_count(model, 2) < task_parameter_count(model, 1)


def _convs(model: nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, (PiggybackConv2d, PiggybackConvTranspose2d))]


def _project_generator(which: str):
    """(generator, its inputs) of the two GAN generators the project trains, tiny."""
    from lifelong.models.gan import GANConfig, build_gan

    cond = "label" if which == "label_gan" else "image"
    model = build_gan(GANConfig(condition=cond, image_size_px=8, num_classes=4, z_dim=4, width=8))["G"]
    z = torch.randn(3, 4)
    inputs = (z, torch.tensor([0, 1, 3])) if cond == "label" else (torch.rand(3, 1, 8, 8) * 2 - 1, z)
    return model, inputs


def _fit(model: nn.Module, inputs, target: torch.Tensor, steps: int = 3) -> None:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        loss = (model(*inputs) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("ratio", [0.25, 1.0])
@pytest.mark.parametrize("which", ["label_gan", "image_gan"])
def test_warm_start_begins_each_task_at_the_previous_tasks_weights(which, ratio):
    """After add_task, every piggyback layer's W_t equals W_{t-1} (and b_t = b_{t-1}, per-task layers
    are copies), so the new task computes the previous task's function; then only task t's U_t, M_t,
    b_t and copies get gradients, and tasks 1..t-1 stay bit-identical after it trains.

    The parametrisation allows exactness (see piggyback.py's docstring): U_t must be W_{t-1}'s first
    m filters and the other n - m are in the bank's span. t = 2 is bit-exact (one-hot M_2); t >= 3
    keeps M_{t-1} with zero rows for U_{t-1}, equal up to the matmul's float summation order, hence
    allclose. Checked for t = 2 and t = 3, after the previous task trained (not at its init).
    """
    torch.manual_seed(0)
    model, inputs = _project_generator(which)
    piggyback_(model, ratio)
    target = torch.rand(3, 1, 8, 8) * 2 - 1
    _fit(model, inputs, target)  # task 1 trained
    with torch.no_grad():
        outputs = {1: model(*inputs)}
    for t in (2, 3):
        add_task(model, warm_start=True)
        for layer in _convs(model):
            if t == 2:
                assert torch.equal(layer.weight_for(2), layer.weight_for(1))
            else:
                assert torch.allclose(layer.weight_for(t), layer.weight_for(t - 1), rtol=1e-5, atol=1e-7)
            if len(layer.biases):
                assert torch.equal(layer.bias_for(t), layer.bias_for(t - 1))
            # copies, not views of the frozen task's tensors
            assert layer.free[t - 1].data_ptr() != layer.free[t - 2].data_ptr()
        for layer in (m for m in model.modules() if isinstance(m, TaskSpecific)):
            for new, old in zip(layer.task_parameters(t), layer.task_parameters(t - 1)):
                assert torch.equal(new, old) and new.data_ptr() != old.data_ptr()
        with torch.no_grad():
            assert torch.allclose(model(*inputs), outputs[t - 1], rtol=1e-5, atol=1e-6)

        # the new task trains: its parameters, and only they, get gradients
        model.zero_grad(set_to_none=True)  # task t-1's training left its own
        model(*inputs).sub(target).square().mean().backward()
        own = {id(p) for p in task_parameters(model, t)}
        for p in model.parameters():
            assert p.requires_grad == (id(p) in own)
            assert (p.grad is not None) == (id(p) in own)
        for layer in _convs(model):
            assert layer.free[t - 1].grad.abs().sum() > 0
            if layer.n > layer.m:  # ratio 1.0: M_t is empty
                assert layer.mix[t - 2].grad.abs().sum() > 0
        model.zero_grad(set_to_none=True)
        _fit(model, inputs, target)
        with torch.no_grad():
            outputs[t] = model(*inputs)
            assert not torch.equal(outputs[t], outputs[t - 1])  # and it moved away from task t-1

    with torch.no_grad():  # old tasks are bit-identical after warm-started tasks trained
        for t, out in outputs.items():
            set_task(model, t)
            assert torch.equal(model(*inputs), out)


def test_cold_start_draws_fresh_filters_in_the_old_order():
    # warm_start=False is the behaviour from before the warm start, draw for draw: a fresh layer's
    # kaiming weight (first m filters), then M_t ~ N(0, 1/|F_t|), then the bias
    layer = PiggybackConv2d(nn.Conv2d(8, 4, 3), 0.25)
    torch.manual_seed(1)
    layer.add_task(warm_start=False)
    torch.manual_seed(1)
    weight = torch.empty(4, 8, 3, 3)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    mix = torch.randn(4, 3) / math.sqrt(4)
    bias = torch.empty(4).uniform_(-1 / math.sqrt(8 * 9), 1 / math.sqrt(8 * 9))
    assert torch.equal(layer.free[1], weight[:1]) and torch.equal(layer.mix[0], mix)
    assert torch.equal(layer.biases[1], bias)
    assert not torch.allclose(layer.weight_for(2), layer.weight_for(1))


def test_for_task_converts_at_task_one_adds_later_and_refuses_a_plain_later_model():
    from lifelong.models.piggyback import active_task, for_task

    torch.manual_seed(0)
    model = _generator()
    assert for_task(model, 1, 0.5, warm_start=True, method="m") == 1
    assert for_task(model, 2, 0.5, warm_start=True, method="m") == 2 and active_task(model) == 2
    with pytest.raises(ValueError, match="m task 3: the previous network has no filter bank.*m's own task 2"):
        for_task(_generator(), 3, 0.5, warm_start=True, method="m")
