"""The MLflow model of every registered version: a generator you load and call without the pipeline.

    import mlflow, pandas
    g = mlflow.pyfunc.load_model("models:/lifelong-fmnist-label-gan-lifelong_gan@task-3")
    images = g.predict(pandas.DataFrame({"class": [3, 3, 7]}))   # float32 (3, 1, H, W) in [0, 1]
    images = g.predict(df, params={"seed": 1})                  # other noise; also batch_size, ddim_steps

An unconditional diffusion model (`model.conditional: false`) takes the same `class` column and ignores
its values: one sample per row, of whichever seen class the model draws.
Image-conditioned runs (the `image` scenario) take a `condition` column instead: one H x W image per
row (nested lists of floats in [0, 1], the A side of the task, e.g. an edge map; H x W x 3 for a model
trained with image_data.channels 3) and return G(A, z), float32 (N, 3, H, W) for such a model.

The version's alias picks the task: `@task-k` is the model registered after task k, generating as it
did then (a Piggyback GAN's filter bank is switched to task k's filters). With the default params a
version reproduces the pipeline's evaluation images of its task right after training it (the matrix's
diagonal) bit for bit: the seed is `lifelong.evaluation.eval_seed(params.yaml seed, k, k)`, and
batch_size and ddim_steps are the evaluation's.

This file is logged as code (MLflow's "models from code"), never pickled: MLflow copies it into the
model and runs it at load time, so it needs only this project installed. The weights are the
state_dict file the pipeline trained (`model.pt`, loaded with torch.load(weights_only=True)), and
`generator.json` holds the task and the defaults above.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np


class LifelongGenerator(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        import torch

        from lifelong.models import load_model, model_config, model_family

        with open(context.artifacts["generator"]) as f:
            self.spec = json.load(f)
        state = torch.load(context.artifacts["model"], map_location="cpu", weights_only=True)
        self.family, self.cfg = model_family(state), model_config(state)
        self.net = load_model(state).eval()
        if getattr(self.cfg, "piggyback_tasks", 0):  # the filter bank computes the alias's task
            from lifelong.evaluation.generate import banked_net
            from lifelong.models import piggyback

            piggyback.set_task(banked_net(self.net), self.spec["task"])

    def predict(self, context, model_input, params: dict | None = None) -> np.ndarray:
        import torch

        from lifelong.evaluation.generate import gan_generate, gan_translate, generate

        given = params or {}
        p = {key: int(self.spec[key] if given.get(key) is None else given[key]) for key in ("seed", "batch_size", "ddim_steps")}
        if self.spec["scenario"] == "image":
            a = np.stack([_image(c) for c in model_input["condition"]])
            a = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
            images = gan_translate(self.net, a, seed=p["seed"], batch_size=p["batch_size"])
        else:
            labels = torch.tensor(np.asarray(model_input["class"], dtype=np.int64))
            bad = [int(c) for c in labels if not 0 <= c < self.cfg.num_classes]
            if bad:
                raise ValueError(f"class {bad[0]} is out of range: this model knows classes 0..{self.cfg.num_classes - 1}")
            if self.family == "gan":
                images = gan_generate(self.net, labels, seed=p["seed"], batch_size=p["batch_size"])
            else:
                images = generate(self.net, labels, cfg=self.cfg, steps=p["ddim_steps"], seed=p["seed"],
                                  batch_size=p["batch_size"])
        # uint8 (N, H, W) -> (N, 1, H, W), RGB (N, H, W, 3) -> (N, 3, H, W), in [0, 1]
        images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
        return images.astype(np.float32) / np.float32(255.0)


def _image(cell) -> np.ndarray:
    """One `condition` cell -> float64 (H, W) or (H, W, 3). Nested lists convert directly; MLflow's
    schema enforcement hands them over as object arrays of arrays, stacked here level by level."""
    a = cell if isinstance(cell, np.ndarray) else np.asarray(cell)
    return a.astype(np.float64) if a.dtype != object else np.stack([_image(row) for row in a])


mlflow.models.set_model(LifelongGenerator())
