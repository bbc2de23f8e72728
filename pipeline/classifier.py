"""Stage `classifier`: a small CNN trained once on the real training set (all classes).

It is both the offline FID/KID feature extractor (registered with torch-fidelity as "lifelong-cnn",
so nothing is downloaded) and the judge of generated labels. Registered in MLflow as
`<experiment>-classifier`.
"""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np

from pipeline.layout import git_commit, layout, write_json
from pipeline.params import load_params
from pipeline.registry import register_model_version, setup_mlflow
from pipeline.stage import run_stage


def main(argv: list[str] | None = None) -> int:
    import mlflow

    from lifelong.data import read_all, read_manifest, task_shard_paths, verify_shards
    from lifelong.evaluation import ClassifierConfig, accuracy, save_classifier, train_classifier

    params = load_params()
    lay = layout()
    experiment_id = setup_mlflow(params, lay)  # MLflow answers, or the stage stops here, before training
    verify_shards(lay.shards)
    manifest = read_manifest(lay.shards)

    def load(split: str) -> tuple[np.ndarray, np.ndarray]:
        parts = [read_all(task_shard_paths(lay.shards, k, split)) for k in range(1, params.num_tasks + 1)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    (x_train, y_train), (x_test, y_test) = load("train"), load("test")
    cfg = ClassifierConfig(image_size_px=params.data.image_size_px, num_classes=params.num_classes)
    t0 = time.time()
    model = train_classifier(x_train, y_train, cfg, epochs=params.classifier.epochs,
                             batch_size=params.classifier.batch_size, lr=params.classifier.lr, seed=params.seed)
    test_acc = accuracy(model, x_test, y_test)
    seconds = time.time() - t0
    lay.classifier.parent.mkdir(parents=True, exist_ok=True)
    save_classifier(model, cfg, lay.classifier)

    tags = {"role": "fid-feature-extractor+label-judge", "data_digest": manifest["digest"],
            "git_commit": git_commit(lay.root), "dvc_stage": "classifier"}
    with mlflow.start_run(experiment_id=experiment_id, run_name="classifier", tags=tags) as run:
        mlflow.log_params({"epochs": params.classifier.epochs, "lr": params.classifier.lr,
                           "image_size_px": params.data.image_size_px, "num_classes": params.num_classes})
        mlflow.log_metrics({"test_accuracy": test_acc, "train_seconds": seconds})
        receipt = register_model_version(
            name=f"{params.experiment}-classifier", model_file=lay.classifier, run_id=run.info.run_id,
            experiment_id=experiment_id, alias="current", tags=tags, logged_name="classifier",
            run_key=hashlib.sha256(json.dumps({"data": manifest["digest"], "seed": params.seed,
                                               "classifier": params.classifier.model_dump(),
                                               "cfg": cfg.__dict__}, sort_keys=True, default=str).encode()).hexdigest()[:12],
        )
    receipt.update(test_accuracy=test_acc, data_digest=manifest["digest"])
    write_json(lay.classifier_receipt, receipt)
    print(f"[classifier] test accuracy {test_acc:.3f} ({seconds:.1f}s); registered v{receipt['version']}", flush=True)
    return 0


if __name__ == "__main__":
    run_stage(main)
