"""Stage `train_<scenario>_<family>@<run>-task<k>`: one Ray Train job for one task of one run, then register the model.

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
import time
import warnings
from pathlib import Path

from lifelong.catalog import run_spec
from pipeline.layout import Layout, git_commit, layout, read_json, run_stage, write_json
from pipeline.params import Params, load_params
from pipeline.plan import result_values, stage_name
from pipeline.registry import download_model_version, model_name, register_model_version, setup_mlflow
from pipeline.task import apply_tuned, budget, fit, model_config, use_local_mode


def flat_params(params: Params) -> dict[str, str]:
    """params.yaml flattened to `section.key` strings (MLflow params are strings, <= 6000 chars)."""
    out: dict[str, str] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = json.dumps(value) if not isinstance(value, str) else value

    walk("", params.model_dump())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", required=True, choices=["label", "image"])
    ap.add_argument("--run", required=True, help="<family>-<method>, e.g. gan-lifelong_gan")
    ap.add_argument("--task", type=int, required=True, help="1-based task index")
    args = ap.parse_args(argv)
    t_start = time.time()
    params, lay = load_params(), layout()
    scenario, run, k = args.scenario, args.run, args.task
    check_stage_args(params, scenario, run, k)
    spec = run_spec(run)
    # train.use_tuned: the `tuned` stage's pick for this run (results/tune/applied/<run>.json) replaces the defaults.
    params, tuned = apply_tuned(params, scenario, run, lay)

    # [1] data: verified before anything expensive; joint trains on tasks 1..k, every other method on task k.
    data_tasks = list(range(1, k + 1)) if spec.trains_on_seen_tasks else [k]
    shards, data_digest = task_data(lay, scenario, data_tasks)

    # [2] the previous task's receipt: the exact registered version this task continues from.
    prev_receipt = None
    if k > 1:
        prev_receipt = read_json(lay.receipt(scenario, run, k - 1), what=f"receipt of task {k - 1}",
                                 fix=f"run `dvc repro {stage_name(scenario, run, k - 1)}` first")

    # [3] the run directory, keyed by exactly what determines the result (pipeline/plan.py): same
    # inputs -> same directory -> an interrupted task resumes; a changed result key -> a fresh one.
    # Operational keys (logging, checkpoint cadence, storage, workers' placement) are not in the key.
    run_key = hashlib.sha256(json.dumps({
        "scenario": scenario, "run": run, "task": k, "result": result_values(params, run), "tuned": tuned,
        "classes": params.task_classes(scenario, k), "num_classes": params.num_classes,
        "data": data_digest, "prev": prev_receipt and prev_receipt["model_id"],
    }, sort_keys=True).encode()).hexdigest()[:12]
    storage_path = lay.storage_path(params)
    if "://" in storage_path:
        raise SystemExit("train.storage_path URIs are not supported for checkpoints yet; use a shared mount")
    run_name = f"{params.experiment}-{scenario}-{run}-task{k}-{run_key}"
    run_dir = Path(storage_path) / run_name
    run_dir.mkdir(parents=True, exist_ok=True)

    # [4] train: one Ray Train job, starting from the previous task's registered model.
    experiment_id = setup_mlflow(params, lay)
    init_state = None
    if prev_receipt is not None:
        init_state = str(download_model_version(prev_receipt["model_name"], prev_receipt["version"],
                                                run_dir / "previous", stage_hint=stage_name(scenario, run, k - 1)))
    from lifelong.training import TaskTrainConfig, read_metrics

    previous_classes = sorted({c for t in range(1, k) for c in params.task_classes(scenario, t)})
    hyper = budget(params, run)
    cfg = TaskTrainConfig(
        method=spec.name, family=spec.family, paired=scenario == "image",
        model_config=model_config(params, scenario, spec.family), task_index=k,
        task_classes=params.task_classes(scenario, k), previous_classes=previous_classes, shards=shards,
        checkpoint_dir=str(run_dir / "checkpoints"), init_state=init_state, grad_clip=params.train.grad_clip,
        checkpoint_every=params.train.checkpoint_every_steps, log_every=params.train.log_every_steps,
        seed=params.seed, use_gpu=params.train.use_gpu, loader_workers=params.train.loader_workers, **hyper,
    )
    t_fit = time.time()
    fit(cfg.to_dict(), params, name=run_name, storage_path=storage_path)
    fit_seconds = time.time() - t_fit
    final = Path(cfg.checkpoint_dir) / "final.pt"
    if not final.exists():
        raise RuntimeError(f"training finished but {final} is missing")

    # [5] MLflow: a run with params, lineage inputs and the loss curve; then the registered version.
    t_register = time.time()
    curve = {int(m["step"]): m for m in read_metrics(cfg.checkpoint_dir)}
    train_seconds = max((m.get("train_seconds", 0.0) for m in curve.values()), default=0.0)
    tags = {
        "scenario": scenario, "family": spec.family, "method": spec.name, "run": run, "task": str(k),
        "classes": json.dumps(params.task_classes(scenario, k)),
        "parent_version": prev_receipt["version"] if prev_receipt else "",
        "data_digest": data_digest, "git_commit": git_commit(lay.root),
        "dvc_stage": os.environ.get("DVC_STAGE", stage_name(scenario, run, k)),
    }
    receipt = log_and_register(params, lay, experiment_id, scenario, run, k, tags=tags, hyper=hyper, tuned=tuned,
                               run_dir=run_dir, data_tasks=data_tasks, prev_receipt=prev_receipt, curve=curve,
                               metrics={"train_seconds": train_seconds, "stage_fit_seconds": fit_seconds},
                               model_file=final)

    # [6] the receipt the next task's stage depends on: written last, so DVC never records a task
    # whose model is not registered.
    last = curve[max(curve)] if curve else {}
    receipt.update(scenario=scenario, run=run, family=spec.family, method=spec.name, task=k, data_digest=data_digest,
                   train_seconds=train_seconds, classes=params.task_classes(scenario, k),
                   previous_classes=previous_classes,
                   timing={"main_started": t_start, "first_step": last.get("first_step_wall"),
                           "last_step": last.get("wall_time"), "registered": time.time()})
    write_json(lay.receipt(scenario, run, k), receipt)
    # The task is registered: its step checkpoints are no longer needed (final.pt stays for resume).
    for p in Path(cfg.checkpoint_dir).glob("step-*.pt"):
        p.unlink(missing_ok=True)
    shutil.rmtree(run_dir / "previous", ignore_errors=True)
    print(f"[train] {scenario}/{run} task {k}: registered {receipt['model_name']} v{receipt['version']} "
          f"(alias task-{k}); train {train_seconds:.1f}s, fit {fit_seconds:.1f}s, "
          f"register {time.time() - t_register:.1f}s, stage {time.time() - t_start:.1f}s", flush=True)
    return 0


def check_stage_args(params: Params, scenario: str, run: str, k: int) -> None:
    runs = getattr(params.scenarios, scenario).runs
    if run not in runs:
        raise SystemExit(f"--run {run!r} is not in params.yaml scenarios.{scenario}.runs {runs}")
    T = params.num_tasks_of(scenario)
    if not 1 <= k <= T:
        raise SystemExit(f"--task {k} is out of range: the {scenario} scenario has {T} tasks (1..{T})")


def task_data(lay: Layout, scenario: str, data_tasks: list[int]) -> tuple[list[str], str]:
    """The verified training shards of these tasks, and their digest (from the manifest)."""
    from lifelong.data import read_manifest, task_shard_paths, verify_shards

    shard_dir = lay.scenario_shards(scenario)
    for t in data_tasks:
        verify_shards(shard_dir, task=t)
    manifest = read_manifest(shard_dir)
    shards = [str(p) for t in data_tasks for p in task_shard_paths(shard_dir, t, "train")]
    digest = hashlib.sha256("".join(_task_digest(manifest, t) for t in data_tasks).encode()).hexdigest()
    return shards, digest


def log_and_register(params: Params, lay: Layout, experiment_id: str, scenario: str, run: str, k: int, *,
                     tags: dict, hyper: dict, tuned: dict, run_dir: Path, data_tasks: list[int],
                     prev_receipt: dict | None, curve: dict, metrics: dict, model_file: Path) -> dict:
    """One MLflow run for the task (params, data and parent-model lineage, loss curve), and the model
    registered as a new version of `<experiment>-<scenario>-<run>` with alias task-<k>."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import LoggedModelInput

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
                                     + "-".join(map(str, data_tasks)), digest=tags["data_digest"][:16]),
                         context="training")
        if prev_receipt is not None:
            mlflow.log_input(model=LoggedModelInput(prev_receipt["model_id"]))
        for step in sorted(curve):
            mlflow.log_metrics({f"train/{key}": float(v) for key, v in curve[step].items()
                                if key not in ("step", "resumed_from", "first_step_wall", "wall_time")}, step=step)
        mlflow.log_metrics(metrics)
        return register_model_version(
            name=model_name(params, scenario, run), model_file=model_file, run_id=mlrun.info.run_id,
            experiment_id=experiment_id, alias=f"task-{k}", tags=tags,
            params={"scenario": scenario, "run": run, "task": str(k)},
        )


def _task_digest(manifest: dict, task: int) -> str:
    """A task's shard digests (its manifest entry), so editing task 4 changes no digest of tasks 1-3."""
    return hashlib.sha256(json.dumps(manifest["per_task"][task - 1], sort_keys=True).encode()).hexdigest()


def _source(lay: Layout, scenario: str, tasks: list[int]) -> str:
    return ",".join(str(lay.task_shards(t, scenario)) for t in tasks)


if __name__ == "__main__":
    run_stage(main)
