"""Training one task: the Ray Train worker loop, plus the checkpoints that make it resumable.

`train_loop_per_worker(config)` runs on every Ray Train worker (or in-process in Ray Train's local
mode). Sections follow Ray's torch_fashion_mnist_example: [1] data, [2] model/teacher/method,
[3] loop, [4] report + checkpoint.

Two checkpoint stores, one interface (`open_checkpoints`), chosen by `TaskTrainConfig.checkpoints`:
- "ray": Ray Train checkpoints (`ray.train.report(checkpoint=...)`) on the run's storage, a shared
  directory or s3://. `ray.train.get_checkpoint()` finds the newest again, whether Ray restarted the
  worker group on another node (FailureConfig) or `dvc repro` started a new driver (same run name).
  The final model is handed back the same way: the driver reads it from `Result.checkpoint`.
- "files": files we write ourselves under `checkpoint_dir`, for Ray Train's local mode (one process,
  no cluster), whose own checkpoints live in memory only and would not survive a kill.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from lifelong import distributed as dist

if TYPE_CHECKING:
    from lifelong.methods.base import TaskInfo

FINAL_NAME = "final.pt"
METRICS_NAME = "metrics.jsonl"
_STEP_FILE = re.compile(r"^step-(\d{7})\.pt$")


@dataclass
class TaskTrainConfig:
    """Everything a worker needs for one task; plain data so Ray can ship it to any node."""

    method: str  # key of lifelong.methods.METHODS[family]
    model_config: dict  # DiffusionConfig.to_dict() or GANConfig.to_dict()
    task_index: int  # 1-based
    task_classes: list[int]  # classes this task adds
    previous_classes: list[int]  # classes of tasks 1..k-1 (replay labels)
    shards: list[str]  # absolute shard paths or s3:// URLs of a storage root (lifelong/storage.py)
    checkpoint_dir: str  # absolute; checkpoints="files": step-*.pt, final.pt and metrics.jsonl go here
    init_state: str | None = None  # previous task's model file or s3:// URL (student init and teacher); None: task 1
    steps: int = 400
    batch_size: int = 64  # global; each worker takes batch_size // world_size
    lr: float = 2e-3
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # diffusion: > 0 exports an EMA of the weights (learners.DiffusionLearner)
    ema_warmup: bool = False  # the EMA's decay ramps up within each task (learners.ema_decay_at)
    checkpoint_every: int = 100
    log_every: int = 50
    seed: int = 0
    use_gpu: bool = False
    loader_workers: int = 0
    keep_checkpoints: int = 2
    checkpoints: str = "files"  # "files" (Ray Train local mode) | "ray" (Ray Train checkpoints on the run's storage)
    # Optional search objective (lifelong.tuning spec): rank 0 measures it at every report step and
    # adds `objective` to the reported metrics. None (the train stage): no extra work at all.
    objective: dict | None = None
    family: str = "diffusion"  # "diffusion" | "gan": which learner (lifelong.learners.LEARNERS)
    paired: bool = False  # image-conditioned shards: batches are (A, B, label) instead of (x, label)
    # The method's own params.yaml section verbatim (catalog.MethodSpec.options names it; {} when it
    # has none), passed to its constructor by the same names: {"weight": 1.0, "replay_ddim_steps": 2}.
    options: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # free-form, recorded only

    def to_dict(self) -> dict:
        return asdict(self)

    def task_info(self) -> TaskInfo:
        from lifelong.methods.base import TaskInfo  # lazily: the methods import diffusers, slow to load

        return TaskInfo(
            index=self.task_index,
            classes=list(self.task_classes),
            seen_classes=sorted(set(self.previous_classes) | set(self.task_classes)),
            previous_classes=list(self.previous_classes),
        )


# --- checkpoint files ------------------------------------------------------------------------

def _atomic_save(obj, path: Path) -> None:
    # Write then rename: a process killed mid-write leaves a *.tmp, never a truncated checkpoint.
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    d = Path(checkpoint_dir)
    if not d.is_dir():
        return None
    steps = sorted(p for p in d.iterdir() if _STEP_FILE.match(p.name))
    return steps[-1] if steps else None


def final_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    p = Path(checkpoint_dir) / FINAL_NAME
    return p if p.exists() else None


def read_metrics(checkpoint_dir: str | Path) -> list[dict]:
    p = Path(checkpoint_dir) / METRICS_NAME
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def _prune(checkpoint_dir: Path, keep: int) -> None:
    steps = sorted(p for p in checkpoint_dir.iterdir() if _STEP_FILE.match(p.name))
    for p in steps[:-keep]:
        p.unlink(missing_ok=True)


class FileCheckpoints:
    """Step files under `checkpoint_dir`, written by rank 0 (write, then rename), found by the next attempt."""

    def __init__(self, cfg: TaskTrainConfig, rank: int) -> None:
        self.dir, self.rank, self.keep = Path(cfg.checkpoint_dir), rank, cfg.keep_checkpoints
        self.dir.mkdir(parents=True, exist_ok=True)
        self.curve: list[dict] = []  # what earlier attempts logged

    def latest(self) -> tuple[dict | None, bool]:
        """(newest state, whether it is the final model), or (None, False) for a fresh start."""
        self.curve = read_metrics(self.dir)
        final = final_checkpoint(self.dir)
        if final is not None:
            return torch.load(final, map_location="cpu", weights_only=True), True
        latest = latest_checkpoint(self.dir)
        return (torch.load(latest, map_location="cpu", weights_only=True), False) if latest else (None, False)

    def report(self, metrics: dict, state: dict | None = None) -> None:
        import ray.train

        if self.rank == 0:
            if state is not None:
                _atomic_save(state, self.dir / f"step-{int(state['step']):07d}.pt")
                _prune(self.dir, self.keep)
            with open(self.dir / METRICS_NAME, "a") as f:  # the curve stays with the checkpoints
                f.write(json.dumps(metrics) + "\n")
        ray.train.report(metrics)

    def finish(self, metrics: dict, exported: dict) -> None:
        """The last report, with the final model (kept as it is when an earlier attempt wrote it)."""
        import ray.train

        if self.rank == 0 and final_checkpoint(self.dir) is None:
            with open(self.dir / METRICS_NAME, "a") as f:
                f.write(json.dumps(metrics) + "\n")
            _atomic_save(exported, self.dir / FINAL_NAME)
        ray.train.report(metrics)


class RayCheckpoints:
    """Ray Train checkpoints: rank 0's state (`state.pt`, or `final.pt` at the end) plus the loss curve
    so far (`metrics.jsonl`) go to the run's storage with a report; every rank reports equally often."""

    def __init__(self, cfg: TaskTrainConfig, rank: int) -> None:
        self.rank, self.curve, self.finished = rank, [], False

    def latest(self) -> tuple[dict | None, bool]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None, False
        # A private copy per worker: as_directory() shares one download folder between the workers
        # of a node, and one of them can read it while another is still writing it.
        with tempfile.TemporaryDirectory(prefix="lifelong-resume-") as d:
            checkpoint.to_directory(d)
            final = Path(d) / FINAL_NAME
            state = torch.load(final if final.exists() else Path(d) / "state.pt", map_location="cpu", weights_only=True)
            self.curve, self.finished = read_metrics(d), final.exists()
        return state, self.finished

    def report(self, metrics: dict, state: dict | None = None) -> None:
        self.curve.append(metrics)
        self._report(metrics, "state.pt", state)

    def finish(self, metrics: dict, exported: dict) -> None:
        """The last report, with the final model as its checkpoint (what the driver registers); the
        curve is kept as it is when an earlier attempt finished the task."""
        if not self.finished:
            self.curve.append(metrics)
        self._report(metrics, FINAL_NAME, exported)

    def _report(self, metrics: dict, name: str, state: dict | None) -> None:
        import ray.train

        if state is None or self.rank != 0:
            ray.train.report(metrics)
            return
        d = Path(tempfile.mkdtemp(prefix="lifelong-ckpt-"))
        torch.save(state, d / name)
        (d / METRICS_NAME).write_text("".join(json.dumps(m) + "\n" for m in self.curve))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(d)),
                         delete_local_checkpoint_after_upload=True)


def open_checkpoints(cfg: TaskTrainConfig, rank: int) -> FileCheckpoints | RayCheckpoints:
    if cfg.checkpoints not in ("files", "ray"):
        raise ValueError(f"checkpoints must be 'files' or 'ray', got {cfg.checkpoints!r}")
    return (RayCheckpoints if cfg.checkpoints == "ray" else FileCheckpoints)(cfg, rank)


def load_model_file(path: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """A model file is {"config": ..., "state_dict": ...[, "family"]}; weights_only=True: no pickle of code."""
    from lifelong.models import load_model

    state = torch.load(path, map_location="cpu", weights_only=True)
    return load_model(state).to(device)


# --- the worker loop -------------------------------------------------------------------------

def train_loop_per_worker(config: dict, on_log: Callable[[dict], None] | None = None) -> None:
    """Train one task (Ray Train's loop function). `on_log(metrics)`, if given, is called on rank 0
    every `log_every` steps with the same metrics that are reported and kept with the checkpoints
    (after a resume, first with the earlier attempts' rows up to the resumed step): the pipeline logs
    them to MLflow live (this library knows nothing of MLflow)."""
    from lifelong.data import train_batches, train_pair_batches
    from lifelong.learners import LEARNERS
    from lifelong.storage import local_file, local_shards

    cfg = TaskTrainConfig(**config)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = dist.get_device()
    if cfg.init_state is not None:  # the previous task's model, on this node's disk
        cfg.init_state = local_file(cfg.init_state)
    store = open_checkpoints(cfg, rank)
    state, finished = store.latest()
    if finished:
        # The task finished in an earlier attempt (only registration was left): never train twice.
        dist.print0(f"[train] task {cfg.task_index}: the final model exists, nothing to train")
        store.finish({"step": cfg.steps, "resumed_from": cfg.steps, "train_seconds": 0.0}, state)
        return

    # [2] model, teacher, method: the family's learner builds them (lifelong/learners.py)
    if cfg.family not in LEARNERS:
        raise ValueError(f"unknown model family {cfg.family!r}; valid: {', '.join(LEARNERS)}")
    learner = LEARNERS[cfg.family](cfg, cfg.task_info(), device, rank)

    # Resume: the newest checkpoint wins, whoever wrote it (a Ray restart or an earlier `dvc repro`).
    start_step = 0
    if state is not None:
        learner.load_state_dict(state)
        start_step = int(state["step"])
        dist.print0(f"[train] task {cfg.task_index}: resuming from step-{start_step:07d} (step {start_step})")
        if rank == 0 and on_log is not None:  # the earlier attempts' curve up to the resumed step (the
            rows = {int(r["step"]): r for r in store.curve}  # latest attempt's row where two logged a step)
            for s in sorted(s for s in rows if s <= start_step):
                on_log(rows[s])

    # [1] data: local, verified shard files (fetched from the storage root on a cluster); the stream
    # is re-seeded by the resume step, so a resumed run sees fresh batches.
    per_worker_batch = max(1, cfg.batch_size // world)
    batches = (train_pair_batches if cfg.paired else train_batches)(
        local_shards(cfg.shards),
        batch_size=per_worker_batch,
        num_batches=cfg.steps - start_step,
        seed=cfg.seed + 7919 * start_step + rank,
        num_workers=cfg.loader_workers,
    )

    real = None
    if cfg.objective is not None and rank == 0:
        from lifelong.tuning import load_real

        real = load_real(cfg.objective)

    # [3] loop
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.use_gpu)
    step, started, parts, first_step_wall = start_step, time.perf_counter(), {}, 0.0
    for batch in batches:
        batch = tuple(t.to(device, non_blocking=True) for t in batch)
        parts = learner.step(batch, autocast)  # forward under autocast, backward and step outside
        step += 1
        first_step_wall = first_step_wall or time.time()  # for the stage's fixed-cost breakdown

        # [4] report + checkpoint (report is a barrier: every rank calls it equally often)
        at_checkpoint = step % cfg.checkpoint_every == 0 and step < cfg.steps
        if step % cfg.log_every == 0 or step == cfg.steps or at_checkpoint:
            metrics = {k: float(v.detach()) for k, v in parts.items()}
            metrics.update(step=step, resumed_from=start_step, train_seconds=time.perf_counter() - started,
                           first_step_wall=first_step_wall, wall_time=time.time())
            if real is not None:  # rank 0 only; the other ranks wait in report (a barrier) meanwhile
                from lifelong.tuning import measure

                metrics.update(measure(*learner.eval_model(), cfg.objective, real, device))
            if rank == 0 and on_log is not None:
                on_log(metrics)
            if step == cfg.steps:  # the last report hands the final model back
                store.finish(metrics, learner.export())
            else:
                store.report(metrics, {**learner.state_dict(), "step": step} if at_checkpoint else None)

    if step != cfg.steps:
        raise RuntimeError(f"data stream ended after {step} of {cfg.steps} steps (shards {cfg.shards[:2]}...)")
