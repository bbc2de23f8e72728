"""Fine-tuning: train task t from task t-1's weights on task t's data only. The lower bound; forgets."""

from __future__ import annotations

from torch import Tensor, nn

from lifelong.methods.base import Method


class FineTune(Method):
    def loss(self, model: nn.Module, x0: Tensor, y: Tensor) -> dict[str, Tensor]:
        l_data = self.data_loss(model, x0, y)
        return {"loss": l_data, "loss_data": l_data.detach()}
