"""A warm fork server for stage processes: pay `import torch, diffusers, mlflow, ray.train` once per run.

Why: every DVC stage is a new `python -m pipeline.<stage>` process, and on a 2-core machine importing
the stack costs ~15-20 s (torch ~5 s, diffusers ~5 s via torch._dynamo, mlflow ~4 s, ray.train ~3 s).
Twenty-odd stages would spend six minutes importing. `lifelong repro` starts this server once; each
stage process is then a thin client that hands its argv, cwd, environment and its stdin/stdout/stderr
file descriptors to the server, which forks a child from its already-imported state to run the stage.
The child writes straight to the client's terminal/pipes and its exit code becomes the client's.

Safety: the socket lives in a private 0700 directory; the server handles one stage at a time, from
its main thread (no fork from a multi-threaded process); the parent never runs a torch op (a forked
child must not inherit an initialised OpenMP pool). If the client dies (Ctrl-C, kill -9), the server
kills the child's whole process group, so an interrupted stage stops as it would without the server.
Without LIFELONG_STAGE_SERVER set, stages run in their own process exactly as before.
"""

from __future__ import annotations

import argparse
import array
import json
import os
import runpy
import select
import signal
import socket
import struct
import sys
import time

ENV_VAR = "LIFELONG_STAGE_SERVER"
_IN_CHILD_VAR = "LIFELONG_STAGE_SERVER_CHILD"
# What stages import; modules imported here are shared by every forked stage for free.
WARM_MODULES = (
    "torch", "numpy", "yaml", "pydantic", "webdataset", "mlflow", "mlflow.data.meta_dataset",
    "mlflow.entities", "ray", "ray.train", "ray.train.torch", "diffusers.models.unets.unet_2d",
    "diffusers.schedulers", "torch_fidelity", "matplotlib", "matplotlib.pyplot",
    "lifelong.data", "lifelong.models", "lifelong.methods", "lifelong.evaluation", "lifelong.metrics",
    "lifelong.training", "lifelong.evaluation.cnn_extractor", "pipeline.layout", "pipeline.registry",
    "pipeline.train", "pipeline.evaluate", "pipeline.classifier", "pipeline.prepare", "pipeline.report",
)


def _send_msg(sock: socket.socket, obj, fds: list[int] | None = None) -> None:
    data = json.dumps(obj).encode()
    payload = struct.pack("!I", len(data)) + data
    if fds:
        socket.send_fds(sock, [payload], fds)
    else:
        sock.sendall(payload)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _recv_request(sock: socket.socket) -> tuple[dict, list[int]]:
    msg, fds, _, _ = socket.recv_fds(sock, 4, 3)
    if len(msg) < 4:
        raise EOFError
    (n,) = struct.unpack("!I", msg[:4])
    return json.loads(_recv_exact(sock, n)), list(fds)


# --- client side (inside each stage's `python -m pipeline.<stage>`) --------------------------------

def maybe_forward(module: str) -> None:
    """If a stage server is running for this run, let it run `module` and exit with its exit code."""
    path = os.environ.get(ENV_VAR)
    if not path or os.environ.get(_IN_CHILD_VAR):
        return
    deadline = time.time() + 180  # the server may still be importing for the first stage
    while True:
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            break
        except OSError:
            sock.close()
            if time.time() > deadline:
                print(f"[stage-server] {path} not reachable; running in-process", file=sys.stderr)
                return
            time.sleep(0.2)
    request = {"module": module, "argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}
    _send_msg(sock, request, fds=[0, 1, 2])

    def forward(signum, _frame):  # Ctrl-C / SIGTERM reach the stage as they would without the server
        try:
            sock.sendall(struct.pack("!i", signum))
        except OSError:
            pass

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    try:
        (code,) = struct.unpack("!i", _recv_exact(sock, 4))
    except EOFError:
        print("[stage-server] the server went away during the stage", file=sys.stderr)
        code = 1
    sys.exit(code)


# --- server side ------------------------------------------------------------------------------

def _run_child(request: dict, fds: list[int]) -> None:
    os.setpgid(0, 0)  # its own process group: killing the stage kills whatever it started
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ[_IN_CHILD_VAR] = "1"
    sys.argv = [request["module"], *request["argv"]]
    if request["cwd"] not in sys.path:
        sys.path.insert(0, request["cwd"])
    code = 0
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int) and e.code is not None:
            print(e.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _serve_one(conn: socket.socket) -> None:
    request, fds = _recv_request(conn)
    pid = os.fork()
    if pid == 0:
        conn.close()
        _run_child(request, fds)
    for fd in fds:
        os.close(fd)
    status = None
    while status is None:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
            break
        readable, _, _ = select.select([conn], [], [], 0.2)
        if readable:
            data = conn.recv(4)
            signum = struct.unpack("!i", data)[0] if len(data) == 4 else signal.SIGKILL  # EOF: client died
            try:
                os.killpg(pid, signum)
            except ProcessLookupError:
                pass
            if signum == signal.SIGKILL:
                _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    code = 128 - code if code < 0 else code  # killed by a signal: shell convention
    try:
        conn.sendall(struct.pack("!i", code))
    except OSError:
        pass


def serve(path: str) -> None:
    import importlib

    for name in WARM_MODULES:
        try:
            importlib.import_module(name)
        except Exception as err:  # a missing optional module only costs its import later
            print(f"[stage-server] not preloaded: {name} ({err})", file=sys.stderr)
    if os.path.exists(path):
        os.unlink(path)
    tmp = path + ".tmp"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(tmp)
    os.chmod(tmp, 0o600)
    srv.listen(8)
    os.replace(tmp, path)  # clients see the socket only once it accepts
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    parent = os.getppid()
    srv.settimeout(1.0)
    while True:
        try:
            conn, _ = srv.accept()
        except socket.timeout:
            if os.getppid() != parent:  # `lifelong repro` died without stopping us (kill -9): exit too
                return
            continue
        conn.settimeout(None)
        with conn:
            try:
                _serve_one(conn)
            except (EOFError, OSError) as err:
                print(f"[stage-server] request failed: {err}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--socket", required=True)
    args = ap.parse_args(argv)
    serve(args.socket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
