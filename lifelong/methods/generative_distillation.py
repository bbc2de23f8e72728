"""Generative distillation for diffusion (Masip et al., CoLLAs 2024): match the teacher's eps on replay.

L_replay = || eps_teacher(x^_t, t, y^) - eps_theta(x^_t, t, y^) ||^2
One teacher forward more per step than generative replay.
"""

from __future__ import annotations

from torch import Tensor

from lifelong.methods.losses import NoisedBatch
from lifelong.methods.replay import ReplayMethod, distillation_target


class GenerativeDistillation(ReplayMethod):
    def replay_target(self, q: NoisedBatch, y_hat: Tensor) -> Tensor:
        return distillation_target(self.teacher, q, y_hat)
