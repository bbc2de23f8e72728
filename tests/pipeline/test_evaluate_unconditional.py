"""The evaluation of an unconditional diffusion model: one pool per row, routed to tasks by the classifier."""

import numpy as np
import torch
import yaml

from lifelong.evaluation import load_classifier
from lifelong.evaluation.unconditional import class_probabilities
from lifelong.models.diffusion import DiffusionConfig, build_unet
from pipeline.evaluate import grid_samples, setting_of, unconditional_task
from pipeline.params import parse_params
from tests.lifelong.conftest import classifier_path  # noqa: F401  (the library tests' fixture)


def _params():
    with open("params.yaml") as f:
        raw = yaml.safe_load(f)
    raw["scenarios"] = {"label": {"runs": ["diffusion-generative_distillation"]}, "image": {"runs": []}}
    raw["data"].update(tasks=[[0], [1]])
    raw["model"].update(conditional=False, label_dropout=0.0, guidance_scale=0.0)
    raw["eval"].update(samples_per_class=6, ddim_steps=2, batch_size=64)
    return parse_params(raw)


def test_each_task_gets_the_pools_most_task_like_samples_and_the_row_its_class_balance(classifier_path):
    params = _params()
    cfg = DiffusionConfig(image_size_px=16, num_classes=2, block_out_channels=(8, 16), conditional=False)
    torch.manual_seed(0)
    net = build_unet(cfg).eval()
    pools = {}
    out = {j: unconditional_task(params, "label", net, cfg, 2, j, classifier_path, pools, "cpu") for j in (1, 2)}
    assert len(pools) == 1  # one pool of 6 x 2 samples for the whole row
    (pool, probs), = pools.values()
    assert pool.shape == (12, 16, 16) and pool.dtype == np.uint8
    clf = load_classifier(classifier_path)
    for j, cls in ((1, 0), (2, 1)):
        images, labels, extra = out[j]
        assert images.shape == (6, 16, 16) and labels is None  # no labels: acc is n/a
        chosen = class_probabilities(clf, images)[:, cls]
        assert chosen.min() >= np.sort(probs[:, cls])[-6] - 1e-6  # the 6 most class-`cls`-like of the pool
        assert 0.0 <= extra["class_kl"] <= np.log(2) + 1e-9
    assert out[1][2]["class_kl"] == out[2][2]["class_kl"]  # the row's pool: one balance
    assert list(grid_samples("label", 1, out[1][0], None, None)) == ["task_1"]
    assert setting_of("diffusion", cfg) == "unconditional" and setting_of("gan", None) == "gan"
