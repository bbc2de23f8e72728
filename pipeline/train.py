"""Stage `train_<scenario>_<family>@<chain>-task<k>`: one Ray Train job for one task, then register the model.

    python -m pipeline.train --scenario label --run diffusion-generative_distillation --task 3

A run is <family>-<method>; a chain is a run trained with one training seed: the run's own name for
the first (`seed`), `<run>-seed<i>` for seed + i (eval.seeds chains per run). Reads task k's shards
and (k >= 2) task k-1's registered model, named by the receipt the previous stage wrote; trains with
Ray Train; registers the result as a new version of `<experiment>-<scenario>-<chain>` with alias
`task-<k>`; writes the receipt the next stage depends on. The receipt is written last, so DVC never
records a stage whose model is not registered.

In MLflow (pipeline/tracking.py) the task is one run, open while it trains and nested under the
chain's parent run `<scenario>/<chain>`; rank 0 logs the losses live. The version is a pyfunc generator
(pipeline/pyfunc_model.py); registering it again after a kill reuses it (pipeline/registry.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
import warnings
from pathlib import Path

import mlflow

from lifelong.catalog import run_spec
from pipeline.layout import Layout, git_commit, layout, read_json, write_json
from pipeline.params import Params, check_chain, load_params, split_chain
from pipeline.plan import result_values, stage_name
from pipeline.registry import check_model_version, failpoint, model_name, register_model_version, setup_mlflow
from pipeline.stage import run_stage
from pipeline.task import apply_tuned, budget, checkpoints_kind, final_model, fit, model_config, use_local_mode
from pipeline.tracking import chain_run, task_run
from pipeline.worker import train_loop


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
    ap.add_argument("--run", required=True, help="a chain: <family>-<method>[-seed<i>], e.g. gan-lifelong_gan")
    ap.add_argument("--task", type=int, required=True, help="1-based task index")
    args = ap.parse_args(argv)
    t_start = time.time()
    params, lay = load_params(), layout()
    scenario, chain, k = args.scenario, args.run, args.task
    check_stage_args(params, scenario, chain, k)
    # A chain is a run trained with one training seed: `<run>-seed<i>` trains with seed + i and is named
    # after the chain everywhere (receipts, registered model, MLflow runs); the run alone is its method.
    run, seed_index = split_chain(chain)
    params = params.with_seed_index(seed_index)
    spec = run_spec(run)
    # train.use_tuned: the `tuned` stage's pick for this run (results/tune/applied/<run>.json) replaces the defaults.
    params, tuned = apply_tuned(params, scenario, run, lay)
    # MLflow answers (or the stage stops here, in seconds, with the URI and the fix).
    experiment_id = setup_mlflow(params, lay)

    # [1] data: verified before anything expensive; joint trains on tasks 1..k, every other method on
    # task k. With a storage root (storage.uri) the shards are published there, content-addressed,
    # and workers on any node read them by URL.
    data_tasks = list(range(1, k + 1)) if spec.trains_on_seen_tasks else [k]
    shards, data_digest = task_data(lay, scenario, data_tasks, storage_uri=params.storage.uri)

    # [2] the previous task's receipt: the exact registered version this task continues from.
    prev_receipt = None
    if k > 1:
        prev_receipt = read_json(lay.receipt(scenario, chain, k - 1), what=f"receipt of task {k - 1}",
                                 fix=f"run `dvc repro {stage_name(scenario, chain, k - 1)}` first")

    # [3] the run directory, keyed by exactly what determines the result (pipeline/plan.py): same
    # inputs -> same directory -> an interrupted task resumes; a changed result key -> a fresh one.
    # Operational keys (logging, checkpoint cadence, storage, workers' placement) are not in the key.
    chain_id = {"scenario": scenario, "run": run, "result": result_values(params, run), "tuned": tuned}
    run_key = _key({**chain_id, "task": k, "classes": params.task_classes(scenario, k),
                    "num_classes": params.num_classes, "data": data_digest,
                    "prev": prev_receipt and prev_receipt["model_id"]})
    # Checkpoints: Ray Train's on the storage root (<storage.uri>/runs or <repo>/runs), or local mode's
    # own files on this machine (lifelong/training.py).
    ray_name = f"{params.experiment}-{scenario}-{chain}-task{k}-{run_key}"
    runs_root, checkpoints = lay.runs_root(params), checkpoints_kind(params)
    run_dir = lay.local_runs(params) / ray_name
    if checkpoints == "files":
        run_dir.mkdir(parents=True, exist_ok=True)

    # [4] the MLflow runs: the chain's parent run and this task's run, open (live) for the whole task.
    tags = {
        "scenario": scenario, "family": spec.family, "method": spec.name, "run": run, "chain": chain,
        "seed": str(params.seed), "task": str(k),
        "classes": json.dumps(params.task_classes(scenario, k)),
        "parent_version": prev_receipt["version"] if prev_receipt else "",
        "data_digest": data_digest, "git_commit": git_commit(lay.root),
        "dvc_stage": os.environ.get("DVC_STAGE", stage_name(scenario, chain, k)),
    }
    from mlflow import MlflowClient

    parent_id = chain_run(MlflowClient(), experiment_id, scenario=scenario, run=chain, chain_key=_key(chain_id),
                          params={"scenario": scenario, "run": run, "family": spec.family, "method": spec.name,
                                  "hyper": json.dumps(budget(params, run), sort_keys=True)})
    with task_run(experiment_id, parent_id=parent_id, run_key=run_key, name=f"task-{k} {scenario}/{chain}",
                  tags=tags) as mlflow_run_id:
        log_lineage(params, lay, scenario, run, k, hyper=budget(params, run), tuned=tuned,
                    run_dir=run_dir if checkpoints == "files" else f"{runs_root}/{ray_name}",
                    data_tasks=data_tasks, prev_receipt=prev_receipt, data_digest=data_digest)

        # [5] train: one Ray Train job, starting from the previous task's registered model, which the
        # workers fetch from the registry themselves (asked here first: a missing version fails now);
        # rank 0 logs its losses to this run as it trains.
        previous = None
        if prev_receipt is not None:
            previous = {"name": prev_receipt["model_name"], "version": prev_receipt["version"],
                        "model_id": prev_receipt["model_id"], "stage_hint": stage_name(scenario, chain, k - 1),
                        "tracking_uri": mlflow.get_tracking_uri()}
            check_model_version(previous["name"], previous["version"], stage_hint=previous["stage_hint"])
        from lifelong.training import TaskTrainConfig

        previous_classes = sorted({c for t in range(1, k) for c in params.task_classes(scenario, t)})
        cfg = TaskTrainConfig(
            method=spec.name, family=spec.family, paired=scenario == "image",
            model_config=model_config(params, scenario, spec.family), task_index=k,
            task_classes=params.task_classes(scenario, k), previous_classes=previous_classes, shards=shards,
            checkpoint_dir=str(run_dir / "checkpoints"), checkpoints=checkpoints, grad_clip=params.train.grad_clip,
            checkpoint_every=params.train.checkpoint_every_steps, log_every=params.train.log_every_steps,
            seed=params.seed, use_gpu=params.train.use_gpu, loader_workers=params.train.loader_workers,
            **budget(params, run),
        )
        t_fit = time.time()
        job = {**cfg.to_dict(), "previous": previous,
               "mlflow": {"tracking_uri": mlflow.get_tracking_uri(), "run_id": mlflow_run_id}}
        result = fit(job, params, name=ray_name, storage_path=runs_root, loop=train_loop)
        fit_seconds = time.time() - t_fit

        # [6] the registered version, from the final model the job handed back (found again, never
        # duplicated, if an earlier attempt got that far)
        from lifelong.evaluation.generate import eval_seed

        with final_model(result, job) as (final, rows):
            curve = {int(m["step"]): m for m in rows}
            train_seconds = max((m.get("train_seconds", 0.0) for m in curve.values()), default=0.0)
            mlflow.log_metrics({"train_seconds": train_seconds, "stage_fit_seconds": fit_seconds})
            t_register = time.time()
            receipt = register_model_version(
                name=model_name(params, scenario, chain), model_file=final, run_id=mlflow_run_id,
                experiment_id=experiment_id, alias=f"task-{k}", run_key=run_key, tags=tags,
                logged_name=f"{chain}-task{k}",
                generator={"scenario": scenario, "run": run, "task": k, "classes": params.task_classes(scenario, k),
                           "seed": eval_seed(params.seed, k, k), "batch_size": params.eval.batch_size,
                           "ddim_steps": params.eval.ddim_steps},
            )

    # [7] the receipt the next task's stage depends on: written last, so DVC never records a task
    # whose model is not registered.
    failpoint("before_receipt")
    last = curve[max(curve)] if curve else {}
    receipt.update(scenario=scenario, run=chain, seed=params.seed, family=spec.family, method=spec.name, task=k,
                   data_digest=data_digest,
                   train_seconds=train_seconds, teacher_passes=last.get("teacher_passes"),
                   classes=params.task_classes(scenario, k),
                   previous_classes=previous_classes, run_key=run_key, parent_run_id=parent_id,
                   timing={"main_started": t_start, "first_step": last.get("first_step_wall"),
                           "last_step": last.get("wall_time"), "registered": time.time()})
    write_json(lay.receipt(scenario, chain, k), receipt)
    # The task is registered: local mode's step files are no longer needed (final.pt stays for a rerun;
    # Ray Train keeps its last checkpoints, CheckpointConfig.num_to_keep).
    for p in Path(cfg.checkpoint_dir).glob("step-*.pt"):
        p.unlink(missing_ok=True)
    print(f"[train] {scenario}/{chain} task {k}: registered {receipt['model_name']} v{receipt['version']} "
          f"(alias task-{k}); train {train_seconds:.1f}s, fit {fit_seconds:.1f}s, "
          f"register {time.time() - t_register:.1f}s, stage {time.time() - t_start:.1f}s", flush=True)
    return 0


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def check_stage_args(params: Params, scenario: str, chain: str, k: int) -> None:
    check_chain(params, scenario, chain)
    T = params.num_tasks_of(scenario)
    if not 1 <= k <= T:
        raise SystemExit(f"--task {k} is out of range: the {scenario} scenario has {T} tasks (1..{T})")


def task_data(lay: Layout, scenario: str, data_tasks: list[int], *,
              storage_uri: str | None = None) -> tuple[list[str], str]:
    """The verified training shards of these tasks (paths in the repository, or, with a storage root,
    their content-addressed URLs there, published once) and their digest (from the manifest)."""
    from lifelong.data import read_manifest, task_shard_files, verify_shards

    shard_dir = lay.scenario_shards(scenario)
    for t in data_tasks:
        verify_shards(shard_dir, task=t)
    manifest = read_manifest(shard_dir)
    files = [f for t in data_tasks for f in task_shard_files(shard_dir, t, "train")]
    if storage_uri:
        from lifelong.storage import publish_shards

        shards = publish_shards(files, storage_uri)
    else:
        shards = [path for path, _ in files]
    digest = hashlib.sha256("".join(_task_digest(manifest, t) for t in data_tasks).encode()).hexdigest()
    return shards, digest


def log_lineage(params: Params, lay: Layout, scenario: str, run: str, k: int, *, hyper: dict, tuned: dict,
                run_dir: Path, data_tasks: list[int], prev_receipt: dict | None, data_digest: str) -> None:
    """The active task run's params (params.yaml flattened, the task, the tuned values) and lineage
    inputs: the shards it trains on (with their digest) and the previous task's logged model."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import LoggedModelInput

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


def _task_digest(manifest: dict, task: int) -> str:
    """A task's shard digests (its manifest entry), so editing task 4 changes no digest of tasks 1-3."""
    return hashlib.sha256(json.dumps(manifest["per_task"][task - 1], sort_keys=True).encode()).hexdigest()


def _source(lay: Layout, scenario: str, tasks: list[int]) -> str:
    return ",".join(str(lay.task_shards(t, scenario)) for t in tasks)


if __name__ == "__main__":
    run_stage(main)
