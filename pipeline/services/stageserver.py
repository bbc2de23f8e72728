"""A warm fork server for stage processes: pay `import torch, diffusers, mlflow, ray.train` once per run.

Why: every DVC stage is a new `python -m pipeline.<stage>` process, and on a 2-core machine importing
the stack costs ~15-20 s (torch ~5 s, diffusers ~5 s via torch._dynamo, mlflow ~4 s, ray.train ~3 s).
Twenty-odd stages would spend six minutes importing. `lifelong repro` starts this server once; each
stage process is then a thin client that hands its argv, cwd, environment and its stdin/stdout/stderr
file descriptors to the server, which forks a child from its already-imported state to run the stage.
The child writes straight to the client's terminal/pipes and its exit code becomes the client's.

Processes (`lifelong repro -j N` runs several DVC chains at once, so several stages run at once):

    server (main loop: accept, reap, stop)       one per run; single-threaded, never runs a torch op
      └─ handler                                  one per connection, forked by the server
           └─ stage                               forked by the handler; its own process group

The server only accepts and forks a handler per connection, so a slow or silent client never holds up
another stage. The handler reads the request (giving up after REQUEST_TIMEOUT_S: a client that sends
nothing costs one log line), forks the stage with the client's stdio, relays the signals the client
forwards (Ctrl-C is KeyboardInterrupt in the stage, exit 130), and returns the stage's exit code
(killed by signal N: 128+N, as a shell reports it).

The client side (what each stage's process does first, and the wire format) is pipeline/stage.py.

Safety: the socket lives in a private 0700 directory (made by cli.py). Every fork is made from the main
thread of the server or a handler, which start no threads of their own (importing torch, mlflow and diffusers
does start a few idle native threads in the server; a fork copies only the calling thread), and the
server never runs a torch op, so no forked child inherits an initialised OpenMP pool. After preloading,
the server freezes its objects out of the garbage collector (gc.freeze) so that forked processes do not
touch, and so copy, every preloaded page on their first full collection. Nothing the server forked
outlives it:
- client dies (kill -9; its socket reaches EOF): the handler SIGKILLs the stage's process group;
- server gets SIGTERM/SIGINT, or its parent (`lifelong repro`) dies: each handler SIGTERMs its stage's
  process group, SIGKILLs it after procs.STOP_GRACE_S, and the server exits once its handlers have;
- server is killed -9: the handlers get SIGTERM (PR_SET_PDEATHSIG) and stop their stages as above;
- a handler is killed -9: its stage gets SIGKILL (PR_SET_PDEATHSIG).
`lifelong repro` itself dying (kill -9) sends SIGTERM to the server (PR_SET_PDEATHSIG; once-a-second
getppid() polling as a fallback). PR_SET_PDEATHSIG is Linux-only; elsewhere only the polling and the
client-EOF path apply.
Without LIFELONG_STAGE_SERVER set, stages run in their own process exactly as before.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import select
import signal
import socket
import struct
import sys
import time
import warnings

from pipeline.services import procs
from pipeline.stage import IN_CHILD_VAR, recv_exact

# What stages import; modules imported here are shared by every forked stage for free.
WARM_MODULES = (
    "torch", "numpy", "yaml", "pydantic", "webdataset", "mlflow", "mlflow.data.meta_dataset",
    "mlflow.entities", "ray", "ray.train", "ray.train.torch", "diffusers.models.unets.unet_2d",
    "diffusers.schedulers", "torch_fidelity", "matplotlib", "matplotlib.pyplot",
    "lifelong.data", "lifelong.models", "lifelong.methods", "lifelong.evaluation", "lifelong.metrics",
    "lifelong.training", "lifelong.evaluation.cnn_extractor", "pipeline.layout", "pipeline.registry",
    "pipeline.train", "pipeline.evaluate", "pipeline.classifier", "pipeline.prepare", "pipeline.report",
)
REQUEST_TIMEOUT_S = 20.0  # a connected client sends its request at once; silence means it is stuck or not ours


def _recv_request(sock: socket.socket) -> tuple[dict, list[int]]:
    msg, fds, _, _ = socket.recv_fds(sock, 4, 3)
    fds = list(fds)
    try:
        if len(msg) < 4:
            raise EOFError
        (n,) = struct.unpack("!I", msg[:4])
        return json.loads(recv_exact(sock, n)), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _log(msg: str) -> None:
    print(f"[stage-server] {msg}", file=sys.stderr, flush=True)


def _die_with_parent(sig: int, parent: int) -> bool:
    """Have the kernel send `sig` to this process when its parent dies (Linux; elsewhere a no-op).
    Returns False when the parent is already gone: it may have died before the prctl took effect."""
    procs.die_with_parent(sig)
    return os.getppid() == parent


def _alarm_pipe() -> tuple[int, int]:
    """Route signals to a non-blocking pipe so a select() on its read end wakes on them.
    The Python handlers themselves only set flags: no fork, kill or I/O happens inside a handler."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    return r, w


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _fork() -> int:
    """fork() with SIGTERM/SIGINT held back until the child has set its own handlers (it calls
    _unblock()): a signal in between would otherwise run the parent's flag-setting handler in the child
    and be lost there."""
    sys.stdout.flush()  # or the child would write out the parent's buffered output again
    sys.stderr.flush()
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    pid = os.fork()
    if pid:
        _unblock()
    return pid


def _unblock() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _exited(pid: int) -> bool:
    """Whether `pid` (our child) has exited, without reaping it: while the zombie exists its pid, and so
    its process-group id, cannot be reused, so killpg(pid) cannot hit a stranger."""
    if not hasattr(os, "waitid"):  # macOS: no WNOWAIT; a pid-reuse race there is accepted
        return _exited_fallback(pid)
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


_reaped: dict[int, int] = {}


def _exited_fallback(pid: int) -> bool:
    if pid not in _reaped:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            _reaped[pid] = status
    return pid in _reaped


def _reap(pid: int) -> int:
    """Wait for our child `pid` and return its exit code (killed by signal N: 128+N, shell convention)."""
    status = _reaped.pop(pid) if pid in _reaped else os.waitpid(pid, 0)[1]
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _run_stage(request: dict, fds: list[int], handler: int) -> None:
    """In the stage process (forked by the handler): become the stage's own `python -m module`."""
    os.setpgid(0, 0)  # its own process group: killing the stage kills whatever it started
    if not _die_with_parent(signal.SIGKILL, handler):  # handler killed -9: nobody would relay or reap
        os._exit(128 + signal.SIGKILL)
    for sig, action in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL),
                        (signal.SIGCHLD, signal.SIG_DFL)):
        signal.signal(sig, action)
    _unblock()
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ[IN_CHILD_VAR] = "1"
    sys.argv = [request["module"], *request["argv"]]
    if request["cwd"] not in sys.path:
        sys.path.insert(0, request["cwd"])
    # The stage's module was preloaded (WARM_MODULES): running it again as __main__ is the point,
    # so runpy's "found in sys.modules ... unpredictable behaviour" warning is noise here.
    warnings.filterwarnings("ignore", message=".*found in sys.modules after import of package",
                            category=RuntimeWarning)
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


def _handle(conn: socket.socket, server: int, request_timeout: float) -> None:
    """In a handler process: run one client's stage to its end and send back its exit code."""
    # Until the stage exists there is nothing to clean up: SIGTERM (from the server or, via PDEATHSIG,
    # from its death) just ends the handler. Ctrl-C is the server's and the client's to act on.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _unblock()
    # Out of the server's process group: a SIGKILL to that group (cli.py's last resort) then kills only
    # the server, and its death reaches this handler as SIGTERM, which still stops the stage's group.
    os.setpgid(0, 0)
    if not _die_with_parent(signal.SIGTERM, server):
        return
    conn.settimeout(request_timeout)
    try:
        request, fds = _recv_request(conn)
    except socket.timeout:
        _log(f"no request within {request_timeout:g} s; dropped a silent connection")
        return
    except (EOFError, OSError, ValueError) as err:
        _log(f"bad request: {err!r}")
        return
    conn.settimeout(None)

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the select() below
    alarm, alarm_w = _alarm_pipe()
    me = os.getpid()
    pid = _fork()
    if pid == 0:
        signal.set_wakeup_fd(-1)
        try:
            for fd in (conn.detach(), alarm, alarm_w):
                os.close(fd)
            _run_stage(request, fds, me)  # ends in os._exit
        finally:  # never return into the handler's code
            os._exit(1)
    try:
        os.setpgid(pid, pid)  # also here, so killpg(pid) works before the child gets to run
    except OSError:
        pass
    for fd in fds:
        os.close(fd)

    pending = b""
    while not _exited(pid):
        if stop:  # the server is stopping: TERM, a short grace, then KILL whatever is left of the group
            procs.send(pid, signal.SIGTERM, group=True)
            deadline = time.monotonic() + procs.STOP_GRACE_S
            while not _exited(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            procs.send(pid, signal.SIGKILL, group=True)
            break
        readable, _, _ = select.select([conn, alarm], [], [], 1.0)
        if alarm in readable:
            _drain(alarm)
        if os.getppid() != server:  # the server died and PDEATHSIG did not tell us (not Linux)
            stop.append(1)
            continue
        if conn in readable:
            try:
                data = conn.recv(64)
            except OSError:
                data = b""
            if not data:  # EOF: the client died (kill -9 cannot be forwarded): the stage dies with it
                procs.send(pid, signal.SIGKILL, group=True)
                break
            pending += data
            while len(pending) >= 4:
                (signum,), pending = struct.unpack("!i", pending[:4]), pending[4:]
                if 0 < signum < signal.NSIG:
                    procs.send(pid, signum, group=True)
    code = _reap(pid)
    try:
        conn.sendall(struct.pack("!i", code))
    except OSError:
        pass


def _preload(modules) -> None:
    import gc
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as err:  # a missing optional module only costs its import later
            _log(f"not preloaded: {name} ({err})")
    # The preloaded stack is ~600k objects. Left in the collector's generations, the first full
    # collection in each forked process walks them all and touches their pages (copy-on-write):
    # ~0.5 s per fork here. Frozen, they are never scanned (they are never garbage anyway).
    gc.collect()
    gc.freeze()


def serve(path: str, *, preload=WARM_MODULES, request_timeout: float = REQUEST_TIMEOUT_S) -> None:
    parent = os.getppid()
    # `lifelong repro` killed -9 -> SIGTERM here -> the orderly stop below. Until the socket exists
    # there is nothing to clean up, so SIGTERM/SIGINT just end the process.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if not _die_with_parent(signal.SIGTERM, parent):
        return
    _preload(preload)

    stopping: list[str] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append("SIGTERM"))
    signal.signal(signal.SIGINT, lambda *_: stopping.append("SIGINT"))
    signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the select() below
    alarm, alarm_w = _alarm_pipe()

    if os.path.exists(path):
        os.unlink(path)
    tmp = path + ".tmp"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(tmp)
    os.chmod(tmp, 0o600)
    srv.listen(64)
    srv.setblocking(False)
    os.replace(tmp, path)  # clients see the socket only once it accepts

    handlers: set[int] = set()
    me = os.getpid()

    def reap() -> None:
        while handlers:
            try:
                done, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                handlers.clear()
                return
            if not done:
                return
            handlers.discard(done)

    try:
        while not stopping:
            if os.getppid() != parent:  # no PDEATHSIG (not Linux) or it raced: same orderly stop
                stopping.append("parent exited")
                break
            readable, _, _ = select.select([srv, alarm], [], [], 1.0)
            if alarm in readable:
                _drain(alarm)
            reap()
            if stopping or srv not in readable:
                continue
            while True:
                try:
                    conn, _ = srv.accept()
                except (BlockingIOError, InterruptedError):
                    break
                pid = _fork()
                if pid == 0:  # the handler: everything the server holds but this connection is not its
                    code = 0
                    try:
                        signal.set_wakeup_fd(-1)
                        for fd in (srv.detach(), alarm, alarm_w):
                            os.close(fd)
                        _handle(conn, me, request_timeout)
                    except BaseException as err:  # never return into the server's loop
                        _log(f"handler failed: {err!r}")
                        code = 1
                    finally:
                        sys.stdout.flush()
                        sys.stderr.flush()
                    os._exit(code)
                conn.close()
                handlers.add(pid)
    finally:
        srv.close()
        for name in (path, tmp):
            try:
                os.unlink(name)
            except OSError:
                pass
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.basename(folder).startswith("lifelong-stages-"):  # the private folder cli.py made
            try:
                os.rmdir(folder)  # only if empty
            except OSError:
                pass
        if handlers:
            _log(f"stopping ({', '.join(stopping) or 'error'}): ending {len(handlers)} running stage(s)")
        for pid in handlers:
            procs.send(pid, signal.SIGTERM)  # each handler TERMs, then KILLs, its stage's group
        deadline = time.monotonic() + procs.STOP_GRACE_S + 1.0  # cli.py gives us 2 s more before its SIGKILL
        while handlers and time.monotonic() < deadline:
            time.sleep(0.05)
            reap()
        for pid in handlers:  # a handler stuck past the grace: its stage gets SIGKILL via PDEATHSIG
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--socket", required=True)
    ap.add_argument("--preload", default="all",
                    help="'all' (WARM_MODULES, the default), 'none', or comma-separated module names")
    ap.add_argument("--request-timeout", type=float, default=REQUEST_TIMEOUT_S,
                    help="seconds a connected client has to send its request")
    args = ap.parse_args(argv)
    modules = {"all": WARM_MODULES, "none": ()}.get(args.preload)
    if modules is None:
        modules = tuple(m for m in args.preload.split(",") if m)
    serve(args.socket, preload=modules, request_timeout=args.request_timeout)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is cleaned up by now; skip tearing down the preloaded stack (~3 s on exit), which
    # `lifelong repro` would otherwise wait for.
    os._exit(code)
