"""Class-conditional DDPM (eps-prediction) built from diffusers parts.

The network (`ConditionalUNet`, a thin wrapper over diffusers' `UNet2DModel`) is kept separate from
the noise schedule (`DDPMScheduler` for training, `DDIMScheduler` for sampling), as in diffusers.
Replay during training and evaluation both sample through `ddim_sample`.

Classifier-free guidance (Ho & Salimans 2022), on when `label_dropout` > 0: training replaces a share
p_uncond of the labels by a null label (index `num_classes`, one extra class-embedding row), so the same
network learns eps_theta(x_t, t, y) and eps_theta(x_t, t, null); sampling then follows
  eps~ = (1 + w) eps_theta(x_t, t, y) - w eps_theta(x_t, t, null),   w = guidance_scale.
An unconditional model (`conditional=False`, the generative-distillation paper's own setting) has no
class embedding: the network is eps_theta(x_t, t) and ignores the labels every caller still passes, so
its samples cover all classes it learnt and replay draws them without labels.
Data convention: images in [-1, 1], shape (B, C, H, W); labels are LongTensors of shape (B,).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn


@dataclass
class DiffusionConfig:
    image_size_px: int = 16  # side of the square images; must halve cleanly once per extra level
    in_channels: int = 1  # 1 for (Fashion-)MNIST, 3 for RGB
    num_classes: int = 10  # size of the class-embedding table (labels 0..num_classes-1)
    block_out_channels: tuple[int, ...] = (32, 64)  # one entry per resolution; paper GPU profile: (64, 128, 256, 512)
    layers_per_block: int = 1  # resnet layers per resolution level
    attention: bool = False  # self-attention at the lowest resolution (AttnDown/AttnUpBlock2D)
    conditional: bool = True  # False: eps_theta(x_t, t) without a class embedding (labels are ignored)
    num_train_timesteps: int = 1000  # T of the forward process
    beta_start: float = 1e-4  # linear beta schedule, Ho et al. (2020)
    beta_end: float = 0.02
    label_dropout: float = 0.0  # p_uncond: share of training labels replaced by the null label (0: no null label)
    guidance_scale: float = 0.0  # w of classifier-free guidance in every sampler (evaluation, replay); needs label_dropout > 0
    piggyback_ratio: float | None = None  # set by diffusion-piggyback (lambda); stored so a checkpoint rebuilds it
    piggyback_tasks: int = 0  # idem: number of tasks whose filters the checkpoint holds

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        levels = len(self.block_out_channels)
        if levels < 1:
            raise ValueError("block_out_channels: need at least one level")
        if self.image_size_px % 2 ** (levels - 1) != 0:
            raise ValueError(
                f"image_size_px={self.image_size_px} cannot be halved {levels - 1} times "
                f"for block_out_channels={self.block_out_channels}"
            )
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must lie in [0, 1), got {self.label_dropout}")
        if self.guidance_scale < 0.0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if self.piggyback_ratio is not None and not 0.0 < self.piggyback_ratio <= 1.0:
            raise ValueError(f"piggyback_ratio must be in (0, 1], got {self.piggyback_ratio}")
        if self.piggyback_tasks < 0:
            raise ValueError(f"piggyback_tasks must be >= 0, got {self.piggyback_tasks}")
        if not self.conditional and (self.label_dropout > 0.0 or self.guidance_scale > 0.0):
            raise ValueError("an unconditional model (conditional=False) has no labels to drop or guide by: "
                             "set label_dropout and guidance_scale to 0")
        if self.guidance_scale > 0.0 and self.label_dropout == 0.0:
            raise ValueError("guidance_scale > 0 needs label_dropout > 0: without it the network never learns the "
                             "unconditional eps_theta(x_t, t, null) that guidance subtracts")

    @property
    def null_label(self) -> int | None:
        """The label index of 'no label' (classifier-free guidance), None when the model has none."""
        return self.num_classes if self.label_dropout > 0 else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)  # JSON has no tuples
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiffusionConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"DiffusionConfig: unknown keys {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**d)


class ConditionalUNet(nn.Module):
    """eps_theta(x_t, t, y): returns a plain tensor so callers never see diffusers' output types.
    Unconditional (`conditional=False`): eps_theta(x_t, t); y is accepted and ignored."""

    def __init__(self, unet: UNet2DModel, conditional: bool = True) -> None:
        super().__init__()
        self.unet = unet
        self.conditional = conditional

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
        # x_t: (B, C, H, W), t: (B,) long, y: (B,) long -> eps: (B, C, H, W)
        return self.unet(x_t, t, class_labels=y if self.conditional else None).sample


def _norm_groups(channels: tuple[int, ...]) -> int:
    # GroupNorm needs a group count dividing every width; 32 is diffusers' default for wide nets,
    # tiny test nets (8, 16) get 8.
    return math.gcd(32, *channels)


def build_unet(cfg: DiffusionConfig) -> ConditionalUNet:
    levels = len(cfg.block_out_channels)
    lowest_down = "AttnDownBlock2D" if cfg.attention else "DownBlock2D"
    lowest_up = "AttnUpBlock2D" if cfg.attention else "UpBlock2D"
    unet = UNet2DModel(
        sample_size=cfg.image_size_px,
        in_channels=cfg.in_channels,
        out_channels=cfg.in_channels,  # eps has the image's shape
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        down_block_types=("DownBlock2D",) * (levels - 1) + (lowest_down,),
        up_block_types=(lowest_up,) + ("UpBlock2D",) * (levels - 1),
        norm_num_groups=_norm_groups(cfg.block_out_channels),
        # class embedding added to the time embedding; one more row for the null label of guidance
        num_class_embeds=cfg.num_classes + (cfg.null_label is not None) if cfg.conditional else None,
    )
    return ConditionalUNet(unet, conditional=cfg.conditional)


def make_ddpm_scheduler(cfg: DiffusionConfig) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule="linear",
        prediction_type="epsilon",
        clip_sample=True,  # data lives in [-1, 1]
    )


def make_ddim_scheduler(cfg: DiffusionConfig) -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule="linear",
        prediction_type="epsilon",
        clip_sample=True,  # data lives in [-1, 1]
        set_alpha_to_one=True,  # last step lands on the clean x_0 prediction
        # "trailing" starts at t = T-1 for any step count: with the default "leading" spacing a
        # 1-step sampler would start from pure noise at t=0 and 2 steps at t=500 (few-step replay
        # needs the first step at the pure-noise end; Lin et al., "Common Diffusion Noise
        # Schedules and Sample Steps are Flawed", WACV 2024).
        timestep_spacing="trailing",
    )


def _param(model: nn.Module) -> Tensor:
    return next(model.parameters())


def drop_labels(y: Tensor, cfg: DiffusionConfig) -> Tensor:
    """Classifier-free guidance's training-time label dropout: each label becomes the null label with
    probability p_uncond (global torch RNG, like the forward process's noise). Identity when p_uncond = 0."""
    if cfg.null_label is None:
        return y
    return torch.where(torch.rand(y.shape, device=y.device) < cfg.label_dropout, cfg.null_label, y)


def guided_eps(model: nn.Module, x_t: Tensor, t: Tensor, y: Tensor, cfg: DiffusionConfig) -> Tensor:
    """eps~ = (1 + w) eps_theta(x_t, t, y) - w eps_theta(x_t, t, null); plain eps_theta(x_t, t, y) when w = 0.
    The conditional and unconditional halves go through the network as one batch."""
    w = cfg.guidance_scale
    if w == 0.0:
        return model(x_t, t, y)
    null = torch.full_like(y, cfg.null_label)
    eps_y, eps_null = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null])).chunk(2)
    return (1.0 + w) * eps_y - w * eps_null


@torch.no_grad()
def ddim_sample(
    model: nn.Module,
    labels: Tensor,
    *,
    cfg: DiffusionConfig,
    num_steps: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DDIM (eta = 0) from x_T ~ N(0, I), with cfg's classifier-free guidance; returns images in [-1, 1],
    (N, C, H, W) on model's device.

    The generator only draws x_T (eta = 0 is deterministic); it may live on the CPU for a GPU model.
    """
    p = _param(model)
    device, dtype = p.device, p.dtype
    sched = make_ddim_scheduler(cfg)  # fresh per call: set_timesteps mutates the scheduler
    sched.set_timesteps(num_steps)
    y = labels.to(device=device, dtype=torch.long)  # (N,)
    shape = (y.shape[0], cfg.in_channels, cfg.image_size_px, cfg.image_size_px)
    x = randn_tensor(shape, generator=generator, device=device, dtype=dtype)  # x_T: (N, C, H, W)
    for t in sched.timesteps:
        t_batch = torch.full((y.shape[0],), int(t), device=device, dtype=torch.long)
        eps = guided_eps(model, x, t_batch, y, cfg)
        x = sched.step(eps, t, x, eta=0.0).prev_sample.to(dtype)
    return x.clamp(-1.0, 1.0)


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] float -> [0, 255] uint8, same shape."""
    return ((x.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def save_state(model: nn.Module, cfg: DiffusionConfig) -> dict[str, Any]:
    """Checkpoint of only primitives and tensors, so `torch.load(weights_only=True)` reads it."""
    model = getattr(model, "module", model)  # unwrap DDP
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"config": cfg.to_dict(), "state_dict": state}


def build_unet_for(cfg: DiffusionConfig) -> ConditionalUNet:
    """`build_unet(cfg)`, turned into its piggyback form when cfg says it has a filter bank, so that the
    state_dict of a diffusion-piggyback model loads into it."""
    model = build_unet(cfg)
    if cfg.piggyback_tasks:
        from lifelong.models import piggyback

        model = piggyback.rebuild(lambda: model, cfg.piggyback_ratio, cfg.piggyback_tasks)
    return model


def load_state(d: dict[str, Any]) -> ConditionalUNet:
    cfg = DiffusionConfig.from_dict(d["config"])
    model = build_unet_for(cfg)
    model.load_state_dict(d["state_dict"])
    return model
