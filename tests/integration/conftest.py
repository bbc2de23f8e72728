"""A throwaway copy of this repository, as a user's clone: real git, real DVC, real MLflow sqlite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def tiny_params(profile: str = "params.yaml", **overrides) -> dict:
    """2 tasks of scikit-learn digits at 8 px, a few steps: every stage runs, nothing is large. `profile`:
    the params file it shrinks (e.g. params-paper.yaml, whose other settings stay)."""
    with open(REPO / profile) as f:
        p = yaml.safe_load(f)
    p["experiment"] = "it"
    p["scenarios"] = {"label": {"runs": ["diffusion-finetune", "diffusion-generative_distillation"]},
                      "image": {"runs": []}}
    p["data"].update(dataset="digits", image_size_px=8, tasks=[[0, 1], [2, 3]], train_per_class=40,
                     test_per_class=20, samples_per_shard=30)
    p["image_data"].update(train_per_task=40, test_per_task=16, samples_per_shard=30,
                           tasks=[{"name": "edges2zeros", "condition": "edges", "classes": [0]},
                                  {"name": "silhouette2ones", "condition": "silhouette", "classes": [1]}])
    p["gan"].update(width=8, steps_per_task=6, batch_size=8)
    p["model"].update(block_out_channels=[8, 16], layers_per_block=1, attention=False)
    p["train"].update(steps_per_task=6, batch_size=8, checkpoint_every_steps=2, log_every_steps=2, use_gpu=False,
                      num_workers=1)
    p["eval"].update(samples_per_class=8, ddim_steps=2, kid_subset_size=8, batch_size=64, seeds=1)
    p["classifier"].update(epochs=1)
    for section, values in overrides.items():
        if isinstance(values, dict):
            p[section].update(values)
        else:
            p[section] = values
    return p


def stage_env(env: dict | None = None) -> dict:
    """The environment a stage subprocess gets: this venv first on PATH, telemetry off, and no
    RAY_ADDRESS, MLFLOW_TRACKING_URI or MLFLOW_REGISTRY_URI from outside unless `env` sets them
    (each clone has its own local cluster and its own mlflow.db)."""
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1"}
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DVC_ROOT"):
        full_env.pop(key, None)
    return {**full_env, **(env or {})}


def run(cmd: list[str], cwd: Path, *, check: bool = True, timeout: int = 900, env: dict | None = None):
    full_env = stage_env(env)
    res = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-6000:]}\n{res.stderr[-6000:]}")
    return res


def make_clone(dest: Path, params: dict) -> Path:
    for name in ("lifelong", "pipeline"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, dest / name)
    (dest / ".dvc").mkdir()
    shutil.copy(REPO / ".dvc" / "config", dest / ".dvc" / "config")
    shutil.copy(REPO / ".dvc" / ".gitignore", dest / ".dvc" / ".gitignore")
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([str(BIN / "lifelong"), "plan"], dest)  # pipeline/stages.yaml for these params, as a user's commit has it
    run(["git", "init", "-q"], dest)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], dest)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], dest)
    return dest


@pytest.fixture
def s3_root(tmp_path):
    """A SeaweedFS S3 endpoint with generated keys, as the team stack runs it, for `storage.uri`:
    yields (the AWS_* variables a stage needs, a boto3 client, the bucket); stopped after the test."""
    from pipeline.services import stack

    cfg = stack.new_config(bucket="lifelong-it")
    (tmp_path / "stack").mkdir()
    server = stack.SeaweedFS(tmp_path / "stack", cfg)
    server.start(timeout=90)
    env = {"AWS_ENDPOINT_URL": cfg["s3"]["endpoint_url"], "AWS_ACCESS_KEY_ID": cfg["s3"]["access_key"],
           "AWS_SECRET_ACCESS_KEY": cfg["s3"]["secret_key"]}
    try:
        yield env, stack._s3_client(cfg), cfg["s3"]["bucket"]
    finally:
        server.stop()


@pytest.fixture
def clone(tmp_path):
    def _make(params: dict) -> Path:
        return make_clone(tmp_path / "repo", params)

    return _make
