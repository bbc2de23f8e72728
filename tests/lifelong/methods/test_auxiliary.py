import pytest
import torch

from lifelong.methods.auxiliary import auxiliary_pairs, default_patch_px, montage, swap


def _pairs(n=4, c=1, size=8):
    # every pixel value is unique, and A = B + 1000: a pixel of a_aux identifies (pair, channel, row,
    # col) of its source, and b_aux must hold the same source's B pixel
    b = torch.arange(n * c * size * size, dtype=torch.float32).view(n, c, size, size)
    return b + 1000.0, b


def _source(value, n, c, size):
    idx = int(value)
    pair, rest = divmod(idx, c * size * size)
    ch, rest = divmod(rest, size * size)
    row, col = divmod(rest, size)
    return pair, ch, row, col


@pytest.mark.parametrize("size, patch_px", [(8, 2), (8, 3), (16, 4)])
def test_montage_copies_aligned_patches(size, patch_px):
    n, c = 5, 2
    a, b = _pairs(n, c, size)
    a_aux, b_aux = montage(a, b, patch_px, torch.Generator().manual_seed(0))
    assert a_aux.shape == a.shape and b_aux.shape == b.shape
    assert torch.equal(a_aux, b_aux + 1000.0)  # same (pair, position) in A and B
    for i in range(n):
        for ty in range(0, size, patch_px):
            for tx in range(0, size, patch_px):
                tile = b_aux[i, :, ty : ty + patch_px, tx : tx + patch_px]
                pair, ch, row0, col0 = _source(tile[0, 0, 0], n, c, size)
                assert ch == 0
                # the whole tile, all channels, is one contiguous crop of one source pair
                crop = b[pair, :, row0 : row0 + tile.shape[1], col0 : col0 + tile.shape[2]]
                assert torch.equal(tile, crop)


def test_montage_mixes_pairs_and_is_seeded():
    a, b = _pairs(8, 1, 8)
    out1 = montage(a, b, 2, torch.Generator().manual_seed(1))
    out2 = montage(a, b, 2, torch.Generator().manual_seed(1))
    assert torch.equal(out1[0], out2[0]) and torch.equal(out1[1], out2[1])
    pairs = {_source(v, 8, 1, 8)[0] for v in out1[1][0].flatten()}
    assert len(pairs) > 1  # one montage draws from several pairs
    assert default_patch_px(16) == 4 and default_patch_px(8) == 2
    with pytest.raises(ValueError):
        montage(a, b, 9)


def test_swap_swaps():
    a, b = _pairs()
    a2, b2 = swap(a, b)
    assert a2 is b and b2 is a


def test_auxiliary_pairs_kinds():
    a, b = _pairs(5, 1, 8)
    g = torch.Generator().manual_seed(0)
    for kind in ("montage", "swap", "both"):
        a_aux, b_aux = auxiliary_pairs(a, b, kind, g)
        assert a_aux.shape == a.shape and b_aux.shape == b.shape
    a_aux, b_aux = auxiliary_pairs(a, b, "swap")
    assert torch.equal(a_aux, b) and torch.equal(b_aux, a)
    a_aux, b_aux = auxiliary_pairs(a, b, "both", g)
    assert torch.equal(a_aux[:3], b_aux[:3] + 1000.0)  # montages keep A = B + 1000
    assert torch.equal(a_aux[3:], b[3:]) and torch.equal(b_aux[3:], a[3:])  # the rest are swapped
    with pytest.raises(ValueError, match="montage"):
        auxiliary_pairs(a, b, "mixup")
