"""The base of the diffusion methods: a batch {"x0": (B, C, H, W) in [-1, 1], "y": (B,) labels} and
the forward process q(x_t | x_0) every diffusion loss noises with.
"""

from __future__ import annotations

from torch import nn

from lifelong.methods.base import Method, TaskInfo
from lifelong.methods.losses import DataLoss
from lifelong.models.diffusion import DiffusionConfig, make_ddpm_scheduler


class DiffusionMethod(Method):
    def __init__(self, cfg: DiffusionConfig, *, generator_seed: int = 0) -> None:
        super().__init__(cfg, generator_seed=generator_seed)
        self.scheduler = make_ddpm_scheduler(cfg)  # forward process q(x_t | x_0) for noising
        self.data_loss = DataLoss(self.scheduler, cfg)

    def prepare(self, model: nn.Module, task: TaskInfo) -> nn.Module:
        """The network task `task` trains, from the one it starts at (the previous task's, or a fresh one
        for task 1): the same network for every method but those that change its structure (piggyback)."""
        return model
