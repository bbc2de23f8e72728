"""`lifelong`: the few commands a user needs around `dvc repro`.

    lifelong repro [DVC ARGS]   dvc repro, with one Ray cluster kept up for all stages when they need one
    lifelong ui [--port N]      the MLflow UI on 127.0.0.1 over this repository's mlflow.db
    lifelong check              validate params.yaml (every error names its key path)
    lifelong chain              print the task_chain entries params.yaml needs for its scenarios' tasks
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import yaml

from pipeline.params import ParamsError, Params, chain_for, load_params, repo_root

TELEMETRY_OFF = {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1"}


def needs_cluster(params: Params) -> bool:
    from pipeline.train import use_local_mode

    return not use_local_mode(params)


def _dvc() -> str:
    exe = os.path.join(os.path.dirname(sys.executable), "dvc")
    return exe if os.path.exists(exe) else "dvc"


def start_stage_server(env: dict) -> tuple[subprocess.Popen, str]:
    """The warm fork server (pipeline/stageserver.py): stages skip ~15 s of imports each."""
    import tempfile

    from pipeline.stageserver import ENV_VAR

    folder = tempfile.mkdtemp(prefix="lifelong-stages-")  # 0700: only this user can connect
    path = os.path.join(folder, "stages.sock")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.stageserver", "--socket", path], env=env,
                            cwd=repo_root())
    env[ENV_VAR] = path
    return proc, folder


def repro(dvc_args: list[str], *, stage_server: bool = True) -> int:
    import shutil

    params = load_params()  # fail in a second on a bad params.yaml, before any cluster starts
    env = {**os.environ, **TELEMETRY_OFF}
    # dvc.yaml's `python -m pipeline...` must be this environment's python, activated or not.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    started = False
    if needs_cluster(params) and not (params.ray.address or os.environ.get("RAY_ADDRESS")):
        # Starting a local Ray cluster costs ~15 s; pay it once here, not once per train stage.
        # It lives as long as this process: stages attach through RAY_ADDRESS.
        import ray

        # The dashboard serves the State API that TorchTrainer.fit() polls; it binds 127.0.0.1.
        ctx = ray.init(include_dashboard=True, dashboard_host="127.0.0.1",
                       runtime_env={"env_vars": dict(TELEMETRY_OFF)})
        env["RAY_ADDRESS"] = ctx.address_info["gcs_address"]
        env.setdefault("RAY_AUTH_MODE", os.environ.get("RAY_AUTH_MODE", ""))
        started = True
        print(f"[lifelong] Ray cluster for this run at {env['RAY_ADDRESS']}", flush=True)
    server = None
    if stage_server:
        server, folder = start_stage_server(env)
    try:
        return subprocess.call([_dvc(), "repro", *dvc_args], env=env, cwd=repo_root())
    finally:
        if server is not None:
            server.terminate()
            server.wait()
            shutil.rmtree(folder, ignore_errors=True)
        if started:
            import ray

            ray.shutdown()


def ui(port: int) -> int:
    root = repo_root()
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    cmd = [mlflow if os.path.exists(mlflow) else "mlflow", "ui", "--backend-store-uri", uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # one user: one worker starts faster
    print(" ".join(cmd), flush=True)
    return subprocess.call(cmd, env={**os.environ, **TELEMETRY_OFF})


def chain() -> int:
    """The scenarios.<name>.task_chain blocks for the tasks params.yaml lists (works on an invalid file)."""
    with open(repo_root() / "params.yaml") as f:
        raw = yaml.safe_load(f) or {}
    counts = {
        "label": len((raw.get("data") or {}).get("tasks") or Params.model_fields["data"].default.tasks),
        "image": len((raw.get("image_data") or {}).get("tasks") or Params.model_fields["image_data"].default.tasks),
    }
    out = {"scenarios": {sc: {"task_chain": chain_for(n)} for sc, n in counts.items()}}
    print("# paste under each scenario (keep its runs)", flush=True)
    print(yaml.safe_dump(out, default_flow_style=None, sort_keys=False), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="lifelong", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_repro = sub.add_parser("repro", help="dvc repro with a shared Ray cluster (extra args go to dvc repro)")
    p_repro.add_argument("--no-stage-server", action="store_true",
                         help="run every stage as its own cold process (slower; for debugging)")
    p_ui = sub.add_parser("ui", help="MLflow UI on 127.0.0.1")
    p_ui.add_argument("--port", type=int, default=5000)
    sub.add_parser("check", help="validate params.yaml")
    sub.add_parser("chain", help="print each scenario's task_chain for its tasks")
    args, rest = ap.parse_known_args(argv)
    try:
        if args.cmd == "repro":
            return repro(rest, stage_server=not args.no_stage_server)
        if rest:
            ap.error(f"unrecognized arguments: {' '.join(rest)}")
        if args.cmd == "ui":
            return ui(args.port)
        if args.cmd == "check":
            load_params()
            print("params.yaml is valid")
            return 0
        return chain()
    except ParamsError as err:
        print(err, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
