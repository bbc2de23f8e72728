"""A registry that never duplicates, runs that end, and a tracking store that fails fast: real MLflow
(sqlite), a real generator file, and real `kill -9`s (pipeline.registry.failpoint) between the steps."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path

import pytest
import torch

from lifelong.learners import GANLearner
from lifelong.models.gan import GANConfig
from lifelong.training import TaskTrainConfig

REPO = Path(__file__).resolve().parents[2]
NAME = "t-label-gan-piggyback_gan"


def _stage(uri: str, model_file: Path, receipt: Path) -> None:
    """What the train stage does around registration ([4]-[7] of pipeline/train.py), on a given model file."""
    import mlflow

    from pipeline.registry import failpoint, register_model_version
    from pipeline.tracking import chain_run, task_run

    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("t")
    exp_id = exp.experiment_id if exp else client.create_experiment("t", artifact_location=receipt.with_name("art").as_uri())
    parent = chain_run(client, exp_id, scenario="label", run="gan-piggyback_gan", chain_key="chain", params={})
    tags = {"task": "1", "data_digest": "d1", "parent_version": ""}
    with task_run(exp_id, parent_id=parent, run_key="key1", name="label/gan-piggyback_gan/task-1", tags=tags) as run_id:
        mlflow.log_metric("train/loss", 1.0, step=1)
        out = register_model_version(
            name=NAME, model_file=model_file, run_id=run_id, experiment_id=exp_id, alias="task-1",
            run_key="key1", tags=tags, logged_name="gan-piggyback_gan-task1",
            generator={"scenario": "label", "run": "gan-piggyback_gan", "task": 1, "classes": [0, 1],
                       "seed": 1, "batch_size": 8, "ddim_steps": 2})
    failpoint("before_receipt")
    receipt.write_text(json.dumps(out))


def _fork_attempt(tmp_path: Path, model_file: Path, failpoint: str | None = None) -> int:
    """One attempt in a forked child: its exit code, or -signal if it was killed."""
    pid = os.fork()
    if pid == 0:  # the child: a stage process that may be killed at `failpoint`
        code = 1
        try:
            if failpoint:
                os.environ["LIFELONG_FAILPOINT"] = failpoint
            _stage(f"sqlite:///{tmp_path / 'mlflow.db'}", model_file, tmp_path / "receipt.json")
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


# The attempts fork from a driver process of their own (its own session; imports paid once), never
# from pytest's process, whose threads and state other tests shaped.
DRIVER = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tests.pipeline.test_registry import _fork_attempt
for line in sys.stdin:
    tmp, model, point = json.loads(line)
    print(json.dumps(_fork_attempt(Path(tmp), Path(model), point)), flush=True)
"""


@pytest.fixture(scope="module")
def driver():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "LIFELONG_"))}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(REPO)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env={**env, "MLFLOW_DISABLE_TELEMETRY": "true"}, start_new_session=True)
    yield proc
    proc.stdin.close()
    proc.wait(timeout=60)


def _attempt(driver, tmp_path: Path, model_file: Path, failpoint: str | None = None) -> int:
    driver.stdin.write(json.dumps([str(tmp_path), str(model_file), failpoint]) + "\n")
    driver.stdin.flush()
    line = driver.stdout.readline()
    assert line, f"the attempt driver died (exit {driver.poll()})"
    return json.loads(line)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """Task 1 of a tiny Piggyback GAN, exported as the worker writes final.pt."""
    cfg = TaskTrainConfig(method="piggyback_gan", family="gan", task_index=1, task_classes=[0, 1],
                          previous_classes=[], shards=[], checkpoint_dir=str(tmp_path_factory.mktemp("ck")), lr=1e-3,
                          model_config=GANConfig(condition="label", image_size_px=8, in_channels=1, num_classes=4,
                                                 z_dim=4, width=8).to_dict(),
                          options={"filter_ratio": 0.5})
    learner = GANLearner(cfg, cfg.task_info(), torch.device("cpu"), rank=0)
    path = tmp_path_factory.mktemp("model") / "final.pt"
    torch.save(learner.export(), path)
    return path


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow sqlite store with its tables made and nothing else in it. Making the tables is ~6-12 s
    of MLflow's schema migrations on a 2-core machine; each test copies this file instead (its own DB,
    still empty: the experiment, runs and versions are the attempts' own)."""
    import mlflow

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    client = mlflow.MlflowClient(f"sqlite:///{path}")
    assert [e.name for e in client.search_experiments()] == ["Default"]
    assert not list(path.parent.glob("mlflow.db-*"))  # no journal/WAL beside it: the file is the whole store
    return path


@pytest.fixture
def store(tmp_path, empty_store) -> Path:
    """This test's own MLflow sqlite store (tmp_path/mlflow.db), empty."""
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    return tmp_path / "mlflow.db"


# (after_tags: on a first attempt the tags come with register_model, the same state as after_register)
@pytest.mark.parametrize("point", ["after_log_model", "after_register", "after_alias", "before_receipt"])
def test_a_kill_at_any_step_then_a_rerun_leaves_exactly_one_version(driver, tmp_path, store, model_file, point):
    import mlflow

    assert _attempt(driver, tmp_path, model_file, failpoint=point) == -9  # kill -9 at that point
    assert not (tmp_path / "receipt.json").exists()
    assert _attempt(driver, tmp_path, model_file) == 0

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    versions = client.search_model_versions(f"name = '{NAME}'")
    assert len(versions) == 1, [(v.version, v.tags) for v in versions]
    receipt = json.loads((tmp_path / "receipt.json").read_text())
    v = client.get_model_version_by_alias(NAME, "task-1")
    assert str(v.version) == receipt["version"] == str(versions[0].version)
    assert v.tags["run_key"] == "key1" and v.tags["data_digest"] == "d1"
    # the killed attempt's run is ended as FAILED; the rerun's run finished; both under one parent
    exp = client.get_experiment_by_name("t")
    runs = client.search_runs([exp.experiment_id], "tags.run_key = 'key1'", order_by=["attributes.start_time ASC"])
    # (killed before the receipt, the task itself had finished: its run too)
    assert [r.info.status for r in runs] == ["FINISHED" if point == "before_receipt" else "FAILED", "FINISHED"]
    parents = client.search_runs([exp.experiment_id], "tags.`lifelong.chain_key` = 'chain'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parents[0].info.run_id}


def test_a_version_is_a_pyfunc_generator_loaded_in_a_fresh_process(driver, tmp_path, store, model_file):
    assert _attempt(driver, tmp_path, model_file) == 0
    code = textwrap.dedent(f"""
        import json, mlflow, pandas
        mlflow.set_tracking_uri("sqlite:///{tmp_path / 'mlflow.db'}")
        g = mlflow.pyfunc.load_model("models:/{NAME}@task-1")
        x = g.predict(pandas.DataFrame({{"class": [3, 3, 1]}}))
        y = g.predict(pandas.DataFrame({{"class": [3, 3, 1]}}))
        z = g.predict(pandas.DataFrame({{"class": [3, 3, 1]}}), params={{"seed": 5}})
        try:
            g.predict(pandas.DataFrame({{"class": [9]}}))
            err = None
        except Exception as e:
            err = str(e)
        print(json.dumps({{"dtype": str(x.dtype), "shape": list(x.shape), "min": float(x.min()), "max": float(x.max()),
                          "same_seed": bool((x == y).all()), "other_seed": bool((x == z).all()), "error": err,
                          "inputs": g.metadata.signature.inputs.input_names()}}))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**env, "MLFLOW_DISABLE_TELEMETRY": "true"})
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert (got["dtype"], got["shape"], got["inputs"]) == ("float32", [3, 1, 8, 8], ["class"])
    assert 0.0 <= got["min"] <= got["max"] <= 1.0
    assert got["same_seed"] and not got["other_seed"]  # the seed decides the noise, nothing else
    assert "class 9 is out of range" in got["error"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("uri", ["http://127.0.0.1:{port}", "postgresql://u:p@127.0.0.1:{port}/mlflow"])
def test_an_unreachable_tracking_store_is_one_line_naming_it_within_20_s(tmp_path, uri):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    uri = uri.format(port=_free_port())
    code = ("from pipeline.stage import run_stage\nfrom pipeline.params import load_params\n"
            "from pipeline.layout import layout\nfrom pipeline.registry import setup_mlflow\n"
            "run_stage(lambda: setup_mlflow(load_params(), layout()) and 0)")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "DVC_ROOT": str(tmp_path), "PYTHONPATH": str(REPO),
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    wall = time.time() - t0
    assert out.returncode == 2, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: MLflow tracking"), out.stderr[-3000:]
    assert uri.split("@")[-1].split("/")[0] in lines[0] and "lifelong stack up" in lines[0]
    assert wall < 20, wall
