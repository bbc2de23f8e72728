"""Fixtures shared by the library's tests."""

import pytest

from lifelong.evaluation import ClassifierConfig, save_classifier, train_classifier
from tests.lifelong.evaluation._eval_synthetic import two_squares


@pytest.fixture(scope="session")
def classifier_path(tmp_path_factory):
    """A small classifier (and FID feature extractor) trained on the two-squares images: a file path."""
    cfg = ClassifierConfig(num_classes=2, channels=(8, 16), feature_dim=32)
    x, y = two_squares(256, seed=0)
    path = tmp_path_factory.mktemp("clf") / "classifier.pt"
    save_classifier(train_classifier(x, y, cfg, epochs=3, batch_size=64, seed=0), cfg, path)
    return str(path)
