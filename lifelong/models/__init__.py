"""Generative models and their samplers, and the one function that loads any saved model file."""

from __future__ import annotations

from typing import Any

from torch import nn

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


def model_family(state: dict[str, Any]) -> str:
    """A saved model dict says its family; diffusion files from before GANs existed say nothing."""
    return state.get("family", "diffusion")


def build_gan_nets(cfg):
    """`build_gan(cfg)`, with the generator turned into its piggyback form when cfg says it has a
    filter bank, so that the state_dict of a piggyback_gan model loads into it."""
    from lifelong.models import piggyback
    from lifelong.models.gan import build_gan

    nets = build_gan(cfg)
    if cfg.piggyback_tasks:
        G = nets["G"]
        nets["G"] = piggyback.rebuild(lambda: G, cfg.piggyback_ratio, cfg.piggyback_tasks)
    return nets


def load_model(state: dict[str, Any]) -> nn.Module:
    """A model from its saved dict ({"config", "state_dict"[, "family"]}), on the CPU."""
    family = model_family(state)
    if family == "diffusion":
        return load_state(state)
    if family == "gan":
        from lifelong.models.gan import load_gan_state

        return load_gan_state(state, build=build_gan_nets)
    raise ValueError(f"model file of unknown family {family!r} (known: diffusion, gan)")


def model_config(state: dict[str, Any]):
    """The config dataclass of a saved model dict."""
    if model_family(state) == "gan":
        from lifelong.models.gan import GANConfig

        return GANConfig.from_dict(state["config"])
    return DiffusionConfig.from_dict(state["config"])


__all__ = [
    "ConditionalUNet",
    "DiffusionConfig",
    "build_gan_nets",
    "build_unet",
    "ddim_sample",
    "load_model",
    "load_state",
    "make_ddim_scheduler",
    "make_ddpm_scheduler",
    "model_config",
    "model_family",
    "save_state",
    "to_uint8",
]
