"""The warm stage server runs a stage exactly as its own process would: output, exit code, errors, kill;
several at once; and nothing it forked outlives it.

Real server processes and real signals. The servers do not preload WARM_MODULES (~15 s here): the
shared one preloads torch (through lifelong.data, which every stage imports), the others only
pipeline.layout; either way stages are forked from an already-imported state.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PRELOAD = "pipeline.layout"

# A stand-in stage, run as `python -m _ss_stage MODE OUT [OTHER]` from its folder (the server puts the
# client's cwd on sys.path, as for a real stage).
STAGE = '''
import os, subprocess, sys, time
from pathlib import Path

from pipeline.stage import maybe_forward


def write(path, text):  # readers never see a half-written file
    Path(path + ".tmp").write_text(text)
    os.replace(path + ".tmp", path)


def main():
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "pair":  # waits for its twin: only succeeds if both run at the same time
        write(out, str(os.getpid()))
        deadline = time.time() + 20
        while not os.path.exists(sys.argv[3]):
            if time.time() > deadline:
                return 3
            time.sleep(0.05)
        return 0
    if mode == "quick":
        write(out, str(os.getpid()))
        return 0
    if mode == "sleep":  # a stage that started something of its own, then works for a long time
        child = subprocess.Popen(["sleep", "60"])
        write(out, f"{os.getpid()} {child.pid}")
        time.sleep(60)
        return 0
    return 4


if __name__ == "__main__":
    maybe_forward(__spec__.name)  # what pipeline.stage.run_stage does first, without its imports
    sys.exit(main())
'''


def _start(sock: str, log: Path, *extra: str, preload: str = PRELOAD) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.services.stageserver", "--socket", sock, "--preload", preload,
                             *extra], cwd=REPO, stderr=log.open("w"), start_new_session=True)  # as cli.py does
    _wait_for(lambda: os.path.exists(sock), 60, "stage server did not start", proc)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for(cond, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert proc is None or proc.poll() is None, f"{what} (process exited {proc.returncode})"
        assert time.time() < deadline, what
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Whether pid runs (a zombie does not count: it has exited, its reaper just has not waited yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone, or exiting while we read
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _children(pid: int) -> list[tuple[int, str]]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == pid:
                out.append((int(entry.name), fields[0]))
    return out


@pytest.fixture(scope="module")
def stage_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stage")
    (folder / "_ss_stage.py").write_text(STAGE)
    return folder


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One server shared by the tests that do not stop it: (socket path, server process)."""
    folder = tmp_path_factory.mktemp("srv")
    sock = str(folder / "s.sock")
    proc = _start(sock, folder / "server.log", preload="pipeline.layout,lifelong.data")
    yield sock, proc
    _stop(proc)


@pytest.fixture
def own_server(tmp_path):
    """A server for one test that stops or kills it."""
    started = []

    def start(*extra: str) -> tuple[str, subprocess.Popen]:
        sock = str(tmp_path / f"s{len(started)}.sock")
        proc = _start(sock, tmp_path / f"server{len(started)}.log", *extra)
        started.append(proc)
        return sock, proc

    yield start
    for proc in started:
        _stop(proc)


def _env(sock, root):
    return {**os.environ, "LIFELONG_STAGE_SERVER": sock, "DVC_ROOT": str(root), "PYTHONPATH": str(REPO)}


def _stage(sock, stage_dir, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "_ss_stage", *map(str, args)], cwd=stage_dir,
                            env=_env(sock, stage_dir))


def _sleeping_stage(sock, stage_dir, tmp_path) -> tuple[subprocess.Popen, int, int]:
    """Start a `sleep` stage; return its client, the stage's pid and the pid of the process it started."""
    out = tmp_path / "sleeping"
    client = _stage(sock, stage_dir, "sleep", out)
    _wait_for(out.exists, 30, "the sleeping stage did not start", client)
    stage, grandchild = map(int, out.read_text().split())
    assert stage != client.pid  # the stage ran in a process forked by the server, not in the client
    return client, stage, grandchild


def _assert_gone(pids: dict[str, int], timeout: float) -> None:
    deadline = time.time() + timeout
    while any(_alive(pid) for pid in pids.values()) and time.time() < deadline:
        time.sleep(0.05)
    alive = {name: pid for name, pid in pids.items() if _alive(pid)}
    for pid in alive.values():  # do not leave them running after a failure
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not alive, f"still running after {timeout} s: {alive}"


def test_stage_runs_in_the_server_with_its_cwd_env_and_exit_code(served, tmp_path):
    sock, _ = served
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    ok = subprocess.run([sys.executable, "-m", "pipeline.start", "--scenario", "label", "--run", "gan-joint"],
                        cwd=tmp_path, env=_env(sock, tmp_path), capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    receipt = yaml.safe_load((tmp_path / "results/receipts/label/gan-joint/task-0.json").read_text())
    assert receipt["run"] == "gan-joint"

    bad = subprocess.run([sys.executable, "-m", "pipeline.start", "--scenario", "label", "--run", "nope"],
                         cwd=tmp_path, env=_env(sock, tmp_path), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert "'nope' is not in params.yaml scenarios.label.runs" in bad.stderr  # the child's stderr is the client's


def test_two_stages_run_at_once_and_leave_no_zombies(served, stage_dir, tmp_path):
    sock, server = served
    a, b = tmp_path / "a", tmp_path / "b"
    clients = [_stage(sock, stage_dir, "pair", a, b), _stage(sock, stage_dir, "pair", b, a)]
    codes = [c.wait(timeout=40) for c in clients]
    assert codes == [0, 0]  # 3: a stage waited 20 s for its twin, which the server had not started
    assert a.read_text() != b.read_text()
    _wait_for(lambda: not _children(server.pid), 5, f"server children left: {_children(server.pid)}")


def test_a_silent_client_does_not_block_later_stages(served, stage_dir, tmp_path):
    sock, _ = served
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.connect(sock)  # connects, then sends nothing (the server's request timeout is 20 s)
        t0 = time.time()
        quick = _stage(sock, stage_dir, "quick", tmp_path / "q")
        assert quick.wait(timeout=15) == 0
        assert time.time() - t0 < 15


def test_a_silent_connection_is_dropped_after_the_request_timeout(own_server, tmp_path):
    sock, _ = own_server("--request-timeout", "0.5")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.connect(sock)
        silent.settimeout(10)
        assert silent.recv(4) == b""  # the handler gave up and closed the connection
    _wait_for(lambda: "dropped a silent connection" in (tmp_path / "server0.log").read_text(), 5,
              "the server did not log the dropped connection")


def test_ctrl_c_at_the_client_is_keyboardinterrupt_in_the_stage(served, stage_dir, tmp_path):
    sock, _ = served
    client, stage, grandchild = _sleeping_stage(sock, stage_dir, tmp_path)
    client.send_signal(signal.SIGINT)  # the client forwards it to the stage's process group
    assert client.wait(timeout=15) == 130
    _assert_gone({"stage": stage, "its child": grandchild}, 5)


def test_killing_the_client_kills_the_stage(served, stage_dir, tmp_path):
    sock, _ = served
    client, stage, grandchild = _sleeping_stage(sock, stage_dir, tmp_path)
    client.send_signal(signal.SIGKILL)  # kill -9: the client cannot forward anything
    client.wait()
    _assert_gone({"stage": stage, "its child": grandchild}, 10)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopping_the_server_stops_running_stages(own_server, stage_dir, tmp_path, sig):
    sock, server = own_server()
    client, stage, grandchild = _sleeping_stage(sock, stage_dir, tmp_path)
    handler = _ppid(stage)
    server.send_signal(sig)
    _assert_gone({"stage": stage, "its child": grandchild, "handler": handler}, 8)
    assert server.wait(timeout=8) == 0
    assert client.wait(timeout=5) == 128 + signal.SIGTERM  # the stage was SIGTERMed
    assert not os.path.exists(sock)


@pytest.mark.parametrize("group", [False, True], ids=["server", "its process group"])
def test_killing_the_server_kills_its_stages(own_server, stage_dir, tmp_path, group):
    sock, server = own_server()
    client, stage, grandchild = _sleeping_stage(sock, stage_dir, tmp_path)
    handler = _ppid(stage)
    assert handler != server.pid
    if group:  # cli.py's last resort: SIGKILL to the server's process group
        os.killpg(server.pid, signal.SIGKILL)
    else:
        server.send_signal(signal.SIGKILL)  # PR_SET_PDEATHSIG: the handler stops its stage
    server.wait()
    _assert_gone({"stage": stage, "its child": grandchild, "handler": handler}, 8)
    assert client.wait(timeout=5) != 0


def test_the_server_stops_when_its_parent_dies(stage_dir, tmp_path):
    sock = str(tmp_path / "s.sock")
    # A stand-in for `lifelong repro`: starts the server, then is killed -9 (no chance to stop it).
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; p = subprocess.Popen(sys.argv[1:]); print(p.pid, flush=True); "
         "p.wait()", sys.executable, "-m", "pipeline.services.stageserver", "--socket", sock, "--preload", PRELOAD],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    server = int(parent.stdout.readline())
    try:
        _wait_for(lambda: os.path.exists(sock), 60, "stage server did not start", parent)
        client, stage, grandchild = _sleeping_stage(sock, stage_dir, tmp_path)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        _assert_gone({"server": server, "stage": stage, "its child": grandchild}, 10)
        assert client.wait(timeout=5) == 128 + signal.SIGTERM
    finally:
        if _alive(server):
            os.kill(server, signal.SIGKILL)
