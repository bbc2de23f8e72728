"""What the worker loop trains, one class per model family: build (with the previous task's model as
start and teacher), one optimisation step, resumable state, and the model file it exports.

Both build their method as `make_method(cfg.method, model_cfg, generator_seed=..., **cfg.options)`
and need no Ray outside a Ray Train run: a unit test builds one from a TaskTrainConfig and calls `step`.

- `DiffusionLearner`: one network, one Adam, DDP through `ray.train.torch.prepare_model` (under Ray),
  optionally an exponential moving average of its weights (`ema_decay` > 0): the EMA is what the task
  exports, so it is what is evaluated, registered, and the next task's start and teacher. With
  `ema_warmup` its decay ramps up within each task (`ema_decay_at`). It counts the
  teacher's forward passes per step (`teacher_passes`), the replay methods' cost.
- `GANLearner`: several networks (G, D; BicycleGAN adds E and D2), one Adam per network (BicycleGAN's
  optimizer_G/E/D/D2). Each loss key trains the nets its method names in `LOSS_TARGETS`, e.g.
  loss_g -> G and E, loss_d -> D and D2. Not DDP-wrapped (several forwards per net and step, and the
  piggyback generator changes shape between tasks); under DDP the gradients are averaged by hand.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from lifelong import distributed as dist
from lifelong.methods.base import TaskInfo


class DiffusionLearner:
    def __init__(self, cfg, task: TaskInfo, device: torch.device, rank: int) -> None:
        from lifelong.methods import make_method
        from lifelong.models import load_model, piggyback
        from lifelong.models.diffusion import DiffusionConfig, build_unet

        self.model_cfg = DiffusionConfig.from_dict(cfg.model_config)
        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        model = build_unet(self.model_cfg)
        teacher = None
        if cfg.init_state is not None:
            previous = load_model(torch.load(cfg.init_state, map_location="cpu", weights_only=True))
            if piggyback.is_piggyback(previous):  # a filter bank: its structure, not build_unet's
                model = copy.deepcopy(previous)
            else:
                model.load_state_dict(previous.state_dict())  # every method continues from task k-1's weights
            teacher = previous.to(device).eval().requires_grad_(False)  # frozen; never DDP-wrapped
        # the method is built on self.model_cfg: piggyback records its filter bank there for the export
        self.method = make_method(cfg.method, self.model_cfg, generator_seed=_generator_seed(cfg, rank), **cfg.options)
        model = self.method.prepare(model, task)  # piggyback: this task's filters; the rest: the same network
        self.model = dist.prepare_model(model, device)
        self.optimizer = torch.optim.Adam(_trainable(model), lr=cfg.lr)
        self.grad_clip = cfg.grad_clip
        self.ema_decay, self.ema_warmup = cfg.ema_decay, cfg.ema_warmup
        # theta_ema <- decay_n * theta_ema + (1 - decay_n) * theta after the task's n-th step; starts at
        # the task's init
        self.ema = copy.deepcopy(model).requires_grad_(False) if self.ema_decay > 0 else None
        self.ema_steps = 0
        # the teacher's cost, measured: rows it computes, in units of the batch (teacher_passes per step)
        self.teacher_rows, self.batch_rows = 0, 0
        if teacher is not None and self.method.needs_teacher:
            teacher.register_forward_hook(self._count_teacher_rows)
        self.method.before_task(task, teacher if self.method.needs_teacher else None)
        self.model.train()

    def _count_teacher_rows(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        self.teacher_rows += int(args[0].shape[0])

    def step(self, batch: tuple[Tensor, ...], autocast) -> dict[str, Tensor]:
        x0, y = batch
        with autocast:
            parts = self.method.loss(self.model, {"x0": x0, "y": y})
        self.optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.batch_rows += int(x0.shape[0])
        # the teacher's forward passes per step so far, in units of this rank's batch: GD with S DDIM
        # steps pays S (2S with guidance) + 1, fine-tuning 0
        parts["teacher_passes"] = torch.tensor(self.teacher_rows / self.batch_rows)
        if self.ema is not None:
            self.ema_steps += 1
            decay = ema_decay_at(self.ema_steps, self.ema_decay, self.ema_warmup)
            with torch.no_grad():
                for p_ema, p in zip(self.ema.parameters(), dist.unwrap(self.model).parameters()):
                    p_ema.lerp_(p, 1.0 - decay)
        return parts

    def state_dict(self) -> dict:
        state = {"model": dist.unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict()}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
            state["ema_steps"] = self.ema_steps
        return state

    def load_state_dict(self, state: dict) -> None:
        dist.unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            if "ema" not in state:
                raise ValueError("this checkpoint has no EMA weights (it was written with train.ema_decay: 0); "
                                 "resume with the same train.ema_decay, or start the task afresh")
            if "ema_steps" not in state:
                raise ValueError("this checkpoint does not say where the EMA's warm-up stands (it predates "
                                 "train.ema_warmup); start the task afresh")
            self.ema.load_state_dict(state["ema"])
            self.ema_steps = int(state["ema_steps"])

    def _exported_net(self) -> nn.Module:
        return self.ema if self.ema is not None else dist.unwrap(self.model)

    def export(self) -> dict:
        from lifelong.models.diffusion import save_state

        self.method.after_task()
        return save_state(self._exported_net().cpu(), self.model_cfg)

    def eval_model(self) -> tuple[nn.Module, object]:
        """The bare network (the EMA when on) and its config, for the search objective."""
        return self._exported_net(), self.model_cfg


def ema_decay_at(n: int, decay: float, warmup: bool) -> float:
    """The EMA's decay after a task's n-th step (n = 1, 2, ...): `decay`, or with warm-up
    min(decay, (1 + n) / (10 + n)), the ramp of diffusers' EMAModel. Without it the EMA of a task that
    starts from random weights keeps (decay)^n of them: at 0.995 and 400 steps, 13%, enough to spoil the
    samples of a first task trained from scratch; with it the EMA follows the raw weights early on and
    averages over the last ~n/10 steps later (decay 0.978 at n = 400)."""
    return min(decay, (1 + n) / (10 + n)) if warmup else decay


class GANLearner:
    betas = (0.5, 0.999)  # pix2pix / BicycleGAN's Adam

    def __init__(self, cfg, task: TaskInfo, device: torch.device, rank: int) -> None:
        from lifelong.methods import make_method
        from lifelong.models import build_gan_nets, load_model
        from lifelong.models.gan import GANConfig

        gan_cfg = GANConfig.from_dict(cfg.model_config)
        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        teacher = None
        if cfg.init_state is not None:
            nets = load_model(torch.load(cfg.init_state, map_location="cpu", weights_only=True))
        else:
            nets = build_gan_nets(gan_cfg)
        self.method = make_method(cfg.method, nets.cfg, generator_seed=_generator_seed(cfg, rank), **cfg.options)
        if self.method.needs_teacher and cfg.init_state is not None:
            teacher = copy.deepcopy(nets).to(device).eval().requires_grad_(False)
        nets = self.method.prepare(nets, task)  # piggyback: a new task's filters; standalone: fresh nets
        self.nets = nets.to(device)
        self.world = dist.get_world_size()
        if self.world > 1:
            _broadcast_from_rank0(self.nets)  # standalone re-initialises: make every rank start equal
        self.method.before_task(task, teacher)
        self.grad_clip = cfg.grad_clip
        # The trainable parameters of each net are fixed for the whole task (piggyback froze the old ones in prepare).
        self.params = {name: params for name, net in self.nets.items() if (params := _trainable(net))}
        self.optimizers = {name: torch.optim.Adam(params, lr=cfg.lr, betas=self.betas)
                           for name, params in self.params.items()}
        self.nets.train()

    def step(self, batch: tuple[Tensor, ...], autocast) -> dict[str, Tensor]:
        # image-conditioned batches are (A, B, label), label-conditioned ones (x, label)
        named = dict(zip(("a", "x", "y"), batch)) if len(batch) == 3 else dict(zip(("x", "y"), batch))
        with autocast:
            parts = self.method.loss(self.nets, named)
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        keys = [k for k in self.method.LOSS_TARGETS if k in parts]
        for i, key in enumerate(keys):  # loss_g -> G, E; loss_g_alone -> G; loss_d -> D, D2
            params = [p for n in self.method.LOSS_TARGETS[key] for p in self.params.get(n, [])]
            if params:
                torch.autograd.backward(parts[key], inputs=params, retain_graph=i < len(keys) - 1)
        for name, opt in self.optimizers.items():
            params = self.params[name]
            if self.world > 1:
                _average_gradients(params, self.world)
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
            opt.step()
        return parts

    def state_dict(self) -> dict:
        return {"model": self.nets.state_dict(),
                "optimizer": {name: opt.state_dict() for name, opt in self.optimizers.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.nets.load_state_dict(state["model"])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizer"][name])

    def export(self) -> dict:
        from lifelong.models.gan import save_gan_state

        self.method.after_task()
        return save_gan_state(self.nets.cpu(), self.nets.cfg)

    def eval_model(self) -> tuple[nn.Module, object]:
        """The nets and their config, for the search objective (lifelong.tuning.measure)."""
        return self.nets, self.nets.cfg


LEARNERS = {"diffusion": DiffusionLearner, "gan": GANLearner}


def _generator_seed(cfg, rank: int) -> int:
    # distinct per run seed, task and rank: each rank draws its own replay batches / auxiliary pairs
    return cfg.seed * 1000 + cfg.task_index * 10 + rank


def _trainable(net: nn.Module) -> list[nn.Parameter]:
    return [p for p in net.parameters() if p.requires_grad]


@torch.no_grad()
def _broadcast_from_rank0(module: nn.Module) -> None:
    import torch.distributed as tdist

    for t in list(module.parameters()) + list(module.buffers()):
        tdist.broadcast(t.data, src=0)


def _average_gradients(params: list[nn.Parameter], world: int) -> None:
    """What DDP's reducer does, by hand: every rank ends the backward with the mean gradient."""
    import torch.distributed as tdist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)  # every rank must join every all-reduce
        tdist.all_reduce(p.grad)
        p.grad.div_(world)
