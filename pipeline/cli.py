"""`lifelong`: the few commands a user needs around `dvc repro`.

    lifelong repro [DVC ARGS]   dvc repro, with one Ray cluster kept up for all stages when they need one
    lifelong ui [--port N]      the MLflow UI on 127.0.0.1 over this repository's mlflow.db
    lifelong check              validate params.yaml (every error names its key path)
    lifelong chain              print the task_chain entry params.yaml needs for its data.tasks
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


def repro(dvc_args: list[str]) -> int:
    params = load_params()  # fail in a second on a bad params.yaml, before any cluster starts
    env = {**os.environ, **TELEMETRY_OFF}
    # dvc.yaml's `python -m pipeline...` must be this environment's python, activated or not.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    started = False
    if needs_cluster(params) and not (params.ray.address or os.environ.get("RAY_ADDRESS")):
        # Starting a local Ray cluster costs ~15 s; pay it once here, not once per train stage.
        # It lives as long as this process: stages attach through RAY_ADDRESS.
        import ray

        ctx = ray.init(include_dashboard=False, runtime_env={"env_vars": dict(TELEMETRY_OFF)})
        env["RAY_ADDRESS"] = ctx.address_info["gcs_address"]
        env.setdefault("RAY_AUTH_MODE", os.environ.get("RAY_AUTH_MODE", ""))
        started = True
        print(f"[lifelong] Ray cluster for this run at {env['RAY_ADDRESS']}", flush=True)
    try:
        return subprocess.call([_dvc(), "repro", *dvc_args], env=env, cwd=repo_root())
    finally:
        if started:
            import ray

            ray.shutdown()


def ui(port: int) -> int:
    root = repo_root()
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    cmd = [mlflow if os.path.exists(mlflow) else "mlflow", "ui", "--backend-store-uri", uri,
           "--host", "127.0.0.1", "--port", str(port)]
    print(" ".join(cmd), flush=True)
    return subprocess.call(cmd, env={**os.environ, **TELEMETRY_OFF})


def chain() -> int:
    with open(repo_root() / "params.yaml") as f:
        tasks = (yaml.safe_load(f) or {}).get("data", {}).get("tasks") or Params.model_fields["data"].default.tasks
    print(yaml.safe_dump({"task_chain": chain_for(len(tasks))}, default_flow_style=None, sort_keys=False), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="lifelong", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("repro", help="dvc repro with a shared Ray cluster (extra args go to dvc repro)")
    p_ui = sub.add_parser("ui", help="MLflow UI on 127.0.0.1")
    p_ui.add_argument("--port", type=int, default=5000)
    sub.add_parser("check", help="validate params.yaml")
    sub.add_parser("chain", help="print task_chain for data.tasks")
    args, rest = ap.parse_known_args(argv)
    try:
        if args.cmd == "repro":
            return repro(rest)
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
