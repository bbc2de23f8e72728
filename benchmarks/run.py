"""Side-by-side benchmarks, measured in one run on this machine. Prints a table of ratios vs targets.

    .venv/bin/python benchmarks/run.py [--steps 60] [--skip-cluster] [--skip-stage]

1. Steady-state step time of the same model and loop: through Ray Train (local mode, and one actor
   worker on a local cluster) vs a plain PyTorch loop.                               target <= 1.05x
2. Generative distillation vs generative replay step time (task 2, same teacher).    target <= 1.25x
3. WebDataset loader images/s vs the trainer's consumption.                          target >= 10x
4. Fixed cost of one task stage: process start -> first training step, and last step -> registered
   version; cold (a fresh process per stage) and warm (`lifelong repro`'s stage server), plus the
   breakdown (imports, ray.init, TorchTrainer start-up).                             target <= 15 s
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.update(RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true", DVC_NO_ANALYTICS="1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

ROWS: list[tuple[str, str, str, str]] = []


def row(name: str, value: str, target: str = "", ok: bool | None = None) -> None:
    ROWS.append((name, value, target, "" if ok is None else ("ok" if ok else "MISSED")))
    print(f"  {name}: {value}", flush=True)


def make_shards(root: Path, image_size_px: int) -> Path:
    from lifelong.data import load_split, write_dataset_shards

    x, y = load_split("digits", "train", image_size_px=image_size_px)
    xt, yt = load_split("digits", "test", image_size_px=image_size_px)
    write_dataset_shards(root / "shards", splits={"train": (x, y), "test": (xt, yt)}, tasks=[[0, 1], [2, 3]],
                         samples_per_shard=100)
    return root / "shards"


def task_config(params, shards: Path, ckpt: Path, *, method="finetune", task=1, steps=60, init_state=None):
    from lifelong.data import task_shard_paths
    from lifelong.training import TaskTrainConfig
    from pipeline.task import model_config

    return TaskTrainConfig(
        method=method, model_config=model_config(params, "label", "diffusion"), task_index=task,
        task_classes=[[0, 1], [2, 3]][task - 1],
        previous_classes=[0, 1] if task == 2 else [], shards=task_shard_paths(shards, task, "train"),
        checkpoint_dir=str(ckpt), init_state=init_state, steps=steps, batch_size=params.train.batch_size,
        lr=params.train.lr, checkpoint_every=10_000, log_every=10, seed=0,
    )


def steady_step_seconds(metrics: list[dict]) -> float:
    """Seconds per step between the first and the last report: start-up and the first steps excluded."""
    a, b = metrics[0], metrics[-1]
    return (b["train_seconds"] - a["train_seconds"]) / (b["step"] - a["step"])


def plain_loop(cfg, *, teacher=None, warmup=10) -> float:
    """The same work as lifelong.training.train_loop_per_worker, without Ray: the reference."""
    from lifelong.data import train_batches
    from lifelong.methods import TaskInfo, make_method
    from lifelong.models.diffusion import DiffusionConfig, build_unet

    mcfg = DiffusionConfig.from_dict(cfg.model_config)
    torch.manual_seed(0)
    model = build_unet(mcfg)
    if teacher is not None:
        model.load_state_dict(teacher.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    method = make_method(cfg.method, mcfg, distill_weight=1.0, replay_ddim_steps=2)
    method.before_task(TaskInfo(index=cfg.task_index, classes=cfg.task_classes,
                                seen_classes=sorted(cfg.previous_classes + cfg.task_classes),
                                previous_classes=cfg.previous_classes), teacher)
    t0, n = None, 0
    for i, (x0, y) in enumerate(train_batches(cfg.shards, batch_size=cfg.batch_size, num_batches=cfg.steps, seed=0)):
        if i == warmup:
            t0 = time.perf_counter()
        loss = method.loss(model, x0, y)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        n += i >= warmup
    return (time.perf_counter() - t0) / n


def through_ray(cfg, *, local: bool, cpus: int = 1) -> tuple[float, float]:
    import ray.train
    from ray.train.torch import TorchTrainer

    from lifelong.training import read_metrics, train_loop_per_worker

    start = time.perf_counter()
    TorchTrainer(train_loop_per_worker, train_loop_config=cfg.to_dict(),
                 scaling_config=ray.train.ScalingConfig(num_workers=0 if local else 1,
                                                        resources_per_worker=None if local else {"CPU": cpus}),
                 run_config=ray.train.RunConfig(name=f"bench-{time.time_ns()}",
                                                storage_path=str(Path(cfg.checkpoint_dir).parent))).fit()
    wall = time.perf_counter() - start
    metrics = read_metrics(cfg.checkpoint_dir)
    return steady_step_seconds(metrics), wall - metrics[-1]["train_seconds"]


def bench_step_times(params, work: Path, steps: int, cluster: bool) -> None:
    shards = make_shards(work, params.data.image_size_px)
    print("[1] Ray Train vs plain loop (same model, data, loss, optimizer)", flush=True)
    plain = plain_loop(task_config(params, shards, work / "p", steps=steps))
    local, local_overhead = through_ray(task_config(params, shards, work / "l", steps=steps), local=True)
    row("plain loop step", f"{plain * 1000:.1f} ms")
    row("Ray Train local mode / plain", f"{local / plain:.3f}x", "<= 1.05x", local / plain <= 1.05)
    row("TorchTrainer.fit overhead, local mode", f"{local_overhead:.1f} s")
    if cluster:
        import ray

        t = time.perf_counter()
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1")
        row("ray.init() starting a local cluster", f"{time.perf_counter() - t:.1f} s")
        # Ray sets a worker's torch threads (OMP_NUM_THREADS) to its CPUs: give it the plain loop's threads.
        cpus = torch.get_num_threads()
        actor, actor_overhead = through_ray(task_config(params, shards, work / "a", steps=steps), local=False,
                                            cpus=cpus)
        row(f"Ray Train 1 actor worker ({cpus} CPUs) / plain", f"{actor / plain:.3f}x", "<= 1.05x",
            actor / plain <= 1.05)
        row("TorchTrainer.fit overhead, 1 actor (running cluster)", f"{actor_overhead:.1f} s")
        one, _ = through_ray(task_config(params, shards, work / "a1", steps=steps), local=False, cpus=1)
        row("Ray Train 1 actor worker (1 CPU, 1 torch thread) / plain", f"{one / plain:.3f}x")
        ray.shutdown()

    print("[2] generative distillation vs generative replay (task 2)", flush=True)
    from lifelong.models.diffusion import DiffusionConfig, build_unet

    torch.manual_seed(1)
    teacher = build_unet(DiffusionConfig.from_dict(task_config(params, shards, work / "t").model_config)).eval()
    teacher.requires_grad_(False)
    gr = plain_loop(task_config(params, shards, work / "gr", method="generative_replay", task=2, steps=steps // 2 + 10),
                    teacher=teacher)
    gd = plain_loop(task_config(params, shards, work / "gd", method="generative_distillation", task=2,
                                steps=steps // 2 + 10), teacher=teacher)
    row("GR step / GD step", f"{gr * 1000:.1f} / {gd * 1000:.1f} ms")
    row("GD / GR step time", f"{gd / gr:.3f}x", "<= 1.25x", gd / gr <= 1.25)

    print("[3] loader throughput vs trainer consumption", flush=True)
    from lifelong.data import task_shard_paths, train_batches

    n_batches = 200
    t = time.perf_counter()
    for _ in train_batches(task_shard_paths(shards, 1, "train"), batch_size=params.train.batch_size,
                           num_batches=n_batches, seed=0):
        pass
    loader_ips = n_batches * params.train.batch_size / (time.perf_counter() - t)
    trainer_ips = params.train.batch_size / plain
    row("loader images/s vs trainer images/s", f"{loader_ips:,.0f} vs {trainer_ips:,.0f}")
    row("loader / trainer", f"{loader_ips / trainer_ips:.1f}x", ">= 10x", loader_ips / trainer_ips >= 10)


def _import_seconds(module: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, cwd=REPO)
    return time.perf_counter() - t


def bench_stage(params_raw: dict, work: Path) -> None:
    """Time `python -m pipeline.train` for task 1 in a scratch copy of the repository."""
    print("[4] fixed cost of one task stage", flush=True)
    for module in ("torch", "ray.train.torch", "mlflow", "diffusers.models.unets.unet_2d", "lifelong.training"):
        row(f"import {module} (fresh process)", f"{_import_seconds(module):.1f} s")

    repo = work / "repo"
    for name in ("lifelong", "pipeline"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    p = json.loads(json.dumps(params_raw))
    p["data"].update(dataset="digits", tasks=[[0, 1]], train_per_class=100, test_per_class=20)
    p["scenarios"] = {"label": {"runs": ["diffusion-finetune"]}, "image": {"runs": []}}
    p.setdefault("tune", {})["tasks"] = 1
    p["train"]["steps_per_task"] = 20
    (repo / "params.yaml").write_text(yaml.safe_dump(p))
    env = {**os.environ, "DVC_ROOT": str(repo), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("LIFELONG_STAGE_SERVER", None)
    for stage in (["pipeline.prepare"], ["pipeline.start", "--scenario", "label", "--run", "diffusion-finetune"]):
        subprocess.run([sys.executable, "-m", *stage], cwd=repo, env=env, check=True, capture_output=True)

    def one_stage(label: str, seed: int) -> None:
        p["seed"] = seed  # a new seed: a new run, nothing to resume
        (repo / "params.yaml").write_text(yaml.safe_dump(p))
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "pipeline.train", "--scenario", "label", "--run", "diffusion-finetune",
                        "--task", "1"], cwd=repo, env=env, check=True, capture_output=True)
        timing = json.loads((repo / "results/receipts/label/diffusion-finetune/task-1.json").read_text())["timing"]
        start = timing["first_step"] - t0
        end = timing["registered"] - timing["last_step"]
        row(f"{label}: process start -> first step", f"{start:.1f} s", "<= 15 s", start <= 15)
        row(f"{label}: last step -> registered version", f"{end:.1f} s", "<= 15 s", end <= 15)

    one_stage("cold stage (own process)", 1)
    folder = tempfile.mkdtemp(prefix="lifelong-bench-")
    sock = os.path.join(folder, "s.sock")
    server = subprocess.Popen([sys.executable, "-m", "pipeline.services.stageserver", "--socket", sock], cwd=repo, env=env)
    while not os.path.exists(sock):
        time.sleep(0.2)
    env["LIFELONG_STAGE_SERVER"] = sock
    one_stage("warm stage (stage server)", 2)
    server.terminate()
    server.wait()
    shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--skip-cluster", action="store_true", help="skip the 1-actor-worker Ray cluster run")
    ap.add_argument("--skip-stage", action="store_true", help="skip the stage fixed-cost measurement")
    ap.add_argument("--only-stage", action="store_true", help="only the stage fixed-cost measurement ([4])")
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    args = ap.parse_args()
    from pipeline.params import load_params

    params = load_params(args.params)
    with open(args.params) as f:
        raw = yaml.safe_load(f)
    with tempfile.TemporaryDirectory(prefix="lifelong-bench-") as tmp:
        work = Path(tmp)
        if not args.only_stage:
            bench_step_times(params, work, args.steps, cluster=not args.skip_cluster)
        if not args.skip_stage:
            bench_stage(raw, work)
    print(f"\n| measurement | value | target | |\n|---|---|---|---|")
    for r in ROWS:
        print("| " + " | ".join(r) + " |")
    print(f"\nmodel: {params.model.block_out_channels} @ {params.data.image_size_px}px, batch {params.train.batch_size}, "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
