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

# Telemetry off everywhere a stage runs (also set by scripts/setup.sh and `lifelong repro`).
for _k, _v in {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1"}.items():
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

    def tracking_uri(self, params: Params) -> str:
        return params.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        return self.root / "mlartifacts"


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


def run_stage(main) -> None:
    """Entry point of every stage: a user error (bad params, missing shard/model/receipt) is one clear
    message on stderr and exit code 2, not a traceback. Anything else is a bug and keeps its traceback."""
    import sys

    from pipeline.params import ParamsError
    from pipeline.stageserver import maybe_forward

    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None:
        maybe_forward(spec.name)  # exits here when `lifelong repro`'s warm stage server ran the stage

    threads = os.environ.get("LIFELONG_TORCH_THREADS")
    if threads and "torch" in sys.modules:
        # `lifelong repro -j N` splits the cores between the chains it runs at once; OMP_NUM_THREADS
        # does that for a cold stage, this for one forked from the warm stage server (torch is loaded)
        sys.modules["torch"].set_num_threads(int(threads))
    from pipeline.registry import TrackingUnavailable

    user_errors: tuple[type[BaseException], ...] = (ParamsError, FileNotFoundError, LookupError, TrackingUnavailable)
    try:
        code = main()
    except Exception as err:
        # The data errors are user errors too, if the stage got as far as loading their modules (which
        # import torch: seconds that `check` and `report` need not pay just for two exception classes).
        for module, name in (("lifelong.data.sources", "DataSourceError"), ("lifelong.data.shards", "ShardError")):
            if module in sys.modules:
                user_errors += (getattr(sys.modules[module], name),)
        if not isinstance(err, user_errors):
            raise
        print(f"error: {err}", file=sys.stderr)
        code = 2
    sys.exit(code)
