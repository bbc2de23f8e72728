"""Stage `tune` (tune/dvc.yaml): a Ray Tune search over one method's hyperparameters.

    python -m pipeline.tune             # the search: results/tune/<method>.json and .png
                                        # (stage `tuned`, pipeline/tuned.py, hands the best config to training)

Each trial is a Tune function trainable (the "driver") that runs the real training loop through
Ray Train, one `TorchTrainer` per task of the tuned prefix (tune.tasks), with `train.num_workers`
workers, so a trial is DDP on a cluster. During the last task the workers report the objective
(lifelong.tuning) every tune.eval_every_steps steps; `TuneReportCallback` forwards it to Tune, where
ASHA stops trials that are behind at a rung. Only this process writes to MLflow, after the search:
one parent run, one nested run per trial (sqlite is single-writer; Ray workers never touch MLflow).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from lifelong.catalog import run_spec
from pipeline.cluster import check_cluster, connect_ray
from pipeline.layout import Layout, layout, write_json
from pipeline.params import TUNABLE, Params, TuneParams, load_params, with_values
from pipeline.stage import run_stage
from pipeline.task import budget, fit, model_config
from pipeline.tuned import result_path, write_applied

# --- the search space --------------------------------------------------------------------------

def build_space(tune_params: TuneParams) -> dict:
    """tune.space.<tune.method> as a nested Ray Tune param_space ({"distill": {"weight": tune.loguniform(...)}})."""
    from ray import tune

    space: dict = {}
    for key, p in tune_params.method_space.items():
        integer = TUNABLE[key]
        if p.type == "loguniform":
            dist = tune.loguniform(p.low, p.high)
        elif p.type == "uniform":
            dist = tune.uniform(p.low, p.high)
        elif p.type == "int":
            dist = tune.randint(int(p.low), int(p.high) + 1)  # randint's high is exclusive; ours is inclusive
        elif p.type == "grid":  # every value, in order, once per sample
            dist = tune.grid_search([int(v) if integer else v for v in p.values])
        else:
            dist = tune.choice([int(v) if integer else v for v in p.values])
        section, name = key.split(".")
        space.setdefault(section, {})[name] = dist
    return space


def flatten(config: dict) -> dict:
    """{"distill": {"weight": 1.0}} -> {"distill.weight": 1.0}, for the keys of TUNABLE only."""
    return {key: config[key.split(".")[0]][key.split(".")[1]] for key in TUNABLE
            if key.split(".")[0] in config and key.split(".")[1] in config[key.split(".")[0]]}


# --- one trial (runs in a Tune actor) --------------------------------------------------------

def trial(config: dict, ctx: dict) -> None:
    """Train tasks 1..T of the prefix with this trial's values; the last task reports the objective."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from lifelong.storage import url_of
    from lifelong.training import FINAL_NAME, TaskTrainConfig

    trial_id = ray.tune.get_context().get_trial_id()
    params = with_values(ctx["params"], flatten(config))
    # the train stage's own budget and method options, with this trial's values and the search's steps
    hyper = dict(budget(params, ctx["run"]), steps=ctx["steps"])
    T = len(ctx["tasks"])
    init_state, history = None, []  # history[i][j]: FID of task j+1 after task i+1 (weighted objective)
    for k in range(1, T + 1):
        last = k == T
        spec = None
        if last or ctx["objective"]["kind"] == "weighted":
            spec = dict(ctx["objective"], tasks=ctx["tasks"][:k], real_shards=ctx["real_shards"][:k])
            if last and spec["kind"] == "weighted":
                spec["reference_fid"] = [min(row[j] for row in history if j < len(row)) for j in range(k - 1)]
            if not last:
                spec["kind"] = "mean_fid"  # earlier tasks only record their FIDs (forgetting's reference)
        cfg = TaskTrainConfig(
            method=ctx["method"], family=ctx["family"], model_config=ctx["model_config"], task_index=k,
            task_classes=ctx["tasks"][k - 1], previous_classes=[c for classes in ctx["tasks"][: k - 1] for c in classes],
            shards=ctx["train_shards"][k - 1], checkpoint_dir="", checkpoints="ray", init_state=init_state,
            grad_clip=params.train.grad_clip, **hyper,
            checkpoint_every=ctx["steps"],  # no step files: a stopped trial is discarded, not resumed
            log_every=ctx["eval_every"] if last else ctx["steps"], seed=params.seed, use_gpu=params.train.use_gpu,
            loader_workers=params.train.loader_workers, objective=spec,
            extra={"tune_trial": trial_id},
        )
        # Real Train workers even for one CPU worker: local mode (num_workers=0) never calls
        # RunConfig callbacks, so TuneReportCallback would see nothing.
        result = fit(cfg.to_dict(), params, name=f"tune-{trial_id}-task{k}", storage_path=ctx["train_storage"],
                     num_workers=params.train.num_workers, callbacks=[TuneReportCallback()] if last else [])
        if spec is not None and not last:
            history.append([result.metrics[f"fid_task{j}"] for j in range(1, k + 1)])
        # the next task's workers (on any node) read the final model where the job handed it back
        init_state = url_of(f"{result.checkpoint.path}/{FINAL_NAME}", result.checkpoint.filesystem)


def trial_context(params: Params, lay: Layout, train_storage: str) -> dict:
    """Everything a trial needs, as plain data: absolute paths (Ray actors change directory), or with
    a storage root (storage.uri) the URLs of the shards and the classifier published there, which
    workers on any node fetch and check."""
    from lifelong.data import task_shard_files, verify_shards
    from lifelong.evaluation.fidelity import resolve_feature_extractor
    from lifelong.storage import publish_file, publish_shards

    tp = params.tune
    spec = run_spec(tp.run)
    T = tp.tasks
    for t in range(1, T + 1):
        verify_shards(lay.shards, task=t)
    root = params.storage.uri

    def shards(tasks, split: str) -> list[str]:
        files = [f for t in tasks for f in task_shard_files(lay.shards, t, split)]
        return publish_shards(files, root) if root else [path for path, _ in files]

    train_shards = [shards(range(1, k + 1) if spec.trains_on_seen_tasks else [k], "train") for k in range(1, T + 1)]
    return {
        "params": params, "run": tp.run, "family": spec.family, "method": spec.name,
        "model_config": model_config(params, "label", spec.family),
        "tasks": params.data.tasks[:T], "train_shards": train_shards,
        "real_shards": [shards([t], "test") for t in range(1, T + 1)],
        "steps": tp.steps_per_task, "eval_every": tp.eval_every_steps, "train_storage": train_storage,
        "objective": {
            "kind": tp.objective, "alpha": tp.objective_alpha,
            "classifier": publish_file(str(lay.classifier), root, "models") if root else str(lay.classifier),
            # `auto` resolved once, here: every trial's objective is then in one feature space
            "feature_extractor": resolve_feature_extractor(params.eval.feature_extractor),
            "kid_subset_size": params.eval.kid_subset_size,
            "samples_per_class": tp.samples_per_class, "ddim_steps": tp.ddim_steps, "seed": params.seed,
        },
    }


# --- the search ---------------------------------------------------------------------------------

def run_search(params: Params, ctx: dict, storage: str):
    from functools import partial

    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    from lifelong.storage import filesystem

    tp = params.tune
    if tp.scheduler == "asha":
        # time_attr "step": the training step of the last task, so rungs are in steps (40, 80 of 120).
        scheduler = ASHAScheduler(time_attr="step", max_t=tp.steps_per_task, grace_period=tp.grace_period_steps,
                                  reduction_factor=tp.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    if tp.search_alg == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = ConcurrencyLimiter(OptunaSearch(seed=params.seed), max_concurrent=tp.max_concurrent)
    else:
        search_alg = BasicVariantGenerator(max_concurrent=tp.max_concurrent, random_state=params.seed)
    # The trial actor only waits on its TorchTrainer: no CPU, so every CPU goes to Train workers
    # (two trials with one 1-CPU worker each fit 2 CPUs). Tune rejects an all-zero request, hence 1 MiB.
    trainable = tune.with_resources(partial(trial, ctx=ctx), {"CPU": 0, "memory": 2**20})
    store, path = filesystem(storage)
    tuner = tune.Tuner(
        trainable,
        param_space=build_space(tp),
        tune_config=tune.TuneConfig(metric="objective", mode="min", search_alg=search_alg, scheduler=scheduler,
                                    num_samples=tp.num_samples),
        run_config=tune.RunConfig(name="search", storage_path=path, storage_filesystem=store, verbose=1),
    )
    return tuner.fit()


def remove_tree(root: str) -> None:
    """Delete a folder of the storage root (a path or s3://), if it is there."""
    from pyarrow import fs as pafs

    from lifelong.storage import filesystem

    store, path = filesystem(root)
    if store.get_file_info(path).type != pafs.FileType.NotFound:
        store.delete_dir(path)


def trial_table(grid, tune_params: TuneParams) -> list[dict]:
    """One row per trial: its values, objective curve, last and best objective, and whether ASHA stopped it."""
    rows = []
    for r in grid:
        df = r.metrics_dataframe
        curve = []
        if df is not None and "objective" in df:
            sub = df.dropna(subset=["objective"])
            curve = [(int(s), float(o)) for s, o in zip(sub["step"], sub["objective"])]
        metrics = r.metrics or {}
        steps = max((s for s, _ in curve), default=int(metrics.get("step", 0) or 0))
        final = {k: float(v) for k, v in metrics.items()
                 if k.startswith(("fid_task", "fid_mean", "forgetting_mean")) and isinstance(v, (int, float))}
        rows.append({
            "trial_id": metrics.get("trial_id") or Path(r.path).name,
            "config": flatten(r.config or {}),
            "objective": curve[-1][1] if curve else None,
            "best_objective": min((o for _, o in curve), default=None),
            "steps": steps,
            "stopped_early": r.error is None and steps < tune_params.steps_per_task,
            "error": None if r.error is None else f"{type(r.error).__name__}: {r.error}"[:500],
            "curve": curve,
            "final_metrics": final,
        })
    rows.sort(key=lambda row: row["trial_id"])
    return rows


def pick_best(rows: list[dict]) -> dict:
    """Lowest final objective among trials that trained every step (ASHA-stopped ones are not comparable)."""
    finished = [r for r in rows if r["error"] is None and not r["stopped_early"] and r["objective"] is not None]
    pool = finished or [r for r in rows if r["objective"] is not None]
    if not pool:
        errors = "; ".join(f"{r['trial_id']}: {r['error']}" for r in rows if r["error"])
        raise RuntimeError(f"no trial reported an objective ({errors or 'no errors recorded'})")
    return min(pool, key=lambda r: r["objective"])


def log_mlflow(params: Params, lay: Layout, rows: list[dict], best: dict, seconds: float) -> str:
    """One parent run for the search, one nested run per trial; only this process writes (sqlite)."""
    import mlflow

    from pipeline.registry import setup_mlflow

    tp = params.tune
    experiment_id = setup_mlflow(params, lay)
    tags = {"kind": "tune", "method": tp.method, "dvc_stage": os.environ.get("DVC_STAGE", "tune"),
            "best.objective": f"{best['objective']:.6g}", "best.trial_id": best["trial_id"]}
    tags.update({f"best.{k}": str(v) for k, v in best["config"].items()})
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"tune/{tp.method}", tags=tags) as parent:
        settings = tp.model_dump(exclude={"space"})
        mlflow.log_params({f"tune.{k}": v for k, v in settings.items()})
        mlflow.log_params({f"space.{k}": json.dumps(v.model_dump(exclude_none=True)) for k, v in tp.method_space.items()})
        mlflow.log_metrics({"best_objective": best["objective"], "search_seconds": seconds,
                            "trials_stopped_early": sum(r["stopped_early"] for r in rows)})
        for row in rows:
            status = "error" if row["error"] else "stopped_early" if row["stopped_early"] else "terminated"
            with mlflow.start_run(experiment_id=experiment_id, run_name=f"tune/{tp.method}/{row['trial_id']}",
                                  nested=True, tags={"kind": "tune-trial", "method": tp.method, "status": status,
                                                     "trial_id": row["trial_id"]}):
                mlflow.log_params(row["config"])
                for step, value in row["curve"]:
                    mlflow.log_metric("objective", value, step=step)
                final = dict(row["final_metrics"], steps=row["steps"])
                if row["best_objective"] is not None:
                    final["best_objective"] = row["best_objective"]
                mlflow.log_metrics(final)
        return parent.info.run_id


def plot(path: Path, rows: list[dict], tune_params: TuneParams, best: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    keys = list(tune_params.method_space)
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for early, marker, label in ((False, "o", "trained to the end"), (True, "x", "stopped early (ASHA)")):
            pts = [(r["config"][key], r["objective"]) for r in rows
                   if r["stopped_early"] == early and r["objective"] is not None and key in r["config"]]
            if pts:
                ax.scatter(*zip(*pts), marker=marker, label=label)
        ax.scatter([best["config"][key]], [best["objective"]], s=160, facecolors="none", edgecolors="red",
                   label="best")
        xs = [r["config"][key] for r in rows if key in r["config"]]
        if tune_params.method_space[key].type == "loguniform" or (xs and min(xs) > 0 and max(xs) / min(xs) >= 10):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no overlapping 2x10^-1 labels
        ax.set_xlabel(key)
        ax.set_ylabel(f"objective ({tune_params.objective}, last report)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{tune_params.method}: {len(rows)} trials")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.parse_args(argv)  # --help, and no stray arguments
    params = load_params()
    lay = layout()
    t0 = time.time()
    tp = params.tune
    if not lay.classifier.exists():
        raise FileNotFoundError(f"{lay.classifier} not found (the objective's FID needs it); "
                                "run `dvc repro classifier` first")
    # The search and its trials' Train runs live on the storage root (<storage.uri>/runs or <repo>/runs).
    search_root = f"{lay.runs_root(params)}/tune-{tp.method}"
    remove_tree(search_root)  # a new search: never resume an old one's trials
    ctx = trial_context(params, lay, f"{search_root}/train")
    from pipeline.registry import setup_mlflow

    setup_mlflow(params, lay)  # create/upgrade the DB once, before anything runs (fails fast on a bad URI)
    connect_ray(params, RAY_CHDIR_TO_TRIAL_DIR="0")
    check_cluster(params)
    grid = run_search(params, ctx, search_root)
    seconds = time.time() - t0
    rows = trial_table(grid, tp)
    best = pick_best(rows)
    run_id = log_mlflow(params, lay, rows, best, seconds)

    out = {
        "method": tp.method, "objective": tp.objective,
        "best": {"config": best["config"], "objective": best["objective"], "trial_id": best["trial_id"]},
        "trials": [{k: r[k] for k in ("trial_id", "config", "objective", "best_objective", "steps",
                                      "stopped_early", "error")} for r in rows],
        "space": {k: v.model_dump(exclude_none=True) for k, v in tp.method_space.items()},
        "settings": tp.model_dump(exclude={"space", "method"}), "mlflow_run_id": run_id,
        "seconds": round(seconds, 1),
    }
    path = result_path(lay, tp.method)
    write_json(path, out)
    plot(path.with_suffix(".png"), rows, tp, best)
    # DVC cannot know that `tuned` reads this file (declaring it would pull the search into every
    # `dvc repro`): when it is in use, refresh the tuned run's file so DVC sees its train stages as changed.
    if params.train.use_tuned:
        write_applied(params, lay)
    stopped = sum(r["stopped_early"] for r in rows)
    print(f"[tune] {tp.method}: {len(rows)} trials ({stopped} stopped early), best objective "
          f"{best['objective']:.3f} with {best['config']} ({best['trial_id']}); {seconds:.0f}s", flush=True)
    remove_tree(f"{search_root}/train")  # trial weights: the search result is the config
    return 0


if __name__ == "__main__":
    run_stage(main)
