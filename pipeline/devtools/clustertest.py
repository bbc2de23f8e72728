"""A two-node Ray cluster on one machine, for tests and for users: `lifelong cluster-test` (= `python -m pipeline.devtools.clustertest`).

    lifelong cluster-test [OPTIONS] -- COMMAND...   run COMMAND against a fresh head + worker node(s)
    lifelong cluster-test status|kill-node|add-node  from inside COMMAND: the cluster, a fault, a new node
    lifelong cluster-test selftest [--json FILE]     a small Ray Train job through a node kill (the proof)

From Python: `run(command, hide=[...], ...) -> report` (host side), `status()`, `kill_node()`, `add_node()`
(inside COMMAND), `selftest()`; `--hide-repo REPO` hides what a worker node of a real cluster would not have of a checkout
(pipeline.layout.Layout.private_paths).

What it builds, all inside namespaces of its own, so nothing reaches or is reachable from the host:

    net + pid + mount namespace (unshare --net --pid --mount-proc --kill-child): only a loopback interface,
        which the harness brings up. Ray replaces 127.0.0.1 by the machine's interface address
        (`services.resolve_ip_for_localhost`) unless the namespace has nothing but loopback; here every
        GCS, raylet, worker, and any server COMMAND starts, binds and advertises 127.0.0.1. The PID
        namespace is the clean-up guarantee: when its first process ends, however it ends (even SIGKILL
        of the harness: --kill-child), the kernel kills everything left in it.
    head node   `ray start --head --block --node-ip-address=127.0.0.1`, its own --temp-dir (never /tmp/ray,
        so the host's `ray.init()` never finds this cluster in /tmp/ray/ray_current_cluster), the dashboard
        on 127.0.0.1 (Ray Train's placement-group cleaner polls the State API), telemetry off.
    worker node(s) `ray start --address=127.0.0.1:PORT --block`, each in a mount namespace of its own where every
        --hide path (and the head's Ray temp dir) is covered: a directory by an empty tmpfs, a file by
        /dev/null. A worker node is "another machine" that shares only what is not hidden.
    COMMAND     runs in the head's view of the file system with RAY_ADDRESS=127.0.0.1:PORT, the token (below)
        and CLUSTERTEST_* variables (the control socket, node ids, the hidden paths); its exit code is ours.

Token authentication: Ray 2.60's `ray start --head` turns it on only when a token already exists
(~/.ray/auth_token, RAY_AUTH_TOKEN[_PATH]), and a client given an explicit address never turns it on by itself, so
the outcome would depend on the host's home directory. The harness decides instead: by default
(--auth token) it makes a fresh random token and sets RAY_AUTH_MODE=token and RAY_AUTH_TOKEN for every node and
for COMMAND (as a real cluster needs; Ray 2.61 makes token auth the default for every cluster), so the test also
proves that the code under test connects with a token. --auth disabled sets RAY_AUTH_MODE=disabled throughout.

Faults, from inside COMMAND (CLI or the functions `status()`, `kill_node()`, `add_node()` of this module): the
harness serves a Unix socket ($CLUSTERTEST_CONTROL). `kill-node` SIGKILLs a worker node's raylet (--mode raylet,
the default) or every process of that node at once (--mode node: the machine is gone), then waits until none of
the node's processes is left; `add-node` starts a replacement worker node with the same hidden paths.

Node start-up: one node after the other (the head first); `ray start` gives a raylet a hard-coded 30 s to register
with the GCS, which a loaded 2-core machine can miss, so a failed start is cleaned up and retried (3 tries). Each
node gets its own --temp-dir and RAY_TMPDIR under the work directory (/tmp/rct-*), its own block of ports, a
label `clustertest-node=<name>` and CLUSTERTEST_NODE=<name> in its processes' environment. The GCS declares a
dead node after ~3 s instead of ~15 s (RAY_health_check_*; --slow-failure-detection keeps Ray's defaults).

Clean-up, on exit, error, SIGTERM, SIGINT or SIGHUP: COMMAND's process group, then the nodes (SIGTERM to
`ray start --block`, which stops its node), then every process still in the PID namespace (SIGTERM, then
SIGKILL); the kernel removes the namespaces and their mounts with the last process. Never `ray stop`: it kills
every Ray process of the user on the host. The host side then checks that no process is left in the network
namespace and no mount of the harness is visible on the host, and deletes the work directory.

Needs Linux, util-linux `unshare`, `mount`; root, or unprivileged user namespaces (then --user --map-root-user is
added). `ip` is not needed (loopback is brought up with an ioctl).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from pipeline.services import procs

HOST = "127.0.0.1"
GCS_PORT = 6379  # the namespace has a port space of its own: the default port is always free
DASHBOARD_PORT = 8265
# Per node start a block of 500 ports: fixed ones at base+1.., Ray workers at base+100..base+499. Two raylets
# share the namespace's port space, so Ray's fixed defaults (dashboard agent 52365, ...) would collide. Kept
# below Linux's ephemeral range (32768-60999), off Ray's client server (10001), and outside `lifelong stack`'s
# 15000-22000 (+10000 for SeaweedFS gRPC).
PORT_BASES = (*range(11000, 15000, 500), *range(22000, 25000, 500))
READY_TIMEOUT_S = 120.0
START_ATTEMPTS = 3
STARTUP_CONCURRENCY = 4
NODE_GONE_TIMEOUT_S = 20.0  # after a kill, how long the node's other processes may take to exit
HIDDEN_SOURCE = "clustertest"  # the tmpfs mounts' source name, as findmnt shows it
READY_MARK = "Ray runtime started"
MODULE = "pipeline.devtools.clustertest"
PKG_ROOT = str(Path(__file__).resolve().parents[2])  # the repository: `pipeline` imports from here

ENV_CONTROL = "CLUSTERTEST_CONTROL"
ENV_DIR = "CLUSTERTEST_DIR"
ENV_NODE = "CLUSTERTEST_NODE"  # in every Ray process of a node (and so in its Ray workers): head, w1, w2, ...
ENV_HEAD_NODE_ID = "CLUSTERTEST_HEAD_NODE_ID"
ENV_WORKER_NODE_ID = "CLUSTERTEST_WORKER_NODE_ID"  # the first worker node (w1)
ENV_WORKER_RAYLET_PID = "CLUSTERTEST_WORKER_RAYLET_PID"  # its raylet, as the namespace numbers it
ENV_HIDDEN = "CLUSTERTEST_HIDDEN"  # os.pathsep-joined paths a worker node cannot see

# Faster node-death detection by the GCS (defaults 3 s x 5 checks): a killed raylet is declared dead in ~3 s.
FAST_HEALTH_CHECK = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
                     "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}


class ClusterTestError(Exception):
    """One line for the user: what went wrong, and where the logs are."""


def _log(msg: str) -> None:
    print(f"[clustertest] {msg}", file=sys.stderr, flush=True)


def _self_cmd(*args: str) -> list[str]:
    """This module's CLI in a new interpreter, importable whatever the cwd and however the project is installed
    (PYTHONPATH is left alone: COMMAND and the Ray workers inherit the environment)."""
    boot = (f"import sys; sys.path.insert(0, {PKG_ROOT!r}); from {MODULE} import main; "
            "sys.exit(main(sys.argv[1:]))")
    return [sys.executable, "-c", boot, *args]


def _ray_exe() -> str:
    exe = Path(sys.executable).parent / "ray"
    return str(exe) if exe.exists() else (shutil.which("ray") or "ray")


# --- /proc ----------------------------------------------------------------------------------------------

def _ns(pid: int | str, kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _stat(pid: int) -> tuple[str, str, int] | None:
    """(comm, state, ppid) of a process, None when gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1:raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2:].split()
    return comm, fields[0], int(fields[1])


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def processes_in_netns(netns: str) -> list[int]:
    """Host pids of the processes whose network namespace is `netns` (e.g. 'net:[4026532179]')."""
    return [p for p in _pids() if _ns(p, "net") == netns and procs.alive(p)]


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, fstype, source) of every mount this process sees."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, right = line.split(" - ", 1)
        target = left.split()[4].replace("\\040", " ")
        fstype, source = right.split()[:2]
        out.append((target, fstype, source))
    return out


def _loopback_up() -> None:
    """`ip link set lo up` with an ioctl (no iproute2 needed)."""
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        res = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, struct.pack("16sH22x", b"lo", 0))
        flags = struct.unpack("16sH", res[:18])[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


# --- control socket (inside the namespace) --------------------------------------------------------------

def control(op: str, timeout: float = 300.0, **kwargs) -> dict:
    """Ask the harness (from inside COMMAND): op is 'status', 'kill-node' or 'add-node'; raises on errors."""
    path = os.environ.get(ENV_CONTROL)
    if not path:
        raise ClusterTestError(f"${ENV_CONTROL} is not set: run this inside `lifelong cluster-test -- ...`")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps({"op": op, **kwargs}).encode() + b"\n")
        buf = _read_line(s)
    reply = json.loads(buf or b'{"error": "no reply from the harness"}')
    if "error" in reply:
        raise ClusterTestError(reply["error"])
    return reply


def _read_line(s: socket.socket) -> bytes:
    """One newline-terminated JSON message (both ends of the control socket speak one per line)."""
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf


def status() -> dict:
    """{'address', 'nodes': [{'name', 'node_id', 'raylet_pid', 'alive', 'head', ...}], 'hidden': [...]}"""
    return control("status")


def kill_node(name: str | None = None, mode: str = "raylet") -> dict:
    """SIGKILL a worker node's raylet (mode='raylet') or all its processes (mode='node'); default: the newest
    live worker node. Returns once none of the node's processes is left."""
    return control("kill-node", name=name, mode=mode)


def add_node(num_cpus: int | None = None) -> dict:
    """Start a new worker node (same hidden paths); returns its entry once it has joined the cluster."""
    return control("add-node", num_cpus=num_cpus)


# --- inside the namespace: the manager --------------------------------------------------------------------

class Node:
    def __init__(self, name: str, index: int, temp_dir: Path, log: Path, proc: subprocess.Popen, head: bool):
        self.name, self.index, self.temp_dir, self.log, self.proc, self.head = name, index, temp_dir, log, proc, head
        self.raylet_pid: int | None = None
        self.node_id: str | None = None
        self.mntns: str | None = None
        self.started_s: float | None = None
        self.t_spawn = 0.0
        self.killed: dict | None = None

    def info(self) -> dict:
        return {"name": self.name, "head": self.head, "node_id": self.node_id, "raylet_pid": self.raylet_pid,
                "pid": self.proc.pid, "mntns": self.mntns, "temp_dir": str(self.temp_dir), "log": str(self.log),
                "alive": self.proc.poll() is None and self.raylet_pid is not None and procs.alive(self.raylet_pid),
                "start_s": self.started_s, "killed": self.killed}

    def processes(self) -> list[int]:
        """A worker node's processes: everything in its mount namespace."""
        if self.head or not self.mntns:
            return [self.proc.pid] if self.proc.poll() is None else []
        return [p for p in _pids() if _ns(p, "mnt") == self.mntns and procs.alive(p)]


class Manager:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.dir = Path(cfg["dir"])
        self.nodes: list[Node] = []
        self.next_index = 0  # of the next node start: its block of ports
        self.lock = threading.Lock()
        self.stop_signal: int | None = None
        self.command: subprocess.Popen | None = None
        self.timed_out = False
        self.tearing_down = False
        self.timings: dict[str, float] = {}
        self.events: list[dict] = []
        self.t0 = time.monotonic()
        self.hidden = [str(Path(p)) for p in cfg["hide"]]
        self.base_env = self._base_env()

    # environment shared by every node and COMMAND
    def _base_env(self) -> dict:
        env = {k: v for k, v in os.environ.items()
               if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")
               and not k.startswith("CLUSTERTEST_")}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.update(RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true", DVC_NO_ANALYTICS="1")
        if self.cfg["auth"] == "token":
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
        else:
            env["RAY_AUTH_MODE"] = "disabled"
        if self.cfg["fast_failure_detection"]:
            env.update(FAST_HEALTH_CHECK)
        # SIGTERM to `ray start --block` first drains the node, up to 30 s by default: a test cluster's
        # teardown skips that (a user's own setting wins)
        env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")
        # A raylet starts at most min(CPUs, --num-cpus) worker processes at once: 1 on a 1-CPU node, so Ray Train's
        # seven actors on the head (controller, its helpers, a worker) would start one after the other.
        env.setdefault("RAY_worker_maximum_startup_concurrency", str(STARTUP_CONCURRENCY))
        env[ENV_CONTROL] = str(self.dir / "ctl.sock")
        env[ENV_DIR] = str(self.dir)
        env[ENV_HIDDEN] = os.pathsep.join(self.hidden)
        return env

    def _ports(self, index: int) -> list[str]:
        if index >= len(PORT_BASES):
            raise ClusterTestError(f"at most {len(PORT_BASES)} node starts per cluster")
        b = PORT_BASES[index]
        return [f"--node-manager-port={b + 1}", f"--object-manager-port={b + 2}",
                f"--dashboard-agent-listen-port={b + 3}", f"--dashboard-agent-grpc-port={b + 4}",
                f"--runtime-env-agent-port={b + 5}", f"--metrics-export-port={b + 6}",
                f"--min-worker-port={b + 100}", f"--max-worker-port={b + 499}"]

    def start_node(self, head: bool, num_cpus: int | None = None) -> Node:
        """Start a node and wait until it has joined. `ray start` gives a raylet 30 s (hard-coded) to register
        with the GCS; on a loaded 2-core machine that can pass, so a failed start is cleaned up and retried."""
        name = "head" if head else f"w{sum(not n.head for n in self.nodes) + 1}"
        for attempt in range(1, START_ATTEMPTS + 1):
            node = self._spawn(name, head, num_cpus, attempt)
            try:
                self._wait_ready(node)
                return node
            except ClusterTestError as e:
                if attempt == START_ATTEMPTS or self.stop_signal is not None:
                    raise
                _log(f"{e}\n[clustertest] node {name}: start {attempt} of {START_ATTEMPTS} failed; retrying")
                self.events.append({"t": self._now(), "event": "node-start-failed", "name": name,
                                    "attempt": attempt})
                self._discard(node)

    def _discard(self, node: Node) -> None:
        """Kill what a failed node start left: for a worker node, every process outside our mount namespace
        and those of the other live worker nodes; for the head, everything but PID 1 and us."""
        self.nodes.remove(node)
        me = os.getpid()
        keep_mnt = {_ns(me, "mnt")} | {n.mntns for n in self.nodes if n.mntns and n.proc.poll() is None}
        doomed = [p for p in _pids() if p not in (1, me) and procs.alive(p)
                  and (node.head or _ns(p, "mnt") not in keep_mnt)]
        for p in doomed:
            procs.send(p, signal.SIGKILL)
        procs.wait_gone(doomed, 5)
        node.proc.poll()

    def _spawn(self, name: str, head: bool, num_cpus: int | None = None, attempt: int = 1) -> Node:
        index = self.next_index
        self.next_index += 1
        # short: Ray's socket paths live under it (107-byte limit)
        temp_dir = self.dir / (name if attempt == 1 else f"{name}.{attempt}")
        temp_dir.mkdir()
        log = self.dir / "logs" / f"{temp_dir.name}.log"
        cpus = num_cpus if num_cpus is not None else (self.cfg["head_cpus"] if head else self.cfg["node_cpus"])
        ray_cmd = [_ray_exe(), "start", "--block", f"--node-ip-address={HOST}", f"--num-cpus={cpus}",
                   "--num-gpus=0", f"--temp-dir={temp_dir}", "--disable-usage-stats",
                   f"--object-store-memory={self.cfg['object_store_mb'] * 1024 * 1024}",
                   f"--labels=clustertest-node={name}", *self._ports(index)]
        if head:
            ray_cmd += ["--head", f"--port={self.cfg['port']}"]
            if self.cfg["dashboard"]:
                ray_cmd += ["--include-dashboard=true", f"--dashboard-host={HOST}",
                            f"--dashboard-port={DASHBOARD_PORT}"]
            else:
                ray_cmd += ["--include-dashboard=false"]
            argv = ray_cmd
        else:
            ray_cmd += [f"--address={HOST}:{self.cfg['port']}"]
            hide = [*self.hidden, str(self.dir / "head")]
            argv = ["unshare", "--mount", "--propagation", "private", "--",
                    *_self_cmd("_node", *[a for p in hide for a in ("--hide", p)], "--", *ray_cmd)]
        env = {**self.base_env, ENV_NODE: name, "RAY_TMPDIR": str(temp_dir)}
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    cwd=self.cfg["cwd"], start_new_session=True)
        node = Node(name, index, temp_dir, log, proc, head)
        node.t_spawn = time.monotonic()
        self.nodes.append(node)
        return node

    def _wait_ready(self, node: Node) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if READY_MARK in node.log.read_text(errors="replace"):
                break
            if node.proc.poll() is not None or time.monotonic() > deadline:
                what = "exited" if node.proc.poll() is not None else f"not up after {READY_TIMEOUT_S:.0f} s"
                tail = "\n".join(node.log.read_text(errors="replace").splitlines()[-30:])
                raise ClusterTestError(f"Ray node {node.name} {what}; log {node.log}:\n{tail}")
            time.sleep(0.2)
        # the raylet is a child of `ray start --block`; its command line carries the node id
        for _ in range(50):
            for pid in _pids():
                st = _stat(pid)
                if st and st[0] == "raylet" and st[2] == node.proc.pid:
                    node.raylet_pid = pid
                    node.node_id = next((a.split("=", 1)[1] for a in _cmdline(pid) if a.startswith("--node_id=")),
                                        None)
            if node.raylet_pid:
                break
            time.sleep(0.1)
        if not node.raylet_pid:
            raise ClusterTestError(f"Ray node {node.name}: no raylet found under pid {node.proc.pid}")
        node.mntns = _ns(node.proc.pid, "mnt")
        node.started_s = round(time.monotonic() - node.t_spawn, 2)
        self.events.append({"t": self._now(), "event": "node-up", "name": node.name, "node_id": node.node_id,
                            "seconds": node.started_s})
        _log(f"node {node.name} up in {node.started_s} s (node id {node.node_id}, raylet pid {node.raylet_pid})")

    def _now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def _worker(self, name: str | None) -> Node:
        workers = [n for n in self.nodes if not n.head]
        if name:
            found = [n for n in workers if n.name == name]
            if not found:
                raise ClusterTestError(f"no worker node {name!r} (have {[n.name for n in workers]})")
            return found[0]
        live = [n for n in workers if n.killed is None and n.proc.poll() is None]
        if not live:
            raise ClusterTestError("no live worker node to kill")
        return live[-1]

    def kill_node(self, name: str | None = None, mode: str = "raylet") -> dict:
        if mode not in ("raylet", "node"):
            raise ClusterTestError(f"kill-node mode is 'raylet' or 'node', not {mode!r}")
        node = self._worker(name)
        t = time.monotonic()
        pids = node.processes()
        if mode == "raylet":
            procs.send(node.raylet_pid, signal.SIGKILL)
        else:
            for p in pids:
                procs.send(p, signal.SIGKILL)
        # `ray start --block` notices its raylet's death and stops the node; Ray workers whose raylet is gone
        # exit by themselves. What is still there after NODE_GONE_TIMEOUT_S is killed, and said.
        left = procs.wait_gone(pids, NODE_GONE_TIMEOUT_S)
        forced = []
        if left:
            forced = [{"pid": p, "cmd": " ".join(_cmdline(p))[:200]} for p in left]
            for p in left:
                procs.send(p, signal.SIGKILL)
            procs.wait_gone(left, 5)
        node.proc.poll()
        node.killed = {"t": self._now(), "mode": mode, "seconds_until_gone": round(time.monotonic() - t, 2),
                       "processes": len(pids), "forced": forced}
        self.events.append({"event": "kill-node", "name": node.name, "node_id": node.node_id, **node.killed})
        _log(f"killed node {node.name} ({mode}, raylet pid {node.raylet_pid}); its {len(pids)} processes gone "
             f"in {node.killed['seconds_until_gone']} s" + (f", {len(forced)} of them by SIGKILL" if forced else ""))
        return node.info()

    def add_node(self, num_cpus: int | None = None) -> dict:
        return self.start_node(head=False, num_cpus=num_cpus).info()

    def status(self) -> dict:
        return {"address": f"{HOST}:{self.cfg['port']}", "dir": str(self.dir), "hidden": self.hidden,
                "nodes": [n.info() for n in self.nodes]}

    # control socket
    def serve(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                req = json.loads(_read_line(conn))
                op = req.pop("op", None)
                with self.lock:
                    if self.stop_signal is not None:
                        raise ClusterTestError("the harness is stopping")
                    if op == "status":
                        reply = self.status()
                    elif op == "kill-node":
                        reply = self.kill_node(req.get("name"), req.get("mode") or "raylet")
                    elif op == "add-node":
                        reply = self.add_node(req.get("num_cpus"))
                    else:
                        raise ClusterTestError(f"unknown op {op!r} (status, kill-node, add-node)")
            except Exception as e:  # noqa: BLE001 - the client gets the error, the harness keeps serving
                reply = {"error": f"{type(e).__name__}: {e}"}
            try:
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                pass

    # the run
    def run(self) -> int:
        _loopback_up()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.base_env[ENV_CONTROL])
        sock.listen(8)
        threading.Thread(target=self.serve, args=(sock,), daemon=True).start()
        code = 1
        try:
            with self.lock:
                t = time.monotonic()
                # one after the other: started while the head still boots, a worker node's raylet competes
                # with a dozen Python processes for the CPUs, and can miss `ray start`'s 30 s to register
                head = self.start_node(head=True)
                workers = [self.start_node(head=False) for _ in range(self.cfg["nodes"])]
                self.timings["cluster_up_s"] = round(time.monotonic() - t, 2)
            self._check_stop()
            # RAY_TMPDIR: a cluster COMMAND starts itself (address="local") keeps its files in the work directory too
            (self.dir / "driver").mkdir()
            env = {**self.base_env, "RAY_ADDRESS": f"{HOST}:{self.cfg['port']}", ENV_HEAD_NODE_ID: head.node_id,
                   "RAY_TMPDIR": str(self.dir / "driver"),
                   ENV_WORKER_NODE_ID: workers[0].node_id, ENV_WORKER_RAYLET_PID: str(workers[0].raylet_pid),
                   **self.cfg["env"]}
            _log(f"cluster up in {self.timings['cluster_up_s']} s at {HOST}:{self.cfg['port']}; running "
                 f"{' '.join(self.cfg['command'])}")
            t = time.monotonic()
            try:
                self.command = subprocess.Popen(self.cfg["command"], env=env, cwd=self.cfg["cwd"],
                                                start_new_session=True)
            except OSError as e:
                raise ClusterTestError(f"cannot run {self.cfg['command'][0]!r}: {e}") from None
            code = self._wait_command()
            self.timings["command_s"] = round(time.monotonic() - t, 2)
        except ClusterTestError as e:
            _log(f"error: {e}")
            code = 2
        except _Stop:
            code = 128 + (self.stop_signal or signal.SIGTERM)
        finally:
            sock.close()
            t = time.monotonic()
            self.stop_signal = self.stop_signal or -1  # refuse control requests from now on
            self.tearing_down = True
            locked = self.lock.acquire(timeout=procs.STOP_GRACE_S)  # a node start in progress fails once torn down
            try:
                self.teardown()
            finally:
                if locked:
                    self.lock.release()
            self.timings["teardown_s"] = round(time.monotonic() - t, 2)
            (self.dir / "result.json").write_text(json.dumps(
                {"exit_code": code, "timings": self.timings, "events": self.events,
                 "nodes": [n.info() for n in self.nodes]}, indent=1))
        return code

    def _check_stop(self) -> None:
        if self.stop_signal is not None:
            raise _Stop()

    def _wait_command(self) -> int:
        timeout = self.cfg["timeout"]
        deadline = time.monotonic() + timeout if timeout else None
        forwarded = None
        while True:
            try:
                rc = self.command.wait(timeout=0.2)
                return 124 if self.timed_out else rc if rc >= 0 else 128 - rc
            except subprocess.TimeoutExpired:
                pass
            if deadline and time.monotonic() > deadline and forwarded is None:
                _log(f"command still running after {timeout} s: stopping it")
                self.stop_signal, forwarded = signal.SIGTERM, time.monotonic()
                self.timed_out = True
                procs.send(self.command.pid, signal.SIGTERM, group=True)
                deadline = None
            elif self.stop_signal is not None and forwarded is None:
                forwarded = time.monotonic()
                procs.send(self.command.pid, self.stop_signal, group=True)
            if forwarded is not None and time.monotonic() - forwarded > procs.STOP_GRACE_S:
                procs.send(self.command.pid, signal.SIGKILL, group=True)
                self.command.wait()
                return 124 if self.timed_out else 128 + (self.stop_signal or signal.SIGTERM)

    def teardown(self) -> None:
        me = os.getpid()
        if self.command is not None and self.command.poll() is None:
            procs.send(self.command.pid, signal.SIGTERM, group=True)
            try:
                self.command.wait(procs.STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        if self.command is not None:
            procs.send(self.command.pid, signal.SIGKILL, group=True)  # what COMMAND left in its process group
        # worker nodes first, then the head: each `ray start --block` stops its own node on SIGTERM
        for group in ([n for n in self.nodes if not n.head], [n for n in self.nodes if n.head]):
            live = [n for n in group if n.proc.poll() is None]
            for n in live:
                procs.send(n.proc.pid, signal.SIGTERM)
            for n in live:
                try:
                    n.proc.wait(procs.STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    pass
        # everything else in the PID namespace (we are 1's only child: 1 stays, and reaps)
        rest = [p for p in _pids() if p not in (1, me) and procs.alive(p)]
        if rest:
            _log(f"{len(rest)} processes left after the nodes stopped (e.g. the dashboard's forkserver); stopping "
                 "them: " + "; ".join(f"{p} {' '.join(_cmdline(p))[:100]}" for p in rest[:5]))
            for p in rest:
                procs.send(p, signal.SIGTERM)
            left = procs.wait_gone(rest, 1)
            for p in left:
                procs.send(p, signal.SIGKILL)
            procs.wait_gone(left, 5)
        for n in self.nodes:
            n.proc.poll()


class _Stop(Exception):
    pass


def _manager_main(cfg_path: str) -> int:
    cfg = json.loads(Path(cfg_path).read_text())
    mgr = Manager(cfg)

    def on_signal(signum, _frame):
        first = mgr.stop_signal is None
        mgr.stop_signal = signum
        if first and mgr.command is None and not mgr.tearing_down:  # still starting the cluster
            raise _Stop()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    return mgr.run()


def _pid1_main(cfg_path: str) -> int:
    """PID 1 of the namespace: runs the manager as its child, reaps every orphan, forwards signals, and exits
    with the manager's code (the kernel then kills whatever is left in the namespace)."""
    os.setsid()  # the terminal's Ctrl-C reaches the host-side harness only, which forwards it here
    manager = subprocess.Popen(_self_cmd("_manager", cfg_path))

    def forward(signum, _frame):
        procs.send(manager.pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        try:
            pid, st = os.wait()
        except ChildProcessError:
            return 1
        if pid == manager.pid:
            return os.waitstatus_to_exitcode(st) if os.WIFEXITED(st) else 128 + os.WTERMSIG(st)


def _node_main(argv: list[str]) -> int:
    """In a worker node's fresh mount namespace: hide paths, then exec `ray start`."""
    sep = argv.index("--")
    opts, cmd = argv[:sep], argv[sep + 1:]
    hide = [opts[i + 1] for i in range(len(opts)) if opts[i] == "--hide"]
    for p in hide:
        if os.path.isdir(p):
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=755", HIDDEN_SOURCE, p], check=True)
        elif os.path.exists(p):
            subprocess.run(["mount", "--bind", "/dev/null", p], check=True)
    os.execvpe(cmd[0], cmd, os.environ)


# --- the host side ----------------------------------------------------------------------------------------

def _start_time(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()[19]


def _remove_stale_workdirs(parent: Path) -> None:
    """Work directories of harnesses that were SIGKILLed (the namespace went with them, the directory not)."""
    for d in parent.glob("rct-*"):
        try:
            owner = json.loads((d / "owner.json").read_text())
        except (OSError, ValueError):
            continue
        if _start_time(owner["pid"]) != owner["start"]:
            shutil.rmtree(d, ignore_errors=True)


def preflight() -> None:
    """Raise ClusterTestError, with the fix, when this machine cannot make the namespaces."""
    if not sys.platform.startswith("linux"):
        raise ClusterTestError("needs Linux namespaces")
    for tool, pkg in (("unshare", "util-linux"), ("mount", "mount")):
        if not shutil.which(tool):
            raise ClusterTestError(f"`{tool}` is missing (apt-get install {pkg})")
    res = subprocess.run([*_unshare_prefix(), "unshare", "--mount", "--propagation", "private", "--",
                          "mount", "-t", "tmpfs", HIDDEN_SOURCE, "/mnt"], capture_output=True, text=True)
    if res.returncode != 0:
        raise ClusterTestError(
            f"cannot create network/PID/mount namespaces here ({res.stderr.strip()}): run as root, or enable "
            "unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1; on Ubuntu 24.04 also "
            "kernel.apparmor_restrict_unprivileged_userns=0); in a container, it needs CAP_SYS_ADMIN "
            "(docker run --privileged or --cap-add SYS_ADMIN --security-opt seccomp=unconfined)")


def _unshare_prefix() -> list[str]:
    if not shutil.which("unshare"):
        raise ClusterTestError("util-linux `unshare` is missing (apt-get install util-linux)")
    cmd = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
    if os.geteuid() != 0:
        cmd += ["--user", "--map-root-user"]
    return cmd


def _die_with_parent_preexec():
    """A preexec_fn for `unshare`: SIGKILL when the harness's thread dies, however it dies; --kill-child then
    takes the namespace's PID 1, and the kernel everything in the namespace. (libc is looked up here, before
    the fork: the child only makes the call.)"""
    procs.prepare_die_with_parent()
    return lambda: procs.die_with_parent(signal.SIGKILL)


def _child_of(proc: subprocess.Popen, timeout: float = 10.0) -> int | None:
    """The host pid of unshare's child, PID 1 of the namespace."""
    pid = proc.pid
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return None
        if kids:
            return int(kids[0])
        time.sleep(0.02)
    return None


def run(command: list[str], *, hide=(), nodes: int = 1, head_cpus: int = 1, node_cpus: int = 1,
        object_store_mb: int = 200, dashboard: bool = True, auth: str = "token", port: int = GCS_PORT,
        fast_failure_detection: bool = True, cwd: str | os.PathLike | None = None, env: dict | None = None,
        timeout: float | None = None, keep: bool = False, workdir_parent: str | None = None) -> dict:
    """Run `command` against a fresh head + `nodes` worker node(s) in namespaces of their own; returns the report:
    {'exit_code', 'timings': {'cluster_up_s', 'command_s', 'teardown_s', 'total_s'}, 'nodes', 'events',
    'netns', 'leftover_processes', 'leaked_mounts', 'workdir'}. Raises ClusterTestError when the namespaces
    cannot be made. SIGTERM/SIGINT to this process (main thread) stop the command and clean up."""
    if auth not in ("token", "disabled"):
        raise ClusterTestError(f"auth is 'token' or 'disabled', not {auth!r}")
    if not command:
        raise ClusterTestError("no command given (put it after --)")
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    if not shutil.which(str(command[0]), path=search) and not (Path(cwd or ".") / str(command[0])).is_file():
        raise ClusterTestError(f"command not found: {command[0]}")
    t0 = time.monotonic()
    preflight()
    hidden, created = [], []
    for p in hide:
        p = Path(p).resolve()
        missing = [q for q in (p, *p.parents) if not q.exists()]
        if missing:
            p.mkdir(parents=True)  # a mount point must exist: an empty directory is made (and removed if still empty)
            created += missing
        hidden.append(str(p))
    parent = Path(workdir_parent or "/tmp")
    _remove_stale_workdirs(parent)
    workdir = Path(tempfile.mkdtemp(prefix="rct-", dir=parent))  # short: Ray's socket paths live under it
    (workdir / "owner.json").write_text(json.dumps({"pid": os.getpid(), "start": _start_time(os.getpid())}))
    (workdir / "logs").mkdir()
    cfg = {"dir": str(workdir), "command": [str(c) for c in command], "hide": hidden, "nodes": nodes,
           "head_cpus": head_cpus, "node_cpus": node_cpus, "object_store_mb": object_store_mb,
           "dashboard": dashboard, "auth": auth, "port": port, "fast_failure_detection": fast_failure_detection,
           "cwd": str(Path(cwd or os.getcwd()).resolve()), "env": dict(env or {}), "timeout": timeout}
    (workdir / "config.json").write_text(json.dumps(cfg, indent=1))
    mounts_before = set(_mounts())
    proc = subprocess.Popen([*_unshare_prefix(), *_self_cmd("_init", str(workdir / "config.json"))], cwd=cfg["cwd"],
                            preexec_fn=_die_with_parent_preexec())
    netns = None
    pid1 = None
    old_handlers = {}

    def forward(signum, _frame):
        if pid1:
            procs.send(pid1, signum)
        else:
            procs.send(proc.pid, signal.SIGKILL)  # --kill-child takes the namespace with it

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            old_handlers[sig] = signal.signal(sig, forward)
    try:
        pid1 = _child_of(proc)
        netns = _ns(pid1, "net") if pid1 else None
        rc = proc.wait()
    except BaseException:
        procs.send(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
    leftover = [{"pid": p, "cmd": " ".join(_cmdline(p))[:200]} for p in processes_in_netns(netns)] if netns else []
    for p in leftover:
        procs.send(p["pid"], signal.SIGKILL)
    leaked = [m for m in set(_mounts()) - mounts_before
              if m[2] == HIDDEN_SOURCE or m[0].startswith(str(workdir)) or m[0] in hidden]
    try:
        result = json.loads((workdir / "result.json").read_text())
    except (OSError, ValueError):
        result = {"exit_code": rc, "timings": {}, "events": [], "nodes": []}
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    for d in created:  # leaves first
        try:
            d.rmdir()
        except OSError:
            pass
    result["timings"]["total_s"] = round(time.monotonic() - t0, 2)
    if "exit_code" not in result or rc != 0 and result["exit_code"] == 0:
        result["exit_code"] = rc if rc >= 0 else 128 - rc
    result.update(netns=netns,
                  leftover_processes=leftover, leaked_mounts=[list(m) for m in leaked], workdir=str(workdir),
                  workdir_removed=not workdir.exists(), hidden=hidden)
    return result


def _summary(report: dict) -> str:
    t = {k: "-" if v is None else v for k, v in report["timings"].items()}
    nodes = ", ".join(f"{n['name']}={(n['node_id'] or '?')[:8]}" for n in report["nodes"])
    return (f"exit {report['exit_code']}; cluster up {t.get('cluster_up_s', '-')} s, command "
            f"{t.get('command_s', '-')} s, teardown {t.get('teardown_s', '-')} s, total {t.get('total_s', '-')} s; "
            f"nodes {nodes}; "
            f"leftover processes {len(report['leftover_processes'])}, leaked mounts {len(report['leaked_mounts'])}")


# --- the proof: a small Ray Train V2 job through a node kill ------------------------------------------------

def _proof_train_fn(config: dict) -> None:
    """One DDP worker: a tiny linear model, gloo allreduce every step, a checkpoint every few steps; every
    start is logged to events.jsonl on the shared storage (node id, harness node, whether it sees the
    hidden file)."""
    import json as _json
    import os as _os
    import tempfile as _tempfile
    import time as _time

    import ray
    import ray.train
    import torch
    from ray.train import Checkpoint
    from ray.train.torch import prepare_model

    rank = ray.train.get_context().get_world_rank()
    try:
        hidden_readable = open(config["hidden_file"]).read() == config["hidden_text"]
    except OSError:
        hidden_readable = False
    start = 0
    torch.manual_seed(rank)
    model = prepare_model(torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            state = torch.load(_os.path.join(d, "state.pt"))
        start = state["step"]
        getattr(model, "module", model).load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
    with open(config["events"], "a") as f:
        f.write(_json.dumps({"rank": rank, "node_id": ray.get_runtime_context().get_node_id(),
                             "node": _os.environ.get("CLUSTERTEST_NODE"), "pid": _os.getpid(),
                             "mntns": _os.readlink("/proc/self/ns/mnt"), "hidden_readable": hidden_readable,
                             "start_step": start, "t": _time.time()}) + "\n")
    if rank == 0 and ckpt:
        print(f"[proof] resumed at step {start}", flush=True)

    def train_step():
        x = torch.randn(16, 8)
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()  # learns x.sum()
        opt.zero_grad()
        loss.backward()  # DDP: the gradient allreduce between the two nodes
        opt.step()
        _time.sleep(config["step_sleep"])
        return loss

    for step in range(start, config["steps"]):
        loss = train_step()
        if (step + 1) % config["every"] == 0:
            with _tempfile.TemporaryDirectory() as d:
                if rank == 0:
                    torch.save({"step": step + 1, "model": getattr(model, "module", model).state_dict(),
                                "opt": opt.state_dict()}, _os.path.join(d, "state.pt"))
                with open(_os.path.join(d, f"rank-{rank}.json"), "w") as f:
                    _json.dump({"step": step + 1, "node": _os.environ.get("CLUSTERTEST_NODE")}, f)
                ray.train.report({"step": step + 1, "start_step": start, "loss": loss.item()},
                                 checkpoint=Checkpoint.from_directory(d))
        if config["hold_at"] and step + 1 == config["hold_at"] and not ckpt:
            # The first attempt keeps training (allreduce after allreduce) without counting steps until the
            # fault has happened, so that a slow machine cannot finish the job before the kill. Every rank
            # takes part in deciding when to stop holding (a MAX allreduce), so the ranks never diverge.
            t_hold = _time.monotonic()
            while True:
                done = _os.path.exists(config["fault_marker"]) or _time.monotonic() - t_hold > config["hold_s"]
                flag = torch.tensor([1.0 if done else 0.0])
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                if flag.item() > 0:
                    break
                train_step()


def proof(storage: str, hidden_file: str, hidden_text: str, out: str, *, steps: int = 24, every: int = 4,
          kill_after_step: int = 8, step_sleep: float = 0.25, fault: bool = True, hold_s: float = 300.0) -> dict:
    """The driver (run as COMMAND): TorchTrainer, 2 workers STRICT_SPREAD over head + worker node; after the
    checkpoint of `kill_after_step` the worker node's raylet is killed and a replacement node added; Ray Train
    restores from the last checkpoint. The first attempt holds at step kill_after_step + every (still training,
    not counting) until the fault is done, at most hold_s. Writes and returns a summary (nodes per attempt,
    resumed step, times)."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    if __name__ != "__main__":  # workers unpickle the train function without importing this module
        import ray.cloudpickle

        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    t0 = time.monotonic()
    storage = str(Path(storage).resolve())
    name = f"proof-{int(time.time())}-{os.getpid()}"
    events = os.path.join(storage, f"{name}.events.jsonl")
    fault_marker = os.path.join(storage, f"{name}.fault-done")
    ray.init(log_to_driver=True)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    print(f"[proof] connected in {time.monotonic() - t0:.1f} s; {len(nodes)} nodes alive", flush=True)
    fault_info: dict = {}

    def latest_step() -> int:
        """The step of the newest checkpoint Ray Train has registered (its checkpoint manager's snapshot): a
        checkpoint folder can exist before every rank has reported into it."""
        run_dir = Path(storage) / name
        try:
            snap = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
            if isinstance(snap, str):
                snap = json.loads(snap)
            latest = (snap.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
            return json.loads((run_dir / latest / "rank-0.json").read_text())["step"] if latest else 0
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return 0

    def inject():
        while not fault_info.get("cancel"):
            step = latest_step()
            if step >= kill_after_step:
                fault_info["checkpoint_step"] = step
                t = time.monotonic()
                fault_info["t_kill"] = time.time()
                fault_info["killed"] = kill_node()
                fault_info["kill_s"] = round(time.monotonic() - t, 2)
                print(f"[proof] killed {fault_info['killed']['name']} after checkpoint step {step} was registered",
                      flush=True)
                t = time.monotonic()
                fault_info["added"] = add_node()
                fault_info["add_s"] = round(time.monotonic() - t, 2)
                Path(fault_marker).touch()
                print(f"[proof] replacement node {fault_info['added']['name']} joined in {fault_info['add_s']} s",
                      flush=True)
                return
            time.sleep(0.3)

    watcher = threading.Thread(target=inject, daemon=True)
    if fault:
        watcher.start()
    trainer = TorchTrainer(
        _proof_train_fn,
        train_loop_config={"steps": steps, "every": every, "step_sleep": step_sleep, "events": events,
                           "hidden_file": hidden_file, "hidden_text": hidden_text, "fault_marker": fault_marker,
                           "hold_at": kill_after_step + every if fault else 0, "hold_s": hold_s},
        scaling_config=ray.train.ScalingConfig(num_workers=2, placement_strategy="STRICT_SPREAD",
                                               resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name=name, storage_path=storage,
                                       failure_config=ray.train.FailureConfig(max_failures=2),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)))
    t, t_fit = time.monotonic(), time.time()
    error = None
    try:
        result = trainer.fit()
    except Exception as e:  # noqa: BLE001 - reported in the summary
        result, error = None, f"{type(e).__name__}: {e}"
    fit_s = round(time.monotonic() - t, 2)
    fault_info["cancel"] = True
    starts = [json.loads(line) for line in Path(events).read_text().splitlines()] if os.path.exists(events) else []
    t_end = time.time()
    summary = {
        "error": error, "steps": steps, "fit_s": fit_s, "total_s": round(time.monotonic() - t0, 2),
        "final_step": result.metrics.get("step") if result else None,
        "final_start_step": result.metrics.get("start_step") if result else None,
        "checkpoint": result.checkpoint.path if result and result.checkpoint else None,
        "starts": starts,
        "resumed_step": max((s["start_step"] for s in starts if s["rank"] == 0), default=None),
        "fault": {k: v for k, v in fault_info.items() if k != "cancel"},
        "head_mntns": os.readlink("/proc/self/ns/mnt"),
        "hidden_readable_by_driver": Path(hidden_file).read_text() == hidden_text,
    }
    # the timeline: fit() start -> first worker group training -> kill -> restarted group training -> end
    t_kill = fault_info.get("t_kill")
    first = [s["t"] for s in starts if s["start_step"] == 0]
    after = [s["t"] for s in starts if t_kill and s["t"] > t_kill]
    summary["timeline_s"] = {
        "fit_to_first_group": round(min(first) - t_fit, 2) if first else None,
        "first_group_to_kill": round(t_kill - min(first), 2) if first and t_kill else None,
        "kill_to_restarted_group": round(min(after) - t_kill, 2) if after else None,
        "restarted_group_to_end": round(t_end - min(after), 2) if after else None,
    }
    summary["restart_after_kill_s"] = summary["timeline_s"]["kill_to_restarted_group"]
    summary["recovery_s"] = round(t_end - t_kill, 2) if t_kill else None  # kill -> fit() returned
    Path(out).write_text(json.dumps(summary, indent=1))
    print(f"[proof] fit {fit_s} s; resumed step {summary['resumed_step']}; final step {summary['final_step']}",
          flush=True)
    return summary


def selftest(json_out: str | None = None, scratch: str | None = None, **run_kwargs) -> dict:
    """The proof through the harness: a hidden dir with a file only the head sees, a shared storage dir, both
    under `scratch` (kept) or a temporary directory (removed). Returns {'report': the harness's report,
    'proof': the proof's summary, 'hidden_file': its path}."""
    tmp = Path(scratch) if scratch else Path(tempfile.mkdtemp(prefix="clustertest-selftest-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        hidden, shared = tmp / "hidden", tmp / "shared"
        hidden.mkdir(exist_ok=True)
        shared.mkdir(exist_ok=True)
        secret = secrets.token_hex(8)
        (hidden / "secret.txt").write_text(secret)
        out = tmp / "proof.json"
        report = run([*_self_cmd("_proof"), "--storage", str(shared),
                      "--hidden-file", str(hidden / "secret.txt"), "--hidden-text", secret, "--out", str(out)],
                     hide=[hidden], **run_kwargs)
        summary = json.loads(out.read_text()) if out.exists() else None
        both = {"report": report, "proof": summary, "hidden_file": str(hidden / "secret.txt")}
        if json_out:
            Path(json_out).write_text(json.dumps(both, indent=1))
        return both
    finally:
        if not scratch:
            shutil.rmtree(tmp, ignore_errors=True)


# --- CLI --------------------------------------------------------------------------------------------------

def _run_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lifelong cluster-test",
                                 description="Run COMMAND against a Ray head + worker node(s) in private namespaces "
                                             "on this machine (see the module docstring).",
                                 usage="%(prog)s [OPTIONS] -- COMMAND...  |  status|kill-node|add-node|selftest")
    ap.add_argument("--hide", action="append", default=[], metavar="PATH",
                    help="hide PATH from worker nodes (repeatable; a missing path is made as a directory)")
    ap.add_argument("--hide-repo", metavar="DIR", help="hide DIR's data, runs, models, results, MLflow stores, "
                                                       ".stack, .dvc/cache (and mlflow.db if present)")
    ap.add_argument("--nodes", type=int, default=1, help="worker nodes besides the head (default 1)")
    ap.add_argument("--head-cpus", type=int, default=1)
    ap.add_argument("--node-cpus", type=int, default=1)
    ap.add_argument("--object-store-mb", type=int, default=200)
    ap.add_argument("--no-dashboard", action="store_true", help="no dashboard (default: on 127.0.0.1:8265)")
    ap.add_argument("--auth", choices=("token", "disabled"), default="token")
    ap.add_argument("--port", type=int, default=GCS_PORT)
    ap.add_argument("--slow-failure-detection", action="store_true", help="Ray's default GCS health checks")
    ap.add_argument("--timeout", type=float, help="stop COMMAND after this many seconds (exit 124)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (Ray logs) after exit")
    ap.add_argument("--report", metavar="FILE", help="write the JSON report here")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    sub = argv[0] if argv else ""
    try:
        if sub == "_init":
            return _pid1_main(argv[1])
        if sub == "_manager":
            return _manager_main(argv[1])
        if sub == "_node":
            return _node_main(argv[1:])
        if sub == "_proof":
            ap = argparse.ArgumentParser(prog="clustertest _proof")
            for a in ("--storage", "--hidden-file", "--hidden-text", "--out"):
                ap.add_argument(a, required=True)
            ap.add_argument("--no-fault", action="store_true")
            a = ap.parse_args(argv[1:])
            s = proof(a.storage, a.hidden_file, a.hidden_text, a.out, fault=not a.no_fault)
            return 0 if s["error"] is None else 1
        if sub in ("status", "kill-node", "add-node"):
            ap = argparse.ArgumentParser(prog=f"lifelong cluster-test {sub}")
            if sub == "kill-node":
                ap.add_argument("--name", help="worker node name (default: the newest live one)")
                ap.add_argument("--mode", choices=("raylet", "node"), default="raylet")
            if sub == "add-node":
                ap.add_argument("--num-cpus", type=int)
            a = vars(ap.parse_args(argv[1:]))
            print(json.dumps(control(sub, **a), indent=1))
            return 0
        if sub == "selftest":
            ap = argparse.ArgumentParser(prog="lifelong cluster-test selftest")
            ap.add_argument("--json", metavar="FILE")
            ap.add_argument("--keep", action="store_true", help="keep the harness's work directory (Ray logs)")
            ap.add_argument("--no-dashboard", action="store_true")
            ap.add_argument("--dir", help="scratch directory for the hidden and shared folders (kept)")
            a = ap.parse_args(argv[1:])
            both = selftest(a.json, a.dir, keep=a.keep, dashboard=not a.no_dashboard)
            p, r = both["proof"] or {}, both["report"]
            for st in p.get("starts", []):
                print(f"rank {st['rank']} on {st['node']} (node id {st['node_id'][:12]}): from step "
                      f"{st['start_step']}, hidden file {'readable' if st['hidden_readable'] else 'not readable'}")
            ok = (r["exit_code"] == 0 and not r["leftover_processes"] and not r["leaked_mounts"]
                  and p.get("error") is None and (p.get("resumed_step") or 0) > 0
                  and p.get("final_step") == p.get("steps"))
            print(f"selftest {'passed' if ok else 'FAILED'}: {_summary(r)}; resumed step {p.get('resumed_step')}, "
                  f"fit {p.get('fit_s')} s, restart after kill {p.get('restart_after_kill_s')} s")
            return 0 if ok else 1
        if "--" not in argv:
            _run_parser().print_help(sys.stderr)
            return 2
        sep = argv.index("--")
        a = _run_parser().parse_args(argv[:sep])
        from pipeline.layout import Layout

        hide = list(a.hide) + (Layout(Path(a.hide_repo).resolve()).private_paths() if a.hide_repo else [])
        report = run(argv[sep + 1:], hide=hide, nodes=a.nodes, head_cpus=a.head_cpus, node_cpus=a.node_cpus,
                     object_store_mb=a.object_store_mb, dashboard=not a.no_dashboard, auth=a.auth, port=a.port,
                     fast_failure_detection=not a.slow_failure_detection, timeout=a.timeout, keep=a.keep)
        if a.report:
            Path(a.report).write_text(json.dumps(report, indent=1))
        _log(_summary(report))
        return report["exit_code"]
    except ClusterTestError as e:
        _log(f"error: {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
