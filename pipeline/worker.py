"""The train stage's Ray Train worker loop: what every rank runs, on whichever node Ray places it.

    train_loop(config)   the library's loop (lifelong.training.train_loop_per_worker), plus the glue a
                         worker needs: the previous task's registered model fetched from the registry
                         (once per node), rank 0 logging live to the task's MLflow run, and a line per
                         rank saying which Ray node it runs on.

It runs inside the Ray Train workers (or in the stage's own process in local mode), so it imports only
what a worker has: the library and the registry's download; never the stage's own modules.
"""

from __future__ import annotations

from pipeline.tracking import LiveLogger


def train_loop(config: dict) -> None:
    """The train stage's Ray Train loop: the library's loop, with rank 0 logging live to the task's run,
    and the previous task's model fetched from the registry by the workers themselves.

    config["mlflow"] = {"tracking_uri": ..., "run_id": ...} (or None: no live logging);
    config["previous"] = {"name", "version", "model_id", "stage_hint", "tracking_uri"} (or None: task 1). The first
    worker of each node downloads it into that node's cache while the others wait."""
    from lifelong import distributed as dist
    from lifelong.storage import default_cache_dir
    from lifelong.training import train_loop_per_worker

    config = dict(config)
    live = config.pop("mlflow", None)
    previous = config.pop("previous", None)
    if previous is not None:
        from pathlib import Path

        import mlflow

        from pipeline.registry import fetch_model_version

        mlflow.set_tracking_uri(previous["tracking_uri"])
        fetch = {k: v for k, v in previous.items() if k != "tracking_uri"}
        fetch["cache"] = Path(default_cache_dir()) / "models"
        if dist.get_local_rank() == 0:
            fetch_model_version(**fetch)
        dist.barrier()
        config["init_state"] = str(fetch_model_version(**fetch))  # in the cache now: no download
    _record_placement(config, live)
    logger = LiveLogger(**live) if live and dist.get_rank() == 0 else None
    try:
        train_loop_per_worker(config, on_log=logger)
    finally:
        if logger is not None:
            logger.close()


def _record_placement(config: dict, live: dict | None) -> None:
    """Which Ray node each rank runs on: a line in the stage's log per start of the worker (a restarted
    group prints again) and the tag `ray.node.rank<r>` on the task's run (the latest start's node)."""
    import ray

    from lifelong import distributed as dist

    if not ray.is_initialized():  # Ray Train's local mode: this process, no cluster
        return
    rank, node = dist.get_rank(), ray.get_runtime_context().get_node_id()
    print(f"[train] {config.get('family')}-{config.get('method')} task {config['task_index']}: rank {rank} of "
          f"{dist.get_world_size()} on node {node}", flush=True)
    if live:
        from mlflow import MlflowClient

        MlflowClient(live["tracking_uri"]).set_tag(live["run_id"], f"ray.node.rank{rank}", node)
