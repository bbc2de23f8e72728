"""The registered version's pyfunc generator, loaded from its two artifacts as MLflow hands them over."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from lifelong.evaluation.generate import generate
from lifelong.models import piggyback
from lifelong.models.diffusion import DiffusionConfig, build_unet, save_state


def test_a_diffusion_piggyback_version_generates_with_its_aliases_task_filters(tmp_path):
    from pipeline.pyfunc_model import LifelongGenerator

    cfg = DiffusionConfig(image_size_px=8, num_classes=4, block_out_channels=(8, 16), piggyback_ratio=0.5,
                          piggyback_tasks=2)
    torch.manual_seed(0)
    unet = piggyback.piggyback_(build_unet(cfg), 0.5)
    piggyback.add_task(unet)  # fresh U_2, M_2: task 2 computes another network
    torch.save(save_state(unet, cfg), tmp_path / "model.pt")
    labels = [0, 1, 1]

    def predicted(task):
        spec = tmp_path / f"generator-{task}.json"
        spec.write_text(json.dumps({"scenario": "label", "task": task, "seed": 5, "batch_size": 16, "ddim_steps": 2}))
        g = LifelongGenerator()
        g.load_context(SimpleNamespace(artifacts={"model": str(tmp_path / "model.pt"), "generator": str(spec)}))
        out = g.predict(None, pd.DataFrame({"class": labels}))
        assert out.shape == (3, 1, 8, 8) and out.dtype == np.float32
        return np.rint(out[:, 0] * 255).astype(np.uint8)

    for task in (1, 2):
        piggyback.set_task(unet, task)
        expected = generate(unet, torch.tensor(labels), cfg=cfg, steps=2, seed=5, batch_size=16)
        assert np.array_equal(predicted(task), expected), task
    assert not np.array_equal(predicted(1), predicted(2))


def test_an_rgb_image_version_translates_h_w_3_conditions_into_3_h_w_images(tmp_path):
    """image_data.channels 3: a `condition` row is an H x W x 3 image in [0, 1]; the output (N, 3, H, W)
    holds the pipeline's own RGB translations (`gan_translate`)."""
    from lifelong.evaluation.generate import gan_translate
    from lifelong.models import build_gan_nets
    from lifelong.models.gan import GANConfig, save_gan_state
    from pipeline.pyfunc_model import LifelongGenerator

    cfg = GANConfig(condition="image", image_size_px=8, in_channels=3, z_dim=4, width=8)
    torch.manual_seed(0)
    nets = build_gan_nets(cfg)
    torch.save(save_gan_state(nets, cfg), tmp_path / "model.pt")
    spec = tmp_path / "generator.json"
    spec.write_text(json.dumps({"scenario": "image", "task": 1, "seed": 5, "batch_size": 16, "ddim_steps": 2}))
    g = LifelongGenerator()
    g.load_context(SimpleNamespace(artifacts={"model": str(tmp_path / "model.pt"), "generator": str(spec)}))
    a = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    out = g.predict(None, pd.DataFrame({"condition": [(image / 255.0).tolist() for image in a]}))
    assert out.shape == (2, 3, 8, 8) and out.dtype == np.float32
    expected = gan_translate(nets, a, seed=5, batch_size=16)  # (2, 8, 8, 3)
    assert np.array_equal(np.rint(out * 255).astype(np.uint8), expected.transpose(0, 3, 1, 2))
