"""The whole pipeline on tiny data: `lifelong repro` in a fresh git + DVC repository, a real local Ray
cluster with 2 DDP workers, real MLflow sqlite registry, real WebDataset shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.integration.conftest import BIN, run, stage_env, tiny_params
from tests.integration.ui import assert_ui_shows_the_chain

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

METRIC_KEYS = {"fid_final_mean", "kid_final_mean", "acc_final_mean", "div_final_mean", "forgetting_fid_mean", "bwt_fid",
               "forgetting_acc_mean", "bwt_acc", "noise_floor_fid", "noise_floor_kid", "noise_floor", "train_seconds",
               "teacher_passes", "class_kl_final",
               "params", "params_standalone", "n_seeds", "ci95", "matrix"}


def _client(repo):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}", registry_uri=f"sqlite:///{repo / 'mlflow.db'}")


def test_two_task_pipeline_with_ddp_registry_and_noop_rerun(clone, tmp_path):
    """Slow (about 6 min on 2 cores): 2 chains x 2 tasks through real DDP worker groups (~25 s each to
    start), then the UI in Chromium, a pyfunc load and the evaluation as a Ray task, each in a process of
    its own, and three cold `dvc repro`s. One chain serves all these checks."""
    repo = clone(tiny_params(train={"num_workers": 2}))
    out = run([str(BIN / "lifelong"), "repro"], repo)
    assert "Ray cluster for this run" in out.stdout  # one cluster for every train stage

    # The MLflow UI in headless Chromium shows this chain: its model, versions and loss curve.
    assert_ui_shows_the_chain(repo, tmp_path / "ui-check", "it-label-diffusion-finetune", {"task-1", "task-2"})

    # The chain: task 2 loaded exactly the version task 1 registered.
    client = _client(repo)
    for method in ("diffusion-finetune", "diffusion-generative_distillation"):
        name = f"it-label-{method}"
        r1 = json.loads((repo / f"results/receipts/label/{method}/task-1.json").read_text())
        r2 = json.loads((repo / f"results/receipts/label/{method}/task-2.json").read_text())
        v1 = client.get_model_version_by_alias(name, "task-1")
        v2 = client.get_model_version_by_alias(name, "task-2")
        assert (str(v1.version), str(v2.version)) == (r1["version"], r2["version"])
        assert v1.tags["parent_version"] == "" and v2.tags["parent_version"] == str(v1.version)
        for v in (v1, v2):
            assert set(v.tags) >= {"parent_version", "data_digest", "git_commit", "dvc_stage"}
            assert len(v.tags["git_commit"]) == 40 and v.tags["dvc_stage"].startswith(f"train_label_diffusion@{method}-task")
        run2 = client.get_run(r2["run_id"])
        assert [m.model_id for m in run2.inputs.model_inputs] == [r1["model_id"]]
        assert run2.data.params["train.num_workers"] == "2"
        assert run2.data.params["ray_local_mode"] == "False"
        # forgetting summary registered on the last version
        assert "forgetting_fid_mean" in v2.tags
        # One parent run per chain, the task runs nested under it; each task run was open while it
        # trained (its duration covers the training), with the losses logged live by rank 0 and
        # system metrics; the logged model is named after run and task.
        run1 = client.get_run(r1["run_id"])
        parent = client.get_run(r2["parent_run_id"])
        assert parent.info.run_name == f"label/{method}" and parent.info.status == "FINISHED"
        assert {run1.data.tags["mlflow.parentRunId"], run2.data.tags["mlflow.parentRunId"]} == {parent.info.run_id}
        assert parent.data.metrics["fid_final_mean"] == pytest.approx(json.loads(
            (repo / "results/metrics.json").read_text())["label"][method]["fid_final_mean"])
        for r, receipt in ((run1, r1), (run2, r2)):
            assert r.info.run_name == f"task-{receipt['task']} label/{method}" and r.info.status == "FINISHED"
            assert (r.info.end_time - r.info.start_time) / 1000 >= receipt["train_seconds"]
            assert [m.step for m in client.get_metric_history(r.info.run_id, "train/loss")] == [2, 4, 6]
            assert any(key.startswith("system/") for key in r.data.metrics), sorted(r.data.metrics)
        assert client.get_logged_model(r2["model_id"]).name == f"{method}-task2"
    exp = client.get_experiment_by_name("it")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on runs

    # A version loads as a pyfunc generator in a fresh process, with only the project installed.
    code = ("import json, mlflow, pandas; mlflow.set_tracking_uri('sqlite:///mlflow.db'); "
            "g = mlflow.pyfunc.load_model('models:/it-label-diffusion-generative_distillation@task-2'); "
            "x = g.predict(pandas.DataFrame({'class': [3, 3, 1]})); "
            "print(json.dumps([str(x.dtype), list(x.shape), float(x.min()), float(x.max())]))")
    dtype, shape, lo, hi = json.loads(run([sys.executable, "-c", code], repo).stdout.strip().splitlines()[-1])
    assert (dtype, shape) == ("float32", [3, 1, 8, 8]) and 0 <= lo <= hi <= 1

    # metrics.json: exactly the documented keys, a lower-triangular matrix per metric.
    metrics = json.loads((repo / "results/metrics.json").read_text())
    assert set(metrics) == {"label"}  # nested by scenario, then run
    assert set(metrics["label"]) == {"diffusion-finetune", "diffusion-generative_distillation"}
    for m in metrics["label"].values():
        assert set(m) == METRIC_KEYS
        assert m["n_seeds"] == 1 and all(v is None for v in m["ci95"].values())  # one seed: no interval
        for key in ("fid", "kid", "acc", "div"):
            mat = m["matrix"][key]
            assert mat[0][1] is None and all(v is not None for v in (mat[0][0], mat[1][0], mat[1][1]))
    assert (repo / "results/report.md").exists()
    assert any(p.suffix == ".png" for p in (repo / "results/plots").iterdir())

    # The evaluation as one Ray task (what train.use_gpu runs on a GPU node; asking for no GPU here):
    # it fetches the versions itself and gives the stage's own matrix.
    code = ("import json; from lifelong.data import read_all, task_shard_paths; "
            "from pipeline.evaluate import on_gpu_worker; from pipeline.layout import layout; "
            "from pipeline.params import load_params; lay, params = layout(), load_params(); "
            "rs = [json.loads(lay.receipt('label', 'diffusion-finetune', k).read_text()) for k in (1, 2)]; "
            "real = {j: read_all(task_shard_paths(lay.scenario_shards('label'), j, 'test')) for j in (1, 2)}; "
            "job = dict(params=params, scenario='label', run='diffusion-finetune', receipts=rs, real=real, "
            "classifier=lay.classifier.read_bytes(), tracking_uri='sqlite:///' + str(lay.root / 'mlflow.db')); "
            "print(json.dumps(on_gpu_worker(params, job, num_gpus=0)['matrix']))")
    remote = json.loads(run([sys.executable, "-c", code], repo).stdout.strip().splitlines()[-1])
    local = metrics["label"]["diffusion-finetune"]["matrix"]
    for key in ("fid", "kid", "acc"):
        for got, want in zip(sum(remote[key], []), sum(local[key], [])):
            assert got == want or got == pytest.approx(want, rel=1e-3, abs=1e-6), (key, remote[key], local[key])

    # Nothing changed: nothing runs, no new model versions.
    versions = len(client.search_model_versions("name='it-label-diffusion-finetune'"))
    again = run([str(BIN / "dvc"), "repro"], repo)
    assert "didn't change" in again.stdout or "up to date" in again.stdout.lower(), again.stdout
    assert "Running stage" not in again.stdout
    assert len(client.search_model_versions("name='it-label-diffusion-finetune'")) == versions

    # Changing only task 2's classes re-runs task 2 and later stages, not task 1.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["tasks"][1] = [2, 4]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([str(BIN / "dvc"), "repro", "prepare"], repo)
    stale = set(json.loads(run([str(BIN / "dvc"), "status", "--json"], repo).stdout))
    ft, gd = "train_label_diffusion@diffusion-finetune", "train_label_diffusion@diffusion-generative_distillation"
    assert {f"{ft}-task2", f"{gd}-task2"} <= stale, stale
    assert not stale & {f"{ft}-task1", f"{gd}-task1"}, stale

    # A missing registry version is one error naming the model, the version and the stage to run.
    r1 = json.loads((repo / "results/receipts/label/diffusion-finetune/task-1.json").read_text())
    client.delete_model_version("it-label-diffusion-finetune", r1["version"])
    bad = run([str(BIN / "dvc"), "repro", "-f", "-s", f"{ft}-task2"], repo, check=False)
    assert bad.returncode != 0
    assert f"'it-label-diffusion-finetune' version {r1['version']}" in bad.stderr + bad.stdout
    assert f"dvc repro -f {ft}-task1" in bad.stderr + bad.stdout
    # nothing half-registered
    assert len(client.search_model_versions("name='it-label-diffusion-finetune'")) == versions - 1


def test_interrupted_task_resumes_from_its_last_checkpoint(clone):
    """Slow (about 1.5 min): a cold `dvc repro` killed -9 mid-task, then a warm `lifelong repro` that
    resumes it."""
    params = tiny_params(train={"steps_per_task": 150, "checkpoint_every_steps": 5, "log_every_steps": 5})
    params["scenarios"]["label"] = {"runs": ["diffusion-finetune"]}
    params["data"]["tasks"] = [[0, 1]]
    if "tune" in params:
        params["tune"]["tasks"] = 1
    repo = clone(params)
    proc = subprocess.Popen([str(BIN / "dvc"), "repro"], cwd=repo, env=stage_env(), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    ckpt = None
    while time.time() < deadline and ckpt is None and proc.poll() is None:
        found = sorted((repo / "runs").glob("*/checkpoints/step-*.pt")) if (repo / "runs").exists() else []
        ckpt = found[-1] if found else None
        time.sleep(0.2)
    assert ckpt is not None, f"no checkpoint appeared; output:\n{proc.communicate()[0][-4000:]}"
    os.killpg(proc.pid, signal.SIGKILL)  # kill -9 the whole stage, mid-task
    proc.wait()
    receipt_path = repo / "results/receipts/label/diffusion-finetune/task-1.json"
    assert not receipt_path.exists()
    assert not (ckpt.parent / "final.pt").exists()

    out = run([str(BIN / "lifelong"), "repro"], repo)  # warm stages: the resume is what is tested here
    assert "resuming from step-" in out.stdout, out.stdout[-3000:]
    receipt = json.loads(receipt_path.read_text())
    client = _client(repo)
    name = "it-label-diffusion-finetune"
    assert str(client.get_model_version_by_alias(name, "task-1").version) == receipt["version"]
    assert len(client.search_model_versions(f"name='{name}'")) == 1  # trained and registered once
    # The loss curve in MLflow covers the whole task: before and after the kill.
    steps = sorted(m.step for m in client.get_metric_history(receipt["run_id"], "train/loss"))
    assert steps[0] == 5 and steps[-1] == 150
    # The killed attempt's run, left RUNNING by kill -9, was ended as FAILED by the rerun.
    exp = client.get_experiment_by_name("it")
    runs = client.search_runs([exp.experiment_id], f"tags.run_key = '{receipt['run_key']}'",
                              order_by=["attributes.start_time ASC"])
    assert [r.info.status for r in runs] == ["FAILED", "FINISHED"]
