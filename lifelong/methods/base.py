"""What every continual-learning method is: an object with three hooks.

The trainer calls, per task: `before_task(task, teacher)`, then `loss(model, x0, y)` every step
(backprop `out["loss"]`; the other keys are named parts for logging), then `after_task()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lifelong.methods.losses import DataLoss
from lifelong.models.diffusion import DiffusionConfig, make_ddpm_scheduler


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
    uses_all_seen_data: bool = False  # True: the trainer feeds batches from tasks 1..k, not only task k
    needs_teacher: bool = False  # True: before_task needs the frozen previous model for tasks >= 2

    def __init__(
        self,
        cfg: DiffusionConfig,
        *,
        distill_weight: float = 1.0,  # lambda in front of L_replay
        replay_ddim_steps: int = 2,  # DDIM steps S the teacher uses to draw a replay batch
        generator_seed: int = 0,  # seeds the replay sampler; add the rank under DDP for distinct replay batches
    ) -> None:
        self.cfg = cfg
        self.distill_weight = distill_weight
        self.replay_ddim_steps = replay_ddim_steps
        self.generator = torch.Generator().manual_seed(generator_seed)
        self.scheduler = make_ddpm_scheduler(cfg)  # forward process q(x_t | x_0) for noising
        self.data_loss = DataLoss(self.scheduler)
        self.task: TaskInfo | None = None
        self.teacher: nn.Module | None = None

    def before_task(self, task: TaskInfo, teacher: nn.Module | None) -> None:
        if self.needs_teacher and task.index >= 2 and teacher is None:
            raise ValueError(f"{type(self).__name__} needs the previous task's model as teacher for task {task.index}")
        self.task = task
        self.teacher = teacher
        if teacher is not None:
            teacher.eval().requires_grad_(False)

    def loss(self, model: nn.Module, x0: Tensor, y: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def after_task(self) -> dict[str, Any]:
        self.teacher = None  # release its memory before the next task's copy arrives
        return {}
