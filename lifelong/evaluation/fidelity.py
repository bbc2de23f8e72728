"""FID / KID of generated vs real images with torch-fidelity, fully offline.

torch_fidelity is imported lazily (it costs ~10 s); `import lifelong.evaluation` stays cheap.
Always pass pre-generated images: torch-fidelity 0.4.0's conditional `GenerativeModelBase` path
calls `np.int`, which no longer exists in NumPy >= 1.24.

Images are uint8 grayscale (N, H, W) or RGB (N, H, W, 3). Two feature spaces (`FEATURE_EXTRACTORS`):
- "inception-v3-compat": torch-fidelity's InceptionV3, on the images as they are (gray replicated to
  3 channels); needs its weights file on disk (`inception_weights_path`), this pipeline never downloads;
- "lifelong-cnn": the project's grayscale classifier (`cnn_extractor`), which sees an RGB image as its
  luminance (`lifelong.images.luminance`, PIL's convert("L")), as do its accuracy and diversity.
"auto" (`resolve_feature_extractor`) picks the first when its weights file is present, else the second.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from lifelong.evaluation.classifier import accuracy, diversity, load_classifier
from lifelong.images import as_gray

__all__ = ["quality", "noise_floor", "disjoint_halves", "inception_weights_path", "resolve_feature_extractor",
           "FEATURE_EXTRACTORS", "AUTO", "LifelongCNNExtractor"]

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_WEIGHTS_FILE
)
FEATURE_EXTRACTORS = ("lifelong-cnn", "inception-v3-compat")
AUTO = "auto"  # resolve_feature_extractor: inception-v3-compat when its weights file is present, else lifelong-cnn


def inception_weights_path() -> str:
    """Where torch.hub would cache the Inception weights: $TORCH_HOME/hub/checkpoints/<file>."""
    torch_home = os.environ.get("TORCH_HOME", os.path.join(os.path.expanduser("~"), ".cache", "torch"))
    return os.path.join(torch_home, "hub", "checkpoints", INCEPTION_WEIGHTS_FILE)


def resolve_feature_extractor(name: str) -> str:
    """The feature extractor `name` stands for: "auto" -> "inception-v3-compat" when its weights file
    exists at `inception_weights_path()`, else "lifelong-cnn"; an explicit name is returned as it is.

    Resolve once per evaluation and pass the result on: every figure of it is then in one feature space."""
    if name == AUTO:
        return "inception-v3-compat" if os.path.isfile(inception_weights_path()) else "lifelong-cnn"
    if name not in FEATURE_EXTRACTORS:
        raise ValueError(f"unknown feature_extractor {name!r}; valid: {', '.join(FEATURE_EXTRACTORS + (AUTO,))}")
    return name


class _AsRGBItems(Dataset):
    """uint8 (N, H, W) or (N, H, W, 3) -> items uint8 (3, H, W), gray in all three channels: the
    bare-tensor contract of torch-fidelity."""

    def __init__(self, images: np.ndarray):
        self.images = torch.from_numpy(np.ascontiguousarray(images))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = self.images[i]
        if image.dim() == 2:  # (H, W) gray -> (3, H, W)
            return image.unsqueeze(0).expand(3, -1, -1).contiguous()
        return image.permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)


def _check_images(name: str, images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    gray_or_rgb = images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)
    if images.dtype != np.uint8 or not gray_or_rgb or len(images) < 2:
        raise ValueError(f"{name} must be uint8 (N, H, W) or RGB (N, H, W, 3) with N >= 2, "
                         f"got {images.dtype} {images.shape}")
    return images


def _weights_path(feature_extractor: str, classifier_path: str) -> str:
    """Weights path to hand torch-fidelity for the chosen extractor; fails before any heavy import."""
    if feature_extractor == "lifelong-cnn":
        return os.path.abspath(os.fspath(classifier_path))
    if feature_extractor == "inception-v3-compat":
        path = inception_weights_path()
        if not os.path.isfile(path):
            # torch-fidelity would try to download it; this pipeline runs offline, so say what to do.
            raise FileNotFoundError(
                f"Inception weights not found at {path}. This pipeline never downloads; fetch "
                f"{INCEPTION_WEIGHTS_URL} on a machine with network access and put it at that path "
                f"(or set TORCH_HOME to the directory holding hub/checkpoints/{INCEPTION_WEIGHTS_FILE}), "
                f'or use feature_extractor="lifelong-cnn".'
            )
        return path
    raise ValueError(f"unknown feature_extractor {feature_extractor!r}; valid: {', '.join(FEATURE_EXTRACTORS)}")


def quality(
    generated: np.ndarray,
    generated_labels: np.ndarray | None,
    real: np.ndarray,
    *,
    classifier_path: str,
    feature_extractor: str = "lifelong-cnn",
    kid_subset_size: int = 1000,
    device: str = "cpu",
    real_labels: np.ndarray | None = None,
) -> dict:
    """FID and KID of `generated` vs `real`, the classifier's accuracy on `generated`, and their
    diversity (`classifier.diversity`: per class when both label arrays are given).

    generated: uint8 (N, H, W) or RGB (N, H, W, 3); generated_labels: (N,) the classes they were
    conditioned on (None: the data has no classes, e.g. pix2pix pairs; acc is then None); real: uint8
    (M, H, W) or (M, H, W, 3), as generated. KID subsets are clamped to min(kid_subset_size, N, M).
    feature_extractor: one of FEATURE_EXTRACTORS or "auto" (`resolve_feature_extractor`). The grayscale
    classifier (acc, div, and the "lifelong-cnn" features) sees RGB images as their luminance.
    Returns {"fid", "kid" (mean over subsets), "acc", "div", "feature_extractor" (the one used)}.
    """
    generated = _check_images("generated", generated)
    real = _check_images("real", real)
    if generated.shape[1:] != real.shape[1:]:
        raise ValueError(f"generated {generated.shape[1:]} and real {real.shape[1:]} image shapes differ")
    feature_extractor = resolve_feature_extractor(feature_extractor)
    weights_path = _weights_path(feature_extractor, classifier_path)
    classifier = load_classifier(classifier_path)  # fails fast, before the slow import below

    use_cuda = device.startswith("cuda")
    if use_cuda:
        classifier.to(device)
    acc = None if generated_labels is None else accuracy(classifier, generated, generated_labels)
    div = diversity(classifier, generated, generated_labels, real, real_labels)

    import torch_fidelity

    if feature_extractor == "lifelong-cnn":
        import lifelong.evaluation.cnn_extractor  # noqa: F401  (registers "lifelong-cnn")

        generated, real = as_gray(generated), as_gray(real)  # the grayscale classifier's features

    # torch-fidelity calls .cuda() without an index, so pin the current device for "cuda:N".
    device_ctx = torch.cuda.device(torch.device(device)) if use_cuda else contextlib.nullcontext()
    with device_ctx:
        metrics = torch_fidelity.calculate_metrics(
            input1=_AsRGBItems(generated),
            input2=_AsRGBItems(real),
            fid=True,
            kid=True,
            kid_subset_size=min(kid_subset_size, len(generated), len(real)),
            feature_extractor=feature_extractor,
            feature_extractor_weights_path=weights_path,
            cuda=use_cuda,
            cache=False,  # cache keys carry no data hash: stale statistics otherwise
            verbose=False,
            save_cpu_ram=True,  # no DataLoader worker processes
        )
    return {
        "fid": float(metrics["frechet_inception_distance"]),
        "kid": float(metrics["kernel_inception_distance_mean"]),
        "acc": acc,
        "div": div,
        "feature_extractor": feature_extractor,
    }


def disjoint_halves(num_real: int, size: int, labels: np.ndarray | None = None,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint random index sets into `num_real` real images, each of `size` images or, when the
    real set is smaller than 2 x size, of half of it. With `labels` each half keeps the real set's class
    balance: per class, min(size / #classes, its count / 2) images (then `size` is a total over classes)."""
    rng = np.random.default_rng(seed)
    if labels is None:
        order = rng.permutation(num_real)
        half = min(size, num_real // 2)
        return np.sort(order[:half]), np.sort(order[half:2 * half])
    labels = np.asarray(labels)
    classes = np.unique(labels)
    per_class = size // len(classes)
    a, b = [], []
    for c in classes:
        idx = rng.permutation(np.flatnonzero(labels == c))
        half = min(per_class, len(idx) // 2)
        a.append(idx[:half])
        b.append(idx[half:2 * half])
    return np.sort(np.concatenate(a)), np.sort(np.concatenate(b))


def noise_floor(real: np.ndarray, size: int, *, labels: np.ndarray | None = None, seed: int = 0,
                **quality_kwargs) -> dict:
    """The measurement's noise floor: FID/KID between two disjoint halves of the real images, each
    the size of the evaluation sample (`size`; half the real set when that is smaller). Two samples of
    one distribution score this far apart by chance alone, so a difference of FIDs (forgetting) that
    is not larger than it is not evidence of a change. Returns {"fid", "kid", "n"} (n: images per half)."""
    a, b = disjoint_halves(len(real), size, labels=labels, seed=seed)
    q = quality(real[a], None, real[b], **quality_kwargs)
    return {"fid": q["fid"], "kid": q["kid"], "n": int(len(a))}


def __getattr__(name: str):
    # The extractor subclasses a torch_fidelity class, so it is only built on first access.
    if name == "LifelongCNNExtractor":
        from lifelong.evaluation.cnn_extractor import LifelongCNNExtractor

        return LifelongCNNExtractor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
