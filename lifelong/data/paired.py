"""Image-to-image data: each task maps a condition image A to a target image B.

Two sources, both giving uint8 arrays like the rest of ``lifelong.data`` (``lifelong.images``):
- derived pairs: B is a dataset image, A = a condition computed from B (``CONDITIONS``); the
  built-in sequence ``FASHION_IMAGE_TASKS`` is Lifelong GAN's edges2shoes -> edges2handbags idea
  (Zhai et al., ICCV 2019) on Fashion-MNIST, which works offline. Grayscale (N, H, W), as the dataset;
- pix2pix-style folders (edges2shoes, facades, maps, ...): ``load_pix2pix_folder``, grayscale
  (N, H, W) or, with ``channels=3``, RGB (N, H, W, 3).

Conditions use integer arithmetic only, so the same B gives the same A bytes on every machine
(shards built from them stay byte-reproducible).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from lifelong.data.sources import _IMAGE_SUFFIXES, DataSourceError

# Lifelong GAN's edges2shoes -> edges2handbags sequence, continued with other conditions, on
# Fashion-MNIST classes (0 T-shirt/top, 1 trouser, 2 pullover, 3 dress, 4 coat, 5 sandal, 6 shirt,
# 7 sneaker, 8 bag, 9 ankle boot).
FASHION_IMAGE_TASKS = [
    {"name": "edges2footwear", "condition": "edges", "classes": [5, 7, 9]},
    {"name": "edges2bags", "condition": "edges", "classes": [8]},
    {"name": "silhouette2tops", "condition": "silhouette", "classes": [0, 2, 4, 6]},
    {"name": "downsample2bottoms", "condition": "downsample", "classes": [1, 3]},
]

PIX2PIX_SPLITS = ("train", "val", "test")
DIRECTIONS = ("AtoB", "BtoA")
PIL_MODES = {1: "L", 3: "RGB"}  # image channels -> the PIL mode a pix2pix file is converted to


# ---------------------------------------------------------------------------------------------
# Conditions: uint8 (..., H, W) -> uint8 (..., H, W), vectorised over the leading axes.
# ---------------------------------------------------------------------------------------------
def edges(images: np.ndarray, threshold: float = 0.3) -> np.ndarray:
    """Binary edge map: Sobel gradient magnitude (borders replicated), 255 where it exceeds
    ``threshold`` x that of a full 0 -> 255 step edge (4 * 255), else 0."""
    x = _pad_hw(images.astype(np.int32), (1, 1), (1, 1))
    h, w = images.shape[-2:]

    def at(dy: int, dx: int) -> np.ndarray:  # the neighbour at offset (dy, dx) of every pixel
        return x[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    gx = (at(-1, 1) + 2 * at(0, 1) + at(1, 1)) - (at(-1, -1) + 2 * at(0, -1) + at(1, -1))
    gy = (at(1, -1) + 2 * at(1, 0) + at(1, 1)) - (at(-1, -1) + 2 * at(-1, 0) + at(-1, 1))
    # Squared magnitudes in int64 against a squared threshold: exact, so no float rounding can
    # flip a pixel between machines.
    magnitude2 = gx.astype(np.int64) ** 2 + gy.astype(np.int64) ** 2
    return np.where(magnitude2 > (threshold * 4 * 255) ** 2, 255, 0).astype(np.uint8)


def silhouette(images: np.ndarray, threshold: int = 10) -> np.ndarray:
    """Foreground mask with interior holes filled: 255 for pixels > ``threshold`` and for background
    pixels not 4-connected to the image border, else 0."""
    background = images <= threshold
    # Flood the background from the border; background it never reaches is a hole.
    outside = np.zeros_like(background)
    for edge in (np.s_[..., 0, :], np.s_[..., -1, :], np.s_[..., :, 0], np.s_[..., :, -1]):
        outside[edge] = background[edge]
    while True:
        grown = outside.copy()
        grown[..., 1:, :] |= outside[..., :-1, :]
        grown[..., :-1, :] |= outside[..., 1:, :]
        grown[..., :, 1:] |= outside[..., :, :-1]
        grown[..., :, :-1] |= outside[..., :, 1:]
        grown &= background
        if np.array_equal(grown, outside):
            break
        outside = grown
    return np.where(outside, 0, 255).astype(np.uint8)


def downsample(images: np.ndarray, factor: int = 4) -> np.ndarray:
    """Low-resolution view: ``factor`` x ``factor`` average pooling (rounded half up; sizes not
    divisible by ``factor`` are edge-padded), then nearest upsampling back to H x W."""
    h, w = images.shape[-2:]
    padded = _pad_hw(images.astype(np.int64), (0, -h % factor), (0, -w % factor))
    hp, wp = padded.shape[-2:]
    blocks = padded.reshape(*images.shape[:-2], hp // factor, factor, wp // factor, factor)
    area = factor * factor
    means = (blocks.sum(axis=(-3, -1)) + area // 2) // area  # (..., hp/f, wp/f)
    up = np.repeat(np.repeat(means, factor, axis=-2), factor, axis=-1)
    return up[..., :h, :w].astype(np.uint8)


CONDITIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "edges": edges,
    "silhouette": silhouette,
    "downsample": downsample,
}


def derive_pairs(
    images: np.ndarray, labels: np.ndarray, classes: list[int], condition: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, labels) for the images whose label is in ``classes``, in original order:
    b = the image (uint8 (N, H, W)), a = ``CONDITIONS[condition](b)``, labels int64 (N,).

    No matching image gives empty arrays (the caller knows which task and split to name).
    """
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; valid names: {', '.join(CONDITIONS)}")
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"images must be uint8 (N, H, W), got {images.dtype} {images.shape}")
    labels = np.asarray(labels)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    keep = np.isin(labels, classes)
    b = np.ascontiguousarray(images[keep])
    return CONDITIONS[condition](b), b, labels[keep].astype(np.int64)


def derive_tasks(
    splits: dict[str, tuple[np.ndarray, np.ndarray]], specs: list[dict] | None = None
) -> list[dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """``write_paired_shards``' input from a labelled dataset: for each spec
    ({"name", "condition", "classes"}; default ``FASHION_IMAGE_TASKS``),
    {split: derive_pairs(images, labels, classes, condition)}.

    ``splits`` maps a split name to (uint8 images (N, H, W), labels (N,)), as ``load_split`` gives.
    A task with no image in some split raises ``ValueError`` naming it.
    """
    tasks = []
    for spec in FASHION_IMAGE_TASKS if specs is None else specs:
        missing = {"name", "condition", "classes"} - set(spec)
        if missing:
            raise ValueError(f"image task spec {spec!r} lacks {sorted(missing)}")
        task = {}
        for split, (images, labels) in splits.items():
            task[split] = derive_pairs(images, labels, spec["classes"], spec["condition"])
            if len(task[split][2]) == 0:
                raise ValueError(f"image task {spec['name']!r}: classes {spec['classes']} have no images in split {split!r}")
        tasks.append(task)
    return tasks


# ---------------------------------------------------------------------------------------------
# pix2pix folders: root/<split>/*.jpg|png, each file A | B side by side.
# ---------------------------------------------------------------------------------------------
def load_pix2pix_folder(
    root: str | os.PathLike,
    split: str,
    image_size_px: int | None = None,
    *,
    direction: str = "AtoB",
    channels: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Read a pix2pix-style paired folder as (a, b) in sorted file order: uint8 (N, H, W) each, or
    uint8 (N, H, W, 3) each with ``channels=3``.

    Each file holds A (left half) and B (right half) side by side; both are converted to grayscale
    (PIL ``convert("L")``) or to RGB (``convert("RGB")``) and, when ``image_size_px`` is given,
    resized to that square with PIL bilinear. ``direction="BtoA"`` returns the right half as a (e.g.
    facades, whose left half is the photo). pix2pix datasets such as edges2shoes ship train/ and
    val/ only, so ``split="test"`` falls back to ``val`` when there is no test folder.
    """
    if split not in PIX2PIX_SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(PIX2PIX_SPLITS)}")
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; valid: {', '.join(DIRECTIONS)}")
    if channels not in PIL_MODES:
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    root_path = Path(root).expanduser()
    layout = (f"expected {root_path}/<train|val|test>/*.jpg|*.png, each image A | B side by side "
              "(left half A, right half B, even width)")
    split_dir = root_path / split
    if split == "test" and not split_dir.is_dir() and (root_path / "val").is_dir():
        split_dir = root_path / "val"
    if not split_dir.is_dir():
        raise DataSourceError(f"pix2pix folder {split_dir} does not exist ({layout})")
    files = sorted(p for p in split_dir.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise DataSourceError(f"pix2pix folder {split_dir} holds no .jpg/.png images ({layout})")

    lefts, rights = [], []
    for file in files:
        try:
            with Image.open(file) as im:
                im = im.convert(PIL_MODES[channels])
                width, height = im.size
                if width % 2:
                    raise DataSourceError(f"{file} is {width} px wide, odd: cannot split it into A | B ({layout})")
                halves = [im.crop((0, 0, width // 2, height)), im.crop((width // 2, 0, width, height))]
                if image_size_px is not None:
                    halves = [h.resize((image_size_px, image_size_px), Image.BILINEAR) for h in halves]
                lefts.append(np.asarray(halves[0], dtype=np.uint8))
                rights.append(np.asarray(halves[1], dtype=np.uint8))
        except OSError as e:  # PIL: unreadable or truncated file
            raise DataSourceError(f"cannot read image {file}: {e} ({layout})") from e

    shapes = {a.shape for a in lefts}
    if len(shapes) > 1:
        raise DataSourceError(f"images in {split_dir} have different sizes {sorted(shapes)}; set image_size_px to resize them")
    a, b = np.stack(lefts), np.stack(rights)
    return (a, b) if direction == "AtoB" else (b, a)


# ---------------------------------------------------------------------------------------------
def _pad_hw(x: np.ndarray, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """Edge-replicate the last two axes by (before, after) ``rows`` and ``cols``."""
    return np.pad(x, [(0, 0)] * (x.ndim - 2) + [rows, cols], mode="edge")
