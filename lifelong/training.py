"""Training one task: the Ray Train worker loop, plus the checkpoint files that make it resumable.

`train_loop_per_worker(config)` runs on every Ray Train worker (or in-process in Ray Train's local
mode). Sections follow Ray's torch_fashion_mnist_example: [1] data, [2] model/teacher/method,
[3] loop, [4] report + checkpoint.

Checkpoints are files we write ourselves under `checkpoint_dir` (on the run's absolute
storage_path): they survive a killed process (Ctrl-C, kill -9, a lost node) and are found again by
the next attempt, whether Ray restarts the worker group (FailureConfig) or `dvc repro` starts a new
driver. Ray's own in-memory checkpoints in local mode would not survive the process.
"""

from __future__ import annotations

import json
import os
import re
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
    shards: list[str]  # absolute shard paths (workers chdir, relative paths would break)
    checkpoint_dir: str  # absolute; step-*.pt and final.pt go here
    init_state: str | None = None  # previous task's model file (student init and teacher), None for task 1
    steps: int = 400
    batch_size: int = 64  # global; each worker takes batch_size // world_size
    lr: float = 2e-3
    grad_clip: float = 1.0
    checkpoint_every: int = 100
    log_every: int = 50
    seed: int = 0
    use_gpu: bool = False
    loader_workers: int = 0
    keep_checkpoints: int = 2
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


def load_model_file(path: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """A model file is {"config": ..., "state_dict": ...[, "family"]}; weights_only=True: no pickle of code."""
    from lifelong.models import load_model

    state = torch.load(path, map_location="cpu", weights_only=True)
    return load_model(state).to(device)


# --- the worker loop -------------------------------------------------------------------------

def train_loop_per_worker(config: dict, on_log: Callable[[dict], None] | None = None) -> None:
    """Train one task (Ray Train's loop function). `on_log(metrics)`, if given, is called on rank 0
    every `log_every` steps with the same metrics that are reported and written to metrics.jsonl:
    the pipeline logs them to MLflow live (this library knows nothing of MLflow)."""
    import ray.train

    from lifelong.data import train_batches, train_pair_batches
    from lifelong.learners import LEARNERS

    cfg = TaskTrainConfig(**config)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = dist.get_device()
    ckpt_dir = Path(cfg.checkpoint_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if final_checkpoint(ckpt_dir) is not None:
        # The task finished in an earlier attempt (only registration was left): never train twice.
        dist.print0(f"[train] task {cfg.task_index}: {ckpt_dir / FINAL_NAME} exists, nothing to train")
        ray.train.report({"step": cfg.steps, "resumed_from": cfg.steps, "train_seconds": 0.0})
        return

    # [2] model, teacher, method: the family's learner builds them (lifelong/learners.py)
    if cfg.family not in LEARNERS:
        raise ValueError(f"unknown model family {cfg.family!r}; valid: {', '.join(LEARNERS)}")
    learner = LEARNERS[cfg.family](cfg, cfg.task_info(), device, rank)

    # Resume: the newest step file wins, whoever wrote it (a Ray restart or an earlier `dvc repro`).
    start_step = 0
    latest = latest_checkpoint(ckpt_dir)
    if latest is not None:
        state = torch.load(latest, map_location="cpu", weights_only=True)
        learner.load_state_dict(state)
        start_step = int(state["step"])
        dist.print0(f"[train] task {cfg.task_index}: resuming from {latest.name} (step {start_step})")

    # [1] data: the stream is re-seeded by the resume step, so a resumed run sees fresh batches.
    per_worker_batch = max(1, cfg.batch_size // world)
    batches = (train_pair_batches if cfg.paired else train_batches)(
        cfg.shards,
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
        if step % cfg.checkpoint_every == 0 and step < cfg.steps and rank == 0:
            _atomic_save({**learner.state_dict(), "step": step}, ckpt_dir / f"step-{step:07d}.pt")
            _prune(ckpt_dir, cfg.keep_checkpoints)
        if step % cfg.log_every == 0 or step == cfg.steps:
            metrics = {k: float(v.detach()) for k, v in parts.items()}
            metrics.update(step=step, resumed_from=start_step, train_seconds=time.perf_counter() - started,
                           first_step_wall=first_step_wall, wall_time=time.time())
            if real is not None:  # rank 0 only; the other ranks wait in report (a barrier) meanwhile
                from lifelong.tuning import measure

                metrics.update(measure(*learner.eval_model(), cfg.objective, real, device))
            if rank == 0:  # the curve stays with the checkpoints (Ray keeps only the last report in local mode)
                with open(ckpt_dir / METRICS_NAME, "a") as f:
                    f.write(json.dumps(metrics) + "\n")
                if on_log is not None:
                    on_log(metrics)
            ray.train.report(metrics)

    if step != cfg.steps:
        raise RuntimeError(f"data stream ended after {step} of {cfg.steps} steps (shards {cfg.shards[:2]}...)")
    exported = learner.export()
    if rank == 0:
        _atomic_save(exported, ckpt_dir / FINAL_NAME)
