"""The base of the diffusion methods: a batch {"x0": (B, C, H, W) in [-1, 1], "y": (B,) labels} and
the forward process q(x_t | x_0) every diffusion loss noises with.
"""

from __future__ import annotations

from lifelong.methods.base import Method
from lifelong.methods.losses import DataLoss
from lifelong.models.diffusion import DiffusionConfig, make_ddpm_scheduler


class DiffusionMethod(Method):
    def __init__(self, cfg: DiffusionConfig, *, generator_seed: int = 0) -> None:
        super().__init__(cfg, generator_seed=generator_seed)
        self.scheduler = make_ddpm_scheduler(cfg)  # forward process q(x_t | x_0) for noising
        self.data_loss = DataLoss(self.scheduler, cfg)
