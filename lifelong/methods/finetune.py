"""Fine-tuning: train task t from task t-1's weights on task t's data only. The lower bound; forgets."""

from __future__ import annotations

from torch import Tensor, nn

from lifelong.methods.diffusion import DiffusionMethod


class FineTune(DiffusionMethod):
    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        l_data = self.data_loss(model, batch["x0"], batch["y"])
        return {"loss": l_data, "loss_data": l_data.detach()}
