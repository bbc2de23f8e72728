"""MLflow glue: the experiment, one run per stage, and the model registry.

A registered version is a state_dict + config (two files), never a pickled class or a torch.export
graph, and it is loaded back with torch.load(weights_only=True). Versions are created last, after the
weights are safely logged; if tagging or aliasing fails the version is deleted again, so a failed
stage never leaves a registered version behind.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from pipeline.layout import Layout
from pipeline.params import Params

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"


def model_name(params: Params, scenario: str, run: str) -> str:
    return f"{params.experiment}-{scenario}-{run}"


def setup_mlflow(params: Params, lay: Layout) -> str:
    """Point mlflow at the tracking URI and return the experiment id (created once, with an absolute artifact root)."""
    import mlflow
    from mlflow import MlflowClient

    uri = lay.tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(params.experiment)
    if exp is not None:
        return exp.experiment_id
    # Through a server the server picks the artifact root (mlflow-artifacts:/); with a direct
    # sqlite/file store we fix it to <repo>/mlartifacts rather than "./mlruns of whoever came first".
    location = None if uri.startswith("http") else lay.artifact_root.as_uri()
    try:
        return client.create_experiment(params.experiment, artifact_location=location)
    except Exception:  # created concurrently by another stage
        exp = client.get_experiment_by_name(params.experiment)
        if exp is None:
            raise
        return exp.experiment_id


def register_model_version(
    *,
    name: str,
    model_file: Path,
    run_id: str,
    experiment_id: str,
    alias: str,
    tags: dict[str, str],
    params: dict[str, str] | None = None,
) -> dict:
    """Log model_file as a LoggedModel of run_id, register it as a new version of `name` with `alias`."""
    import mlflow
    from mlflow import MlflowClient

    import torch

    client = MlflowClient()
    state = torch.load(model_file, map_location="cpu", weights_only=True)  # also validates the file
    logged = mlflow.initialize_logged_model(
        name="model", source_run_id=run_id, params=params or {}, model_type="lifelong-state-dict",
        experiment_id=experiment_id, tags={k: v for k, v in tags.items() if v is not None},
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copy(model_file, Path(tmp) / MODEL_FILE)
            (Path(tmp) / CONFIG_FILE).write_text(json.dumps(state.get("config", {}), indent=2, sort_keys=True))
            client.log_model_artifacts(logged.model_id, tmp)
        mlflow.finalize_logged_model(logged.model_id, "READY")
    except BaseException:
        mlflow.finalize_logged_model(logged.model_id, "FAILED")
        raise

    mv = mlflow.register_model(f"models:/{logged.model_id}", name, await_registration_for=60)
    try:
        for key, value in tags.items():
            client.set_model_version_tag(name, mv.version, key, "" if value is None else str(value))
        client.set_registered_model_alias(name, alias, mv.version)
    except BaseException:
        # No version without its tags/alias: a failed stage leaves nothing registered behind.
        client.delete_model_version(name, mv.version)
        raise
    return {"model_name": name, "version": str(mv.version), "model_id": logged.model_id, "run_id": run_id,
            "alias": alias}


def download_model_version(name: str, version: str, dst: Path, *, stage_hint: str) -> Path:
    """Fetch a registered version's model file; a missing version is one error naming it and the stage to run."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient().get_model_version(name, str(version))
    except MlflowException:
        raise LookupError(
            f"registered model {name!r} version {version} is not in the MLflow registry at "
            f"{mlflow.get_tracking_uri()}; re-create it with `dvc repro -f {stage_hint}` "
            "(or point mlflow.tracking_uri at the registry that has it)"
        ) from None
    path = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=str(dst)))
    model_file = path / MODEL_FILE
    if not model_file.exists():
        raise LookupError(f"registered model {name!r} version {version} has no {MODEL_FILE}; "
                          f"re-create it with `dvc repro -f {stage_hint}`")
    return model_file
