"""Stage `evaluate@<method>`: the task x task quality matrices of one method.

After each task k (the version its train stage registered), for each seen task j <= k: generate
`eval.samples_per_class` images per class of task j with DDIM, then FID/KID against task j's real
test images and the classifier's accuracy on them. Row k of every matrix is logged to task k's
MLflow run; the forgetting summary is set as tags on the last task's model version.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.layout import run_stage, layout, read_json, write_json
from pipeline.params import load_params
from pipeline.registry import download_model_version, setup_mlflow

MATRIX_KEYS = ("fid", "kid", "acc")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", required=True)
    args = ap.parse_args(argv)
    import mlflow
    import torch
    from mlflow import MlflowClient

    from lifelong.data import read_all, task_shard_paths, verify_shards
    from lifelong.evaluation import quality
    from lifelong.evaluation.generate import generate_per_class
    from lifelong.models.diffusion import DiffusionConfig
    from lifelong.training import load_model_file

    params = load_params()
    lay = layout()
    method, T = args.method, params.num_tasks
    if not lay.classifier.exists():
        raise SystemExit(f"{lay.classifier} not found; run `dvc repro classifier` first")
    experiment_id = setup_mlflow(params, lay)
    client = MlflowClient()
    device = torch.device("cuda" if params.train.use_gpu and torch.cuda.is_available() else "cpu")
    real = {}
    for j in range(1, T + 1):
        verify_shards(lay.shards, task=j)
        real[j] = read_all(task_shard_paths(lay.shards, j, "test"))[0]

    receipts = [read_json(lay.receipt(method, k), what=f"receipt of {method} task {k}",
                          fix=f"run `dvc repro train@{method}-task{k - 1}`") for k in range(1, T + 1)]
    matrix = {key: [[None] * T for _ in range(T)] for key in MATRIX_KEYS}
    samples, t0 = {}, time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for k, receipt in enumerate(receipts, start=1):
            model_file = download_model_version(receipt["model_name"], receipt["version"], Path(tmp) / f"task-{k}",
                                                stage_hint=f"train@{method}-task{k - 1}")
            state = torch.load(model_file, map_location="cpu", weights_only=True)
            cfg = DiffusionConfig.from_dict(state["config"])
            model = load_model_file(model_file, device).eval()
            n_params = count_params(model)
            row = {}
            for j in range(1, k + 1):
                classes = params.data.tasks[j - 1]
                images, labels = generate_per_class(model, classes, per_class=params.eval.samples_per_class, cfg=cfg,
                                          steps=params.eval.ddim_steps, seed=params.seed * 100 + j,
                                          batch_size=params.eval.batch_size, device=device)
                q = quality(images, labels, real[j], classifier_path=str(lay.classifier),
                            feature_extractor=params.eval.feature_extractor,
                            kid_subset_size=params.eval.kid_subset_size, device=device.type)
                for key in MATRIX_KEYS:
                    matrix[key][k - 1][j - 1] = float(q[key])
                    row[f"eval/{key}/task-{j}"] = float(q[key])
                if k == T:  # a few final samples per class for the report's grid
                    for c in classes:
                        samples[c] = images[labels == c][:8]
            row.update({f"eval/{key}_mean_seen": float(np.mean([matrix[key][k - 1][j] for j in range(k)]))
                        for key in MATRIX_KEYS})
            with mlflow.start_run(run_id=receipt["run_id"]):
                mlflow.log_metrics(row, step=k)
            print(f"[evaluate] {method} after task {k}: FID " +
                  " ".join(f"{matrix['fid'][k - 1][j]:.1f}" for j in range(k)), flush=True)

    summary = summarize(matrix)
    last = receipts[-1]
    for key, value in summary.items():  # "register forgetting metrics" on the final model version
        client.set_model_version_tag(last["model_name"], last["version"], key, "" if value is None else f"{value:.6g}")
    with mlflow.start_run(run_id=last["run_id"]):
        mlflow.log_metrics({k: v for k, v in summary.items() if v is not None})

    out = {
        "method": method, "matrix": matrix, **summary,
        "train_seconds": float(sum(r.get("train_seconds", 0.0) for r in receipts)),
        "params": n_params,
        "feature_extractor": params.eval.feature_extractor, "eval_seconds": time.time() - t0,
        "versions": [r["version"] for r in receipts], "model_name": last["model_name"],
    }
    write_json(lay.eval_result(method), out)
    grid = lay.eval_result(method).with_name(f"{method}-samples.npz")
    np.savez_compressed(grid, **{f"class_{c}": v for c, v in sorted(samples.items())})
    return 0


def summarize(matrix: dict) -> dict:
    from lifelong import metrics

    fid, kid, acc = matrix["fid"], matrix["kid"], matrix["acc"]
    return {
        "fid_final_mean": metrics.final_mean(fid),
        "kid_final_mean": metrics.final_mean(kid),
        "acc_final_mean": metrics.final_mean(acc),
        "forgetting_fid_mean": metrics.forgetting_mean(fid, lower_is_better=True),
        "bwt_fid": metrics.bwt(fid),
    }


def count_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


if __name__ == "__main__":
    run_stage(main)
