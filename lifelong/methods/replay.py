"""Replay shared by generative replay and generative distillation (Masip et al., CoLLAs 2024).

For task n >= 2, each step:
  x^, y^ ~ teacher via DDIM (S steps, eta = 0), y^ ~ U(previous classes)
  x^_t   = sqrt(abar_t) x^ + sqrt(1 - abar_t) eps,  t ~ U[0, T)
  L_replay = || target - eps_theta(x^_t, t, y^) ||^2   (y^ dropped to the null label at rate p_uncond
             for a model trained for classifier-free guidance, in the target too: its unconditional
             eps is remembered like the conditional one)
  loss   = (1/n) L_data + (1 - 1/n) * lambda * L_replay
The two methods differ only in `replay_target`: the true noise eps (GR) or eps_teacher(x^_t, t, y^) (GD).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lifelong.methods.diffusion import DiffusionMethod
from lifelong.methods.losses import NoisedBatch, eps_mse, forward_diffuse
from lifelong.models.diffusion import DiffusionConfig, ddim_sample, drop_labels


def replay_labels(previous_classes: list[int], n: int, generator: torch.Generator | None = None) -> Tensor:
    """y^ (n,): labels drawn uniformly from the earlier tasks' classes."""
    if not previous_classes:
        raise ValueError("replay needs at least one class from earlier tasks")
    classes = torch.as_tensor(previous_classes, dtype=torch.long)
    return classes[torch.randint(len(classes), (n,), generator=generator)]


def sample_replay(
    teacher: nn.Module,
    previous_classes: list[int],
    n: int,
    cfg: DiffusionConfig,
    steps: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """A replay batch from the frozen teacher: x^ (n, C, H, W) in [-1, 1] and y^ (n,), on the teacher's device."""
    y_hat = replay_labels(previous_classes, n, generator)
    x_hat = ddim_sample(teacher, y_hat, cfg=cfg, num_steps=steps, generator=generator)
    return x_hat, y_hat.to(x_hat.device)


def replay_target(q: NoisedBatch) -> Tensor:
    """Generative replay: treat x^ as real data, so the target is the noise that made x^_t."""
    return q.eps


@torch.no_grad()
def distillation_target(teacher: nn.Module, q: NoisedBatch, y_hat: Tensor) -> Tensor:
    """Generative distillation: match the teacher's eps_teacher(x^_t, t, y^) (its whole reverse process)."""
    return teacher(q.x_t, q.t, y_hat)


@dataclass(frozen=True)
class ReplayBatch:
    q: NoisedBatch  # x^_t, t (and eps when x^ was noised) the student sees
    y_hat: Tensor  # (B,) the labels it sees, null where dropped
    target: Tensor  # (B, C, H, W) what eps_theta(x^_t, t, y^) should match


class ReplayMethod(DiffusionMethod):
    """Shared loop of GR and GD; subclasses only say what eps_theta on the replay batch should match
    (`replay_target`), or build the whole replay batch another way (`replay_batch`)."""

    needs_teacher = True

    def __init__(
        self,
        cfg: DiffusionConfig,
        *,
        weight: float = 1.0,  # lambda in front of L_replay
        replay_ddim_steps: int = 2,  # DDIM steps S the teacher uses to draw a replay batch
        generator_seed: int = 0,  # seeds the replay sampler (labels y^ and DDIM's starting noise)
    ) -> None:
        super().__init__(cfg, generator_seed=generator_seed)
        self.weight = weight
        self.replay_ddim_steps = replay_ddim_steps

    def replay_target(self, q: NoisedBatch, y_hat: Tensor) -> Tensor:
        raise NotImplementedError

    def replay_batch(self, x0: Tensor) -> ReplayBatch:
        """x^, y^ from the teacher (S DDIM steps), noised to x^_t at t ~ U[0, T); the target by `replay_target`."""
        x_hat, y_hat = sample_replay(
            self.teacher, self.task.previous_classes, x0.shape[0], self.cfg, self.replay_ddim_steps, self.generator
        )
        q = forward_diffuse(self.scheduler, x_hat.to(x0))  # x^_t, t, eps; a new batch, x0 is untouched
        y_hat = drop_labels(y_hat.to(x0.device), self.cfg)
        return ReplayBatch(q=q, y_hat=y_hat, target=self.replay_target(q, y_hat))

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.task is None:
            raise RuntimeError("call before_task(task, teacher) before loss()")
        x0, y = batch["x0"], batch["y"]
        n = self.task.num_seen_tasks
        l_data = self.data_loss(model, x0, y)
        if n == 1:  # nothing to remember yet
            return {"loss": l_data, "loss_data": l_data.detach()}

        r = self.replay_batch(x0)
        l_replay = eps_mse(r.target, model(r.q.x_t, r.q.t, r.y_hat))
        loss = (1 / n) * l_data + (1 - 1 / n) * self.weight * l_replay
        return {"loss": loss, "loss_data": l_data.detach(), "loss_replay": l_replay.detach()}
