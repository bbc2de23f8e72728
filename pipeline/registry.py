"""MLflow glue: the tracking server check, the experiment, and a model registry that never duplicates.

A registered generator is an MLflow pyfunc model (pipeline/pyfunc_model.py, logged as code) whose
weights are the trained state_dict file, loaded back with torch.load(weights_only=True); other models
(the classifier) are the state_dict file and its config. Never a pickled class.

Registration is idempotent. Every version carries the `run_key` tag of what produced it (the train
stage's key of its inputs); registering the same key again finds that version and completes whatever
step a killed attempt did not reach, in order: log the model, register it (tags set atomically with
the version), set the alias. So a rerun after a kill at any point ends with exactly one version.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

from pipeline.layout import Layout
from pipeline.params import Params
from pipeline.stackclient import client_env
from pipeline.tracking import RUN_KEY_TAG

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"
GENERATOR_FILE = "generator.json"
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
# The experiment opens on its runs (MLflow 3's UI shows GenAI traces for experiments without a kind).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
PREFLIGHT_TIMEOUT_S = 10


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server or store cannot be used: one line naming the URI and the fix."""


def model_name(params: Params, scenario: str, run: str) -> str:
    return f"{params.experiment}-{scenario}-{run}"


def failpoint(name: str) -> None:
    """Die here as `kill -9` would, when $LIFELONG_FAILPOINT names this point (the kill-injection tests)."""
    if os.environ.get("LIFELONG_FAILPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def setup_mlflow(params: Params, lay: Layout) -> str:
    """Point mlflow at the tracking URI, check it answers, and return the experiment id (created once,
    with an absolute artifact root when there is no server, and marked as a model-training experiment)."""
    import mlflow

    uri = lay.tracking_uri(params)
    for key, value in client_env(lay.root, uri).items():
        os.environ.setdefault(key, value)  # Ray workers get MLFLOW_* from this process (pipeline/task.py)
    mlflow.set_tracking_uri(uri)
    client, exp = preflight(uri, params.experiment)
    if exp is None:
        # Through a server the server picks the artifact root (mlflow-artifacts:/); with a direct
        # sqlite/file store we fix it to <repo>/mlartifacts rather than "./mlruns of whoever came first".
        location = None if uri.startswith("http") else lay.artifact_root.as_uri()
        try:
            client.create_experiment(params.experiment, artifact_location=location, tags=EXPERIMENT_KIND)
        except Exception:  # created concurrently by another stage
            pass
        exp = client.get_experiment_by_name(params.experiment)
        if exp is None:
            raise TrackingUnavailable(f"could not create experiment {params.experiment!r} at {uri}")
    for key, value in EXPERIMENT_KIND.items():
        if exp.tags.get(key) != value:
            client.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def preflight(uri: str, experiment: str):
    """A client of `uri` and the experiment (or None), asked once with no retries: an unreachable server, wrong credentials
    or a broken store is one TrackingUnavailable line within seconds, before any training starts."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    fix = ("start it (`lifelong stack up`), or set mlflow.tracking_uri in params.yaml / $MLFLOW_TRACKING_URI "
           "to a running server (null: the repository's sqlite mlflow.db)")
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            requests.get(uri.rstrip("/") + "/health", timeout=PREFLIGHT_TIMEOUT_S / 2).raise_for_status()
        except requests.RequestException as err:
            raise TrackingUnavailable(f"MLflow tracking server {uri} is unreachable ({type(err).__name__}); {fix}") from None
    elif "://" in uri and not uri.startswith(("sqlite:", "file:")):  # a database: MLflow would retry ~2 min
        import sqlalchemy

        scheme = uri.split("://", 1)[0]
        try:
            engine = sqlalchemy.create_engine(
                uri, connect_args={"connect_timeout": PREFLIGHT_TIMEOUT_S // 2} if "postgres" in scheme else {})
            with engine.connect():
                pass
            engine.dispose()
        except Exception as err:
            reason = str(getattr(err, "orig", None) or err).strip().splitlines()
            raise TrackingUnavailable(f"MLflow tracking store {_redact(uri)} is unreachable "
                                      f"({reason[0][:200] if reason else type(err).__name__}); {fix}") from None
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(PREFLIGHT_TIMEOUT_S))
    try:
        client = MlflowClient(uri)
        return client, client.get_experiment_by_name(experiment)
    except MlflowException as err:
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        if "401" in first or "403" in first or "credentials" in first.lower() or "permission" in first.lower():
            fix = ("set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (`set -a; . .stack/mlflow.env` "
                   "for `lifelong stack`)")
        raise TrackingUnavailable(f"MLflow tracking store {_redact(uri)} does not work: {first}; {fix}") from None
    except Exception as err:  # a driver missing, a path that cannot be created, ...
        raise TrackingUnavailable(f"MLflow tracking store {_redact(uri)} does not work: {type(err).__name__}: "
                                  f"{str(err).splitlines()[0][:300] if str(err) else ''}; {fix}") from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _redact(uri: str) -> str:
    """A URI without its password (it goes into error messages)."""
    import re

    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", uri)


def register_model_version(
    *,
    name: str,
    model_file: Path,
    run_id: str,
    experiment_id: str,
    alias: str,
    run_key: str,
    tags: dict[str, str],
    logged_name: str = "model",
    generator: dict | None = None,
) -> dict:
    """Register model_file as the version of `name` for `run_key`, with `tags` and `alias`; idempotent.

    generator: the defaults of pipeline/pyfunc_model.py (scenario, task, seed, batch_size, ddim_steps):
    the version is a loadable pyfunc generator. None: a plain state_dict + config (the classifier).
    """
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    tags = {k: "" if v is None else str(v) for k, v in {**tags, RUN_KEY_TAG: run_key}.items()}
    version = find_version(client, name, run_key)
    if version is None:
        model_id = _log_model(model_file, run_id=run_id, experiment_id=experiment_id, name=logged_name,
                              run_key=run_key, generator=generator)
        failpoint("after_log_model")
        version = mlflow.register_model(f"models:/{model_id}", name, await_registration_for=60, tags=tags)
        failpoint("after_register")
    else:
        model_id = version.source.removeprefix("models:/")
        for key, value in tags.items():  # a version from an older attempt: same key, same inputs
            if version.tags.get(key) is None:
                client.set_model_version_tag(name, version.version, key, value)
    failpoint("after_tags")
    client.set_registered_model_alias(name, alias, version.version)
    failpoint("after_alias")
    return {"model_name": name, "version": str(version.version), "model_id": model_id, "run_id": run_id,
            "alias": alias}


def find_version(client, name: str, run_key: str):
    """The registered version of `name` made for `run_key`, or None."""
    found = client.search_model_versions(f"name = '{name}' and tags.{RUN_KEY_TAG} = '{run_key}'")
    return min(found, key=lambda v: int(v.version)) if found else None


def _log_model(model_file: Path, *, run_id: str, experiment_id: str, name: str, run_key: str,
               generator: dict | None) -> str:
    """Log model_file as a LoggedModel of run_id; returns its model id."""
    import mlflow
    import torch

    state = torch.load(model_file, map_location="cpu", weights_only=True)  # also validates the file
    config = state.get("config", {})
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
        shutil.copy(model_file, Path(tmp) / MODEL_FILE)
        if generator is not None:
            (Path(tmp) / GENERATOR_FILE).write_text(json.dumps(generator, indent=2, sort_keys=True))
            info = mlflow.pyfunc.log_model(
                name=name, python_model=str(PYFUNC_CODE),
                artifacts={"model": str(Path(tmp) / MODEL_FILE), "generator": str(Path(tmp) / GENERATOR_FILE),
                           "config": str(Path(tmp) / CONFIG_FILE)},
                signature=_signature(generator, config), input_example=_input_example(generator, config),
                pip_requirements=_requirements(), tags={RUN_KEY_TAG: run_key}, model_type="lifelong-generator",
                params={k: str(v) for k, v in generator.items()},
            )
            return info.model_id
        logged = mlflow.initialize_logged_model(name=name, source_run_id=run_id, model_type="lifelong-state-dict",
                                                experiment_id=experiment_id, tags={RUN_KEY_TAG: run_key})
        try:
            mlflow.MlflowClient().log_model_artifacts(logged.model_id, tmp)
            mlflow.finalize_logged_model(logged.model_id, "READY")
        except BaseException:
            mlflow.finalize_logged_model(logged.model_id, "FAILED")
            raise
        return logged.model_id


def _signature(generator: dict, config: dict):
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec
    from mlflow.types.schema import Array

    size, channels = int(config["image_size_px"]), int(config.get("in_channels", 1))
    pixel = Array("double") if channels == 3 else "double"  # a condition is H x W, or H x W x 3 in RGB
    column = (ColSpec(Array(Array(pixel)), "condition") if generator["scenario"] == "image"
              else ColSpec("long", "class"))
    return ModelSignature(
        inputs=Schema([column]),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1, channels, size, size))]),
        params=ParamSchema([ParamSpec(key, "long", int(generator[key])) for key in ("seed", "batch_size", "ddim_steps")]),
    )


def _input_example(generator: dict, config: dict):
    import pandas as pd

    if generator["scenario"] == "image":
        size, channels = int(config["image_size_px"]), int(config.get("in_channels", 1))
        pixel = [0.0] * 3 if channels == 3 else 0.0
        return pd.DataFrame({"condition": [[[pixel] * size for _ in range(size)]]})
    return pd.DataFrame({"class": [int(c) for c in generator["classes"][:2]]})


def _requirements() -> list[str]:
    """Pinned to what trained it (no inference: MLflow's would import-trace the model in a subprocess)."""
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "torch", "numpy", "pandas", "diffusers")]


def check_model_version(name: str, version: str, *, stage_hint: str) -> None:
    """A missing version is one error naming it and the stage to run (asked before any worker starts)."""
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


def download_model_version(name: str, version: str, dst: Path, *, stage_hint: str) -> Path:
    """Fetch a registered version's weights file; a missing version is one error naming it and the stage to run."""
    import mlflow

    check_model_version(name, version, stage_hint=stage_hint)
    path = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=str(dst)))
    for model_file in (path / "artifacts" / MODEL_FILE, path / MODEL_FILE):  # pyfunc generator | state_dict
        if model_file.exists():
            return model_file
    raise LookupError(f"registered model {name!r} version {version} has no {MODEL_FILE}; "
                      f"re-create it with `dvc repro -f {stage_hint}`")


def fetch_model_version(name: str, version: str, model_id: str, *, stage_hint: str, cache: Path) -> Path:
    """`download_model_version` into this node's cache, once: `cache/<model_id>` (a logged model's id
    is unique across registries) appears only complete, renamed from a private download folder, so
    workers of the same node and later attempts reuse it."""
    done = cache / model_id
    if not done.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".{model_id}-"))
        try:
            download_model_version(name, version, tmp, stage_hint=stage_hint)
            try:
                os.replace(tmp, done)
            except OSError:  # another process of this node finished first: theirs is as good
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    for model_file in (done / "artifacts" / MODEL_FILE, done / MODEL_FILE):
        if model_file.exists():
            return model_file
    raise LookupError(f"{done} holds no {MODEL_FILE}; delete the folder and re-run `dvc repro`")
