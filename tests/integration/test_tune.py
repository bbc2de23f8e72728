"""The search stage on tiny data: real Ray Tune (ASHA) over real Ray Train workers, MLflow sqlite,
in a fresh git + DVC clone; then a train stage that picks the best config up (train.use_tuned)."""

from __future__ import annotations

import hashlib
import json
import shutil
import time

import pytest
import yaml

from tests.integration.conftest import BIN, REPO, make_clone, run, tiny_params

# serial: when ASHA stops a trial, the placement group of the trial's Ray Train worker group is left to
# Ray's cleaner; with another test loading the 2 cores it was not removed and the next trial waited for
# it until the stage's 900 s timeout (seen once under `pytest -n 2`: 2 of 2 CPUs reserved, 0 used).
pytestmark = [pytest.mark.integration, pytest.mark.serial, pytest.mark.timeout(1200)]

METHOD = "generative_distillation"
STAGE = f"train_label_diffusion@diffusion-{METHOD}"
# A grid in a fixed order, so the early stop is not left to chance: the first trial trains with a
# sensible lr and sets the bar at ASHA's first rung; the later ones barely move from their
# initialisation, fall below it and are stopped there (ties never stop a trial, distinct values do).
TUNE = {
    "method": METHOD, "tasks": 2, "steps_per_task": 20, "eval_every_steps": 5, "grace_period_steps": 5,
    "reduction_factor": 2, "num_samples": 1, "max_concurrent": 1, "scheduler": "asha", "search_alg": "random",
    "samples_per_class": 8, "ddim_steps": 2,
    "space": {METHOD: {"train.lr": {"type": "grid", "values": [0.003, 1.0e-6, 1.0e-7]},
                       "distill.weight": {"type": "loguniform", "low": 0.1, "high": 10}}},
}


def _client(repo):
    from mlflow import MlflowClient

    uri = f"sqlite:///{repo / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _stale(repo) -> set[str]:
    return set(json.loads(run([str(BIN / "dvc"), "status", "--json"], repo).stdout))


def test_tiny_search_asha_mlflow_and_use_tuned(tmp_path):
    """Slow (about 5 min): 3 trials x 2 tasks, each task a Ray Train worker group of its own inside a Tune
    trial (the search as a cluster runs it), run one at a time so that ASHA's early stop is not left to
    chance."""
    repo = make_clone(tmp_path / "repo", tiny_params(tune=TUNE))
    (repo / "tune").mkdir()
    shutil.copy(REPO / "tune" / "dvc.yaml", repo / "tune" / "dvc.yaml")
    dvc = str(BIN / "dvc")
    # check, prepare, tuned ({} per run), one train stage: forked warm from `lifelong repro`'s stage server
    run([str(BIN / "lifelong"), "repro", f"{STAGE}-task1"], repo)
    assert json.loads((repo / f"results/tune/applied/diffusion-{METHOD}.json").read_text()) == {}
    stale_before = _stale(repo)
    assert f"{STAGE}-task1" not in stale_before

    t0 = time.time()
    out = run([dvc, "repro", "tune/dvc.yaml"], repo)
    print(f"search: {time.time() - t0:.0f}s\n{out.stdout[-2000:]}")

    # The trial table: 3 trials (the grid), at least one stopped early by ASHA at a rung.
    result = json.loads((repo / f"results/tune/{METHOD}.json").read_text())
    trials = result["trials"]
    assert len(trials) == 3 and not any(t["error"] for t in trials), trials
    assert sorted(t["config"]["train.lr"] for t in trials) == sorted(TUNE["space"][METHOD]["train.lr"]["values"])
    early = [t for t in trials if t["stopped_early"]]
    assert early and all(t["steps"] < 20 for t in early), trials
    assert any(t["steps"] == 20 for t in trials)
    best = result["best"]
    assert set(best["config"]) == {"train.lr", "distill.weight"} and best["objective"] > 0
    assert best["trial_id"] in {t["trial_id"] for t in trials if not t["stopped_early"]}
    assert (repo / f"results/tune/{METHOD}.png").stat().st_size > 0

    # MLflow: a parent run with the best tagged, one nested run per trial with its objective curve.
    client = _client(repo)
    exp = client.get_experiment_by_name("it")
    parents = client.search_runs([exp.experiment_id], f"tags.kind = 'tune' and tags.method = '{METHOD}'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.tags["best.trial_id"] == best["trial_id"]
    assert float(parent.data.tags["best.distill.weight"]) == pytest.approx(best["config"]["distill.weight"])
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 3
    assert {c.data.tags["status"] for c in children} >= {"terminated", "stopped_early"}
    full = next(c for c in children if c.data.tags["trial_id"] == best["trial_id"])
    curve = client.get_metric_history(full.info.run_id, "objective")
    assert [m.step for m in curve] == [5, 10, 15, 20]

    # use_tuned false: a search never makes a train stage stale. (It did run `classifier`, its dependency.)
    trains = lambda stages: {s for s in stages if s.startswith("train_")}  # noqa: E731
    assert trains(_stale(repo)) == trains(stale_before)
    assert "tune/dvc.yaml:tune" not in _stale(repo)

    # use_tuned true: `tuned` picks the best config; only the tuned run's file changes, so only its train
    # stage is stale. (Training with it, and the run's logged params: the GAN search test below.)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["use_tuned"] = True
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([dvc, "repro", "tuned"], repo)
    assert trains(_stale(repo)) - trains(stale_before) == {f"{STAGE}-task1"}
    applied = json.loads((repo / f"results/tune/applied/diffusion-{METHOD}.json").read_text())
    assert json.loads((repo / "results/tune/applied/diffusion-finetune.json").read_text()) == {}
    assert applied["method"] == METHOD and applied["config"] == best["config"]


def test_use_tuned_without_a_search_fails_clearly(tmp_path):
    params = tiny_params(tune=TUNE)
    params["train"]["use_tuned"] = True
    repo = make_clone(tmp_path / "repo", params)
    res = run([str(BIN / "dvc"), "repro", "tuned"], repo, check=False)
    assert res.returncode != 0
    assert f"results/tune/{METHOD}.json not found" in res.stdout + res.stderr
    assert "dvc repro tune/dvc.yaml" in res.stdout + res.stderr


def test_gan_search_on_an_s3_root_piggyback_filter_ratio_and_use_tuned(tmp_path, s3_root):
    """A GAN run through the same search, on an S3 storage root (a cluster's `storage.uri`): trials read
    the shards and the classifier published there and keep their Train runs there. piggyback_gan's filter
    ratio, its objective measured on every seen task with that task's own filters, and the train stage
    of gan-piggyback_gan picking it up.

    Slow (about 4 min): SeaweedFS, 2 trials x 2 tasks of Ray Train worker groups, then the tuned train stage."""
    env, s3, bucket = s3_root
    run_name = "gan-piggyback_gan"
    stage = f"train_label_gan@{run_name}-task1"
    tune = dict(TUNE, method=run_name, steps_per_task=6, eval_every_steps=3, grace_period_steps=3, num_samples=1,
                scheduler="fifo",
                space={run_name: {"piggyback_gan.filter_ratio": {"type": "grid", "values": [0.25, 0.5]}}})
    params = tiny_params(tune=tune, storage={"uri": f"s3://{bucket}/it"})
    params["scenarios"]["label"]["runs"] = [run_name]
    repo = make_clone(tmp_path / "repo", params)
    (repo / "tune").mkdir()
    shutil.copy(REPO / "tune" / "dvc.yaml", repo / "tune" / "dvc.yaml")
    # The search and what it needs (check, prepare, classifier), forked warm from `lifelong repro`'s stage
    # server (the plain `dvc repro tune/dvc.yaml` of a search is the test above)
    run([str(BIN / "lifelong"), "repro", "tune/dvc.yaml"], repo, env=env)

    result = json.loads((repo / f"results/tune/{run_name}.json").read_text())
    trials = result["trials"]
    assert len(trials) == 2 and not any(t["error"] for t in trials), trials
    assert sorted(t["config"]["piggyback_gan.filter_ratio"] for t in trials) == [0.25, 0.5]
    assert all(t["steps"] == 6 and t["objective"] > 0 for t in trials), trials
    best = result["best"]["config"]["piggyback_gan.filter_ratio"]

    # What the trials read and wrote is on the root: the tasks' shards (by content) and the classifier,
    # the search's own state; its trials' Train runs were removed once the search ended. Nothing local.
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="it/")
            for o in page.get("Contents", [])]
    label_shards = sorted((repo / "data/shards").glob("task-*/*.tar"))
    assert {f"it/shards/{hashlib.sha256(p.read_bytes()).hexdigest()}.tar" for p in label_shards} <= set(keys)
    assert f"it/models/{hashlib.sha256((repo / 'models/classifier.pt').read_bytes()).hexdigest()}.pt" in keys
    assert any(k.startswith(f"it/runs/tune-{run_name}/search/") for k in keys), keys
    assert not any(k.startswith(f"it/runs/tune-{run_name}/train/") for k in keys)
    assert not list(repo.glob("runs/tune-*"))

    # Editing another method's space does not make this search stale.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["tune"]["space"]["gan-lifelong_gan"] = {"lifelong_gan.beta": {"type": "uniform", "low": 0.5, "high": 2}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "tune/dvc.yaml:tune" not in _stale(repo)

    params["train"]["use_tuned"] = True
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([str(BIN / "lifelong"), "repro", stage], repo, env=env)
    applied = json.loads((repo / f"results/tune/applied/{run_name}.json").read_text())
    assert applied["run"] == run_name and applied["config"] == result["best"]["config"]
    receipt = json.loads((repo / f"results/receipts/label/{run_name}/task-1.json").read_text())
    run_params = _client(repo).get_run(receipt["run_id"]).data.params
    assert run_params["tuned"] == "True"
    assert float(run_params["piggyback_gan.filter_ratio"]) == pytest.approx(best)
