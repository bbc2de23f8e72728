"""Stopping is clean: Ctrl-C (SIGINT to the process group) or SIGTERM of `lifelong repro` stops every
stage process, the stage server and the cluster within a few seconds; nothing is registered after the
stop; DVC's locks are free and the last checkpoint is there for the next `lifelong repro` to resume
from. Real signals, real processes, a real DVC + MLflow clone."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration.conftest import BIN, run, stage_env, tiny_params

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]


def _processes_in(repo: Path) -> list[str]:
    """Every process whose working directory is inside the clone (dvc, the stage server, stages)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd == str(repo) or cwd.startswith(f"{repo}/"):
            found.append(f"{pid}: {cmd.strip()}")
    return found


def _wait_for_checkpoint(repo: Path, proc: subprocess.Popen, timeout: float = 600) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        found = sorted((repo / "runs").glob("*/checkpoints/step-*.pt")) if (repo / "runs").exists() else []
        if found:
            return found[-1]
        time.sleep(0.2)
    out = proc.communicate()[0] if proc.poll() is not None else ""
    raise AssertionError(f"no checkpoint appeared; output:\n{out[-4000:]}")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_stops_everything_and_leaves_it_resumable(clone, signum):
    """Slow (about 40 s each): a real `lifelong repro` started, stopped mid-task and inspected."""
    params = tiny_params(train={"steps_per_task": 2000, "checkpoint_every_steps": 5, "log_every_steps": 5})
    params["scenarios"]["label"] = {"runs": ["diffusion-finetune"]}
    params["data"]["tasks"] = [[0, 1]]
    params["tune"]["tasks"] = 1
    repo = clone(params)
    # The stage server's private folder goes under a TMPDIR of this test's own (short: it holds a Unix
    # socket), so that other tests running beside this one cannot add or remove folders it counts.
    tmp = Path(tempfile.mkdtemp(prefix="ll-stop-"))
    proc = subprocess.Popen([str(BIN / "lifelong"), "repro"], cwd=repo, env=stage_env({"TMPDIR": str(tmp)}),
                            start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpt = _wait_for_checkpoint(repo, proc)
    t_signal = time.time()
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)  # Ctrl-C: the terminal signals the whole foreground group
    else:
        proc.send_signal(signum)  # `kill <pid>` of lifelong repro alone
    out = proc.communicate(timeout=60)[0]
    stopped_in = time.time() - t_signal
    assert proc.returncode == 128 + signum, out[-3000:]
    deadline = time.time() + 10
    while _processes_in(repo) and time.time() < deadline:
        time.sleep(0.2)
    assert not _processes_in(repo), _processes_in(repo)
    assert stopped_in < 15, f"stopped after {stopped_in:.1f}s"
    assert not list(tmp.glob("lifelong-stages-*"))  # the stage server's folder is gone
    shutil.rmtree(tmp, ignore_errors=True)

    # Nothing registered after the stop, no receipt, and training did not go on.
    receipt = repo / "results/receipts/label/diffusion-finetune/task-1.json"
    assert not receipt.exists()
    steps = sorted(ckpt.parent.glob("step-*.pt"))
    time.sleep(2)
    assert sorted(ckpt.parent.glob("step-*.pt")) == steps  # no new checkpoint: nothing trains
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert client.search_model_versions("name='it-label-diffusion-finetune'") == []
    # Resumable: the stop left DVC's locks free (a repro could start: `dvc status` takes the repo lock)
    # and the task's last checkpoint in place. The resume itself, from a checkpoint left by the harshest
    # stop (kill -9), is test_pipeline.py::test_interrupted_task_resumes_from_its_last_checkpoint.
    status = run([str(BIN / "dvc"), "status", "--json"], repo)
    assert "train_label_diffusion@diffusion-finetune-task1" in json.loads(status.stdout)
    assert sorted(ckpt.parent.glob("step-*.pt")) and not (ckpt.parent / "final.pt").exists()
