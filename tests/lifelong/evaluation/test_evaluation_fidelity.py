import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lifelong.evaluation import accuracy, load_classifier, quality

from tests.lifelong.evaluation._eval_synthetic import two_squares


def test_fid_kid_acc(classifier_path):
    gen, gen_labels = two_squares(120, seed=10)
    near, near_labels = two_squares(120, seed=11)  # same distribution, other samples
    other, _ = two_squares(120, seed=12, invert=True)  # clearly different distribution

    same = quality(gen, gen_labels, gen, classifier_path=classifier_path)
    close = quality(near, near_labels, gen, classifier_path=classifier_path)
    diff = quality(other, gen_labels, gen, classifier_path=classifier_path)

    assert same["feature_extractor"] == "lifelong-cnn"
    # Feature scale depends on the classifier, so compare FIDs with each other, not with constants.
    assert abs(same["fid"]) < 1e-3 * diff["fid"]
    assert diff["fid"] > 10 * close["fid"]
    # KID's unbiased estimator is not exactly 0 on identical sets, only small next to a real gap.
    assert diff["kid"] > 10 * max(abs(same["kid"]), abs(close["kid"]))
    assert same["acc"] == accuracy(load_classifier(classifier_path), gen, gen_labels)
    assert same["acc"] > 0.9 and diff["acc"] < 0.9


def test_kid_subset_size_is_clamped_to_smaller_input(classifier_path):
    gen, gen_labels = two_squares(20, seed=12)
    real, _ = two_squares(30, seed=13)
    out = quality(gen, gen_labels, real, classifier_path=classifier_path, kid_subset_size=10_000)
    assert all(isinstance(out[k], float) for k in ("fid", "kid", "acc"))


def test_inception_without_local_weights_says_where(classifier_path, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = os.path.join(str(tmp_path), "hub", "checkpoints", "weights-inception-2015-12-05-6726825d.pth")
    gen, gen_labels = two_squares(8, seed=14)
    with pytest.raises(FileNotFoundError) as e:
        quality(gen, gen_labels, gen, classifier_path=classifier_path, feature_extractor="inception-v3-compat")
    assert expected in str(e.value)
    assert "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" in str(e.value)


def test_unknown_extractor_lists_valid_names(classifier_path):
    gen, gen_labels = two_squares(8, seed=15)
    with pytest.raises(ValueError) as e:
        quality(gen, gen_labels, gen, classifier_path=classifier_path, feature_extractor="inception")
    assert "lifelong-cnn" in str(e.value) and "inception-v3-compat" in str(e.value)


def test_missing_classifier_fails_before_metrics(tmp_path):
    gen, gen_labels = two_squares(8, seed=16)
    with pytest.raises(FileNotFoundError, match="dvc repro classifier"):
        quality(gen, gen_labels, gen, classifier_path=str(tmp_path / "missing.pt"))


def test_registration_is_idempotent():
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    import lifelong.evaluation.cnn_extractor as ext

    importlib.reload(ext)  # would raise if the guard were missing
    assert "lifelong-cnn" in FEATURE_EXTRACTORS_REGISTRY
    from lifelong.evaluation.fidelity import LifelongCNNExtractor

    assert LifelongCNNExtractor.get_default_feature_layer_for_metric("fid") == "feat"


def test_package_import_does_not_import_torch_fidelity():
    code = "import sys, lifelong.evaluation; assert 'torch_fidelity' not in sys.modules"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_disjoint_halves_are_disjoint_balanced_and_capped():
    from lifelong.evaluation.fidelity import disjoint_halves

    labels = np.repeat([3, 7], [10, 30])
    a, b = disjoint_halves(40, 16, labels=labels, seed=0)
    assert not set(a) & set(b)
    # 8 per class asked; class 3 has only 10 images: 5 in each half, class 7 gives its 8
    assert [int((labels[a] == c).sum()) for c in (3, 7)] == [5, 8] == [int((labels[b] == c).sum()) for c in (3, 7)]
    a, b = disjoint_halves(9, 100, seed=1)  # unlabelled, asked for more than there is: half each
    assert len(a) == len(b) == 4 and not set(a) & set(b)
    assert [x.tolist() for x in disjoint_halves(9, 100, seed=1)] == [a.tolist(), b.tolist()]  # seeded


def test_noise_floor_is_small_next_to_a_real_gap_and_grows_as_samples_shrink(classifier_path):
    from lifelong.evaluation import noise_floor

    real, labels = two_squares(400, seed=20)
    other, _ = two_squares(200, seed=21, invert=True)
    big = noise_floor(real, 160, labels=labels, classifier_path=classifier_path)
    small = noise_floor(real, 10, labels=labels, classifier_path=classifier_path)
    gap = quality(other, None, real, classifier_path=classifier_path)
    assert big["n"] == 160 and small["n"] == 10  # 80 and 5 per class
    assert 0 < big["fid"] < 0.1 * gap["fid"]
    assert small["fid"] > big["fid"]  # FID's finite-sample bias: the floor depends on the sample size


def test_diversity_is_about_one_for_real_data_and_near_zero_for_a_collapsed_generator(classifier_path):
    real, labels = two_squares(200, seed=30)
    fresh, fresh_labels = two_squares(200, seed=31)
    collapsed = np.concatenate([np.repeat(fresh[fresh_labels == c][:1], (fresh_labels == c).sum(), axis=0)
                                for c in (0, 1)])  # one image per class, repeated
    collapsed_labels = np.repeat([0, 1], [(fresh_labels == 0).sum(), (fresh_labels == 1).sum()])
    same = quality(fresh, fresh_labels, real, classifier_path=classifier_path, real_labels=labels)["div"]
    mode = quality(collapsed, collapsed_labels, real, classifier_path=classifier_path, real_labels=labels)["div"]
    assert 0.8 < same < 1.25 and mode < 0.05


def _coloured(gray, seed):
    """RGB images (N, H, W, 3) whose channels all differ: R the gray, G half of it, B noise."""
    noise = np.random.default_rng(seed).integers(0, 256, gray.shape, dtype=np.uint8)
    return np.stack([gray, gray // 2, noise], axis=-1)


def test_rgb_images_with_lifelong_cnn_score_as_their_luminance(classifier_path):
    from lifelong.images import luminance

    gen, gen_labels = two_squares(40, seed=40)
    real, real_labels = two_squares(40, seed=41)
    gen_rgb, real_rgb = _coloured(gen, 1), _coloured(real, 2)
    kw = dict(classifier_path=classifier_path, kid_subset_size=20, real_labels=real_labels)
    rgb = quality(gen_rgb, gen_labels, real_rgb, **kw)
    gray = quality(luminance(gen_rgb), gen_labels, luminance(real_rgb), **kw)
    assert rgb == gray  # fid, kid, acc, div: all computed on the luminance
    red_only = quality(gen_rgb[..., 0], gen_labels, real_rgb[..., 0], **kw)
    assert red_only["fid"] != rgb["fid"]  # one channel is not the luminance: the equality above means something
    with pytest.raises(ValueError, match="shapes differ"):
        quality(gen_rgb, gen_labels, real, **kw)


def test_rgb_images_go_to_torch_fidelity_as_3_h_w_items():
    from lifelong.evaluation.fidelity import _AsRGBItems

    rgb = _coloured(two_squares(3, seed=42)[0], 3)
    items = _AsRGBItems(rgb)
    assert len(items) == 3 and items[1].dtype == torch.uint8 and items[1].shape == (3, 16, 16)
    assert torch.equal(items[1], torch.from_numpy(rgb[1]).permute(2, 0, 1))
    gray = _AsRGBItems(rgb[..., 0])[1]  # gray: the same plane three times
    assert gray.shape == (3, 16, 16) and all(torch.equal(gray[c], torch.from_numpy(rgb[1, ..., 0])) for c in range(3))


def test_auto_takes_inception_only_when_its_weights_file_is_there(tmp_path, monkeypatch):
    from lifelong.evaluation import inception_weights_path, resolve_feature_extractor

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert resolve_feature_extractor("auto") == "lifelong-cnn"
    assert resolve_feature_extractor("inception-v3-compat") == "inception-v3-compat"  # explicit: kept (quality raises)
    weights = tmp_path / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    assert inception_weights_path() == str(weights)
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")  # only its presence counts here; loading it is torch-fidelity's
    assert resolve_feature_extractor("auto") == "inception-v3-compat"
    assert resolve_feature_extractor("lifelong-cnn") == "lifelong-cnn"
    with pytest.raises(ValueError, match="lifelong-cnn, inception-v3-compat, auto"):
        resolve_feature_extractor("inception")
