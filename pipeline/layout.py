"""Where every stage reads and writes: the single place that knows the repository layout.

All paths are absolute (anchored on $DVC_ROOT): Ray workers change directory, and a relative
sqlite:///mlflow.db would silently create a second database somewhere under /tmp/ray.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pipeline.params import Params, repo_root

# Telemetry off everywhere a stage runs, and in what `lifelong` starts (scripts/setup.sh and .ci/run too).
TELEMETRY_OFF = {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1"}
for _k, _v in TELEMETRY_OFF.items():
    os.environ.setdefault(_k, _v)


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def shards(self) -> Path:  # the label scenario's class-incremental shards
        return self.root / "data" / "shards"

    @property
    def paired_shards(self) -> Path:  # the image scenario's (A, B) pair shards
        return self.root / "data" / "shards-image"

    def scenario_shards(self, scenario: str) -> Path:
        return self.shards if scenario == "label" else self.paired_shards

    def task_shards(self, task: int, scenario: str = "label") -> Path:
        return self.scenario_shards(scenario) / f"task-{task}"

    def receipt(self, scenario: str, run: str, task: int) -> Path:
        return self.root / "results" / "receipts" / scenario / run / f"task-{task}.json"

    @property
    def checked(self) -> Path:  # the `check` stage's output, which every other stage depends on
        return self.root / "results" / "checked.json"

    @property
    def applied_dir(self) -> Path:  # the `tuned` stage's output: one file per label run
        return self.root / "results" / "tune" / "applied"

    def applied(self, run: str) -> Path:  # the tuned values a label run's train stages apply ({}: none)
        return self.applied_dir / f"{run}.json"

    @property
    def classifier(self) -> Path:
        return self.root / "models" / "classifier.pt"

    @property
    def classifier_receipt(self) -> Path:
        return self.root / "results" / "receipts" / "classifier.json"

    def eval_result(self, scenario: str, run: str) -> Path:
        return self.root / "results" / "eval" / scenario / f"{run}.json"

    def eval_samples(self, scenario: str, run: str) -> Path:
        return self.root / "results" / "eval" / scenario / f"{run}-samples.npz"

    @property
    def metrics(self) -> Path:
        return self.root / "results" / "metrics.json"

    @property
    def plots(self) -> Path:
        return self.root / "results" / "plots"

    @property
    def report(self) -> Path:
        return self.root / "results" / "report.md"

    def runs_root(self, params: Params) -> str:
        """Where Ray Train keeps each task's checkpoints: <storage.uri>/runs (a shared path or s3://),
        else <repo>/runs."""
        return f"{params.storage.uri}/runs" if params.storage.uri else str(self.root / "runs")

    def local_runs(self, params: Params) -> Path:
        """Ray Train local mode's own checkpoint files (one process, this machine): runs_root when that
        is a path, else <repo>/runs."""
        root = self.runs_root(params)
        return self.root / "runs" if "://" in root else Path(root)

    def tracking_uri(self, params: Params | None) -> str:
        """mlflow.tracking_uri, else $MLFLOW_TRACKING_URI, else the checkout's own mlflow.db (params None:
        a params.yaml that does not load)."""
        configured = params.mlflow.tracking_uri if params is not None else None
        return configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        return self.root / "mlartifacts"

    def private_paths(self) -> list[Path]:
        """What a worker node of a real cluster would not have of this checkout: data, runs, models, results,
        MLflow's stores, the team stack's state, DVC's cache; mlflow.db only if it exists (a missing path is
        created as a directory by the harness that hides it: `lifelong cluster-test --hide-repo`)."""
        paths = [self.root / p for p in ("data", "runs", "models", "results", "mlartifacts", "mlruns", ".stack",
                                         ".dvc/cache")]
        if (self.root / "mlflow.db").exists():
            paths.append(self.root / "mlflow.db")
        return paths


def layout() -> Layout:
    return Layout(repo_root())


def write_json(path: Path, obj) -> None:
    """Stable formatting (sorted keys) so unchanged content hashes the same for DVC; written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: Path, *, what: str, fix: str) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found ({what}); {fix}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({what}): {err}; {fix}") from None


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""
