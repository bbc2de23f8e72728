"""Piggyback GAN (Zhai et al., ECCV 2020): each task's generator filters = a few new free filters
plus linear combinations of a frozen filter bank made of the earlier tasks' filters.

The method only changes the generator's structure between tasks (`prepare`); its loss is the plain
GAN loss of fine-tuning. With `warm_start` (the default) task t's generator starts as task t-1's
(same effective filters, biases and per-task layers; see lifelong/models/piggyback.py), as
fine-tuning's does; without it, task t's new filters and mixing matrices start from random draws.
Old tasks never change: their free filters, mixing matrices and per-task layers are frozen inside
the same module, so `set_task(G, i)` rebuilds task i exactly. The discriminators are ordinary
networks, carried over and retrained on each task.
"""

from __future__ import annotations

from lifelong.methods.base import TaskInfo
from lifelong.methods.gan import GANFineTune
from lifelong.models import piggyback
from lifelong.models.gan import GANConfig


class PiggybackGAN(GANFineTune):
    def __init__(
        self,
        cfg: GANConfig,
        *,
        filter_ratio: float = 0.25,  # lambda: share of each layer's filters that are new and free
        warm_start: bool = True,  # task t's generator starts as task t-1's, not from random U_t, M_t
        generator_seed: int = 0,
    ) -> None:
        super().__init__(cfg, generator_seed=generator_seed)
        self.filter_ratio = filter_ratio
        self.warm_start = warm_start

    def prepare(self, nets, task: TaskInfo):
        tasks = piggyback.for_task(nets["G"], task.index, self.filter_ratio, warm_start=self.warm_start,
                                   method="piggyback_gan")
        nets.cfg.piggyback_ratio = self.filter_ratio  # the exported file says how to rebuild the structure
        nets.cfg.piggyback_tasks = tasks
        return nets
