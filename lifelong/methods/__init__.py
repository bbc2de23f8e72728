"""Continual-learning methods: one class per method, one explicit registry per model family.

A method's family is the kind of generative model it trains: "diffusion" (class-conditional DDPM)
or "gan" (label-conditioned DCGAN or image-conditioned BicycleGAN). Baselines exist in both
families under the same name (fine-tuning a GAN is not fine-tuning a diffusion model: other loss).
`catalog.CATALOG` describes the same (family, name) keys without importing torch (a test checks it).
"""

from __future__ import annotations

from typing import Any

from lifelong.catalog import method_spec
from lifelong.methods.base import Method, TaskInfo
from lifelong.methods.diffusion import DiffusionMethod
from lifelong.methods.diffusion_piggyback import DiffusionPiggyback
from lifelong.methods.finetune import FineTune
from lifelong.methods.gan import GANFineTune, GANJoint, GANMethod, GANStandalone
from lifelong.methods.generative_distillation import GenerativeDistillation
from lifelong.methods.generative_replay import GenerativeReplay
from lifelong.methods.intermediate_distillation import IntermediateDistillation
from lifelong.methods.joint import Joint
from lifelong.methods.lifelong_gan import LifelongGAN
from lifelong.methods.piggyback_gan import PiggybackGAN

METHODS: dict[str, dict[str, type[Method]]] = {
    "diffusion": {
        "finetune": FineTune,
        "joint": Joint,
        "generative_replay": GenerativeReplay,
        "generative_distillation": GenerativeDistillation,
        "intermediate_distillation": IntermediateDistillation,
        "piggyback": DiffusionPiggyback,
    },
    "gan": {
        "finetune": GANFineTune,
        "joint": GANJoint,
        "standalone": GANStandalone,
        "lifelong_gan": LifelongGAN,
        "piggyback_gan": PiggybackGAN,
    },
}


def family_of(cfg: Any) -> str:
    """The family a model config belongs to (DiffusionConfig -> diffusion, GANConfig -> gan)."""
    from lifelong.models.diffusion import DiffusionConfig
    from lifelong.models.gan import GANConfig

    if isinstance(cfg, DiffusionConfig):
        return "diffusion"
    if isinstance(cfg, GANConfig):
        return "gan"
    raise TypeError(f"no method family for a {type(cfg).__name__}; expected DiffusionConfig or GANConfig")


def method_class(family: str, name: str) -> type[Method]:
    method_spec(family, name)  # one error listing the valid names on a typo (the catalog has the same keys)
    return METHODS[family][name]


def make_method(name: str, cfg: Any, **kwargs: Any) -> Method:
    """The method `name` of cfg's family (a DiffusionConfig or a GANConfig), built with kwargs: its
    knobs by their params.yaml names (a knob it does not have is a TypeError) and generator_seed."""
    return method_class(family_of(cfg), name)(cfg, **kwargs)


__all__ = [
    "METHODS",
    "DiffusionMethod",
    "DiffusionPiggyback",
    "FineTune",
    "GANFineTune",
    "GANJoint",
    "GANMethod",
    "GANStandalone",
    "GenerativeDistillation",
    "GenerativeReplay",
    "IntermediateDistillation",
    "Joint",
    "LifelongGAN",
    "Method",
    "PiggybackGAN",
    "TaskInfo",
    "family_of",
    "make_method",
    "method_class",
]
