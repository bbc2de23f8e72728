"""Small conditional GANs for Lifelong GAN / Piggyback GAN: label-conditioned and image-conditioned.

- condition="label" (class-incremental): a DCGAN-style generator G(z, y) and a projection
  discriminator D(x, y) (Miyato & Koyama, ICLR 2018).
- condition="image" (image-to-image, BicycleGAN, Zhu et al. NeurIPS 2017): a U-Net generator G(A, z)
  with z concatenated to the input channels, an encoder E(B) -> (mu, logvar) and two PatchGAN
  discriminators D (cVAE-GAN branch) and D2 (cLR-GAN branch), both unconditional on A.

No BatchNorm anywhere: its running statistics keep changing while later tasks train, which would
break piggyback's "old tasks are bit-identical" guarantee, and they need syncing under DDP.
GroupNorm has no running state. No spectral norm either (its power-iteration buffers are state too).
Every weight lives in a plain nn.Conv2d / nn.ConvTranspose2d / nn.Linear, so piggyback can swap
layers by module. Data convention: images in [-1, 1], (B, C, H, W); labels are LongTensors (B,).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
from torch import Tensor, nn

_MAX_WIDTH_MULT = 8  # channel cap: width * 8, as in pix2pix/BicycleGAN's ngf * 8


@dataclass
class GANConfig:
    condition: Literal["label", "image"]  # label-conditioned (class-incremental) or image-conditioned (BicycleGAN)
    image_size_px: int = 16  # side of the square images; a power of two >= 8 so every net halves cleanly
    in_channels: int = 1  # 1 for (Fashion-)MNIST, 3 for RGB; A and B share it in the image setting
    num_classes: int = 10  # label: size of the class-embedding tables (image: labels unused by the nets)
    z_dim: int = 16  # latent size (BicycleGAN uses 8)
    width: int = 32  # base channel count; deeper layers use width * 2^i, capped at width * 8
    gan_loss: Literal["lsgan", "hinge"] = "lsgan"  # LSGAN is BicycleGAN's default
    mode_seeking: float = 0.0  # lambda_ms of the label generator's mode-seeking term (MSGAN); 0: off
    # label G's first layer: "deconv" = DCGAN's project-and-reshape as ConvTranspose2d(2 z_dim, C0, 4) on a
    # 1 x 1 input (a conv, so Piggyback banks its filters); "linear" = Linear(2 z_dim, C0 * 16), the layer of
    # checkpoints written before this option (a file without the key loads as "linear")
    label_stem: Literal["deconv", "linear"] = "deconv"
    piggyback_ratio: float | None = None  # set by the piggyback method (lambda); stored so a checkpoint rebuilds it
    piggyback_tasks: int = 0  # idem: number of tasks whose filters the checkpoint holds

    def __post_init__(self) -> None:
        if self.condition not in ("label", "image"):
            raise ValueError(f"condition must be 'label' or 'image', got {self.condition!r}")
        if self.label_stem not in ("deconv", "linear"):
            raise ValueError(f"label_stem must be 'deconv' or 'linear', got {self.label_stem!r}")
        if self.gan_loss not in ("lsgan", "hinge"):
            raise ValueError(f"gan_loss must be 'lsgan' or 'hinge', got {self.gan_loss!r}")
        s = self.image_size_px
        if s < 8 or s & (s - 1) != 0:
            raise ValueError(f"image_size_px must be a power of two >= 8, got {s}")
        for name in ("in_channels", "num_classes", "z_dim", "width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.piggyback_ratio is not None and not 0.0 < self.piggyback_ratio <= 1.0:
            raise ValueError(f"piggyback_ratio must be in (0, 1], got {self.piggyback_ratio}")
        if self.mode_seeking < 0:
            raise ValueError(f"mode_seeking must be >= 0, got {self.mode_seeking}")
        if self.piggyback_tasks < 0:
            raise ValueError(f"piggyback_tasks must be >= 0, got {self.piggyback_tasks}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GANConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"GANConfig: unknown keys {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**{"label_stem": "linear", **d})  # written before label_stem existed: the Linear stem


def _norm(channels: int) -> nn.GroupNorm:
    # GroupNorm: no running stats (see module docstring); 8 groups or fewer so tiny widths divide.
    return nn.GroupNorm(math.gcd(8, channels), channels)


def _ch(width: int, level: int) -> int:
    return width * min(2**level, _MAX_WIDTH_MULT)


def _levels(size_px: int, stop_px: int) -> int:
    """How many halvings take size_px down to stop_px."""
    return int(math.log2(size_px // stop_px))


def _down(c_in: int, c_out: int, norm: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)]
    if norm:
        layers.append(_norm(c_out))
    layers.append(nn.LeakyReLU(0.2))
    return layers


class LabelGenerator(nn.Module):
    """G(z, y): [z, embed(y)] -> project to (C0, 4, 4) -> ConvTranspose x2 blocks -> conv -> tanh.

    The projection (`fc`) is DCGAN's first layer, a 4 x 4 ConvTranspose2d of the 1 x 1 input (or, with
    cfg.label_stem "linear", a Linear reshaped to 4 x 4: the same map with a bias per position)."""

    def __init__(self, cfg: GANConfig) -> None:
        super().__init__()
        n_up = _levels(cfg.image_size_px, 4)
        c0 = _ch(cfg.width, n_up)
        self.c0, self.stem = c0, cfg.label_stem
        self.embed = nn.Embedding(cfg.num_classes, cfg.z_dim)
        self.fc = (nn.ConvTranspose2d(2 * cfg.z_dim, c0, 4) if cfg.label_stem == "deconv"
                   else nn.Linear(2 * cfg.z_dim, c0 * 4 * 4))
        self.fc_act = nn.Sequential(_norm(c0), nn.ReLU())
        blocks: list[nn.Module] = []
        c = c0
        for i in range(n_up - 1, -1, -1):  # 4 px -> image_size_px
            c_next = _ch(cfg.width, i)
            blocks += [nn.ConvTranspose2d(c, c_next, 4, stride=2, padding=1), _norm(c_next), nn.ReLU()]
            c = c_next
        self.up = nn.Sequential(*blocks)
        self.to_image = nn.Sequential(nn.Conv2d(c, cfg.in_channels, 3, padding=1), nn.Tanh())

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        x = torch.cat([z, self.embed(y)], dim=1)  # (B, 2 z_dim)
        h = self.fc(x[:, :, None, None] if self.stem == "deconv" else x)
        h = self.fc_act(h.view(z.shape[0], self.c0, 4, 4))  # (B, C0, 4, 4)
        return self.to_image(self.up(h))  # (B, C, H, W)


class ProjectionDiscriminator(nn.Module):
    """D(x, y) = psi(phi(x)) + <embed(y), phi(x)> (Miyato & Koyama 2018, eq. 3); returns (B,) logits."""

    def __init__(self, cfg: GANConfig) -> None:
        super().__init__()
        n_down = _levels(cfg.image_size_px, 4)
        layers = _down(cfg.in_channels, cfg.width, norm=False)  # no norm on the image layer, as DCGAN
        c = cfg.width
        for i in range(1, n_down):  # down to 4 x 4
            layers += _down(c, _ch(cfg.width, i))
            c = _ch(cfg.width, i)
        c_phi = _ch(cfg.width, n_down)
        layers += [nn.Conv2d(c, c_phi, 3, padding=1), _norm(c_phi), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.psi = nn.Linear(c_phi, 1)
        self.embed = nn.Embedding(cfg.num_classes, c_phi)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        phi = self.features(x).mean(dim=(2, 3))  # (B, c_phi) pooled features
        return self.psi(phi).squeeze(1) + (self.embed(y) * phi).sum(dim=1)  # (B,)


class UNetGenerator(nn.Module):
    """G(A, z): pix2pix U-Net down to 1 x 1, z broadcast-concatenated to A (BicycleGAN "add_to_input")."""

    def __init__(self, cfg: GANConfig) -> None:
        super().__init__()
        depth = _levels(cfg.image_size_px, 1)  # log2(size) stride-2 downs: size -> 1 x 1
        chs = [_ch(cfg.width, i) for i in range(depth)]
        downs: list[nn.Module] = [nn.Conv2d(cfg.in_channels + cfg.z_dim, chs[0], 4, stride=2, padding=1)]
        for i in range(1, depth):
            # no norm at the 1 x 1 bottleneck (a single value per channel; pix2pix's innermost block)
            norm = [_norm(chs[i])] if i < depth - 1 else []
            downs.append(nn.Sequential(nn.LeakyReLU(0.2), nn.Conv2d(chs[i - 1], chs[i], 4, stride=2, padding=1), *norm))
        self.downs = nn.ModuleList(downs)
        ups: list[nn.Module] = []
        for i in range(depth - 1, 0, -1):  # up[k] maps level i back to level i-1; skips double c_in
            c_in = chs[i] if i == depth - 1 else 2 * chs[i]
            ups.append(nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(c_in, chs[i - 1], 4, stride=2, padding=1), _norm(chs[i - 1])))
        ups.append(nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(2 * chs[0], cfg.in_channels, 4, stride=2, padding=1), nn.Tanh()))
        self.ups = nn.ModuleList(ups)

    def forward(self, a: Tensor, z: Tensor) -> Tensor:
        z_map = z[:, :, None, None].expand(-1, -1, a.shape[2], a.shape[3])  # (B, z_dim, H, W)
        h = torch.cat([a, z_map], dim=1)
        skips = []
        for down in self.downs:
            h = down(h)
            skips.append(h)  # (B, chs[i], H / 2^(i+1), W / 2^(i+1))
        h = skips.pop()  # the 1 x 1 bottleneck
        for up in self.ups[:-1]:
            h = torch.cat([up(h), skips.pop()], dim=1)
        return self.ups[-1](h)  # (B, C, H, W)


class Encoder(nn.Module):
    """E(B) -> (mu, logvar), each (B, z_dim): conv stack down to 4 x 4, average pool, two linear heads."""

    def __init__(self, cfg: GANConfig) -> None:
        super().__init__()
        n_down = _levels(cfg.image_size_px, 4)
        layers = _down(cfg.in_channels, cfg.width, norm=False)
        c = cfg.width
        for i in range(1, n_down):
            layers += _down(c, _ch(cfg.width, i))
            c = _ch(cfg.width, i)
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.mu = nn.Linear(c, cfg.z_dim)
        self.logvar = nn.Linear(c, cfg.z_dim)

    def forward(self, b: Tensor) -> tuple[Tensor, Tensor]:
        h = self.features(b)  # (B, c)
        return self.mu(h), self.logvar(h)


class PatchDiscriminator(nn.Module):
    """PatchGAN D(B) -> (B, 1, H/4, W/4) logits, one per overlapping patch; unconditional on A."""

    def __init__(self, cfg: GANConfig) -> None:
        super().__init__()
        n_down = _levels(cfg.image_size_px, cfg.image_size_px // 4)
        layers = _down(cfg.in_channels, cfg.width, norm=False)
        c = cfg.width
        for i in range(1, n_down):
            layers += _down(c, _ch(cfg.width, i))
            c = _ch(cfg.width, i)
        c_last = _ch(cfg.width, n_down)
        layers += [nn.Conv2d(c, c_last, 3, padding=1), _norm(c_last), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(c_last, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, b: Tensor) -> Tensor:
        return self.net(b)


class GANNets(nn.ModuleDict):
    """All nets of one GAN by role: label -> G, D; image -> G, E, D, D2. `cfg` travels with them."""

    def __init__(self, cfg: GANConfig, nets: dict[str, nn.Module]) -> None:
        super().__init__(nets)
        self.cfg = cfg

    @property
    def generator_side(self) -> list[str]:
        """Nets trained by loss_g (and kept as the model): ["G"] or ["G", "E"]."""
        return ["G"] if self.cfg.condition == "label" else ["G", "E"]

    @property
    def discriminator_side(self) -> list[str]:
        return ["D"] if self.cfg.condition == "label" else ["D", "D2"]

    @torch.no_grad()
    def sample(
        self,
        *,
        y: Tensor | None = None,
        a: Tensor | None = None,
        z: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Images in [-1, 1] on the nets' device: label -> G(z, y); image -> G(a, z).

        z ~ N(0, I) when not given, drawn with `generator` (which may live on the CPU for a GPU model).
        """
        p = next(self["G"].parameters())
        cond = y if self.cfg.condition == "label" else a
        if cond is None:
            raise ValueError(f"sample(): a {self.cfg.condition}-conditioned GAN needs {'y' if y is None else 'a'}")
        n = cond.shape[0]
        if z is None:
            if generator is None:
                z = torch.randn(n, self.cfg.z_dim, device=p.device, dtype=p.dtype)
            else:
                z = torch.randn(n, self.cfg.z_dim, generator=generator, device=generator.device, dtype=p.dtype)
        z = z.to(device=p.device, dtype=p.dtype)
        if self.cfg.condition == "label":
            return self["G"](z, cond.to(device=p.device, dtype=torch.long))
        return self["G"](cond.to(device=p.device, dtype=p.dtype), z)


def build_gan(cfg: GANConfig) -> GANNets:
    if cfg.condition == "label":
        return GANNets(cfg, {"G": LabelGenerator(cfg), "D": ProjectionDiscriminator(cfg)})
    return GANNets(
        cfg, {"G": UNetGenerator(cfg), "E": Encoder(cfg), "D": PatchDiscriminator(cfg), "D2": PatchDiscriminator(cfg)}
    )


def save_gan_state(nets: GANNets, cfg: GANConfig) -> dict[str, Any]:
    """Checkpoint of only primitives and tensors, so `torch.load(weights_only=True)` reads it."""
    nets = getattr(nets, "module", nets)  # unwrap DDP
    state = {k: v.detach().cpu() for k, v in nets.state_dict().items()}
    return {"family": "gan", "config": cfg.to_dict(), "state_dict": state}


def load_gan_state(d: dict[str, Any], build: Callable[[GANConfig], GANNets] = build_gan) -> GANNets:
    """`build` makes the empty nets for the config (piggyback passes one that re-applies its layers)."""
    family = d.get("family", "gan")
    if family != "gan":
        raise ValueError(f"load_gan_state: checkpoint family is {family!r}, not 'gan'")
    cfg = GANConfig.from_dict(d["config"])
    nets = build(cfg)
    nets.load_state_dict(d["state_dict"])
    return nets
