"""Image arrays as the whole project passes them, and the few conversions between their layouts.

- grayscale: uint8 (N, H, W), the label scenario and ``image_data.channels: 1``;
- RGB: uint8 (N, H, W, 3), channels last as PIL and numpy give them (``image_data.channels: 3``);
- networks: float (N, C, H, W) in [-1, 1], C = 1 or 3 (``to_model_range``).

The classifier that judges generated images (accuracy, diversity, the `lifelong-cnn` FID features) is
grayscale: it sees an RGB image as its luminance (``luminance``), exactly the gray PIL's
``convert("L")`` makes of it.
"""

from __future__ import annotations

import numpy as np
import torch

# ITU-R 601-2 luma, L = R * 299/1000 + G * 587/1000 + B * 114/1000, in the 16-bit fixed point PIL uses
# (libImaging/Convert.c): the weights are round(0.299 * 2^16), ... (they sum to 2^16) and 2^15 rounds
# to the nearest integer. Written with the decimal weights and a float round instead, 9040 of the 2^24
# colours would come out one grey level off PIL's.
_LUMA_WEIGHTS = (19595, 38470, 7471)


def num_channels(images: np.ndarray) -> int:
    """1 for uint8 (N, H, W), 3 for uint8 (N, H, W, 3); anything else raises ValueError."""
    images = np.asarray(images)
    if images.dtype == np.uint8 and images.ndim == 3:
        return 1
    if images.dtype == np.uint8 and images.ndim == 4 and images.shape[-1] == 3:
        return 3
    raise ValueError(f"images must be uint8 (N, H, W) grayscale or (N, H, W, 3) RGB, got {images.dtype} {images.shape}")


def luminance(rgb: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) RGB -> uint8 (..., H, W): the gray PIL's ``convert("L")`` gives, bit for bit."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim < 3 or rgb.shape[-1] != 3:
        raise ValueError(f"luminance needs uint8 (..., H, W, 3) RGB images, got {rgb.dtype} {rgb.shape}")
    x = rgb.astype(np.uint32)
    r, g, b = _LUMA_WEIGHTS
    return ((x[..., 0] * r + x[..., 1] * g + x[..., 2] * b + (1 << 15)) >> 16).astype(np.uint8)


def as_gray(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) unchanged; uint8 (N, H, W, 3) -> its luminance (N, H, W)."""
    return images if num_channels(images) == 1 else luminance(images)


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W) -> uint8 (..., H, W, 3), the gray value in all three channels (R = G = B)."""
    gray = np.asarray(gray)
    return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=-1))


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, 3) -> float32 (N, C, H, W) in [-1, 1], the range the generators model."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)  # (N, H, W[, 3]) -> (N, C, H, W)
    return x.float().contiguous() / 127.5 - 1.0


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W) for C = 1, (N, H, W, 3) for C = 3: the project's image array layout."""
    if x.shape[1] == 1:
        return x[:, 0]
    if x.shape[1] == 3:
        return x.permute(0, 2, 3, 1).contiguous()
    raise ValueError(f"expected 1 or 3 channels, got a tensor of shape {tuple(x.shape)}")
