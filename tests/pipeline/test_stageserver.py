"""The warm stage server runs a stage exactly as its own process would: output, exit code, errors, kill."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("srv")
    sock = str(folder / "s.sock")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.stageserver", "--socket", sock], cwd=REPO)
    deadline = time.time() + 300
    while not os.path.exists(sock):
        assert proc.poll() is None and time.time() < deadline, "stage server did not start"
        time.sleep(0.2)
    yield sock
    proc.terminate()
    proc.wait()


def _env(sock, root):
    return {**os.environ, "LIFELONG_STAGE_SERVER": sock, "DVC_ROOT": str(root)}


def test_stage_runs_in_the_server_with_its_cwd_env_and_exit_code(server, tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    ok = subprocess.run([sys.executable, "-m", "pipeline.start", "--scenario", "label", "--run", "gan-joint"],
                        cwd=tmp_path, env=_env(server, tmp_path), capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    receipt = yaml.safe_load((tmp_path / "results/receipts/label/gan-joint/task-0.json").read_text())
    assert receipt["run"] == "gan-joint"

    bad = subprocess.run([sys.executable, "-m", "pipeline.start", "--scenario", "label", "--run", "nope"],
                         cwd=tmp_path, env=_env(server, tmp_path), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert "'nope' is not in params.yaml scenarios.label.runs" in bad.stderr  # the child's stderr is the client's


def test_killing_the_client_kills_the_stage(server, tmp_path):
    pid_file = tmp_path / "pid"
    client = subprocess.Popen([sys.executable, "-m", "tests.pipeline._sleeper", str(pid_file)], cwd=REPO,
                              env=_env(server, REPO))
    deadline = time.time() + 60
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.time() < deadline and client.poll() is None
        time.sleep(0.1)
    child = int(pid_file.read_text())
    assert child != client.pid  # the stage ran in a forked child of the server, not in the client
    client.send_signal(signal.SIGKILL)  # kill -9: the client cannot forward anything
    client.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    pytest.fail(f"stage process {child} outlived its killed client")
