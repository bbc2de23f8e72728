"""Stage `train_<scenario>@<run>-task<i>`: one Ray Train job for one task of one run, then register the model.

    python -m pipeline.train --scenario label --run diffusion-generative_distillation --task 3

A run is <family>-<method>. Reads task k's shards and (k >= 2) task k-1's registered model, named by
the receipt the previous stage wrote; trains with Ray Train; registers the result as a new version
of `<experiment>-<scenario>-<run>` with alias `task-<k>`; writes the receipt the next stage depends
on. The receipt is written last, so DVC never records a stage whose model is not registered.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

from pipeline.layout import run_stage, Layout, git_commit, layout, read_json, write_json
from pipeline.params import Params, load_params, split_run
from pipeline.registry import download_model_version, model_name, register_model_version, setup_mlflow


def flat_params(params: Params) -> dict[str, str]:
    """params.yaml flattened to `section.key` strings (MLflow params are strings, <= 6000 chars)."""
    out: dict[str, str] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = json.dumps(value) if not isinstance(value, str) else value

    walk("", params.model_dump(exclude={"task_chain"}))
    return out


def model_config(params: Params, scenario: str = "label", family: str = "diffusion") -> dict:
    """The model config of a run: its family's section of params.yaml, sized for the scenario's data."""
    if family == "gan":
        from lifelong.models.gan import GANConfig

        g = params.gan
        return GANConfig(condition=scenario, image_size_px=params.data.image_size_px, in_channels=1,
                         num_classes=params.num_classes,
                         z_dim=g.z_dim if scenario == "label" else g.latent_dim, width=g.width,
                         gan_loss=g.gan_loss).to_dict()
    from lifelong.models.diffusion import DiffusionConfig

    return DiffusionConfig(
        image_size_px=params.data.image_size_px,
        in_channels=1,
        num_classes=params.num_classes,
        block_out_channels=tuple(params.model.block_out_channels),
        layers_per_block=params.model.layers_per_block,
        attention=params.model.attention,
        num_train_timesteps=params.model.num_train_timesteps,
    ).to_dict()


def use_local_mode(params: Params) -> bool:
    """Ray Train's local mode (num_workers=0) runs the loop in this process: no cluster, no actor start-up.

    It is the fast path for one CPU worker; our checkpoints are files, so resume works the same.
    Two or more workers, or a GPU, always go through real Ray Train workers (DDP).
    """
    mode = params.train.local_mode
    if mode == "always":
        return True
    if mode == "never":
        return False
    return params.train.num_workers == 1 and not params.train.use_gpu


def run_trainer(cfg: dict, params: Params, name: str, storage_path: str):
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from lifelong.training import train_loop_per_worker

    local = use_local_mode(params)
    if not local and not ray.is_initialized():
        address = params.ray.address or os.environ.get("RAY_ADDRESS")
        env = {k: v for k, v in os.environ.items() if k.startswith(("MLFLOW_", "LIFELONG_"))}
        env.update(RAY_USAGE_STATS_ENABLED="0")
        if address:
            ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True)
        else:  # no cluster to attach to: start one for this stage (`lifelong repro` keeps one up instead)
            ray.init(runtime_env={"env_vars": env}, include_dashboard=True, dashboard_host="127.0.0.1")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=cfg,
        scaling_config=ray.train.ScalingConfig(num_workers=0 if local else params.train.num_workers,
                                               use_gpu=params.train.use_gpu,
                                               resources_per_worker=None if local else
                                               {"CPU": params.train.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=params.train.max_failures),
        ),
    )
    return trainer.fit()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", required=True, choices=["label", "image"])
    ap.add_argument("--run", required=True, help="<family>-<method>, e.g. gan-lifelong_gan")
    ap.add_argument("--task", type=int, required=True, help="1-based task index")
    args = ap.parse_args(argv)
    t_start = time.time()

    params = load_params()
    lay = layout()
    scenario, run, k = args.scenario, args.run, args.task
    runs = getattr(params.scenarios, scenario).runs
    if run not in runs:
        raise SystemExit(f"--run {run!r} is not in params.yaml scenarios.{scenario}.runs {runs}")
    family, method = split_run(run)
    T = params.num_tasks_of(scenario)
    if not 1 <= k <= T:
        raise SystemExit(f"--task {k} is out of range: the {scenario} scenario has {T} tasks (1..{T})")
    stage_of = lambda i: f"train_{scenario}@{run}-task{i - 1}"  # noqa: E731
    stage = os.environ.get("DVC_STAGE", stage_of(k))
    # train.use_tuned: the `tuned` stage's pick (results/tune/applied.json) replaces the defaults.
    from pipeline.tune import apply_tuned

    params, tuned = apply_tuned(params, scenario, run, lay)

    from lifelong.data import read_manifest, task_shard_paths, verify_shards

    # [1] data: verify before anything expensive; joint trains on tasks 1..k, every other method on task k.
    from lifelong.methods import method_class

    shard_dir = lay.scenario_shards(scenario)
    data_tasks = list(range(1, k + 1)) if method_class(family, method).uses_all_seen_data else [k]
    for t in data_tasks:
        verify_shards(shard_dir, task=t)
    manifest = read_manifest(shard_dir)
    shards = [p for t in data_tasks for p in task_shard_paths(shard_dir, t, "train")]
    data_digest = hashlib.sha256(
        "".join(_task_digest(manifest, t) for t in data_tasks).encode()
    ).hexdigest()
    previous_classes = sorted({c for t in range(1, k) for c in params.task_classes(scenario, t)})

    # [2] the previous task's model, by the exact version its stage registered.
    name = model_name(params, scenario, run)
    prev_receipt = None
    if k > 1:
        prev_path = lay.receipt(scenario, run, k - 1)
        prev_receipt = read_json(prev_path, what=f"receipt of task {k - 1}",
                                 fix=f"run `dvc repro {stage_of(k - 1)}` first")

    # The run directory is keyed by everything that determines the result: same inputs -> same
    # directory -> an interrupted run resumes; anything changed -> a fresh directory.
    cfg_model = model_config(params, scenario, family)
    hyper = budget(params, family, method)
    run_key = hashlib.sha256(json.dumps({
        "method": method, "task": k, "model": cfg_model, "train": params.train.model_dump(),
        "seed": params.seed, "data": data_digest, "prev": prev_receipt and prev_receipt["model_id"],
        # diffusion keys as before this file knew GANs, so existing run dirs keep their key
        **({"distill": params.distill.model_dump()} if family == "diffusion" else
           {"family": family, "scenario": scenario, "hyper": hyper}),
        **({"tuned": tuned} if tuned else {}),  # absent when not tuned: existing run dirs keep their key
    }, sort_keys=True).encode()).hexdigest()[:12]
    storage_path = lay.storage_path(params)
    run_name = f"{params.experiment}-{scenario}-{run}-task{k}-{run_key}"
    run_dir = Path(storage_path) / run_name if "://" not in storage_path else None
    if run_dir is None:
        raise SystemExit("train.storage_path URIs are not supported for checkpoints yet; use a shared mount")
    run_dir.mkdir(parents=True, exist_ok=True)

    experiment_id = setup_mlflow(params, lay)
    init_state = None
    if prev_receipt is not None:
        init_state = str(download_model_version(
            prev_receipt["model_name"], prev_receipt["version"], run_dir / "previous",
            stage_hint=stage_of(k - 1)))

    from lifelong.training import TaskTrainConfig, read_metrics

    cfg = TaskTrainConfig(
        method=method, family=family, paired=scenario == "image", model_config=cfg_model, task_index=k,
        task_classes=params.task_classes(scenario, k), previous_classes=previous_classes, shards=shards,
        checkpoint_dir=str(run_dir / "checkpoints"), init_state=init_state, grad_clip=params.train.grad_clip,
        checkpoint_every=params.train.checkpoint_every_steps, log_every=params.train.log_every_steps,
        seed=params.seed, use_gpu=params.train.use_gpu, loader_workers=params.train.loader_workers, **hyper,
    )
    t_fit = time.time()
    result = run_trainer(cfg.to_dict(), params, run_name, storage_path)
    if result.error:
        raise result.error
    fit_seconds = time.time() - t_fit

    final = Path(cfg.checkpoint_dir) / "final.pt"
    if not final.exists():
        raise RuntimeError(f"training finished but {final} is missing")

    # [3] MLflow: run with params, lineage inputs, loss curve; then the registered version.
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import LoggedModelInput

    t_register = time.time()
    curve = {int(m["step"]): m for m in read_metrics(cfg.checkpoint_dir)}
    train_seconds = max((m.get("train_seconds", 0.0) for m in curve.values()), default=0.0)
    tags = {
        "scenario": scenario, "family": family, "method": method, "run": run, "task": str(k),
        "classes": json.dumps(params.task_classes(scenario, k)),
        "parent_version": prev_receipt["version"] if prev_receipt else "",
        "data_digest": data_digest, "git_commit": git_commit(lay.root), "dvc_stage": stage,
    }
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{scenario}/{run}/task-{k}", tags=tags) as mlrun:
        mlflow.log_params(flat_params(params))
        mlflow.log_params({"task": k, "task_classes": json.dumps(params.task_classes(scenario, k)),
                           "hyper": json.dumps(hyper, sort_keys=True),
                           "ray_local_mode": use_local_mode(params), "run_dir": str(run_dir)})
        mlflow.log_params({"tuned": bool(tuned), **{f"tuned.{key}": v for key, v in tuned.items()}})
        with warnings.catch_warnings():  # "source can be interpreted in multiple ways": both are local paths
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(_source(lay, scenario, data_tasks))
        mlflow.log_input(MetaDataset(source=source, name=f"{params.data.dataset}-{scenario}-tasks-"
                                     + "-".join(map(str, data_tasks)), digest=data_digest[:16]),
                         context="training")
        if prev_receipt is not None:
            mlflow.log_input(model=LoggedModelInput(prev_receipt["model_id"]))
        for step in sorted(curve):
            mlflow.log_metrics({f"train/{key}": float(v) for key, v in curve[step].items()
                                if key not in ("step", "resumed_from", "first_step_wall", "wall_time")}, step=step)
        mlflow.log_metrics({"train_seconds": train_seconds, "stage_fit_seconds": fit_seconds})
        receipt = register_model_version(
            name=name, model_file=final, run_id=mlrun.info.run_id, experiment_id=experiment_id,
            alias=f"task-{k}", tags=tags, params={"scenario": scenario, "run": run, "task": str(k)},
        )
    last = curve[max(curve)] if curve else {}
    receipt.update(scenario=scenario, run=run, family=family, method=method, task=k, data_digest=data_digest,
                   train_seconds=train_seconds, classes=params.task_classes(scenario, k),
                   previous_classes=previous_classes,
                   timing={"main_started": t_start, "first_step": last.get("first_step_wall"),
                           "last_step": last.get("wall_time"), "registered": time.time()})
    write_json(lay.receipt(scenario, run, k), receipt)
    # The task is registered: its step checkpoints are no longer needed (final.pt stays for resume).
    for p in Path(cfg.checkpoint_dir).glob("step-*.pt"):
        p.unlink(missing_ok=True)
    shutil.rmtree(run_dir / "previous", ignore_errors=True)
    print(f"[train] {scenario}/{run} task {k}: registered {name} v{receipt['version']} (alias task-{k}); "
          f"train {train_seconds:.1f}s, fit {fit_seconds:.1f}s, register {time.time() - t_register:.1f}s, "
          f"stage {time.time() - t_start:.1f}s", flush=True)
    return 0


def _task_digest(manifest: dict, task: int) -> str:
    """A task's shard digests (its manifest entry), so editing task 4 changes no digest of tasks 1-3."""
    return hashlib.sha256(json.dumps(manifest["per_task"][task - 1], sort_keys=True).encode()).hexdigest()


def _source(lay: Layout, scenario: str, tasks: list[int]) -> str:
    return ",".join(str(lay.task_shards(t, scenario)) for t in tasks)


def budget(params: Params, family: str, method: str) -> dict:
    """The training budget and method hyperparameters of one run (TaskTrainConfig fields)."""
    if family == "diffusion":
        t = params.train
        return {"steps": t.steps_per_task, "batch_size": t.batch_size, "lr": t.lr,
                "distill_weight": params.distill.weight, "replay_ddim_steps": params.distill.replay_ddim_steps}
    g = params.gan
    out = {"steps": g.steps_per_task, "batch_size": g.batch_size, "lr": g.lr}
    if method == "lifelong_gan":
        out.update(distill_weight=params.lifelong_gan.beta, method_options={"auxiliary": params.lifelong_gan.auxiliary})
    elif method == "piggyback_gan":
        out.update(method_options={"filter_ratio": params.piggyback_gan.filter_ratio})
    return out


if __name__ == "__main__":
    run_stage(main)
