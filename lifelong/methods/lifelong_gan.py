"""Lifelong GAN (Zhai et al., ICCV 2019): knowledge distillation from the previous task's GAN.

Task 1: the base GAN's loss. Task t >= 2 (student G_t, E_t; frozen teacher G_{t-1}, E_{t-1}):
    loss_g = L_GAN + beta * L_DL
Image-conditioned (BicycleGAN), on auxiliary pairs (A~, B~) made from task t's batch (montage/swap):
    L_DL = ||E_t(B~) - E_{t-1}(B~)||_1 + ||G_t(A~, E_t(B~)) - G_{t-1}(A~, E_{t-1}(B~))||_1
         + ||G_t(A~, z) - G_{t-1}(A~, z)||_1 + ||E_t(G_t(A~, z)) - E_{t-1}(G_{t-1}(A~, z))||_1
    (E's output is its mean mu; ||.||_1 is the mean absolute difference.)
Label-conditioned: L_DL = ||G_t(z, y_old) - G_{t-1}(z, y_old)||_1, y_old ~ U(earlier classes), same z.
The discriminators are not distilled (loss_d is the base GAN's).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lifelong.methods.auxiliary import AUXILIARY_KINDS, auxiliary_pairs
from lifelong.methods.gan import GANFineTune
from lifelong.models.gan import GANConfig, GANNets


def l1(x: Tensor, y: Tensor) -> Tensor:
    return (x - y).abs().mean()


class LifelongGAN(GANFineTune):
    needs_teacher = True

    def __init__(
        self,
        cfg: GANConfig,
        *,
        beta: float = 1.0,  # weight of L_DL in loss_g
        auxiliary: str = "both",  # image-conditioned: which auxiliary pairs, "montage", "swap" or "both"
        generator_seed: int = 0,  # seeds the auxiliary pairs and the old labels y_old
    ) -> None:
        super().__init__(cfg, generator_seed=generator_seed)
        if auxiliary not in AUXILIARY_KINDS:
            raise ValueError(f"unknown auxiliary kind {auxiliary!r}; valid: {', '.join(AUXILIARY_KINDS)}")
        self.beta = beta
        self.auxiliary = auxiliary

    def loss(self, nets: GANNets, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.task is None:
            raise RuntimeError("call before_task(task, teacher) before loss()")
        out = self.gan_loss(nets, batch)
        if self.task.index == 1:  # nothing to remember yet
            return out
        if nets.cfg.condition == "label":
            l_dl = self.label_distillation(nets, self.teacher, batch)
        else:
            l_dl = self.image_distillation(nets, self.teacher, batch)
        out["loss_g"] = out["loss_g"] + self.beta * l_dl
        out["loss_distill"] = l_dl.detach()
        return out

    def label_distillation(self, nets: GANNets, teacher: GANNets, batch: dict[str, Tensor]) -> Tensor:
        x = batch["x"]
        previous = torch.as_tensor(self.task.previous_classes, dtype=torch.long)
        if previous.numel() == 0:
            raise ValueError("label distillation needs at least one class from earlier tasks")
        y_old = previous[torch.randint(len(previous), (x.shape[0],), generator=self.generator)].to(x.device)
        z = torch.randn(x.shape[0], nets.cfg.z_dim, device=x.device, dtype=x.dtype)
        with torch.no_grad():
            target = teacher["G"](z, y_old)
        return l1(nets["G"](z, y_old), target)

    def image_distillation(self, nets: GANNets, teacher: GANNets, batch: dict[str, Tensor]) -> Tensor:
        G, E, G_T, E_T = nets["G"], nets["E"], teacher["G"], teacher["E"]
        A_aux, B_aux = auxiliary_pairs(batch["a"], batch["x"], self.auxiliary, self.generator)
        z = torch.randn(A_aux.shape[0], nets.cfg.z_dim, device=A_aux.device, dtype=A_aux.dtype)
        with torch.no_grad():
            mu_T, _ = E_T(B_aux)
            rec_T = G_T(A_aux, mu_T)
            gen_T = G_T(A_aux, z)
            mu_gen_T, _ = E_T(gen_T)
        mu, _ = E(B_aux)
        gen = G(A_aux, z)
        return l1(mu, mu_T) + l1(G(A_aux, mu), rec_T) + l1(gen, gen_T) + l1(E(gen)[0], mu_gen_T)
