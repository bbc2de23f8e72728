"""Generative replay for diffusion (Masip et al., CoLLAs 2024): the teacher's few-step samples as data.

L_replay = || eps - eps_theta(x^_t, t, y^) ||^2
"""

from __future__ import annotations

from torch import Tensor

from lifelong.methods.losses import NoisedBatch
from lifelong.methods.replay import ReplayMethod, replay_target


class GenerativeReplay(ReplayMethod):
    def replay_target(self, q: NoisedBatch, y_hat: Tensor) -> Tensor:
        return replay_target(q)
