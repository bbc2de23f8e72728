"""The search objective, measured inside the training loop: pure PyTorch, no Ray Tune, no MLflow.

A spec (plain dict, shipped to the worker in TaskTrainConfig.objective):
    classifier         absolute path of the feature extractor / classifier checkpoint
    feature_extractor  "lifelong-cnn" | "inception-v3-compat" | "auto" (resolved by each measurement;
                       pipeline/tune.py resolves it once for the whole search)
    tasks              [[classes of task 1], ..., [classes of task k]]: every seen task
    real_shards        [[test shard paths of task 1], ...]: one list per seen task
    samples_per_class, ddim_steps, seed, kid_subset_size
    kind               "mean_fid": mean FID over the seen tasks (old and new both count)
                       "weighted": alpha * FID(task k) + (1 - alpha) * mean forgetting of tasks 1..k-1,
                                   forgetting_j = FID_j(now) - reference_fid[j] (its best earlier FID)
    alpha, reference_fid (weighted only: one number per earlier task)
Lower is better for both kinds.
"""

from __future__ import annotations

import numpy as np
import torch

OBJECTIVE_KINDS = ("mean_fid", "weighted")


def load_real(spec: dict) -> list[np.ndarray]:
    """The real test images of every seen task, uint8 (N, H, W), read once per task run."""
    from lifelong.data import read_all
    from lifelong.storage import local_shards

    return [read_all(local_shards(list(paths)))[0] for paths in spec["real_shards"]]


def combine(fids: list[float], spec: dict) -> dict[str, float]:
    """The objective from per-task FIDs (task order), plus the parts it is made of."""
    kind = spec.get("kind", "mean_fid")
    out = {f"fid_task{j}": float(f) for j, f in enumerate(fids, start=1)}
    out["fid_mean"] = float(np.mean(fids))
    if kind == "mean_fid":
        out["objective"] = out["fid_mean"]
    elif kind == "weighted":
        ref = list(spec.get("reference_fid") or [])
        if len(ref) != len(fids) - 1:
            raise ValueError(f"weighted objective needs {len(fids) - 1} reference FIDs, got {len(ref)}")
        forgetting = [f - r for f, r in zip(fids[:-1], ref)]
        out["forgetting_mean"] = float(np.mean(forgetting)) if forgetting else 0.0
        alpha = float(spec.get("alpha", 0.5))
        out["objective"] = alpha * float(fids[-1]) + (1 - alpha) * out["forgetting_mean"]
    else:
        raise ValueError(f"unknown objective kind {kind!r}; valid: {', '.join(OBJECTIVE_KINDS)}")
    return out


def measure(model: torch.nn.Module, model_cfg, spec: dict, real: list[np.ndarray],
            device: torch.device | str = "cpu") -> dict[str, float]:
    """Generate every seen class, FID per task against its real test images, then combine().

    `model` is the bare (unwrapped) network: a diffusion UNet (DDIM samples) or label-conditioned
    GANNets (G(z, y); a piggyback generator is switched to each task's own filters, then back).
    It is put in eval mode and restored to its previous mode.
    """
    from lifelong.evaluation import quality
    from lifelong.storage import local_file

    was_training = model.training
    model.eval()
    try:
        fids = []
        for j, (classes, real_j) in enumerate(zip(spec["tasks"], real), start=1):
            images, labels = _generate_task(model, model_cfg, j, list(classes), spec, device)
            q = quality(images, labels, real_j, classifier_path=local_file(spec["classifier"]),
                        feature_extractor=spec.get("feature_extractor", "lifelong-cnn"),
                        kid_subset_size=int(spec.get("kid_subset_size", 100)), device=torch.device(device).type)
            fids.append(q["fid"])
    finally:
        model.train(was_training)
    return combine(fids, spec)


@torch.no_grad()
def _generate_task(model, model_cfg, j: int, classes: list[int], spec: dict, device) -> tuple[np.ndarray, np.ndarray]:
    from lifelong.evaluation.generate import banked_net, gan_generate_per_class, generate_per_class, weights_for_task
    from lifelong.models import piggyback
    from lifelong.models.gan import GANConfig

    gan = isinstance(model_cfg, GANConfig)
    if gan and model_cfg.condition != "label":
        raise ValueError("the search objective measures label-conditioned GANs only (it generates per class)")
    if not gan and not model_cfg.conditional:
        raise ValueError("the search objective generates per class: it needs a class-conditional diffusion model "
                         "(model.conditional: true); the unconditional setting is evaluated by the pipeline only")
    per_class, seed = int(spec["samples_per_class"]), int(spec.get("seed", 0)) * 100 + j

    def per_class_samples(net):
        if gan:
            return gan_generate_per_class(net, classes, per_class=per_class, seed=seed, device=device)
        return generate_per_class(net, classes, per_class=per_class, cfg=model_cfg,
                                  steps=int(spec["ddim_steps"]), seed=seed, device=device)

    bank = banked_net(model)
    if not piggyback.is_piggyback(bank):
        return per_class_samples(model)
    current = piggyback.active_task(bank)
    try:  # task j's network: U_j, M_j over the bank F_j, as the evaluation stage generates it
        return per_class_samples(weights_for_task("task_filters", {current: model}, current, j))
    finally:
        piggyback.set_task(bank, current)
