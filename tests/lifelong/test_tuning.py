"""The search objective (lifelong.tuning): FIDs of every seen task, for diffusion and GAN models."""

import pytest
import torch

from lifelong.evaluation import quality
from lifelong.evaluation.generate import gan_generate_per_class
from lifelong.models import build_gan_nets, piggyback
from lifelong.models.gan import GANConfig
from lifelong.tuning import combine, measure
from tests.lifelong.evaluation._eval_synthetic import two_squares


def _spec(classifier_path, **kw):
    return dict({"tasks": [[0], [1]], "classifier": classifier_path, "samples_per_class": 12, "ddim_steps": 2,
                 "seed": 3, "kid_subset_size": 8, "kind": "mean_fid"}, **kw)


def _two_task_piggyback_gan():
    cfg = GANConfig(condition="label", image_size_px=16, num_classes=2, z_dim=4, width=4)
    torch.manual_seed(0)
    nets = build_gan_nets(cfg)
    piggyback.piggyback_(nets["G"], 0.5)
    piggyback.add_task(nets["G"])  # task 2 is active, with filters of its own
    return nets


def test_piggyback_gan_objective_measures_each_task_with_its_own_filters(classifier_path):
    nets = _two_task_piggyback_gan().train()
    x, y = two_squares(64, seed=1)
    real = [x[y == 0], x[y == 1]]
    spec = _spec(classifier_path)

    out = measure(nets, nets.cfg, spec, real)

    # The model comes back as it was: task 2 active, in training mode.
    assert piggyback.active_task(nets["G"]) == 2 and nets.training
    # Task 1's FID is that of task 1's generator (seeded as measure seeds task j: seed * 100 + j) ...
    piggyback.set_task(nets["G"], 1)
    own, labels = gan_generate_per_class(nets, [0], per_class=12, seed=3 * 100 + 1)
    expected = quality(own, labels, real[0], classifier_path=classifier_path, kid_subset_size=8)["fid"]
    assert out["fid_task1"] == pytest.approx(expected, rel=1e-6)
    # ... and not that of task 2's generator, which is a different network.
    piggyback.set_task(nets["G"], 2)
    other, _ = gan_generate_per_class(nets, [0], per_class=12, seed=3 * 100 + 1)
    assert not torch.equal(torch.from_numpy(own), torch.from_numpy(other))
    assert out["objective"] == pytest.approx((out["fid_task1"] + out["fid_task2"]) / 2)


def test_diffusion_piggyback_objective_measures_each_task_with_its_own_filters(classifier_path):
    from lifelong.evaluation.generate import generate_per_class
    from lifelong.models.diffusion import DiffusionConfig, build_unet

    cfg = DiffusionConfig(image_size_px=16, num_classes=2, block_out_channels=(8, 16))
    torch.manual_seed(0)
    unet = piggyback.piggyback_(build_unet(cfg), 0.5)
    piggyback.add_task(unet)  # fresh U_2, M_2: task 2 computes another network
    x, y = two_squares(64, seed=1)
    real = [x[y == 0], x[y == 1]]

    out = measure(unet, cfg, _spec(classifier_path), real)

    assert piggyback.active_task(unet) == 2
    piggyback.set_task(unet, 1)
    own, labels = generate_per_class(unet, [0], per_class=12, cfg=cfg, steps=2, seed=3 * 100 + 1)
    expected = quality(own, labels, real[0], classifier_path=classifier_path, kid_subset_size=8)["fid"]
    assert out["fid_task1"] == pytest.approx(expected, rel=1e-6)
    piggyback.set_task(unet, 2)


def test_plain_gan_objective_and_image_gan_rejected(classifier_path):
    cfg = GANConfig(condition="label", image_size_px=16, num_classes=2, z_dim=4, width=4)
    nets = build_gan_nets(cfg).eval()
    x, y = two_squares(64, seed=1)
    out = measure(nets, cfg, _spec(classifier_path), [x[y == 0], x[y == 1]])
    assert set(out) >= {"fid_task1", "fid_task2", "fid_mean", "objective"} and not nets.training

    image = build_gan_nets(GANConfig(condition="image", image_size_px=16, num_classes=2, z_dim=4, width=4))
    with pytest.raises(ValueError, match="label-conditioned GANs only"):
        measure(image, image.cfg, _spec(classifier_path), [x[y == 0], x[y == 1]])


def test_weighted_objective_combines_last_fid_and_forgetting():
    out = combine([30.0, 10.0], {"kind": "weighted", "alpha": 0.25, "reference_fid": [20.0]})
    assert out["forgetting_mean"] == 10.0
    assert out["objective"] == pytest.approx(0.25 * 10.0 + 0.75 * 10.0)
