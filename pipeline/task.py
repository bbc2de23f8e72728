"""What the train stage and the search share: a run's model config and budget, the `TaskTrainConfig`
of one task, and the one place that runs a `TorchTrainer` (on the cluster pipeline/cluster.py attaches to).

`pipeline/train.py` (one task of a run, registered in MLflow) and `pipeline/tune.py` (a trial trains a
prefix of the task sequence) both import this module; neither imports the other.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from lifelong.catalog import run_spec
from pipeline.cluster import check_cluster, code_digest, connect_ray, same_code
from pipeline.params import Params


def model_config(params: Params, scenario: str, family: str) -> dict:
    """The model config of a run: its family's section of params.yaml, sized for the scenario's data
    (the image scenario's A and B have image_data.channels channels; the label scenario is grayscale)."""
    if family == "gan":
        from lifelong.models.gan import GANConfig

        g = params.gan
        in_channels = params.image_data.channels if scenario == "image" else 1
        return GANConfig(condition=scenario, image_size_px=params.data.image_size_px, in_channels=in_channels,
                         num_classes=params.num_classes,
                         z_dim=g.z_dim if scenario == "label" else g.latent_dim, width=g.width,
                         gan_loss=g.gan_loss, mode_seeking=g.mode_seeking).to_dict()
    from lifelong.models.diffusion import DiffusionConfig

    return DiffusionConfig(
        image_size_px=params.data.image_size_px,
        in_channels=1,
        num_classes=params.num_classes,
        block_out_channels=tuple(params.model.block_out_channels),
        layers_per_block=params.model.layers_per_block,
        attention=params.model.attention,
        num_train_timesteps=params.model.num_train_timesteps,
        conditional=params.model.conditional,
        label_dropout=params.model.label_dropout,
        guidance_scale=params.model.guidance_scale,
    ).to_dict()


def budget(params: Params, run: str) -> dict:
    """One run's training budget and its method's own knobs (TaskTrainConfig fields). The knobs keep
    their params.yaml names: lifelong_gan.beta arrives as LifelongGAN(beta=...)."""
    spec = run_spec(run)
    b = params.train if spec.family == "diffusion" else params.gan
    options = getattr(params, spec.options).model_dump() if spec.options else {}
    out = {"steps": b.steps_per_task, "batch_size": b.batch_size, "lr": b.lr, "options": options}
    if spec.family == "diffusion":
        out["ema_decay"] = params.train.ema_decay
        out["ema_warmup"] = params.train.ema_warmup
    return out


def apply_tuned(params: Params, scenario: str, run: str, lay) -> tuple[Params, dict]:
    """For the train stage of (scenario, run): params with the `tuned` stage's values for this run
    applied, and those values ({} if none). The search trains on the label scenario, so only label
    runs take its values."""
    from pipeline.layout import read_json
    from pipeline.params import with_values

    if scenario != "label" or not params.train.use_tuned:
        return params, {}
    path = lay.applied(run)
    applied = read_json(path, what="the tuned config of this run (stage `tuned`)", fix="run `dvc repro tuned`")
    if not applied:
        return params, {}
    try:
        return with_values(params, applied["config"]), dict(applied["config"])
    except ValueError as err:
        raise ValueError(f"{path}: {err}; re-run the search") from None


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


def checkpoints_kind(params: Params) -> str:
    """The train stage's checkpoints (lifelong.training): our own files in local mode, else Ray Train's."""
    return "files" if use_local_mode(params) else "ray"


def fit(cfg: dict, params: Params, *, name: str, storage_path: str, num_workers: int | None = None,
        callbacks: list | None = None, loop=None):
    """Run `loop(cfg)` (default: `lifelong.training.train_loop_per_worker`) as one Ray Train job named
    `name` on `storage_path` (a path or s3://); returns its Result.

    num_workers=None: the train stage's choice (local mode for one CPU worker, else train.num_workers
    DDP workers on the cluster). cfg["checkpoints"] must match: "files" for local mode, else "ray".
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from lifelong.training import train_loop_per_worker

    if num_workers is None:
        num_workers = 0 if use_local_mode(params) else params.train.num_workers
    loop = loop or train_loop_per_worker
    if (cfg.get("checkpoints") == "files") != (num_workers == 0):
        raise ValueError(f"checkpoints={cfg.get('checkpoints')!r} with num_workers={num_workers}: local mode (0) "
                         "keeps its own files, real Train workers keep Ray Train checkpoints ('ray')")
    if num_workers > 0:
        import ray

        connect_ray(params, RAY_CHDIR_TO_TRIAL_DIR="0")
        if ray.get_runtime_context().get_actor_id() is None:  # the stage's driver (a Tune trial: its search's)
            check_cluster(params)
        loop = same_code(loop, code_digest())  # each worker checks it runs this driver's code
    from lifelong.storage import filesystem

    store, path = filesystem(storage_path)  # s3:// with the AWS environment's endpoint and keys
    trainer = TorchTrainer(
        loop,
        train_loop_config=cfg,
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers, use_gpu=params.train.use_gpu, placement_strategy=params.train.placement,
            resources_per_worker={"CPU": params.train.cpus_per_worker} if num_workers > 0 else None),
        run_config=ray.train.RunConfig(
            name=name, storage_path=path, storage_filesystem=store, callbacks=callbacks or [],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.get("keep_checkpoints", 2)),
            failure_config=ray.train.FailureConfig(max_failures=params.train.max_failures)),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    return result


@contextmanager
def final_model(result, cfg: dict):
    """(the final model file, the loss curve) of a finished fit, readable while the block runs: from
    the Ray Train checkpoint the last report handed back (on the run's storage, downloaded when it is
    s3://), or from local mode's own files."""
    from lifelong.training import FINAL_NAME, read_metrics

    if cfg["checkpoints"] == "files":
        yield Path(cfg["checkpoint_dir"]) / FINAL_NAME, read_metrics(cfg["checkpoint_dir"])
        return
    if result.checkpoint is None:
        raise RuntimeError(f"training of {result.path} finished without handing back a checkpoint")
    with result.checkpoint.as_directory() as d:
        final = Path(d) / FINAL_NAME
        if not final.exists():
            raise RuntimeError(f"the last checkpoint of {result.path} has no {FINAL_NAME}")
        yield final, read_metrics(d)
