"""The pipeline on two Ray nodes: `lifelong cluster-test` makes a head and a worker node on 127.0.0.1 in a
network namespace of their own; the worker node runs in its own mount namespace where the clone's data,
runs, MLflow stores, stack state and the head's shard cache are hidden (tmpfs), so it has only what a
cluster shares: the team stack's MLflow server and S3 store (storage.uri), and the code the driver ships.
Two chains of two tasks (generative distillation and Piggyback GAN), 2 DDP workers each, one per node
(STRICT_SPREAD); the worker node's raylet is killed in task 2 of the first chain and a replacement
node added; Ray Train resumes from the last checkpoint on S3. Every task is registered exactly once."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration.conftest import BIN, REPO, make_clone, stage_env, tiny_params

# serial: the GCS declares a node dead after ~3 s of missed health checks (the harness's fast failure
# detection); a second test loading the 2 cores could make a live node miss them.
pytestmark = [pytest.mark.integration, pytest.mark.serial, pytest.mark.timeout(1200)]


def test_two_chains_on_two_nodes_survive_a_node_kill(tmp_path):
    """Slow (about 6 min, alone: `serial`): the team stack and two Ray nodes in namespaces of their own,
    2 chains x 2 tasks of 2-rank DDP across the nodes, a raylet killed mid-task and a node added."""
    # Not pytest's tmp_path: the stack's PostgreSQL runs as `postgres`, which cannot enter /tmp/pytest-of-root.
    root = Path(tempfile.mkdtemp(prefix="lifelong-2n-"))
    root.chmod(0o755)
    try:
        params = tiny_params(train={"num_workers": 2, "placement": "STRICT_SPREAD", "max_failures": 3,
                                    "steps_per_task": 40, "checkpoint_every_steps": 4, "log_every_steps": 4})
        params["scenarios"] = {"label": {"runs": ["diffusion-generative_distillation", "gan-piggyback_gan"]},
                               "image": {"runs": []}}
        params["gan"].update(steps_per_task=24)
        params["storage"] = {"uri": "s3://mlflow/two-nodes"}  # the stack's bucket, its own prefix
        repo = make_clone(root / "repo", params)
        out, report = root / "out.json", root / "report.json"
        t0 = time.monotonic()
        res = subprocess.run(
            [str(BIN / "lifelong"), "cluster-test", "--hide-repo", str(repo), "--hide", "/tmp/lifelong-cache",
             "--report", str(report), "--", sys.executable, str(REPO / "tests/integration/two_nodes_inner.py"),
             str(repo), str(out)],
            cwd=repo, env=stage_env(), capture_output=True, text=True, timeout=1100)
        wall = time.monotonic() - t0
        tail = f"\n--- stdout\n{res.stdout[-3000:]}\n--- stderr\n{res.stderr[-6000:]}"
        assert out.exists(), f"the command wrote no result (exit {res.returncode}){tail}"
        got = json.loads(out.read_text())
        shutil.copy(out, tmp_path / "out.json")  # kept by pytest for a look after a failure
        if (root / "repro.log").exists():
            shutil.copy(root / "repro.log", tmp_path / "repro.log")
        assert res.returncode == 0 and got["exit_code"] == 0, got.get("log_tail", "") + tail
        rep = json.loads(report.read_text())

        # Placement: each start of a task's worker group (2 ranks, new worker processes) on 2 different
        # nodes; head + w1 before the kill, head + w2 after it.
        names = {n["node_id"]: n["name"] for n in got["nodes_at_end"]}
        groups: dict[tuple, list] = {}
        for p in got["placements"]:  # in pid order: a restarted group's workers come after the first's
            groups.setdefault((p["run"], p["task"]), []).append(p)
        assert set(groups) == {(r, t) for r in ("diffusion-generative_distillation", "gan-piggyback_gan")
                               for t in (1, 2)}, got["placements"]
        starts = {key: [sorted(names[p["node"]] for p in ps[i:i + 2]) for i in range(0, len(ps), 2)]
                  for key, ps in groups.items()}
        for ps in groups.values():
            assert len(ps) % 2 == 0, ps
            assert all({p["rank"] for p in ps[i:i + 2]} == {0, 1} for i in range(0, len(ps), 2)), ps
        assert starts[("diffusion-generative_distillation", 1)] == [["head", "w1"]], starts
        assert starts[("diffusion-generative_distillation", 2)] == [["head", "w1"], ["head", "w2"]], starts
        assert starts[("gan-piggyback_gan", 1)] == starts[("gan-piggyback_gan", 2)] == [["head", "w2"]], starts

        # The fault: w1's raylet killed after task 2 checkpointed to S3; a resume from that step.
        fault = got["fault"]
        assert fault and fault["killed"]["name"] == "w1" and fault["added"]["name"] == "w2", fault
        assert len(got["resumed_steps"]) == 1 and got["resumed_steps"][0] >= 4, (got["resumed_steps"], fault,
                                                                                  got["log_tail"])

        # Exactly one version per task per chain, aliased, the curve from step 4 to the last step.
        models = {name: v for name, v in got["registry"].items() if name.startswith("it-label-")}  # not the classifier
        assert set(models) == {"it-label-diffusion-generative_distillation", "it-label-gan-piggyback_gan"}, models
        for name, versions in models.items():
            assert [v["version"] for v in versions] == ["1", "2"], versions
            assert [v["aliases"] for v in versions] == [["task-1"], ["task-2"]], versions
            for v in versions:
                assert set(v["nodes"]) == {"ray.node.rank0", "ray.node.rank1"}, v
                steps = 40 if name.endswith("diffusion-generative_distillation") else 24
                assert v["loss_steps"] == list(range(4, steps + 1, 4)), v  # each step once, across the restart
        # Shards went to S3 by content; nothing of the harness is left.
        shards = [k for k in got["shards"] if not k.endswith("/")]  # not the folder's marker object
        assert shards and all(re.fullmatch(r"two-nodes/shards/[0-9a-f]{64}\.tar", k) for k in shards), got["shards"]
        assert rep["leftover_processes"] == [] and rep["leaked_mounts"] == [], rep
        print(f"two nodes: {wall:.0f} s wall (stack up {got['timings']['stack_up_s']} s, repro {got['repro_s']} s); "
              f"placements {sorted(starts.items())}; resumed at {got['resumed_steps']}; "
              f"fault {fault['kill_s']} s into repro, "
              f"replacement up in {fault['add_s']} s", file=sys.stderr)
    finally:  # the stack ran inside the harness's PID namespace: it ended with it
        shutil.rmtree(root, ignore_errors=True)
