"""The image layouts (grayscale (N, H, W), RGB (N, H, W, 3)) and the conversions between them."""

import numpy as np
import pytest
import torch
from PIL import Image

from lifelong.images import as_gray, channels_last, gray_to_rgb, luminance, num_channels, to_model_range


def test_luminance_is_pils_convert_L_bit_for_bit():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 17, 13, 3), dtype=np.uint8)
    images[0, 0, :8] = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255],
                        [1, 2, 1], [128, 128, 127], [3, 250, 7]]  # extremes and rounding edges
    expected = np.stack([np.asarray(Image.fromarray(image).convert("L")) for image in images])
    got = luminance(images)
    assert got.dtype == np.uint8 and got.shape == (6, 17, 13)
    assert np.array_equal(got, expected)
    assert np.array_equal(as_gray(images), expected) and as_gray(expected) is expected  # gray stays as it is
    assert np.array_equal(luminance(gray_to_rgb(expected)), expected)  # R = G = B: the gray itself
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W, 3\)"):
        luminance(expected)


def test_model_range_and_back_keep_channels_in_order():
    rgb = np.zeros((2, 4, 5, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 255, 0  # red: +1 in channel 0, -1 in channels 1 and 2
    x = to_model_range(rgb)
    assert x.shape == (2, 3, 4, 5) and x.dtype == torch.float32 and x.is_contiguous()
    assert (x[:, 0] == 1).all() and (x[:, 1:] == -1).all()
    back = channels_last(((x + 1) * 127.5).round().to(torch.uint8)).numpy()
    assert np.array_equal(back, rgb)
    gray = rgb[..., 0]
    assert to_model_range(gray).shape == (2, 1, 4, 5) and channels_last(to_model_range(gray)).shape == (2, 4, 5)
    assert num_channels(gray) == 1 and num_channels(rgb) == 3
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\) RGB"):
        num_channels(rgb[..., :2])
