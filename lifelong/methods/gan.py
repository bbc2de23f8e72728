"""GAN losses and continual-learning methods for GANs (G, [E], D, [D2] trained together).

A batch is {"x": (B, C, H, W) real images (BicycleGAN's B), "y": (B,) labels} plus, image-conditioned,
"a": (B, C, H, W) the inputs (BicycleGAN's A). The learner (lifelong/learners.py::GANLearner), per step:
    out = method.loss(nets, batch)
    for key, targets in LOSS_TARGETS.items():          # in this order
        if key in out:
            torch.autograd.backward(out[key], inputs=<trainable params of nets[n] for n in targets if n in nets>,
                                    retain_graph=<not the last key>)
    then one Adam step per net.
So each loss key only moves the nets it names; loss_d sees only detached fakes, loss_g's gradient
never reaches D (it is not in loss_g's inputs) although the graph runs through D.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from lifelong.methods.base import Method, TaskInfo
from lifelong.models.gan import GANNets, build_gan


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------
def gan_loss_d(real_logits: Tensor, fake_logits: Tensor, kind: str) -> Tensor:
    """Discriminator loss.

    lsgan (Mao et al. 2017, a=0, b=c=1): E[(D(x) - 1)^2] + E[D(G(z))^2]  (BicycleGAN's sum, no 1/2)
    hinge (Lim & Ye 2017; Miyato et al. 2018): E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]
    """
    if kind == "lsgan":
        return ((real_logits - 1) ** 2).mean() + (fake_logits**2).mean()
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    raise ValueError(f"unknown GAN loss {kind!r}; valid: hinge, lsgan")


def gan_loss_g(fake_logits: Tensor, kind: str) -> Tensor:
    """Generator loss. lsgan: E[(D(G(z)) - 1)^2]; hinge: -E[D(G(z))]."""
    if kind == "lsgan":
        return ((fake_logits - 1) ** 2).mean()
    if kind == "hinge":
        return -fake_logits.mean()
    raise ValueError(f"unknown GAN loss {kind!r}; valid: hinge, lsgan")


def mode_seeking_loss(fake1: Tensor, fake2: Tensor, z1: Tensor, z2: Tensor, eps: float = 1e-5) -> Tensor:
    """Mode seeking (Mao et al., "Mode Seeking GANs", CVPR 2019): two latents for the same condition must
    give images as far apart as the latents are, L_ms = 1 / (mean|G(z1) - G(z2)| / mean|z1 - z2| + eps).
    Small when the generator spreads its latents over the data; large when it collapses them to one image."""
    ratio = (fake1 - fake2).abs().mean() / (z1 - z2).abs().mean()
    return 1.0 / (ratio + eps)


def kl_to_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) = -1/2 sum_j (1 + logvar_j - mu_j^2 - exp(logvar_j)).

    Summed over the latent dims, averaged over the batch (BicycleGAN sums over the batch too; its
    default batch is 2, ours is larger, so the mean keeps lambda_kl independent of batch size).
    """
    return (-0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(dim=1)).mean()


def reparameterize(mu: Tensor, logvar: Tensor) -> Tensor:
    """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) from the global RNG."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


# ---------------------------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------------------------
class GANMethod(Method):
    """The base of the GAN methods; `gan_loss` is the base model's own objective."""

    # Which loss key trains which nets (see the module docstring). "loss_g_alone" is BicycleGAN's
    # latent regression: it updates G only, never E.
    LOSS_TARGETS: ClassVar[dict[str, tuple[str, ...]]] = {
        "loss_g": ("G", "E"),
        "loss_g_alone": ("G",),
        "loss_d": ("D", "D2"),
    }

    # BicycleGAN's weights (Zhu et al. 2017; their option names)
    lambda_GAN: float = 1.0  # cVAE-GAN adversarial term, D on B^
    lambda_GAN2: float = 1.0  # cLR-GAN adversarial term, D2 on B~
    lambda_L1: float = 10.0  # ||B - B^||_1
    lambda_kl: float = 0.01  # KL(E(B) || N(0, I))
    lambda_z: float = 0.5  # latent regression ||z - mu(E(B~))||_1

    def prepare(self, nets: GANNets, task: TaskInfo) -> GANNets:
        """Called before the optimizers are built; may return other nets (standalone, piggyback)."""
        return nets

    # --- the base models' objectives --------------------------------------------------------
    def gan_loss(self, nets: GANNets, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if nets.cfg.condition == "label":
            return self.conditional_gan_loss(nets, batch)
        return self.bicycle_gan_loss(nets, batch)

    def conditional_gan_loss(self, nets: GANNets, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Class-conditional GAN: D on (x, y) vs (G(z, y), y), with y the real batch's labels; with
        `mode_seeking` = lambda_ms > 0, the generator also pays lambda_ms * L_ms (`mode_seeking_loss`)."""
        kind = nets.cfg.gan_loss
        x, y = batch["x"], batch["y"]
        G, D = nets["G"], nets["D"]
        z = torch.randn(x.shape[0], nets.cfg.z_dim, device=x.device, dtype=x.dtype)
        fake = G(z, y)  # (B, C, H, W)
        loss_g_gan = gan_loss_g(D(fake, y), kind)
        loss_d = gan_loss_d(D(x, y), D(fake.detach(), y), kind)
        out = {"loss_g": loss_g_gan, "loss_d": loss_d, "loss_g_gan": loss_g_gan.detach(), "loss_d_gan": loss_d.detach()}
        if nets.cfg.mode_seeking > 0:
            z2 = torch.randn_like(z)
            loss_ms = mode_seeking_loss(fake, G(z2, y), z, z2)
            out.update(loss_g=loss_g_gan + nets.cfg.mode_seeking * loss_ms, loss_ms=loss_ms.detach())
        return out

    def bicycle_gan_loss(self, nets: GANNets, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """BicycleGAN = cVAE-GAN (B -> z -> B^) + cLR-GAN (z -> B~ -> z^), full batch for both branches."""
        kind = nets.cfg.gan_loss
        A, B = batch["a"], batch["x"]
        G, E, D, D2 = nets["G"], nets["E"], nets["D"], nets["D2"]

        # cVAE-GAN: encode the real target, reconstruct it
        mu, logvar = E(B)
        z_encoded = reparameterize(mu, logvar)
        fake_B_encoded = G(A, z_encoded)  # B^
        # cLR-GAN: a random latent must be recoverable from what it generates
        z_random = torch.randn(B.shape[0], nets.cfg.z_dim, device=B.device, dtype=B.dtype)
        fake_B_random = G(A, z_random)  # B~
        mu2, _ = E(fake_B_random)

        loss_G_GAN = gan_loss_g(D(fake_B_encoded), kind)
        loss_G_GAN2 = gan_loss_g(D2(fake_B_random), kind)
        loss_G_L1 = (B - fake_B_encoded).abs().mean()
        loss_kl = kl_to_standard_normal(mu, logvar)
        loss_z_L1 = (mu2 - z_random).abs().mean()
        loss_g = (
            self.lambda_GAN * loss_G_GAN
            + self.lambda_GAN2 * loss_G_GAN2
            + self.lambda_L1 * loss_G_L1
            + self.lambda_kl * loss_kl
        )

        loss_D = gan_loss_d(D(B), D(fake_B_encoded.detach()), kind)
        loss_D2 = gan_loss_d(D2(B), D2(fake_B_random.detach()), kind)
        return {
            "loss_g": loss_g,
            "loss_g_alone": self.lambda_z * loss_z_L1,
            "loss_d": loss_D + loss_D2,
            "loss_G_GAN": loss_G_GAN.detach(),
            "loss_G_GAN2": loss_G_GAN2.detach(),
            "loss_G_L1": loss_G_L1.detach(),
            "loss_kl": loss_kl.detach(),
            "loss_z_L1": loss_z_L1.detach(),
            "loss_D": loss_D.detach(),
            "loss_D2": loss_D2.detach(),
        }


class GANFineTune(GANMethod):
    """Train task t from task t-1's nets on task t's data only. The lower bound; forgets."""

    def loss(self, nets: GANNets, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.gan_loss(nets, batch)


class GANJoint(GANFineTune):
    """The GAN loss on the union of tasks 1..t. The upper bound; not continual.

    GANFineTune's loss; the difference lives in the data (catalog: trains_on_seen_tasks).
    """


class GANStandalone(GANFineTune):
    """A new, freshly initialised model per task: no forgetting, no transfer, T times the parameters."""

    def prepare(self, nets: GANNets, task: TaskInfo) -> GANNets:
        # Seeded by (generator_seed, task) without touching the global RNG. Under DDP every rank must
        # start from the same weights: DDP broadcasts rank 0's, or give all ranks one generator_seed.
        p = next(nets.parameters())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.generator_seed * 1_000_003 + task.index)
            fresh = build_gan(nets.cfg)
        return fresh.to(device=p.device, dtype=p.dtype)
