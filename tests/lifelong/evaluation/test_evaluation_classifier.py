import numpy as np
import pytest
import torch

from lifelong.evaluation import (
    ClassifierConfig,
    SmallCNN,
    accuracy,
    load_classifier,
    save_classifier,
    train_classifier,
)

from tests.lifelong.evaluation._eval_synthetic import two_squares

CFG = ClassifierConfig(num_classes=2, channels=(8, 16), feature_dim=32)


@pytest.fixture(scope="module")
def trained():
    x, y = two_squares(256, seed=0)
    return train_classifier(x, y, CFG, epochs=3, batch_size=64, seed=0)


def test_trains_above_90_percent_on_held_out(trained):
    x, y = two_squares(200, seed=1)
    assert accuracy(trained, x, y) > 0.9


def test_training_is_deterministic_given_seed():
    x, y = two_squares(64, seed=2)
    a = train_classifier(x, y, CFG, epochs=1, batch_size=16, seed=7)
    b = train_classifier(x, y, CFG, epochs=1, batch_size=16, seed=7)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


@pytest.mark.parametrize("size_px", [8, 16, 28, 32])
def test_any_image_size_gives_fixed_feature_and_logit_shapes(size_px):
    model = SmallCNN(CFG)
    x = torch.rand(3, 1, size_px, size_px)
    assert model.features(x).shape == (3, CFG.feature_dim)
    assert model(x).shape == (3, CFG.num_classes)


def test_save_load_round_trip_identical_logits(trained, tmp_path):
    path = tmp_path / "sub" / "classifier.pt"
    save_classifier(trained, CFG, path)
    ckpt = torch.load(path, weights_only=True)  # must not need pickle of arbitrary objects
    assert ckpt["config"] == CFG.to_dict()
    loaded = load_classifier(path)
    assert loaded.cfg == CFG
    x = torch.rand(5, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(trained(x), loaded(x))


def test_missing_checkpoint_names_path_and_stage(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError) as e:
        load_classifier(path)
    assert str(path) in str(e.value) and "dvc repro classifier" in str(e.value)


def test_corrupt_checkpoint_names_path_and_stage(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError) as e:
        load_classifier(path)
    assert str(path) in str(e.value) and "dvc repro classifier" in str(e.value)


def test_config_dict_round_trip_and_unknown_key():
    assert ClassifierConfig.from_dict(CFG.to_dict()) == CFG
    with pytest.raises(ValueError, match="feature_dims"):
        ClassifierConfig.from_dict({"feature_dims": 3})


def test_rejects_wrong_image_size_and_labels():
    x, y = two_squares(8, seed=3, size_px=8)
    with pytest.raises(ValueError, match="image_size_px"):
        train_classifier(x, y, CFG, epochs=1)
    x, _ = two_squares(8, seed=3)
    with pytest.raises(ValueError, match="labels"):
        train_classifier(x, np.full(8, 5), CFG, epochs=1)
