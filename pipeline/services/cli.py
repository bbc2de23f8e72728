"""`lifelong`: the few commands a user needs around `dvc repro`.

    lifelong repro [-j N] [DVC ARGS]   dvc repro: shared stages, then up to N run chains at once, then the report
    lifelong ui [--port N]             the MLflow UI on 127.0.0.1 over this repository's mlflow.db, read-only
    lifelong check                     validate params.yaml (every error names its key path)
    lifelong plan                      write pipeline/stages.yaml (the train stages) for params.yaml
    lifelong stack up|down|status      team MLflow on 127.0.0.1: PostgreSQL + S3 (SeaweedFS) + mlflow server
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from pipeline.cluster import LOCAL_CLUSTER_ENV, connect_ray, ray_address
from pipeline.layout import TELEMETRY_OFF, layout
from pipeline.params import Params, ParamsError, load_params, repo_root
from pipeline.plan import PLAN_FILE, chain_stages, write_plan
from pipeline.services import procs, stack
from pipeline.task import use_local_mode

# Stages every run chain needs; `lifelong repro -j N` runs them once, before the chains.
SHARED_STAGES = ("check", "prepare", "prepare_image", "classifier", "tuned")
CLUSTER_TEST = "pipeline.devtools.clustertest"  # `lifelong cluster-test` runs this module


def _dvc() -> str:
    exe = os.path.join(os.path.dirname(sys.executable), "dvc")
    return exe if os.path.exists(exe) else "dvc"


class Stop(Exception):
    """SIGINT, SIGTERM or SIGHUP reached `lifelong repro`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Session:
    """Everything one `lifelong repro` starts, and the one place that stops it.

    Each child (the stage server, every `dvc repro`) runs in its own process group, so a Ctrl-C at
    the terminal reaches only this process, which then stops them in order: the dvc process groups
    (dvc, its shell, the stage clients, any cold stage), then the stage server (which stops the
    stages it forked), each SIGTERM first and SIGKILL after a grace (pipeline/services/procs.py); then the Ray cluster it
    started. Nothing keeps training after `lifelong repro` returns.
    """

    def __init__(self, env: dict) -> None:
        self.env = env
        self.dvc_procs: list[subprocess.Popen] = []
        self.server: subprocess.Popen | None = None
        self.server_dir: str | None = None

    def start_ray(self, params: Params) -> None:
        # Starting a local Ray cluster costs ~15 s; pay it once here, not once per train stage.
        started_here = not ray_address(params)
        self.env["RAY_ADDRESS"] = connect_ray(params)
        if started_here:  # its stages run on this machine: they ship no code (pipeline/cluster.py)
            self.env[LOCAL_CLUSTER_ENV] = self.env["RAY_ADDRESS"]
        # A new local cluster turns on token auth in this process (RAY_AUTH_MODE=token); stages attach
        # by explicit address, which never turns it on by itself: hand them the mode.
        self.env.update({k: v for k, v in os.environ.items() if k.startswith("RAY_AUTH_")})
        print(f"[lifelong] Ray cluster for this run at {self.env['RAY_ADDRESS']}", flush=True)

    def start_stage_server(self) -> None:
        """The warm fork server (pipeline/services/stageserver.py): stages skip ~15 s of imports each."""
        from pipeline.stage import ENV_VAR

        self.server_dir = tempfile.mkdtemp(prefix="lifelong-stages-")  # 0700: only this user can connect
        path = os.path.join(self.server_dir, "stages.sock")
        self.server = subprocess.Popen([sys.executable, "-m", "pipeline.services.stageserver", "--socket", path],
                                       env=self.env, cwd=repo_root(), start_new_session=True)
        self.env[ENV_VAR] = path

    def dvc(self, args: list[str], **env: str) -> subprocess.Popen:
        proc = subprocess.Popen([_dvc(), "--wait-for-lock", *args], env={**self.env, **env}, cwd=repo_root(),
                                start_new_session=True)
        self.dvc_procs.append(proc)
        return proc

    def run(self, args: list[str]) -> int:
        return self.dvc(args).wait()

    def run_parallel(self, commands: list[list[str]], jobs: int, **env: str) -> int:
        """Each command as its own `dvc`, at most `jobs` at once; the first failure stops new starts."""
        pending, running, code = list(commands), [], 0
        while pending or running:
            while pending and len(running) < jobs and code == 0:
                running.append(self.dvc(pending.pop(0), **env))
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                running.remove(proc)
                code = code or proc.returncode
            if code and not running:
                break
        return code

    def stop(self) -> None:
        # The stage server stops its stages within STOP_GRACE_S + 1 s itself: give it that, and a margin.
        procs.stop([*self.dvc_procs, *([self.server] if self.server else [])], grace=procs.STOP_GRACE_S + 2)
        if self.server_dir:
            shutil.rmtree(self.server_dir, ignore_errors=True)
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():  # stops the cluster this process started, or detaches
            ray.shutdown()


def _raise_stop(signum, _frame):
    raise Stop(signum)


def default_jobs(params: Params) -> int:
    """How many run chains the machine (or the cluster) holds at once: one per CPU in Ray Train's local
    mode; else as many as the cluster's CPUs (or GPUs) fit train.num_workers workers each."""
    cpus = os.cpu_count() or 1
    if use_local_mode(params):
        return cpus
    import ray

    connect_ray(params)  # the cluster `lifelong repro` started, or the one it attaches to
    total = ray.cluster_resources()
    t = params.train
    if t.use_gpu:
        return max(1, int(total.get("GPU", 0) // t.num_workers))
    return max(1, int(total.get("CPU", cpus) // (t.num_workers * t.cpus_per_worker)))


def repro(dvc_args: list[str], *, jobs: int | None = None, stage_server: bool = True) -> int:
    params = load_params()  # fail in a second on a bad params.yaml, before any cluster starts
    if write_plan(params, repo_root()):
        print(f"[lifelong] {PLAN_FILE}: train stages for the tasks and runs of params.yaml", flush=True)
    from pipeline.registry import TrackingUnavailable, setup_mlflow

    try:  # MLflow answers, and the experiment exists, before any stage starts (seconds, not a stage's retries)
        setup_mlflow(params, layout())
    except TrackingUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    env = {**os.environ, **TELEMETRY_OFF}
    # dvc.yaml's `python -m pipeline...` must be this environment's python, activated or not.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    session = Session(env)
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        if not use_local_mode(params) and not ray_address(params):
            session.start_ray(params)
        if stage_server:
            session.start_stage_server()
        jobs = jobs or default_jobs(params)
        chains = [chain_stages(params, scenario, chain) for scenario, chain in params.chains()]
        if jobs == 1 or dvc_args or len(chains) < 2:
            return session.run(["repro", *dvc_args])  # DVC's own order, one stage at a time
        # Chains share nothing but these stages: run them once, then the chains side by side, each
        # as one `dvc repro --single-item` of its own stages in order (a plain `dvc repro <target>`
        # would also re-check the shared stages, whose outputs other chains are reading: DVC's
        # per-path locks would refuse it); the machine's torch threads are split between them.
        # The last `dvc repro` runs the report (and checks that everything is done).
        code = session.run(["repro", *SHARED_STAGES])
        if code:
            return code
        print(f"[lifelong] {len(chains)} run chains, up to {jobs} at once (-j 1: one stage at a time)", flush=True)
        threads = str(max(1, (os.cpu_count() or 1) // jobs))
        code = session.run_parallel([["repro", "--single-item", *chain] for chain in chains], jobs,
                                    LIFELONG_TORCH_THREADS=threads, OMP_NUM_THREADS=threads)
        return code or session.run(["repro"])
    except Stop as stop:
        print(f"\n[lifelong] {stop}: stopping every stage; the next `lifelong repro` resumes from the last "
              "checkpoint", file=sys.stderr, flush=True)
        return 128 + stop.signum
    finally:
        for s in previous:  # a second Ctrl-C must not cut the clean-up short (it takes seconds)
            signal.signal(s, signal.SIG_IGN)
        session.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)


def ui(port: int) -> int:
    """The MLflow UI over this repository's tracking store, read-only (pipeline/services/uiserver.py): nobody
    who reaches the port can write runs, registry edits or artifacts into the pipeline's stores."""
    from pipeline.services import uiserver

    try:
        params = load_params()
    except (ParamsError, OSError):  # a broken or missing params.yaml: still show what is there
        params = None
    os.environ.update(TELEMETRY_OFF)
    return uiserver.run(layout().tracking_uri(params), host="127.0.0.1", port=port)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["cluster-test"]:  # a harness, not a service: its own module and parser (after `--`: the command)
        os.execv(sys.executable, [sys.executable, "-m", CLUSTER_TEST, *argv[1:]])
    ap = argparse.ArgumentParser(prog="lifelong", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_repro = sub.add_parser("repro", help="dvc repro, run chains side by side (extra args go to dvc repro)")
    p_repro.add_argument("-j", "--jobs", type=int, default=None,
                         help="run chains at once (default: what the machine or cluster holds; 1: DVC's order)")
    p_repro.add_argument("--no-stage-server", action="store_true",
                         help="run every stage as its own cold process (slower; for debugging)")
    p_ui = sub.add_parser("ui", help="MLflow UI on 127.0.0.1, read-only")
    p_ui.add_argument("--port", type=int, default=5000, help="default 5000; 0: any free port (the URL is printed)")
    sub.add_parser("check", help="validate params.yaml")
    sub.add_parser("plan", help=f"write {PLAN_FILE}, the train stages of params.yaml's tasks and runs")
    stack.add_parser(sub)
    sub.add_parser("cluster-test", add_help=False,
                   help="a Ray head + worker node(s) on this machine, in namespaces of their own, to run a "
                        "command against (`lifelong cluster-test -- lifelong repro`; see pipeline/devtools/clustertest.py)")
    args, rest = ap.parse_known_args(argv)
    try:
        if args.cmd == "repro":
            if args.jobs is not None and args.jobs < 1:
                ap.error("-j must be >= 1")
            return repro(rest, jobs=args.jobs, stage_server=not args.no_stage_server)
        if rest:
            ap.error(f"unrecognized arguments: {' '.join(rest)}")
        if args.cmd == "stack":  # needs no params.yaml
            return stack.run_cli(args, repo_root())
        if args.cmd == "ui":
            return ui(args.port)
        params = load_params()
        if args.cmd == "plan":
            changed = write_plan(params, repo_root())
            print(f"{PLAN_FILE} {'written' if changed else 'is up to date'}")
            return 0
        print("params.yaml is valid")
        return 0
    except ParamsError as err:
        print(err, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
