"""Overhead of live MLflow logging on the train step, measured side by side in one run.

    .venv/bin/python benchmarks/live_logging.py [--steps 200] [--rounds 4] [--tracking-uri http://127.0.0.1:5000]

The default diffusion config of params.yaml (train.batch_size, model.*), stepped as the worker loop
does, with rank 0's `on_log` = pipeline.tracking.LiveLogger (losses every train.log_every_steps,
asynchronous, plus system metrics) vs no logging. Blocks of `steps` steps alternate between the two,
`rounds` times, so drift on the machine hits both alike. Default store: a fresh sqlite file (the
zero-set-up path); --tracking-uri measures a server (`lifelong stack up`).      target <= 1.03x
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.update(RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true")

import torch  # noqa: E402

from lifelong.learners import DiffusionLearner  # noqa: E402
from lifelong.training import TaskTrainConfig  # noqa: E402
from pipeline.params import load_params  # noqa: E402
from pipeline.task import budget, model_config  # noqa: E402
from pipeline.tracking import LiveLogger  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--tracking-uri", default=None)
    args = ap.parse_args()
    params = load_params(REPO / "params.yaml")
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="live-logging-"))
    cfg = TaskTrainConfig(method="finetune", family="diffusion", task_index=1, task_classes=[0, 1],
                          previous_classes=[], shards=[], checkpoint_dir=str(tmp),
                          model_config=model_config(params, "label", "diffusion"), **budget(params, "diffusion-finetune"))
    learner = DiffusionLearner(cfg, cfg.task_info(), torch.device("cpu"), rank=0)
    size = params.data.image_size_px
    batch = (torch.rand(cfg.batch_size, 1, size, size) * 2 - 1, torch.randint(0, 2, (cfg.batch_size,)))
    no_autocast = torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=False)
    every = params.train.log_every_steps

    import mlflow

    uri = args.tracking_uri or f"sqlite:///{tmp / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("bench", artifact_location=(tmp / "art").as_uri()) if "sqlite" in uri else \
        mlflow.set_experiment("bench-live-logging").experiment_id
    run_id = mlflow.MlflowClient().create_run(exp, run_name="live-logging").info.run_id
    logger = LiveLogger(uri, run_id)

    def block(on_log) -> float:
        t0 = time.perf_counter()
        for step in range(1, args.steps + 1):
            parts = learner.step(batch, no_autocast)
            if step % every == 0:
                metrics = {k: float(v.detach()) for k, v in parts.items()}
                metrics.update(step=step, train_seconds=time.perf_counter() - t0)
                if on_log is not None:
                    on_log(metrics)
        return time.perf_counter() - t0

    block(None)  # warm-up
    plain, live, ratios = 0.0, 0.0, []
    for _ in range(args.rounds):
        p, q = block(None), block(logger)
        plain, live = plain + p, live + q
        ratios.append(q / p)
    t_close = time.perf_counter()
    logger.close()
    close = time.perf_counter() - t_close
    mlflow.MlflowClient().set_terminated(run_id)
    logged = len(mlflow.MlflowClient().get_metric_history(run_id, "train/loss"))
    n = args.steps * args.rounds
    ratio = live / plain
    median = sorted(ratios)[len(ratios) // 2]
    print("\n| store | steps | log every | no logging ms/step | live logging ms/step | ratio of totals | "
          "median ratio of pairs | target |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {uri.split(':')[0]} | {n} + {n} | {every} | {1000 * plain / n:.2f} | {1000 * live / n:.2f} | "
          f"{ratio:.3f}x | {median:.3f}x | <= 1.03x {'ok' if max(ratio, median) <= 1.03 else 'MISSED'} |")
    print(f"\n{logged} loss points logged; flushing the queue at the end took {close:.2f} s (once per task)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
