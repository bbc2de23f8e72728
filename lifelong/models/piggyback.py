"""Piggyback GAN filter banks (Zhai et al., "Piggyback GAN", ECCV 2020), for any torch generator.

For a conv layer with n output filters, each of shape (c, k, k):
- task 1 owns n free filters U_1 (trained as usual);
- task t >= 2 owns m = ceil(ratio * n) new free filters U_t and a mixing matrix M_t of shape
  (|F_t|, n - m); its other n - m filters are linear combinations of the frozen bank
  F_t = [U_1; ...; U_{t-1}] (|F_t| = n + (t - 2) * m filters, stacked on the filter axis):
      P_t = (F_t.view(|F_t|, c*k*k).t() @ M_t).t().view(n - m, c, k, k)
      W_t = concat(U_t, P_t)  on the output-filter axis.
Everything a task owns is frozen once the next task is added, and W_i is rebuilt from U_i, M_i and
U_1..U_{i-1} only, so old tasks stay bit-identical forever. Layers that are not convolutions (Linear,
Embedding, GroupNorm, ...) get one full copy per task (`TaskSpecific`), which starts as task t-1's.

Warm start (`add_task(model, warm_start=True)`; PiggybackGAN's default): task t starts as task
t-1's network, W_t = W_{t-1}. The free filters come first in W_t, so U_t must be W_{t-1}'s first m
filters; the other n - m filters of W_{t-1} lie in the span of the bank F_t (for t = 2 they are U_1's
own, for t >= 3 they are P_{t-1} = F_{t-1}^T M_{t-1} and F_{t-1} is a part of F_t), so one M_t
reproduces them exactly:
    t = 2:   U_2 = U_1[:m],   M_2 = one-hot columns picking U_1[m:] from F_2 = U_1
    t >= 3:  U_t = U_{t-1},   M_t = [M_{t-1}; 0]  (zero weight on the bank's new rows, U_{t-1})
(U_t is the only choice; M_t is one of several when the bank's filters are linearly dependent.)
Biases: b_t = b_{t-1}. With `warm_start=False` (add_task's default, its behaviour from before the
option) U_t, M_t and b_t are drawn fresh; with a short step budget the later tasks of a GAN then
barely learn (issue 11).

Usage: `piggyback_(model, ratio)` once, train task 1, then `add_task(model)` before each new task;
`set_task(model, i)` selects which task the model computes. To reload a checkpoint, build the same
structure with `rebuild(factory, ratio, tasks)` and call `load_state_dict`.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


class _TaskLayer(nn.Module):
    """Bookkeeping shared by all per-task layers: tasks are numbered 1..num_tasks."""

    num_tasks: int
    active_task: int

    def set_task(self, t: int) -> None:
        _check_task(t, self.num_tasks)
        self.active_task = t

    def add_task(self, warm_start: bool = False) -> None:
        raise NotImplementedError

    def task_parameters(self, t: int) -> list[nn.Parameter]:
        raise NotImplementedError

    def _freeze_all(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)


def _check_task(t: int, num: int) -> None:
    if not 1 <= t <= num:
        raise ValueError(f"task {t} out of range: valid tasks are 1..{num}")


class _PiggybackConv(_TaskLayer):
    """Filter bank of one conv layer. Filters are stored filter-major: (filters, c, k, k)."""

    transposed: bool  # ConvTranspose2d keeps its weight as (in, out, k, k): a filter is weight[:, j]

    def __init__(self, conv: nn.Conv2d | nn.ConvTranspose2d, ratio: float) -> None:
        super().__init__()
        if conv.groups != 1:
            raise ValueError(f"{type(conv).__name__} with groups={conv.groups}: piggyback needs groups=1")
        if conv._forward_pre_hooks or hasattr(conv, "parametrizations"):
            # spectral/weight norm would be silently dropped: we copy only the current weight
            raise ValueError(f"{type(conv).__name__} with hooks or parametrizations is not supported")
        _check_ratio(ratio)
        self.ratio = ratio
        for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"):
            setattr(self, name, getattr(conv, name))
        self.padding_mode = conv.padding_mode
        self._reversed_padding_repeated_twice = getattr(conv, "_reversed_padding_repeated_twice", None)
        self._weight_shape = tuple(conv.weight.shape)  # the wrapped layer's, to init U_t like it would
        u1 = self._to_filters(conv.weight.detach()).contiguous()  # (n, c, k, k)
        self.n = u1.shape[0]
        # ceil of ratio * n, rounded first so that e.g. 0.3 * 10 = 3.0000000000000004 gives 3, not 4
        self.m = min(self.n, max(1, math.ceil(round(ratio * self.n, 9))))
        self.free = nn.ParameterList([nn.Parameter(u1.clone())])  # free[t-1] = U_t
        self.mix = nn.ParameterList()  # mix[t-2] = M_t, (|F_t|, n - m)
        self.biases = nn.ParameterList()  # biases[t-1], (n,); empty if the layer had no bias
        if conv.bias is not None:
            self.biases.append(nn.Parameter(conv.bias.detach().clone()))
        self.num_tasks, self.active_task = 1, 1

    def _to_filters(self, w: Tensor) -> Tensor:
        return w.permute(1, 0, 2, 3) if self.transposed else w

    def add_task(self, warm_start: bool = False) -> None:
        self._freeze_all()
        u, mix, bias = self._warm_start() if warm_start else self._fresh_start()
        self.free.append(nn.Parameter(u))
        self.mix.append(nn.Parameter(mix))
        if bias is not None:
            self.biases.append(nn.Parameter(bias))
        self.num_tasks += 1
        self.active_task = self.num_tasks

    def _warm_start(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """U_t, M_t, b_t with W_t = W_{t-1} and b_t = b_{t-1} (see the module docstring). Copies,
        never views: training task t must not move task t-1's frozen tensors."""
        prev = self.num_tasks  # t - 1
        u_prev = self.free[prev - 1].detach()  # U_1: (n, c, k, k); U_{t-1}, t >= 3: (m, c, k, k)
        u = u_prev[: self.m].clone()
        if prev == 1:
            # bank F_2 = U_1; column j of M_2 is e_{m+j}, so P_2[j] = U_1[m + j] (bit-exact: 1*x + 0*y)
            mix = torch.eye(self.n, device=u.device, dtype=u.dtype)[:, self.m :].contiguous()  # (n, n - m)
        else:
            # F_t = [F_{t-1}; U_{t-1}]: keep M_{t-1}'s combination of F_{t-1}, weight 0 on U_{t-1}.
            # Equal to P_{t-1} up to the matmul's summation order (float rounding, ~1e-7 relative).
            m_prev = self.mix[prev - 2].detach()  # (|F_{t-1}|, n - m)
            mix = torch.cat([m_prev, m_prev.new_zeros(self.m, self.n - self.m)], dim=0)  # (|F_t|, n - m)
        bias = self.biases[prev - 1].detach().clone() if len(self.biases) else None
        return u, mix, bias

    def _fresh_start(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """U_t, M_t, b_t drawn from scratch, like a fresh layer's (and in the same RNG order as before
        the warm start existed, so `warm_start=False` reproduces those runs)."""
        u_prev = self.free[0]
        # U_t: the first m filters of a fresh layer's weight, drawn as torch draws one
        # (kaiming_uniform_ with a=sqrt(5), fan_in from the wrapped layer's weight shape).
        fresh = torch.empty(self._weight_shape, device=u_prev.device, dtype=u_prev.dtype)
        nn.init.kaiming_uniform_(fresh, a=math.sqrt(5))
        u = self._to_filters(fresh)[: self.m].contiguous()
        # M_t ~ N(0, 1/|F_t|): a piggyback filter then starts at about the scale of a bank filter
        # (a sum of |F_t| filters with weights of variance 1/|F_t|), i.e. like a fresh filter.
        bank_size = self.n + (self.num_tasks - 1) * self.m
        mix = torch.randn(bank_size, self.n - self.m, device=u_prev.device, dtype=u_prev.dtype)
        mix = mix / math.sqrt(bank_size)
        bias = None
        if len(self.biases):
            # the whole bias is per task; fresh like nn.Conv*'s: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            bound = 1.0 / math.sqrt(fresh[0].numel())  # fan_in as torch computes it for this weight
            bias = torch.empty_like(self.biases[0]).uniform_(-bound, bound)
        return u, mix, bias

    def weight_for(self, t: int) -> Tensor:
        """W_t in the wrapped layer's weight layout, from U_t, M_t and U_1..U_{t-1} only."""
        _check_task(t, self.num_tasks)
        u = self.free[t - 1]  # (n or m, c, k, k)
        # Assembled in the parameters' dtype even under autocast: the conv casts W_t itself, and
        # W_t stays the same tensor with or without autocast (bank sums are not done in bf16).
        with torch.autocast(device_type=u.device.type, enabled=False):
            if t == 1:
                w = u
            else:
                bank = torch.cat(list(self.free[: t - 1]), dim=0)  # F_t: (|F_t|, c, k, k)
                # filter-major view: row i of the matrix is bank filter i (the pitfall is a
                # reshape to (c*k*k, |F_t|), which mixes elements of different filters)
                p = (bank.view(bank.shape[0], -1).t() @ self.mix[t - 2]).t()  # (n - m, c*k*k)
                w = torch.cat([u, p.view(self.n - self.m, *u.shape[1:])], dim=0)  # (n, c, k, k)
        return self._to_filters(w)  # the permutation is its own inverse

    def bias_for(self, t: int) -> Tensor | None:
        return self.biases[t - 1] if len(self.biases) else None

    def task_parameters(self, t: int) -> list[nn.Parameter]:
        _check_task(t, self.num_tasks)
        own = [self.free[t - 1]] + ([self.mix[t - 2]] if t >= 2 else [])
        return own + ([self.biases[t - 1]] if len(self.biases) else [])

    def extra_repr(self) -> str:
        return f"n={self.n}, m={self.m}, tasks={self.num_tasks}, active={self.active_task}"


class PiggybackConv2d(_PiggybackConv):
    transposed = False

    def __init__(self, conv: nn.Conv2d, ratio: float) -> None:
        super().__init__(conv, ratio)

    def forward(self, x: Tensor) -> Tensor:
        w, b = self.weight_for(self.active_task), self.bias_for(self.active_task)
        if self.padding_mode != "zeros":  # as nn.Conv2d does for reflect/replicate/circular
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, w, b, self.stride, 0, self.dilation)
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation)


class PiggybackConvTranspose2d(_PiggybackConv):
    transposed = True

    def __init__(self, conv: nn.ConvTranspose2d, ratio: float) -> None:
        super().__init__(conv, ratio)
        self.output_padding = conv.output_padding

    def forward(self, x: Tensor) -> Tensor:
        w, b = self.weight_for(self.active_task), self.bias_for(self.active_task)
        return F.conv_transpose2d(x, w, b, self.stride, self.padding, self.output_padding, 1, self.dilation)


class TaskSpecific(_TaskLayer):
    """One deep copy of `module` per task; forward (and attribute reads) go to the active copy."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.tasks = nn.ModuleList([module])
        self.num_tasks, self.active_task = 1, 1

    def add_task(self, warm_start: bool = False) -> None:
        self._freeze_all()
        # task t starts from task t-1's copy, warm_start or not (it always has, so warm_start=False
        # still reproduces the runs from before the option)
        new = copy.deepcopy(self.tasks[-1])
        new.requires_grad_(True)
        self.tasks.append(new)
        self.num_tasks += 1
        self.active_task = self.num_tasks

    def task_parameters(self, t: int) -> list[nn.Parameter]:
        _check_task(t, self.num_tasks)
        return list(self.tasks[t - 1].parameters())

    def forward(self, *args, **kwargs):
        return self.tasks[self.active_task - 1](*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or name == "tasks":  # not yet built (e.g. while unpickling)
                raise
            # code that reads e.g. `layer.weight.dtype` or `norm.num_groups` keeps working
            return getattr(self.tasks[self.active_task - 1], name)


def _check_ratio(ratio: float) -> None:
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in module.modules())


def _convert(module: nn.Module, ratio: float) -> None:
    for name, child in module.named_children():
        if type(child) is nn.Conv2d or type(child) is nn.ConvTranspose2d:
            cls = PiggybackConv2d if isinstance(child, nn.Conv2d) else PiggybackConvTranspose2d
            setattr(module, name, cls(child, ratio))
        elif isinstance(child, (nn.Conv2d, nn.ConvTranspose2d)):
            # a subclass may change forward (e.g. LoRA-compatible convs): don't guess its semantics
            raise ValueError(f"{name}: unsupported conv subclass {type(child).__name__}")
        elif any(True for _ in child.parameters(recurse=False)):
            if _has_conv(child):
                warnings.warn(f"{name} ({type(child).__name__}) has its own parameters and conv layers: "
                              "it is copied whole per task, so its convs do not share a filter bank")
            setattr(module, name, TaskSpecific(child))
        else:
            _convert(child, ratio)


def piggyback_(model: nn.Module, ratio: float) -> nn.Module:
    """In place: convs become filter banks, other layers with parameters per-task copies. 1 task."""
    _check_ratio(ratio)
    if is_piggyback(model):
        raise ValueError("model is already piggyback; use add_task for a new task")
    for name, m in model.named_modules():
        if isinstance(m, _BatchNorm):
            # running statistics move in train mode, so an old task's outputs would drift
            raise ValueError(f"{name or 'model'} is {type(m).__name__}: use GroupNorm or InstanceNorm instead")
    if any(True for _ in model.parameters(recurse=False)):
        raise ValueError(f"{type(model).__name__} has parameters of its own: wrap it in a container module")
    _convert(model, ratio)
    return model


def _layers(model: nn.Module) -> list[_TaskLayer]:
    return [m for m in model.modules() if isinstance(m, _TaskLayer)]


def is_piggyback(model: nn.Module) -> bool:
    return bool(_layers(model))


def num_tasks(model: nn.Module) -> int:
    counts = {layer.num_tasks for layer in _layers(model)}
    if not counts:
        raise ValueError("not a piggyback model: call piggyback_(model, ratio) first")
    if len(counts) > 1:
        raise RuntimeError(f"layers disagree on the number of tasks: {sorted(counts)}")
    return counts.pop()


def add_task(model: nn.Module, *, warm_start: bool = False) -> None:
    """Every layer adds a task; the new task is active and owns the only trainable parameters.

    warm_start: the new task starts as the previous one (W_t = W_{t-1} and b_t = b_{t-1} in every
    conv); False (as before the option): the convs' U_t, M_t and b_t are drawn fresh. Per-task
    layers start as copies of the previous task's either way.
    """
    num_tasks(model)  # validates
    for layer in _layers(model):
        layer.add_task(warm_start=warm_start)


def for_task(model: nn.Module, task_index: int, ratio: float, *, warm_start: bool, method: str) -> int:
    """In place: `model` as task `task_index` of a piggyback method trains it. Task 1 turns a plain
    network into its piggyback form (every filter free, the bank empty); task t >= 2 adds a task to the
    network task t-1 left (U_t free, M_t over the frozen bank [U_1; ...; U_{t-1}]). Returns the number of
    tasks the network now holds. A plain network after task 1 (another method's model) is one error."""
    if not is_piggyback(model):
        if task_index != 1:
            raise ValueError(f"{method} task {task_index}: the previous network has no filter bank; its model "
                             f"must come from {method}'s own task {task_index - 1}")
        piggyback_(model, ratio)
    else:
        add_task(model, warm_start=warm_start)
    return num_tasks(model)


def set_task(model: nn.Module, t: int) -> None:
    _check_task(t, num_tasks(model))
    for layer in _layers(model):
        layer.set_task(t)


def active_task(model: nn.Module) -> int:
    """The task the model computes now (set_task's, or the newest after add_task)."""
    active = {layer.active_task for layer in _layers(model)}
    if len(active) != 1:
        raise RuntimeError(f"layers disagree on the active task: {sorted(active)}" if active
                           else "not a piggyback model: call piggyback_(model, ratio) first")
    return active.pop()


def task_parameters(model: nn.Module, t: int) -> list[nn.Parameter]:
    """What task t adds: U_t, M_t, bias_t of every conv and its TaskSpecific copies."""
    _check_task(t, num_tasks(model))
    return [p for layer in _layers(model) for p in layer.task_parameters(t)]


def task_parameter_count(model: nn.Module, t: int) -> int:
    return sum(p.numel() for p in task_parameters(model, t))


def total_parameter_count(model: nn.Module) -> int:
    """Everything stored to serve all tasks."""
    return sum(task_parameter_count(model, t) for t in range(1, num_tasks(model) + 1))


def rebuild(model_factory: Callable[[], nn.Module], ratio: float, tasks: int) -> nn.Module:
    """The structure of a piggyback model with `tasks` tasks, ready for `load_state_dict`."""
    model = piggyback_(model_factory(), ratio)
    for _ in range(tasks - 1):
        add_task(model)
    return model
