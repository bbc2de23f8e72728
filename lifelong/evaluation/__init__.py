"""Evaluation: a small domain classifier and FID/KID/accuracy of generated images.

`import lifelong.evaluation` does not import torch_fidelity; `quality()` and
`LifelongCNNExtractor` pull it in on first use.
"""

from lifelong.evaluation.classifier import (
    ClassifierConfig,
    SmallCNN,
    accuracy,
    load_classifier,
    predict,
    save_classifier,
    train_classifier,
)
from lifelong.evaluation.generate import eval_seed, generate_per_class, weights_for_task
from lifelong.evaluation.fidelity import (
    FEATURE_EXTRACTORS,
    inception_weights_path,
    noise_floor,
    quality,
    resolve_feature_extractor,
)

__all__ = [
    "ClassifierConfig",
    "SmallCNN",
    "train_classifier",
    "predict",
    "accuracy",
    "save_classifier",
    "load_classifier",
    "quality",
    "noise_floor",
    "eval_seed",
    "generate_per_class",
    "weights_for_task",
    "inception_weights_path",
    "resolve_feature_extractor",
    "FEATURE_EXTRACTORS",
    "LifelongCNNExtractor",
]


def __getattr__(name: str):
    if name == "LifelongCNNExtractor":
        from lifelong.evaluation.cnn_extractor import LifelongCNNExtractor

        return LifelongCNNExtractor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
