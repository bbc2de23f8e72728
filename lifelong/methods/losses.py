"""Denoising losses for eps-prediction diffusion (Ho et al. 2020, eq. 14), written with the paper's symbols."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler
from torch import Tensor, nn

from lifelong.models.diffusion import DiffusionConfig, drop_labels


@dataclass(frozen=True)
class NoisedBatch:
    x_t: Tensor  # (B, C, H, W) = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
    t: Tensor  # (B,) long, t ~ U[0, T)
    eps: Tensor  # (B, C, H, W) the noise that made x_t, eps ~ N(0, I)


def forward_diffuse(scheduler: DDPMScheduler, x0: Tensor) -> NoisedBatch:
    """q(x_t | x_0): x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t ~ U[0, T), eps ~ N(0, I).

    Draws from the global torch RNG, like edm's losses: the trainer seeds it per rank.
    """
    T = scheduler.config.num_train_timesteps
    t = torch.randint(0, T, (x0.shape[0],), device=x0.device)
    eps = torch.randn_like(x0)
    return NoisedBatch(x_t=scheduler.add_noise(x0, eps, t), t=t, eps=eps)


def eps_mse(target: Tensor, eps_pred: Tensor) -> Tensor:
    """|| target - eps_pred ||^2, averaged over batch and pixels; float32 even under bf16 autocast."""
    return (target.float() - eps_pred.float()).square().mean()


class DataLoss:
    """L_data = || eps - eps_theta(x_t, t, y) ||^2  (Ho et al. 2020, eq. 14, class-conditional), with y
    replaced by the null label at rate p_uncond when the model is trained for classifier-free guidance."""

    def __init__(self, scheduler: DDPMScheduler, cfg: DiffusionConfig) -> None:
        self.scheduler = scheduler
        self.cfg = cfg

    def __call__(self, net: nn.Module, x0: Tensor, y: Tensor) -> Tensor:
        q = forward_diffuse(self.scheduler, x0)
        return eps_mse(q.eps, net(q.x_t, q.t, drop_labels(y, self.cfg)))
