"""Auxiliary image pairs for Lifelong GAN's distillation (Zhai et al., ICCV 2019, Sec. 3.3).

Task t-1's data is gone, and distilling on task t's pairs alone pulls the student towards the
teacher only where the two tasks look alike. Lifelong GAN builds inputs that are neither:
- Montage: small patches cut at random positions from several current-task pairs, the SAME crop
  from A and from B, tiled into one new pair, so the pair stays aligned pixel for pixel.
- Swap: the target image used as condition and the condition as target.
"""

from __future__ import annotations

import torch
from torch import Tensor

AUXILIARY_KINDS = ("montage", "swap", "both")


def default_patch_px(image_size_px: int) -> int:
    return max(2, image_size_px // 4)


def montage(a: Tensor, b: Tensor, patch_px: int | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(a_aux, b_aux), shapes as a and b: each output pair is a grid of patch_px x patch_px tiles.

    Every tile picks a source pair j ~ U{0..N-1} and a crop corner (py, px) uniform over the
    positions where the patch fits, and copies a[j, :, py:py+p, px:px+p] and b[j, :, same] to the
    tile. Edge tiles are cut short when the image side is not a multiple of patch_px.
    `generator` (CPU) draws the indices; None uses the global RNG.
    """
    if a.shape[0] != b.shape[0] or a.shape[2:] != b.shape[2:]:
        raise ValueError(f"montage: A {tuple(a.shape)} and B {tuple(b.shape)} need the same batch and spatial size")
    n, _, h, w = a.shape
    p = default_patch_px(min(h, w)) if patch_px is None else patch_px
    if not 1 <= p <= min(h, w):
        raise ValueError(f"montage: patch_px={p} must be in [1, {min(h, w)}]")
    tiles_h, tiles_w = -(-h // p), -(-w // p)  # ceil
    shape = (n, tiles_h, tiles_w)
    src = torch.randint(n, shape, generator=generator)  # source pair of each tile
    py = torch.randint(h - p + 1, shape, generator=generator)  # crop corner of each tile
    px = torch.randint(w - p + 1, shape, generator=generator)

    rows, cols = torch.arange(h), torch.arange(w)
    tile_r, tile_c = rows // p, cols // p  # (H,), (W,): which tile each output pixel is in
    # per output pixel (N, H, W): source pair and source coordinates
    j = src[:, tile_r][:, :, tile_c]
    sy = py[:, tile_r][:, :, tile_c] + (rows % p)[None, :, None]
    sx = px[:, tile_r][:, :, tile_c] + (cols % p)[None, None, :]
    j, sy, sx = (t.to(a.device) for t in (j, sy, sx))
    # advanced indexing a[j, :, sy, sx] puts the channel axis last: (N, H, W, C) -> (N, C, H, W)
    a_aux = a.permute(0, 2, 3, 1)[j, sy, sx].permute(0, 3, 1, 2)
    b_aux = b.permute(0, 2, 3, 1)[j, sy, sx].permute(0, 3, 1, 2)
    return a_aux.contiguous(), b_aux.contiguous()


def swap(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """(b, a): the target becomes the condition and the condition the target."""
    return b, a


def auxiliary_pairs(
    a: Tensor,
    b: Tensor,
    kind: str = "both",
    generator: torch.Generator | None = None,
    patch_px: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Auxiliary (A~, B~) with the batch size of (a, b).

    "both": the first ceil(N/2) pairs are montages (tiles drawn from the whole batch), the other
    floor(N/2) are the swapped pairs N/2.. of the batch; so the distillation costs the same for
    every kind.
    """
    if kind == "montage":
        return montage(a, b, patch_px, generator)
    if kind == "swap":
        return swap(a, b)
    if kind == "both":
        n_montage = (a.shape[0] + 1) // 2
        a_m, b_m = montage(a, b, patch_px, generator)
        a_s, b_s = swap(a[n_montage:], b[n_montage:])
        return torch.cat([a_m[:n_montage], a_s]), torch.cat([b_m[:n_montage], b_s])
    raise ValueError(f"unknown auxiliary kind {kind!r}; valid: {', '.join(AUXILIARY_KINDS)}")
