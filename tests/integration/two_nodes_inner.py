"""The command test_two_nodes.py runs inside `lifelong cluster-test` (a Ray head and a worker node on
127.0.0.1 in a network namespace of their own; the worker node cannot see the clone's data, runs,
stores or the head's shard cache):

    python tests/integration/two_nodes_inner.py REPO OUT.json

1. `lifelong stack up` in REPO: PostgreSQL, SeaweedFS (S3) and the MLflow server, inside the namespace.
2. `lifelong repro -j 1` with the stack's MLflow, storage.uri on its S3 and the harness's RAY_ADDRESS.
3. The fault: once task 2 of the generative-distillation chain has a registered Ray Train checkpoint in
   S3, the worker node's raylet is killed and a replacement node is added.
4. What happened (registry versions, placements, resumes, timings) goes to OUT.json; the stack stops.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from pipeline.devtools import clustertest

FAULT_RUN = "diffusion-generative_distillation"


def main(repo: Path, out: Path) -> int:
    bin_ = Path(sys.executable).parent
    result: dict = {"timings": {}}
    t0 = time.monotonic()
    env = dict(os.environ)
    subprocess.run([str(bin_ / "lifelong"), "stack", "up", "--workers", "1"], cwd=repo, env=env, check=True)
    try:
        result["timings"]["stack_up_s"] = round(time.monotonic() - t0, 1)
        cfg = json.loads((repo / ".stack" / "stack.json").read_text())
        for name in ("mlflow.env", "s3.env"):  # the tracking server and its user; the object store (storage.uri)
            env.update(dict(line.split("=", 1) for line in (repo / ".stack" / name).read_text().splitlines()
                            if "=" in line))
        s3 = cfg["s3"]
        result.update(run_pipeline(repo, env, s3, bin_))
        result.update(registry(env))
    finally:
        subprocess.run([str(bin_ / "lifelong"), "stack", "down"], cwd=repo, env=env)
    result["timings"]["total_s"] = round(time.monotonic() - t0, 1)
    out.write_text(json.dumps(result, indent=1))
    return 0


def run_pipeline(repo: Path, env: dict, s3: dict, bin_: Path) -> dict:
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=s3["endpoint_url"], aws_access_key_id=s3["access_key"],
                          aws_secret_access_key=s3["secret_key"], region_name="us-east-1",
                          config=Config(s3={"addressing_style": "path"}))
    nodes = clustertest.status()["nodes"]
    log = repo.parent / "repro.log"
    t0 = time.monotonic()
    fault = None
    with open(log, "w") as f:
        proc = subprocess.Popen([str(bin_ / "lifelong"), "repro", "-j", "1"], cwd=repo, env=env, stdout=f,
                                stderr=subprocess.STDOUT)
        while proc.poll() is None:
            if fault is None:
                listed = client.list_objects_v2(Bucket=s3["bucket"], Prefix="two-nodes/runs/")
                keys = [o["Key"] for o in listed.get("Contents", [])]
                # Ray Train's controller writes this snapshot when it has registered a checkpoint (an uploaded
                # one it has not yet registered is not resumed from): the fault comes right after that.
                found = [k for k in keys
                         if f"-{FAULT_RUN}-task2-" in k and k.endswith("checkpoint_manager_snapshot.json")]
                if found:
                    t_kill = time.monotonic()
                    killed = clustertest.kill_node("w1")
                    added = clustertest.add_node()
                    fault = {"checkpoints": found, "killed": killed, "added": added,
                             "kill_s": round(t_kill - t0, 1), "add_s": round(time.monotonic() - t_kill, 1)}
            time.sleep(0.5)
    text = log.read_text()
    # One line per start of a rank (Ray may print a worker's line twice: one entry per worker pid).
    placements = {int(m[1]): {"pid": int(m[1]), "run": m[2], "task": int(m[3]), "rank": int(m[4]), "node": m[5]}
                  for m in re.finditer(r"pid=(\d+)\W.*?\[train\] (\S+) task (\d+): rank (\d+) of \d+ on node "
                                       r"([0-9a-f]+)", text)}
    resumed = sorted({int(m[1]): int(m[2])
                      for m in re.finditer(r"pid=(\d+)\W.*?resuming from step-(\d+)", text)}.values())
    return {"exit_code": proc.returncode, "repro_s": round(time.monotonic() - t0, 1), "fault": fault,
            "nodes_at_start": nodes, "nodes_at_end": clustertest.status()["nodes"],
            "placements": sorted(placements.values(), key=lambda p: p["pid"]),
            "resumed_steps": resumed,
            "log_tail": "\n".join(line for line in text.splitlines()
                                  if re.search(r"\[train\]|Running stage|marked dead|Error", line))[-6000:],
            "shards": sorted(o["Key"] for o in client.list_objects_v2(
                Bucket=s3["bucket"], Prefix="two-nodes/shards/").get("Contents", []))}


def registry(env: dict) -> dict:
    """Every version of both chains' models, with its alias and the run's placement tags and curve."""
    os.environ.update({k: v for k, v in env.items() if k.startswith(("MLFLOW_", "AWS_"))})
    from mlflow import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    out = {}
    for model in client.search_registered_models():
        versions = []
        for v in client.search_model_versions(f"name='{model.name}'"):
            run = client.get_run(v.run_id)
            curve = client.get_metric_history(v.run_id, "train/loss" if "-diffusion-" in model.name else "train/loss_g")
            aliases = client.get_model_version(model.name, v.version).aliases  # search leaves them out
            versions.append({"version": v.version, "aliases": list(aliases), "task": v.tags.get("task"),
                             "nodes": {k: t for k, t in run.data.tags.items() if k.startswith("ray.node.rank")},
                             "loss_steps": [m.step for m in sorted(curve, key=lambda m: m.step)]})
        out[model.name] = sorted(versions, key=lambda v: int(v["version"]))
    return {"registry": out}


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
