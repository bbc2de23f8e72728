"""Continual-learning methods: one class per method, one explicit registry."""

from __future__ import annotations

from typing import Any

from lifelong.methods.base import Method, TaskInfo
from lifelong.methods.finetune import FineTune
from lifelong.methods.generative_distillation import GenerativeDistillation
from lifelong.methods.generative_replay import GenerativeReplay
from lifelong.methods.joint import Joint
from lifelong.models.diffusion import DiffusionConfig

METHODS: dict[str, type[Method]] = {
    "finetune": FineTune,
    "joint": Joint,
    "generative_replay": GenerativeReplay,
    "generative_distillation": GenerativeDistillation,
}


def make_method(name: str, cfg: DiffusionConfig, **kwargs: Any) -> Method:
    try:
        cls = METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; valid names: {', '.join(sorted(METHODS))}") from None
    return cls(cfg, **kwargs)


__all__ = [
    "METHODS",
    "FineTune",
    "GenerativeDistillation",
    "GenerativeReplay",
    "Joint",
    "Method",
    "TaskInfo",
    "make_method",
]
