"""A small CNN classifier trained on the real data: it scores label accuracy of generated images
and its penultimate layer is the feature space for FID/KID (see `fidelity.py`).

Inception features are meaningless on 16 px grayscale digits, so the field's practice for
MNIST-like continual-learning benchmarks is a domain classifier; this is that classifier.
It is grayscale: every function here also takes RGB images (N, H, W, 3) and sees their luminance
(`lifelong.images.luminance`, the gray PIL's convert("L") gives).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lifelong.images import as_gray

__all__ = [
    "ClassifierConfig",
    "SmallCNN",
    "train_classifier",
    "predict",
    "accuracy",
    "save_classifier",
    "load_classifier",
]

_RUN_STAGE_HINT = "run the `classifier` stage first (`dvc repro classifier`)"


@dataclass
class ClassifierConfig:
    image_size_px: int = 16  # side of the square grayscale images it is trained on
    num_classes: int = 10  # logits; labels must lie in [0, num_classes)
    channels: tuple[int, int] = (32, 64)  # conv widths of the two conv blocks
    feature_dim: int = 128  # width of the penultimate layer = FID/KID feature dimension

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if len(self.channels) != 2:
            raise ValueError(f"ClassifierConfig.channels must hold 2 widths, got {self.channels}")
        for name in ("image_size_px", "num_classes", "feature_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ClassifierConfig.{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["channels"] = list(self.channels)  # plain list: YAML/JSON friendly and weights_only-safe
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ClassifierConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ClassifierConfig keys {sorted(unknown)}; valid keys: {sorted(known)}")
        return cls(**d)


class SmallCNN(nn.Module):
    """Two conv blocks, adaptive pooling (so 8, 16, 28 and 32 px all work), one hidden layer.

    Input: float (N, 1, H, W) in [0, 1].
    """

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        c1, c2 = cfg.channels
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        # A fixed 4x4 grid after pooling keeps the head's size independent of the input size.
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(c2 * 4 * 4, cfg.feature_dim)
        self.head = nn.Linear(cfg.feature_dim, cfg.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (N, feature_dim): the FID/KID feature space."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (N, c1, H/2, W/2)
        x = F.relu(self.conv2(x))  # (N, c2, H/2, W/2)
        x = self.pool(x).flatten(1)  # (N, c2*16)
        return F.relu(self.fc(x))  # (N, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (N, num_classes) logits


def _to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W), or RGB (N, H, W, 3) as its luminance -> float (N, 1, H, W) in [0, 1]."""
    images = np.asarray(images)
    if images.ndim == 4:
        images = as_gray(images)  # RGB -> its luminance; any other 4-D array is one ValueError
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.dim() != 3:
        raise ValueError(f"expected uint8 images of shape (N, H, W) or (N, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    return x.unsqueeze(1).float() / 255.0


def _check_labels(labels: np.ndarray, n: int, num_classes: int) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(labels)).long()
    if y.shape != (n,):
        raise ValueError(f"expected {n} labels of shape ({n},), got {tuple(y.shape)}")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]")
    return y


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    cfg: ClassifierConfig,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
) -> SmallCNN:
    """Train a SmallCNN with Adam + cross-entropy on uint8 (N, H, W) images.

    Deterministic on CPU for a given seed (init and shuffling both come from it).
    Returns the model in eval mode, on CPU.
    """
    x = _to_input(images)
    if x.shape[-2:] != (cfg.image_size_px, cfg.image_size_px):
        raise ValueError(
            f"images are {tuple(x.shape[-2:])} px but ClassifierConfig.image_size_px={cfg.image_size_px}"
        )
    y = _check_labels(labels, len(x), cfg.num_classes)

    torch.manual_seed(seed)
    model = SmallCNN(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def predict(model: SmallCNN, images: np.ndarray, *, batch_size: int = 1024) -> np.ndarray:
    """Predicted class per image, int64 (N,). Runs on the model's device."""
    device = next(model.parameters()).device
    model.eval()
    x = _to_input(images)
    preds = [model(xb.to(device)).argmax(1).cpu() for xb in x.split(batch_size)]
    return torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)


@torch.no_grad()
def features(model: SmallCNN, images: np.ndarray, *, batch_size: int = 1024) -> torch.Tensor:
    """The classifier's penultimate features of uint8 images (N, H, W): float (N, feature_dim) on the CPU."""
    device = next(model.parameters()).device
    model.eval()
    out = [model.features(xb.to(device)).float().cpu() for xb in _to_input(images).split(batch_size)]
    return torch.cat(out) if out else torch.zeros(0, model.cfg.feature_dim)


def diversity(model: SmallCNN, generated: np.ndarray, generated_labels: np.ndarray | None, real: np.ndarray,
              real_labels: np.ndarray | None) -> float:
    """How varied the generated samples are, next to the real ones: per class, the mean pairwise distance
    between the generated images' features over the same for the real images of that class, averaged over
    the classes (one pool when either side has no labels). About 1: as varied as the data; near 0: mode
    collapse (every z gives nearly the same image), which FID only shows mixed with everything else."""
    def spread(x: torch.Tensor) -> float:
        n = len(x)
        return float(torch.cdist(x, x).sum() / (n * (n - 1))) if n > 1 else float("nan")

    fg, fr = features(model, generated), features(model, real)
    if generated_labels is None or real_labels is None:
        return spread(fg) / spread(fr)
    g, r = np.asarray(generated_labels), np.asarray(real_labels)
    ratios = [spread(fg[torch.from_numpy(g == c)]) / spread(fr[torch.from_numpy(r == c)]) for c in np.unique(g)]
    return float(np.nanmean(ratios))


def accuracy(model: SmallCNN, images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of images whose predicted class equals the label."""
    y = _check_labels(labels, len(images), model.cfg.num_classes).numpy()
    if len(y) == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float((predict(model, images) == y).mean())


def save_classifier(model: SmallCNN, cfg: ClassifierConfig, path: str | os.PathLike) -> None:
    """Write `{"config": cfg.to_dict(), "state_dict": ...}`; loadable with `weights_only=True`."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"config": cfg.to_dict(), "state_dict": state}, path)


def load_classifier(path: str | os.PathLike) -> SmallCNN:
    """Load a checkpoint written by `save_classifier`; returns the model in eval mode, on CPU."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"classifier checkpoint not found: {path!r}; {_RUN_STAGE_HINT}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model = SmallCNN(ClassifierConfig.from_dict(ckpt["config"]))
        model.load_state_dict(ckpt["state_dict"])
    except Exception as e:  # unpickling, missing keys, shape mismatch: all mean "rebuild it"
        raise RuntimeError(
            f"classifier checkpoint {path!r} is corrupt or incompatible ({type(e).__name__}: {e}); "
            f"{_RUN_STAGE_HINT}"
        ) from e
    return model.eval()
