"""Evaluating an unconditional generator in a class-incremental sequence (the generative-distillation
paper's own setting: its DDPM has no class input).

The model generates one pool for all the classes it has seen; the classifier (trained once on real data)
says which class each sample looks like. Two figures come from that:
- **Class balance** (the paper's measure): KL(p || U), p the classifier's predicted class distribution of
  the pool over the seen classes, U uniform over them. 0: every seen class as often as the others;
  log(#seen): one class only (the others forgotten). Predictions of classes not seen yet are dropped.
- **Per-task samples** for the task x task matrix: task j's sample is the n pool samples the classifier
  finds most like task j (highest total probability of task j's classes). n is always the size the
  conditional models get, so FID/KID stay comparable with theirs and with the noise floor; a forgotten
  task still gets its n samples, only they do not look like it, and its FID shows that.
"""

from __future__ import annotations

import numpy as np
import torch

from lifelong.evaluation.classifier import SmallCNN, _to_input


@torch.no_grad()
def class_probabilities(model: SmallCNN, images: np.ndarray, *, batch_size: int = 1024) -> np.ndarray:
    """The classifier's softmax over all its classes, float (N, num_classes)."""
    device = next(model.parameters()).device
    model.eval()
    out = [model(xb.to(device)).float().softmax(1).cpu() for xb in _to_input(images).split(batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, model.cfg.num_classes), dtype=np.float32)


def class_balance_kl(probs: np.ndarray, seen_classes: list[int]) -> float:
    """KL(p || U) in nats: p = the share of samples predicted as each seen class (argmax over all classes;
    other predictions dropped), U = uniform over the seen classes."""
    pred = probs.argmax(1)
    counts = np.array([(pred == c).sum() for c in seen_classes], dtype=np.float64)
    if counts.sum() == 0:
        return float(np.log(len(seen_classes)))  # nothing looks like a seen class: as unbalanced as it gets
    p = counts / counts.sum()
    nz = p > 0
    return float((p[nz] * np.log(p[nz] * len(seen_classes))).sum())


def most_like_task(probs: np.ndarray, task_classes: list[int], n: int) -> np.ndarray:
    """Indices of the n samples with the highest total probability of the task's classes (ties: lower index)."""
    if n > len(probs):
        raise ValueError(f"asked for {n} samples of a pool of {len(probs)}")
    score = probs[:, task_classes].sum(1)
    return np.argsort(-score, kind="stable")[:n]
