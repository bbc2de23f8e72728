"""The MLflow runs of the train stages: one parent run per (scenario, run) chain, one live run per task.

    <scenario>/<run>                   the chain's parent run (tags lifelong.chain, lifelong.chain_key)
      task-1 <scenario>/<run>          one run per task, open for the whole task: params, data and parent
      task-2 <scenario>/<run>          model lineage, the loss curve as it trains, system metrics

Rank 0 of the Ray Train job logs the losses every `train.log_every_steps` to the task's run, without
waiting for the tracking store (MLflow's asynchronous logging), plus MLflow's system metrics (CPU,
memory, GPU) of its machine. A run that a killed stage left RUNNING is ended as FAILED by the next
attempt at the same task (same `run_key`), which opens a fresh run.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

RUN_KEY_TAG = "run_key"  # the train stage's key of a task's inputs (also on the registered version)
CHAIN_TAG, CHAIN_KEY_TAG = "lifelong.chain", "lifelong.chain_key"
# Bookkeeping fields of the loop's metrics that are not curves.
NOT_A_CURVE = ("step", "resumed_from", "first_step_wall", "wall_time")
SYSTEM_METRICS_INTERVAL_S = 5


def chain_run(client, experiment_id: str, *, scenario: str, run: str, chain_key: str, params: dict) -> str:
    """The parent run of a chain (found by its key, else created), set RUNNING while a task trains."""
    found = client.search_runs([experiment_id], f"tags.`{CHAIN_KEY_TAG}` = '{chain_key}'", max_results=1,
                               order_by=["attributes.start_time ASC"])
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    parent = client.create_run(experiment_id, run_name=f"{scenario}/{run}",
                               tags={CHAIN_TAG: f"{scenario}/{run}", CHAIN_KEY_TAG: chain_key,
                                     "scenario": scenario, "run": run})
    client.log_batch(parent.info.run_id, params=_params(params))
    return parent.info.run_id


def end_stale_runs(client, experiment_id: str, run_key: str) -> list[str]:
    """End as FAILED the runs of this task that a killed stage left RUNNING; returns their ids."""
    stale = client.search_runs([experiment_id],
                               f"tags.`{RUN_KEY_TAG}` = '{run_key}' and attributes.status = 'RUNNING'")
    for r in stale:
        client.set_terminated(r.info.run_id, "FAILED")
    return [r.info.run_id for r in stale]


@contextmanager
def task_run(experiment_id: str, *, parent_id: str, run_key: str, name: str, tags: dict):
    """The task's MLflow run, active (fluent API) for the whole task; its end status and the parent's
    follow the task's outcome: FINISHED, FAILED, or KILLED on Ctrl-C."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    end_stale_runs(client, experiment_id, run_key)
    status = "FAILED"
    try:
        with mlflow.start_run(experiment_id=experiment_id, run_name=name,
                              tags={**tags, RUN_KEY_TAG: run_key, "mlflow.parentRunId": parent_id}) as active:
            yield active.info.run_id
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        client.set_terminated(parent_id, status)


def _params(params: dict):
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in params.items()]


class LiveLogger:
    """`on_log` of lifelong.training.train_loop_per_worker on rank 0: each log step's losses go to the
    task's run as `train/<name>`, queued (MLflow's async logging), so training never waits on the store."""

    def __init__(self, tracking_uri: str, run_id: str, system_metrics: bool = True) -> None:
        from mlflow import MlflowClient

        self.client, self.run_id = MlflowClient(tracking_uri), run_id
        self.logged: set[int] | None = None
        self.monitor = None
        if system_metrics:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self.monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S,
                                                tracking_uri=tracking_uri)
            self.monitor.start()

    def __call__(self, metrics: dict) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(metrics["step"])
        if self.logged is None:  # the steps this run has already (a restarted worker group replays them)
            key = next((k for k in metrics if k not in NOT_A_CURVE), None)
            history = self.client.get_metric_history(self.run_id, f"train/{key}") if key else []
            self.logged = {m.step for m in history}
        if step in self.logged:
            return
        batch = [Metric(f"train/{k}", float(v), now, step) for k, v in metrics.items() if k not in NOT_A_CURVE]
        self.client.log_batch(self.run_id, metrics=batch, synchronous=False)

    def close(self) -> None:
        import mlflow

        if self.monitor is not None:
            try:  # one last sample: a task shorter than the sampling interval still shows its system metrics
                self.monitor.collect_metrics()
                self.monitor.publish_metrics(self.monitor.aggregate_metrics())
            except Exception:  # never fail a trained task over a system metric
                pass
            self.monitor.finish()  # stops the sampling thread and flushes what it recorded
        mlflow.flush_async_logging()
