"""Tiny synthetic 2-class image set shared by the evaluation tests."""

import numpy as np


def two_squares(n: int, seed: int, size_px: int = 16, invert: bool = False):
    """uint8 (n, size, size) noise with a bright square top-left (class 0) or bottom-right (class 1)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    x = rng.integers(0, 40, (n, size_px, size_px))
    h = size_px // 2
    x[labels == 0, :h, :h] += 200
    x[labels == 1, h:, h:] += 200
    if invert:  # a clearly different distribution: dark squares on a bright background
        x = 255 - x
    return np.clip(x, 0, 255).astype(np.uint8), labels
