"""What every continual-learning method is, in both families: an object with three hooks.

The learner (lifelong/learners.py) calls, per task: `before_task(task, teacher)`, then
`loss(model, batch)` every step, then `after_task()`. `model` is what the family trains (a diffusion
UNet, or GANNets); `batch` is a dict of tensors named by the family (diffusion: x0, y; GAN: x, y
and, image-conditioned, a). `loss` returns named losses: the keys the learner backpropagates
(diffusion: "loss"; GAN: the keys of GANMethod.LOSS_TARGETS) and detached parts for logging.

A method's knobs are keyword arguments of its constructor, named as in its params.yaml section
(catalog.MethodSpec.options); a knob the method does not have is a TypeError, never ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class TaskInfo:
    index: int  # 1-based position of this task in the sequence
    classes: list[int]  # classes added by this task
    seen_classes: list[int]  # all classes of tasks 1..index
    previous_classes: list[int]  # classes of tasks 1..index-1 (what replay draws labels from)

    @property
    def num_seen_tasks(self) -> int:
        return self.index


class Method:
    needs_teacher: bool = False  # True: before_task needs the frozen previous model for tasks >= 2

    def __init__(
        self,
        cfg: Any,  # the family's model config (DiffusionConfig or GANConfig)
        *,
        generator_seed: int = 0,  # seeds self.generator; add the rank under DDP for distinct draws per rank
    ) -> None:
        self.cfg = cfg
        self.generator_seed = generator_seed
        self.generator = torch.Generator().manual_seed(generator_seed)
        self.task: TaskInfo | None = None
        self.teacher: nn.Module | None = None

    def before_task(self, task: TaskInfo, teacher: nn.Module | None) -> None:
        if self.needs_teacher and task.index >= 2 and teacher is None:
            raise ValueError(f"{type(self).__name__} needs the previous task's model as teacher for task {task.index}")
        self.task = task
        self.teacher = teacher
        if teacher is not None:
            teacher.eval().requires_grad_(False)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError

    def after_task(self) -> dict[str, Any]:
        self.teacher = None  # release its memory before the next task's copy arrives
        return {}
