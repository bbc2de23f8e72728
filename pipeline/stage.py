"""The entry point of every stage (`run_stage`), and the client of `lifelong repro`'s warm stage server.

    python -m pipeline.<stage> ...
      run_stage(main)   with LIFELONG_STAGE_SERVER set (by `lifelong repro`): hand argv, environment and
                        stdin/stdout/stderr to the stage server (pipeline/services/stageserver.py), which
                        runs the stage in a process forked from its warm imports; exit with its code.
                        Otherwise (plain `dvc repro`, or inside the server's fork): run main() here.

A user error (bad params, a missing shard, model or receipt, an unreachable tracking server) is one
line on stderr and exit code 2, not a traceback; anything else is a bug and keeps its traceback.
The wire format (a length-prefixed JSON request with the three fds, then the signals the client
forwards and the exit code the server returns, each a network-order int) is defined here, once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import time

ENV_VAR = "LIFELONG_STAGE_SERVER"  # the server's socket path, set by `lifelong repro`
IN_CHILD_VAR = "LIFELONG_STAGE_SERVER_CHILD"  # set in the server's forked stage: run, do not forward
CONNECT_TIMEOUT_S = 180  # the server may still be importing for the first stage


def run_stage(main) -> None:
    """Run the stage `main` (here, or in the warm stage server) and exit with its code."""
    from pipeline.params import ParamsError

    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None:
        maybe_forward(spec.name)  # exits here when `lifelong repro`'s warm stage server ran the stage

    threads = os.environ.get("LIFELONG_TORCH_THREADS")
    if threads and "torch" in sys.modules:
        # `lifelong repro -j N` splits the cores between the chains it runs at once; OMP_NUM_THREADS
        # does that for a cold stage, this for one forked from the warm stage server (torch is loaded)
        sys.modules["torch"].set_num_threads(int(threads))

    user_errors: tuple[type[BaseException], ...] = (ParamsError, FileNotFoundError, LookupError)
    try:
        code = main()
    except Exception as err:
        # The tracking and data errors are user errors too, if the stage got as far as loading their
        # modules (a stage that never did cannot raise them; and this module stays free of what the stage
        # does, so that it is no dependency of every stage's result).
        for module, name in (("pipeline.registry", "TrackingUnavailable"), ("lifelong.data.sources", "DataSourceError"),
                             ("lifelong.data.shards", "ShardError")):
            if module in sys.modules:
                user_errors += (getattr(sys.modules[module], name),)
        if not isinstance(err, user_errors):
            raise
        print(f"error: {err}", file=sys.stderr)
        code = 2
    sys.exit(code)


def send_msg(sock: socket.socket, obj, fds: list[int] | None = None) -> None:
    data = json.dumps(obj).encode()
    payload = struct.pack("!I", len(data)) + data
    if fds:
        socket.send_fds(sock, [payload], fds)
    else:
        sock.sendall(payload)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def maybe_forward(module: str) -> None:
    """If a stage server is running for this run, let it run `module` and exit with its exit code."""
    path = os.environ.get(ENV_VAR)
    if not path or os.environ.get(IN_CHILD_VAR):
        return
    deadline = time.time() + CONNECT_TIMEOUT_S
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
    send_msg(sock, request, fds=[0, 1, 2])

    def forward(signum, _frame):  # Ctrl-C / SIGTERM reach the stage as they would without the server
        try:
            sock.sendall(struct.pack("!i", signum))
        except OSError:
            pass

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    try:
        (code,) = struct.unpack("!i", recv_exact(sock, 4))
    except (EOFError, OSError):
        print("[stage-server] the server went away during the stage", file=sys.stderr)
        code = 1
    sys.exit(code)
