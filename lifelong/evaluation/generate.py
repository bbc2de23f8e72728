"""Class-conditional samples for evaluation, with the same DDIM sampler the teacher's replay uses."""

from __future__ import annotations

import numpy as np
import torch

from lifelong.models.diffusion import DiffusionConfig, ddim_sample, to_uint8


@torch.no_grad()
def generate_per_class(model, classes: list[int], *, per_class: int, cfg: DiffusionConfig, steps: int,
                       seed: int, batch_size: int = 500,
                       device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """`per_class` DDIM samples of each class: uint8 images (N, H, W) and their labels (N,)."""
    labels = torch.tensor(np.repeat(classes, per_class), dtype=torch.long)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    images = []
    for chunk in labels.split(batch_size):
        x = ddim_sample(model, chunk.to(device), cfg=cfg, num_steps=steps, generator=gen)
        images.append(to_uint8(x).cpu()[:, 0])  # (B, 1, H, W) -> (B, H, W): our images are grayscale
    return torch.cat(images).numpy(), labels.numpy()
