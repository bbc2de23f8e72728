"""Noisy-intermediate generative distillation: GD's loss on the teacher's own DDIM states (the NIGD part
of MAGD, "Multi-Mode Adaptive Generative Distillation", 2025), a cheaper alternative to GD.

GD draws a whole replay sample x^ (S teacher DDIM steps) and then noises it back to a random t. The
deterministic DDIM (eta = 0) trajectory from x_T already passes through every noise level: a state at
level t on it approximates q(x_t) just as the re-noised x^ does. So each replay sample stops where it
is needed, at its own t ~ U[0, T):
  x_T ~ N(0, I), y^ ~ U(previous classes)
  x_t    = the teacher's DDIM (S-step grid, eta = 0) from x_T, run only down to t: the step that would
           cross t lands on t instead (x_t = sqrt(abar_t) x0_pred + sqrt(1 - abar_t) eps_teacher)
  L_replay = || eps_teacher(x_t, t, y^) - eps_theta(x_t, t, y^) ||^2
  loss   = (1/n) L_data + (1 - 1/n) * lambda * L_replay          (as GD)
A sample with large t needs fewer teacher steps than a whole sample: on average about half of GD's S
generation passes, plus the one target pass both methods pay. The learner counts the teacher's forward
passes per step (`teacher_passes`), so the saving is measured, not claimed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lifelong.methods.replay import ReplayBatch, ReplayMethod, distillation_target, replay_labels
from lifelong.methods.losses import NoisedBatch
from lifelong.models.diffusion import DiffusionConfig, drop_labels, guided_eps, make_ddim_scheduler


@torch.no_grad()
def ddim_states(
    teacher: nn.Module,
    y_hat: Tensor,
    t_stop: Tensor,
    cfg: DiffusionConfig,
    steps: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """x_{t_stop} (N, C, H, W) on the teacher's deterministic S-step DDIM trajectory from x_T ~ N(0, I),
    one noise level per sample (t_stop: (N,) long in [0, T)); each sample leaves the loop once it
    reaches its level, so the teacher only sees the samples that still have a step to take."""
    p = next(teacher.parameters())
    sched = make_ddim_scheduler(cfg)
    sched.set_timesteps(steps)
    grid = [int(t) for t in sched.timesteps]  # e.g. [999, 499] for S = 2 (trailing spacing)
    abar = sched.alphas_cumprod.to(p.device)
    y, t_stop = y_hat.to(p.device), t_stop.to(p.device)
    shape = (y.shape[0], cfg.in_channels, cfg.image_size_px, cfg.image_size_px)
    x = torch.randn(shape, generator=generator).to(p.device)  # x_T: the grid's first level, T - 1
    active = t_stop < grid[0]
    for s, tau in enumerate(grid):
        if not active.any():
            break
        nxt = grid[s + 1] if s + 1 < len(grid) else -1  # -1: past the last grid level every sample lands
        i = active.nonzero().squeeze(1)
        t_batch = torch.full((i.shape[0],), tau, device=p.device, dtype=torch.long)
        eps = guided_eps(teacher, x[i].to(p.dtype), t_batch, y[i], cfg).float()
        land = torch.clamp(t_stop[i], min=nxt)  # stop at t_stop if it comes before the next grid level
        a_t, a_land = abar[tau], abar[land].view(-1, 1, 1, 1)
        x0_pred = ((x[i] - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1.0, 1.0)  # as diffusers' DDIM, clip_sample
        x[i] = a_land.sqrt() * x0_pred + (1 - a_land).sqrt() * eps
        active[i] = t_stop[i] < nxt
    return x


class IntermediateDistillation(ReplayMethod):
    def replay_batch(self, x0: Tensor) -> ReplayBatch:
        n = x0.shape[0]
        y_hat = replay_labels(self.task.previous_classes, n, self.generator)
        t = torch.randint(0, self.cfg.num_train_timesteps, (n,), generator=self.generator)
        x_t = ddim_states(self.teacher, y_hat, t, self.cfg, self.replay_ddim_steps, self.generator).to(x0)
        y_hat = drop_labels(y_hat.to(x0.device), self.cfg)
        q = NoisedBatch(x_t=x_t, t=t.to(x0.device), eps=torch.empty(0))  # no eps: the state was not noised
        return ReplayBatch(q=q, y_hat=y_hat, target=distillation_target(self.teacher, q, y_hat))
