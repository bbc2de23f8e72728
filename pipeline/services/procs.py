"""Process supervision, written once for every service and harness that starts processes.

    alive(pid)                      it runs (a zombie does not)
    send(pid, sig, group=...)       a signal to a process or its process group; a no-op when gone
    terminate(pid)                  SIGTERM (to the group it leads), SIGKILL after STOP_GRACE_S; waits
    stop(procs)                     the same for our own children (Popen), one deadline for all, reaped
    die_with_parent(sig)            the kernel sends `sig` to this process when its parent dies (Linux)

Used by `lifelong repro` (its dvc processes and the stage server), the stage server (its stages), the
team stack (PostgreSQL, SeaweedFS, the MLflow server), the UI check (`lifelong ui`) and the cluster
test harness (its namespaces and the command it runs).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# SIGTERM -> SIGKILL: how long a stopped process may take to flush its logs and exit cleanly (PostgreSQL's
# fast shutdown, SeaweedFS (~4 s), a stage writing its last log lines). One value for every process here.
STOP_GRACE_S = 10.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_prctl = None


def alive(pid: int | None) -> bool:
    """Whether `pid` runs (a zombie, an exited child nobody reaped yet, does not)."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def send(pid: int, sig: int, *, group: bool = False) -> bool:
    """Signal the process `pid` (group: the process group `pid` leads); False when there is none."""
    try:
        (os.killpg if group else os.kill)(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def wait_gone(pids, timeout: float) -> list[int]:
    """Wait until no pid of `pids` is alive; returns those still alive after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if alive(p)]
    return left


def terminate(pid: int | None, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM to `pid` (to the whole process group when it leads one), SIGKILL after `grace` seconds;
    returns once it is gone. For processes that are not our children (the stack's, found by pid)."""
    if not alive(pid):
        return
    try:
        group = os.getpgid(pid) == pid
    except ProcessLookupError:
        return
    send(pid, signal.SIGTERM, group=group)
    if wait_gone([pid], grace):
        send(pid, signal.SIGKILL, group=group)
        wait_gone([pid], 5)


def stop(procs: list[subprocess.Popen], grace: float = STOP_GRACE_S) -> None:
    """Our children, each the leader of its own process group (start_new_session=True): SIGTERM to every
    group, then SIGKILL to the groups of those not exited within `grace` seconds (one deadline for all)."""
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        send(proc.pid, signal.SIGTERM, group=True)
    deadline = time.monotonic() + grace
    for proc in running:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            send(proc.pid, signal.SIGKILL, group=True)
            proc.wait()


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send `sig` to this process when its parent (thread) dies; a no-op off Linux.
    Safe in a fork's child or a preexec_fn once `prepare_die_with_parent()` ran in the parent."""
    if not sys.platform.startswith("linux"):
        return
    prctl = _prctl or prepare_die_with_parent()
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def prepare_die_with_parent():
    """Look libc up now, before a fork, so that the child only makes the call."""
    global _prctl
    if _prctl is None and sys.platform.startswith("linux"):
        try:
            import ctypes

            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            return None
    return _prctl
