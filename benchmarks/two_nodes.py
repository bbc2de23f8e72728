"""2 DDP workers on 2 Ray nodes vs 2 workers on one node: steady-state step time, same model and data,
measured side by side in one run on this machine (gloo over loopback on CPU; NCCL with --gpu).

    .venv/bin/python benchmarks/two_nodes.py [--steps 80] [--gpu]

One node: a local Ray cluster with 2 CPUs, the workers packed (PACK). Two nodes: `lifelong cluster-test`
(a head and a worker node with 1 CPU each, in a network namespace of their own, root only), the workers
one per node (STRICT_SPREAD). The model is the default params.yaml diffusion UNet at 16 px, global batch
64 (32 per worker), Ray Train checkpoints on a shared folder. Step time excludes start-up and the first
report (`steady_step_seconds`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.update(RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true", DVC_NO_ANALYTICS="1")


def inner(work: Path, placement: str, steps: int, use_gpu: bool, out: Path) -> None:
    """Inside one cluster (RAY_ADDRESS, or a fresh local one): one Ray Train job, its steady step time."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from lifelong.data import load_split, task_shard_paths, write_dataset_shards
    from lifelong.training import TaskTrainConfig, read_metrics, train_loop_per_worker
    from pipeline.params import load_params
    from pipeline.task import model_config

    params = load_params(REPO / "params.yaml")
    shards = work / "shards"
    if not shards.exists():
        x, y = load_split("digits", "train", image_size_px=params.data.image_size_px)
        write_dataset_shards(shards, splits={"train": (x, y), "test": (x[:50], y[:50])}, tasks=[list(range(10))],
                             samples_per_shard=200)
    cfg = TaskTrainConfig(method="finetune", model_config=model_config(params, "label", "diffusion"), task_index=1,
                          task_classes=list(range(10)), previous_classes=[],
                          shards=task_shard_paths(shards, 1, "train"), checkpoint_dir="", checkpoints="ray",
                          steps=steps, batch_size=params.train.batch_size, lr=params.train.lr,
                          checkpoint_every=10 * steps, log_every=10, use_gpu=use_gpu)
    address = os.environ.get("RAY_ADDRESS")
    ray.init(address=address or "local", **({} if address else {"num_cpus": 2}), include_dashboard=False)
    nodes = sum(1 for n in ray.nodes() if n["Alive"])
    t = time.perf_counter()
    result = TorchTrainer(
        train_loop_per_worker, train_loop_config=cfg.to_dict(),
        scaling_config=ray.train.ScalingConfig(num_workers=2, use_gpu=use_gpu, placement_strategy=placement,
                                               resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name=f"bench-{placement}-{time.time_ns()}", storage_path=str(work / "runs")),
    ).fit()
    wall = time.perf_counter() - t
    with result.checkpoint.as_directory() as d:
        curve = read_metrics(d)
    a, b = curve[0], curve[-1]
    step = (b["train_seconds"] - a["train_seconds"]) / (b["step"] - a["step"])
    out.write_text(json.dumps({"nodes": nodes, "placement": placement, "step_s": step, "fit_s": wall}))
    ray.shutdown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--gpu", action="store_true", help="one GPU per worker (NCCL, bf16)")
    ap.add_argument("--inner", nargs=3, metavar=("WORK", "PLACEMENT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        inner(Path(args.inner[0]), args.inner[1], args.steps, args.gpu, Path(args.inner[2]))
        return 0
    work = Path(tempfile.mkdtemp(prefix="bench-2n-"))
    work.chmod(0o755)
    me = [sys.executable, str(Path(__file__).resolve()), "--steps", str(args.steps)] + (["--gpu"] if args.gpu else [])
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    subprocess.run([*me, "--inner", str(work), "PACK", str(work / "one.json")], check=True, env=env, cwd=REPO)
    lifelong = Path(sys.executable).parent / "lifelong"
    subprocess.run([str(lifelong), "cluster-test", "--head-cpus", "1", "--node-cpus", "1", "--",
                    *me, "--inner", str(work), "STRICT_SPREAD", str(work / "two.json")], check=True, env=env, cwd=REPO)
    one, two = (json.loads((work / f).read_text()) for f in ("one.json", "two.json"))
    assert (one["nodes"], two["nodes"]) == (1, 2), (one, two)
    print("\n| setup | nodes | placement | step | fit (incl. start-up) |\n|---|---|---|---|---|")
    for r in (one, two):
        print(f"| 2 workers | {r['nodes']} | {r['placement']} | {r['step_s'] * 1000:.1f} ms | {r['fit_s']:.1f} s |")
    print(f"\n2 nodes / 1 node, steady-state step time: {two['step_s'] / one['step_s']:.3f}x "
          f"({'NCCL' if args.gpu else 'gloo'}, {args.steps} steps, this machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
