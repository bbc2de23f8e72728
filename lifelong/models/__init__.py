"""Generative models and their samplers."""

from lifelong.models.diffusion import (
    ConditionalUNet,
    DiffusionConfig,
    build_unet,
    ddim_sample,
    load_state,
    make_ddim_scheduler,
    make_ddpm_scheduler,
    save_state,
    to_uint8,
)

__all__ = [
    "ConditionalUNet",
    "DiffusionConfig",
    "build_unet",
    "ddim_sample",
    "load_state",
    "make_ddim_scheduler",
    "make_ddpm_scheduler",
    "save_state",
    "to_uint8",
]
