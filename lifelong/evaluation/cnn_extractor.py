"""torch-fidelity feature extractor backed by the project's SmallCNN classifier.

Importing this module imports torch_fidelity (~10 s) and registers the extractor as
"lifelong-cnn". `fidelity.py` imports it lazily, only when metrics are computed.
"""

from __future__ import annotations

import torch
from torch_fidelity import FeatureExtractorBase, register_feature_extractor
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from lifelong.evaluation.classifier import ClassifierConfig, load_classifier

EXTRACTOR_NAME = "lifelong-cnn"


class LifelongCNNExtractor(FeatureExtractorBase):
    """Penultimate SmallCNN features ("feat") for FID/KID/PRC.

    torch-fidelity builds it as `cls(name, features_list, **all_calculate_metrics_kwargs)`;
    `feature_extractor_weights_path` must be a checkpoint from `save_classifier`.
    """

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(
                f'feature extractor "{name}" needs feature_extractor_weights_path=<classifier checkpoint>'
            )
        self.net = load_classifier(feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list():
        return ("feat",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"fid": "feat", "kid": "feat", "prc": "feat", "isc": "feat"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        side = ClassifierConfig().image_size_px
        return torch.zeros(1, 3, side, side, dtype=torch.uint8)

    def forward(self, x):
        # x: uint8 (N, 3, H, W), gray replicated to 3 channels (`quality` turns RGB images into their
        # luminance before they get here) -> float (N, 1, H, W) in [0, 1]
        x = x[:, :1].float() / 255.0
        return (self.net.features(x),)  # torch-fidelity wants a tuple in features_list order


# Re-registering a name raises in torch-fidelity (e.g. after importlib.reload), hence the guard.
if EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(EXTRACTOR_NAME, LifelongCNNExtractor)
