"""The learners as the worker loop drives them, in a plain process (no Ray): build from a
TaskTrainConfig, step, export task 1's model file, continue from it on task 2."""

import pytest
import torch

from lifelong.learners import DiffusionLearner, GANLearner
from lifelong.methods import METHODS
from lifelong.models import load_model, piggyback
from lifelong.models.diffusion import ConditionalUNet, DiffusionConfig
from lifelong.models.gan import GANConfig
from lifelong.training import TaskTrainConfig

CPU = torch.device("cpu")
NO_AUTOCAST = torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=False)  # as the loop on CPU
DIFFUSION = DiffusionConfig(image_size_px=8, in_channels=1, num_classes=4, block_out_channels=(8, 16))
OPTIONS = {  # each method's params.yaml section, as the pipeline passes it
    ("diffusion", "generative_replay"): {"weight": 0.5, "replay_ddim_steps": 1},
    ("diffusion", "generative_distillation"): {"weight": 0.5, "replay_ddim_steps": 1},
    ("diffusion", "intermediate_distillation"): {"weight": 0.5, "replay_ddim_steps": 2},
    ("diffusion", "piggyback"): {"filter_ratio": 0.5},
    ("gan", "lifelong_gan"): {"beta": 0.5, "auxiliary": "both"},
    ("gan", "piggyback_gan"): {"filter_ratio": 0.5},
}


def _gan(condition):
    return GANConfig(condition=condition, image_size_px=8, in_channels=1, num_classes=4, z_dim=4, width=8)


def _config(tmp_path, family, method, model_cfg, task_index, init_state=None, **kw):
    return TaskTrainConfig(
        method=method,
        model_config=model_cfg.to_dict(),
        task_index=task_index,
        task_classes=[0, 1] if task_index == 1 else [2, 3],
        previous_classes=[] if task_index == 1 else [0, 1],
        shards=[],
        checkpoint_dir=str(tmp_path),
        init_state=init_state,
        lr=1e-3,
        family=family,
        options=OPTIONS.get((family, method), {}),
        **kw,
    )


def _learner(cfg):
    return {"diffusion": DiffusionLearner, "gan": GANLearner}[cfg.family](cfg, cfg.task_info(), CPU, rank=0)


def _batch(cfg, seed):
    """What the data loader yields: (x, label), or (A, B, label) for image-conditioned shards."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(4, 1, 8, 8, generator=g) * 2 - 1 for _ in range(2 if cfg.paired else 1)]
    return (*images, torch.tensor(cfg.task_classes * 2))


def _train(learner, cfg, steps=2):
    torch.manual_seed(0)
    history = [learner.step(_batch(cfg, seed), NO_AUTOCAST) for seed in range(steps)]
    assert all(torch.isfinite(v).item() for parts in history for v in parts.values())
    return history


def _export(learner, path):
    torch.save(learner.export(), path)  # what the worker writes as final.pt
    return str(path)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module, prefix=""):
    return any(not torch.equal(v, module.state_dict()[k]) for k, v in before.items() if k.startswith(prefix))


def _assert_same(state, module):
    assert state.keys() == module.state_dict().keys()
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("method", list(METHODS["diffusion"]))
def test_diffusion_learner_trains_two_tasks(tmp_path, method):
    cfg1 = _config(tmp_path, "diffusion", method, DIFFUSION, 1)
    first = _learner(cfg1)
    assert type(first.model) is ConditionalUNet  # outside Ray: not DDP-wrapped
    before = _snapshot(first.model)
    _train(first, cfg1)
    assert _changed(before, first.model)
    task1 = _export(first, tmp_path / "task1.pt")

    cfg2 = _config(tmp_path, "diffusion", method, DIFFUSION, 2, init_state=task1)
    second = _learner(cfg2)
    teacher_file = load_model(torch.load(task1, weights_only=True))
    if method == "piggyback":  # task 2 starts as task 1's network, in the filter bank's form
        assert piggyback.num_tasks(second.model) == 2
        assert not any(p.requires_grad for p in piggyback.task_parameters(second.model, 1))
    else:
        _assert_same(teacher_file.state_dict(), second.model)  # task 2 starts from task 1's weights
    history = _train(second, cfg2)
    replays = second.method.needs_teacher
    assert ("loss_replay" in history[-1]) == replays
    # the teacher's forward passes per step, counted: S DDIM steps (+ 1 target pass for GD); the
    # intermediate states cost fewer than GD's S + 1 (here S = 2: between 1 and 3); no teacher: 0
    passes = history[-1]["teacher_passes"].item()
    if method == "intermediate_distillation":
        assert 1.0 <= passes < 3.0
    else:
        assert passes == {"generative_replay": 1.0, "generative_distillation": 2.0}.get(method, 0.0)
    if replays:  # the teacher is task 1's model, frozen, and stays so
        teacher = second.method.teacher
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
        _assert_same(teacher_file.state_dict(), teacher)

    task2_file = _export(second, tmp_path / "task2.pt")
    task2 = load_model(torch.load(task2_file, weights_only=True))
    _assert_same(second.model.state_dict(), task2)  # the next task's stage starts from exactly this network
    if method == "piggyback":  # task 1, switched back to in task 2's file, is bit-identical to task 1's file
        x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([10, 500, 900, 999]), torch.tensor([0, 1, 0, 1])
        with torch.no_grad():
            task2_eps = task2.eval()(x, t, y)
            piggyback.set_task(task2, 1)
            assert torch.equal(task2(x, t, y), teacher_file.eval()(x, t, y))
            assert not torch.equal(task2(x, t, y), task2_eps)  # task 2 did learn something of its own
    else:
        assert _changed(teacher_file.state_dict(), task2)


@pytest.mark.parametrize("condition", ["label", "image"])
@pytest.mark.parametrize("method", list(METHODS["gan"]))
def test_gan_learner_trains_two_tasks(tmp_path, condition, method):
    paired = condition == "image"
    cfg1 = _config(tmp_path, "gan", method, _gan(condition), 1, paired=paired)
    first = _learner(cfg1)
    before = _snapshot(first.nets)
    _train(first, cfg1)
    for name in first.nets:  # every net (G, D; image: E and D2 too) has an optimizer and moved
        assert name in first.optimizers and _changed(before, first.nets, prefix=f"{name}."), name
    task1 = _export(first, tmp_path / "task1.pt")

    cfg2 = _config(tmp_path, "gan", method, _gan(condition), 2, init_state=task1, paired=paired)
    second = _learner(cfg2)
    before = _snapshot(second.nets)
    history = _train(second, cfg2)
    assert {"loss_g", "loss_d"} <= set(history[-1])
    assert all(_changed(before, second.nets, prefix=f"{name}.") for name in second.optimizers)
    old = load_model(torch.load(task1, weights_only=True))

    if method == "lifelong_gan":
        assert history[-1]["loss_distill"] > 0
        teacher = second.method.teacher
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
        _assert_same(old.state_dict(), teacher)
    if method == "piggyback_gan":  # task 1's generator, switched back to, is bit-identical to its file
        G = second.nets["G"].eval()
        assert piggyback.num_tasks(G) == 2 and piggyback.active_task(G) == 2
        z = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))
        first_input = torch.tensor([0, 1, 0, 1]) if condition == "label" else _batch(cfg2, 7)[0]
        args = (z, first_input) if condition == "label" else (first_input, z)
        with torch.no_grad():
            task2_output = G(*args)
            piggyback.set_task(G, 1)
            assert torch.equal(G(*args), old["G"].eval()(*args))
            assert not torch.equal(G(*args), task2_output)  # the two tasks' generators do differ
        piggyback.set_task(G, 2)

    task2 = load_model(torch.load(_export(second, tmp_path / "task2.pt"), weights_only=True))
    _assert_same(task2.state_dict(), second.nets)  # the next task's stage starts from exactly these nets
    assert second.method.teacher is None  # released by after_task


@pytest.mark.parametrize("family, model_cfg", [("diffusion", DIFFUSION), ("gan", _gan("label"))])
def test_a_learner_resumed_from_its_checkpoint_takes_the_same_step(tmp_path, family, model_cfg):
    cfg = _config(tmp_path, family, "finetune", model_cfg, 1)
    running = _learner(cfg)
    _train(running, cfg, steps=1)
    torch.save(running.state_dict(), tmp_path / "step.pt")  # as the loop writes step-*.pt
    resumed = _learner(cfg)
    resumed.load_state_dict(torch.load(tmp_path / "step.pt", weights_only=True))
    for learner in (running, resumed):
        torch.manual_seed(3)
        learner.step(_batch(cfg, 5), NO_AUTOCAST)
    net = "model" if family == "diffusion" else "nets"
    _assert_same(getattr(running, net).state_dict(), getattr(resumed, net))


def test_a_learner_rejects_an_option_its_method_does_not_have(tmp_path):
    cfg = _config(tmp_path, "gan", "lifelong_gan", _gan("label"), 1)
    cfg.options = {**cfg.options, "weight": 1.0}  # distill's knob, not lifelong_gan's
    with pytest.raises(TypeError, match="weight"):
        _learner(cfg)


@pytest.mark.parametrize("warmup", [False, True])
def test_diffusion_ema_is_what_the_task_exports_and_resumes(tmp_path, warmup):
    """ema_decay > 0: theta_ema <- d_n theta_ema + (1 - d_n) theta after step n, recomputed by hand, with
    d_n = d, or min(d, (1 + n) / (10 + n)) with warm-up; the exported model (registered, evaluated, the
    next task's start) is the EMA; a resume restores it and where the warm-up stands."""
    decay = 0.3  # above the warm-up's first decays (0.18, 0.25), below its later ones (0.31, ...)
    cfg = _config(tmp_path, "diffusion", "finetune", DIFFUSION, 1, ema_decay=decay, ema_warmup=warmup)
    learner = _learner(cfg)
    expected = _snapshot(learner.model)  # the EMA starts at the task's initial weights

    def train(learner, seeds):
        for seed in seeds:
            learner.step(_batch(cfg, seed), NO_AUTOCAST)
            n = seed + 1
            d = min(decay, (1 + n) / (10 + n)) if warmup else decay
            for name, p in learner.model.named_parameters():
                expected[name] = d * expected[name] + (1 - d) * p.detach()

    torch.manual_seed(0)
    train(learner, range(2))
    torch.save(learner.state_dict(), tmp_path / "step.pt")
    resumed = _learner(cfg)
    resumed.load_state_dict(torch.load(tmp_path / "step.pt", weights_only=True))
    _assert_same(learner.ema.state_dict(), resumed.ema)
    train(resumed, range(2, 4))  # steps 3 and 4: the warm-up's decay reaches d at step 3
    for name, p in resumed.ema.named_parameters():
        torch.testing.assert_close(p, expected[name], rtol=1e-5, atol=1e-6)
    assert _changed(_snapshot(resumed.ema), resumed.model)  # the EMA lags the raw weights
    without_ema = _learner(_config(tmp_path, "diffusion", "finetune", DIFFUSION, 1)).state_dict()
    with pytest.raises(ValueError, match="no EMA weights"):
        resumed.load_state_dict(without_ema)
    older = {k: v for k, v in resumed.state_dict().items() if k != "ema_steps"}
    with pytest.raises(ValueError, match="warm-up"):
        resumed.load_state_dict(older)

    exported = load_model(torch.load(_export(resumed, tmp_path / "task1.pt"), weights_only=True))
    _assert_same(resumed.ema.state_dict(), exported)


@pytest.fixture(scope="module")
def rgb_pair_shards(tmp_path_factory):
    """Tiny RGB image-to-image shards (image_data.channels 3): 8 px pairs, a = 255 - b."""
    import numpy as np

    from lifelong.data import task_shard_paths, write_paired_shards

    b = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    out = tmp_path_factory.mktemp("rgb") / "shards"
    write_paired_shards(out, [{"train": (255 - b, b, np.full(8, -1))}])
    return task_shard_paths(out, 1, "train")


# The two methods that do more than run the nets on the batch (Montage/Swap pairs; a filter bank per task).
@pytest.mark.parametrize("method", ["lifelong_gan", "piggyback_gan"])
def test_gan_learner_trains_rgb_pairs_read_from_shards(tmp_path, method, rgb_pair_shards):
    """in_channels 3 (pipeline.task.model_config for image_data.channels 3): G, E, D, D2 take the
    loader's (B, 3, H, W) batches for two tasks (lifelong_gan: distillation on RGB montages; piggyback_gan:
    RGB filter banks), and the exported nets still generate RGB."""
    from lifelong.data import train_pair_batches
    from lifelong.evaluation.generate import gan_translate

    rgb = GANConfig(condition="image", image_size_px=8, in_channels=3, z_dim=4, width=8)
    a, b, y = next(iter(train_pair_batches(rgb_pair_shards, batch_size=4, num_batches=1, seed=0)))
    assert a.shape == b.shape == (4, 3, 8, 8)
    init = None
    for k in (1, 2):
        cfg = _config(tmp_path, "gan", method, rgb, k, init_state=init, paired=True)
        learner = _learner(cfg)
        before = _snapshot(learner.nets)
        torch.manual_seed(0)
        for _ in range(2):  # task 2's first step: the student is still the teacher (no distillation yet)
            parts = learner.step((a, b, y), NO_AUTOCAST)
        assert all(torch.isfinite(v).item() for v in parts.values())
        assert all(_changed(before, learner.nets, prefix=f"{name}.") for name in learner.optimizers)
        init = _export(learner, tmp_path / f"task{k}.pt")
    if method == "lifelong_gan":
        assert parts["loss_distill"] > 0
    nets = load_model(torch.load(init, weights_only=True))
    assert nets.cfg.in_channels == 3
    conditions = ((a.permute(0, 2, 3, 1) + 1) * 127.5).round().to(torch.uint8).numpy()  # (4, 8, 8, 3)
    assert gan_translate(nets, conditions, seed=0).shape == (4, 8, 8, 3)
