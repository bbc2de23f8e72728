"""Class-conditional samples for evaluation, with the same DDIM sampler the teacher's replay uses."""

from __future__ import annotations

import numpy as np
import torch

from lifelong.images import channels_last, to_model_range
from lifelong.models.diffusion import DiffusionConfig, ddim_sample, to_uint8


def eval_seed(seed: int, after_task: int, task: int) -> int:
    """The noise seed for generating `task` with the model of `after_task` (tasks < 100): fresh noise in
    every cell of the task x task matrix, for every method alike, so a method whose weights for a task
    never change (standalone, Piggyback) is re-sampled at each evaluation row like the others, and its
    forgetting is measured, not 0 by construction. The diagonal (k, k) is what `@task-k` generates."""
    return seed * 10_000 + after_task * 100 + task


@torch.no_grad()
def generate_per_class(model, classes: list[int], *, per_class: int, cfg: DiffusionConfig, steps: int,
                       seed: int, batch_size: int = 500,
                       device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """`per_class` DDIM samples of each class: uint8 images (N, H, W) and their labels (N,)."""
    labels = torch.tensor(np.repeat(classes, per_class), dtype=torch.long)
    return generate(model, labels, cfg=cfg, steps=steps, seed=seed, batch_size=batch_size, device=device), labels.numpy()


@torch.no_grad()
def generate(model, labels: torch.Tensor, *, cfg: DiffusionConfig, steps: int, seed: int, batch_size: int = 500,
             device: torch.device | str = "cpu") -> np.ndarray:
    """One DDIM sample per label (a long tensor (N,)): uint8 images (N, H, W). Same seed, labels and
    batch_size: the same images, bit for bit."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    images = []
    for chunk in labels.split(batch_size):
        x = ddim_sample(model, chunk.to(device), cfg=cfg, num_steps=steps, generator=gen)
        images.append(channels_last(to_uint8(x).cpu()))  # (B, 1, H, W) -> (B, H, W): the label scenario is gray
    return torch.cat(images).numpy()


def _gan_batches(nets, n: int, batch_size: int, seed: int, device, make_batch) -> np.ndarray:
    """n samples of `nets`, `make_batch(i, j)` giving the condition of rows i..j-1: uint8 (n, H, W), or
    (n, H, W, 3) for a GAN of 3 channels."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for start in range(0, n, batch_size):
        kwargs = make_batch(start, min(n, start + batch_size))
        size = next(iter(kwargs.values())).shape[0]
        z = torch.randn(size, nets.cfg.z_dim, generator=gen).to(device)  # same z for every model: comparable
        x = nets.sample(z=z, **{k: v.to(device) for k, v in kwargs.items()})  # (B, C, H, W) in [-1, 1]
        out.append(channels_last(to_uint8(x).cpu()))
    return torch.cat(out).numpy()


@torch.no_grad()
def gan_generate_per_class(nets, classes: list[int], *, per_class: int, seed: int, batch_size: int = 500,
                           device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Label-conditioned GAN: G(z, y) for `per_class` random z per class: uint8 (N, H, W) and labels (N,)."""
    labels = torch.tensor(np.repeat(classes, per_class), dtype=torch.long)
    return gan_generate(nets, labels, seed=seed, batch_size=batch_size, device=device), labels.numpy()


@torch.no_grad()
def gan_generate(nets, labels: torch.Tensor, *, seed: int, batch_size: int = 500,
                 device: torch.device | str = "cpu") -> np.ndarray:
    """Label-conditioned GAN: G(z, y) for one random z per label (a long tensor (N,)): uint8 (N, H, W)."""
    return _gan_batches(nets.eval(), len(labels), batch_size, seed, device, lambda i, j: {"y": labels[i:j]})


@torch.no_grad()
def gan_translate(nets, conditions: np.ndarray, *, seed: int, batch_size: int = 500,
                  device: torch.device | str = "cpu") -> np.ndarray:
    """Image-conditioned GAN: G(A, z), one random z per condition image A: uint8 (N, H, W) -> uint8 (N, H, W),
    or RGB uint8 (N, H, W, 3) -> uint8 (N, H, W, 3)."""
    a = to_model_range(conditions)  # (N, C, H, W) in [-1, 1]
    return _gan_batches(nets.eval(), len(a), batch_size, seed, device, lambda i, j: {"a": a[i:j]})


def banked_net(model):
    """The network that holds a piggyback filter bank, if the method made one: a GAN's generator (its
    E and D are ordinary), or the diffusion UNet itself."""
    return model["G"] if hasattr(model, "generator_side") else model


def weights_for_task(old_task_weights: str, models: dict, k: int, j: int):
    """The weights that generate old task j after task k, by the method's `old_task_weights`
    (lifelong.catalog): "final_model" -> the task-k model; "own_model" -> task j's own model
    (standalone); "task_filters" -> the task-k piggyback network (GAN generator or diffusion UNet)
    switched to task j's filters, rebuilt exactly from U_j, M_j and the bank F_j (switch back with
    `piggyback.set_task`)."""
    if old_task_weights == "own_model":
        return models[j]
    net = models[k]
    if old_task_weights == "task_filters":
        from lifelong.models import piggyback

        piggyback.set_task(banked_net(net), j)
    elif old_task_weights != "final_model":
        raise ValueError(f"unknown old_task_weights {old_task_weights!r}; see lifelong.catalog.MethodSpec")
    return net
