import numpy as np

from lifelong.evaluation import generate_per_class
from lifelong.models.diffusion import DiffusionConfig, build_unet


def test_generate_per_class_shapes_labels_and_determinism():
    cfg = DiffusionConfig(image_size_px=8, block_out_channels=(8, 16), num_classes=4)
    model = build_unet(cfg).eval()
    a, la = generate_per_class(model, [1, 3], per_class=3, cfg=cfg, steps=2, seed=5, batch_size=4)
    b, lb = generate_per_class(model, [1, 3], per_class=3, cfg=cfg, steps=2, seed=5, batch_size=4)
    assert a.shape == (6, 8, 8) and a.dtype == np.uint8
    assert la.tolist() == [1, 1, 1, 3, 3, 3]
    np.testing.assert_array_equal(a, b)  # same seed, same samples, whatever the batching
    c, _ = generate_per_class(model, [1, 3], per_class=3, cfg=cfg, steps=2, seed=6, batch_size=4)
    assert not np.array_equal(a, c)


def test_every_cell_of_the_matrix_draws_its_own_noise():
    from lifelong.evaluation import eval_seed

    cells = [(k, j) for k in range(1, 11) for j in range(1, k + 1)]
    seeds = {eval_seed(s, k, j) for s in (0, 1) for k, j in cells}
    assert len(seeds) == 2 * len(cells)  # no two cells (nor two training seeds) share the noise
