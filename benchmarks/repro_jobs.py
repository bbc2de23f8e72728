"""`lifelong repro -j 1` against the default (chains side by side), on the same params, one after the other.

    .venv/bin/python benchmarks/repro_jobs.py                 # default params.yaml: ~40 minutes on 2 CPUs
    .venv/bin/python benchmarks/repro_jobs.py --params p.yaml --jobs 1 2 4

Each measurement runs in a fresh copy of the repository (its own git, DVC state, mlflow.db and
runs/), so nothing is reused between them. Prints the wall time of each, the ratio to -j 1, and
checks the registry the concurrent run left: exactly one version per task per run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COPY = ("lifelong", "pipeline", "dvc.yaml", ".dvcignore", ".gitignore", ".dvc/config", ".dvc/.gitignore")


def fresh_copy(dest: Path, params: Path) -> Path:
    for name in COPY:
        src, dst = REPO / name, dest / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst)
    shutil.copy(params, dest / "params.yaml")
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "bench"]):
        subprocess.run(git + cmd, cwd=dest, check=True)
    return dest


def versions_per_alias(db: Path) -> dict[str, int]:
    """registered model name -> versions per alias (1 everywhere when nothing was doubled or lost)."""
    with sqlite3.connect(db) as con:
        versions = dict(con.execute("SELECT name, COUNT(*) FROM model_versions GROUP BY name"))
        aliases = dict(con.execute("SELECT name, COUNT(*) FROM registered_model_aliases GROUP BY name"))
    return {name: versions[name] / max(aliases.get(name, 0), 1) for name in versions}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--jobs", nargs="+", default=["1", "default"], help="-j values; 'default': no -j")
    args = ap.parse_args()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "DVC_ROOT"):
        env.pop(key, None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lifelong-repro-jobs-") as tmp:
        for jobs in args.jobs:
            repo = fresh_copy(Path(tmp) / f"j{jobs}", args.params)
            cmd = [str(BIN / "lifelong"), "repro"] + ([] if jobs == "default" else ["-j", jobs])
            print(f"[repro_jobs] {' '.join(cmd[1:])} in {repo}", flush=True)
            t0 = time.time()
            res = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
            seconds = time.time() - t0
            if res.returncode != 0:
                print(res.stdout[-3000:], res.stderr[-3000:], file=sys.stderr)
                return res.returncode
            per_alias = versions_per_alias(repo / "mlflow.db")
            rows.append((jobs, seconds, all(v == 1 for v in per_alias.values()), len(per_alias)))
    base = rows[0][1]
    print("\n| lifelong repro | wall time | vs first | one version per task per run |\n|---|---|---|---|")
    for jobs, seconds, ok, models in rows:
        print(f"| -j {jobs} | {seconds / 60:.1f} min | {seconds / base:.2f} | {'yes' if ok else 'NO'} ({models} models) |")
    print(f"\n{os.cpu_count()} CPUs; params: {args.params}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
