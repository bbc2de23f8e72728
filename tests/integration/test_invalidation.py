"""Change one thing, re-run only what it touches: real DVC, real MLflow sqlite, real stages, in a fresh
git + DVC clone. Run chains side by side (`lifelong repro -j 2`) without losing or doubling a
registry write; a typo'd key loses nothing; editing data.tasks alone re-plans the train stages."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.integration.conftest import BIN, run, tiny_params

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

LABEL_RUNS = ["diffusion-finetune", "gan-lifelong_gan", "gan-piggyback_gan"]


def _client(repo):
    from mlflow import MlflowClient

    uri = f"sqlite:///{repo / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _stale(repo) -> set[str]:
    return set(json.loads(run([str(BIN / "dvc"), "status", "--json"], repo).stdout))


def _trains(stages: set[str]) -> set[str]:
    return {s for s in stages if s.startswith("train_")}


def _edit(repo, edit) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    edit(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _versions(client, name: str) -> list[int]:
    return sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))


def test_change_one_thing_reruns_only_what_it_touches(clone):
    """Slow (about 3 min): 3 chains trained side by side, then each edit's `dvc status` and the reruns
    it calls for, on the same clone in turn (each edit starts from what the one before left)."""
    params = tiny_params()
    params["scenarios"] = {"label": {"runs": LABEL_RUNS}, "image": {"runs": []}}
    repo = clone(params)
    out = run([str(BIN / "lifelong"), "repro", "-j", "2"], repo)
    assert "up to 2 at once" in out.stdout, out.stdout[-3000:]

    # Concurrent chains on the sqlite default: exactly one version per task per run, aliased.
    client = _client(repo)
    for r in LABEL_RUNS:
        name = f"it-label-{r}"
        assert _versions(client, name) == [1, 2], name
        for k in (1, 2):
            receipt = json.loads((repo / f"results/receipts/label/{r}/task-{k}.json").read_text())
            assert str(client.get_model_version_by_alias(name, f"task-{k}").version) == receipt["version"]
    assert _stale(repo) == set()

    # lifelong_gan.beta: only the gan-lifelong_gan train stages (and `check`, which reads every key) ...
    _edit(repo, lambda p: p["lifelong_gan"].update(beta=2.0))
    stale = _stale(repo)
    assert _trains(stale) == {"train_label_gan@gan-lifelong_gan-task1", "train_label_gan@gan-lifelong_gan-task2"}
    assert stale - _trains(stale) == {"check"}, stale
    # ... and a repro runs those, their evaluation and the report: one new version per task of that run
    # (`lifelong repro -j 1`: one `dvc repro` in DVC's own order, each stage forked warm from the stage
    # server instead of paying its imports cold; plain `dvc repro` is exercised below)
    out = run([str(BIN / "lifelong"), "repro", "-j", "1"], repo).stdout
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"check", "train_label_gan@gan-lifelong_gan-task1", "train_label_gan@gan-lifelong_gan-task2",
                   "evaluate_label@gan-lifelong_gan", "report"}, ran
    assert _versions(client, "it-label-gan-lifelong_gan") == [1, 2, 3, 4]
    assert _versions(client, "it-label-gan-piggyback_gan") == [1, 2]
    original = (repo / "params.yaml").read_text()

    # gan.lr: every GAN train stage, no diffusion stage.
    (repo / "params.yaml").write_text(original)
    _edit(repo, lambda p: p["gan"].update(lr=1e-3))
    trains = _trains(_stale(repo))
    assert trains == {f"train_label_gan@{r}-task{k}" for r in LABEL_RUNS[1:] for k in (1, 2)}, trains

    # An operational key: no train stage; a repro runs `check` only and trains nothing.
    (repo / "params.yaml").write_text(original)
    _edit(repo, lambda p: p["train"].update(log_every_steps=1, checkpoint_every_steps=1, max_failures=3,
                                            loader_workers=1, cpus_per_worker=2))
    assert _stale(repo) == {"check"}
    out = run([str(BIN / "dvc"), "repro"], repo)
    assert "Running stage 'check'" in out.stdout and "Running stage 'train_" not in out.stdout, out.stdout
    assert _stale(repo) == set()

    # A typo'd key with plain `dvc repro`: the check fails first, nothing is deleted or retrained;
    # after the fix, dvc status is clean at once and the registry holds no extra version. (The edit
    # goes on top of the params just reproduced, where nothing is stale: no extra repro to get back.)
    clean = (repo / "params.yaml").read_text()
    receipts = {p: p.read_bytes() for p in (repo / "results/receipts").rglob("*.json")}
    _edit(repo, lambda p: p["lifelong_gan"].update(betta=2.0))
    bad = run([str(BIN / "dvc"), "repro"], repo, check=False)
    assert bad.returncode != 0
    assert "lifelong_gan.betta: unknown key" in bad.stdout + bad.stderr
    assert {p: p.read_bytes() for p in (repo / "results/receipts").rglob("*.json")} == receipts
    (repo / "params.yaml").write_text(clean)
    assert _stale(repo) == set()
    out = run([str(BIN / "dvc"), "repro"], repo)
    assert "Running stage" not in out.stdout, out.stdout
    for r in LABEL_RUNS:
        assert len(_versions(client, f"it-label-{r}")) == (4 if r == "gan-lifelong_gan" else 2)

    # eval.seeds: a second training seed adds each run's `-seed1` chain and changes nothing already run
    # (the evaluation stages depend on every eval key but this one).
    _edit(repo, lambda p: p["eval"].update(seeds=2))
    run([str(BIN / "lifelong"), "plan"], repo)
    stale = _stale(repo)
    chains = {f"{r}-seed1" for r in LABEL_RUNS}
    assert stale == {"check", "report"} | {f"start_label@{c}" for c in chains} | {f"evaluate_label@{c}" for c in chains} \
        | {f"train_label_{c.split('-')[0]}@{c}-task{k}" for c in chains for k in (1, 2)}, stale
    (repo / "params.yaml").write_text(clean)
    run([str(BIN / "lifelong"), "plan"], repo)

    # data.tasks is the only edit that changes the task sequence: `lifelong repro` re-plans the stages
    # (here with a target, so it runs only `check` and `prepare`: task 3's stages are then due).
    _edit(repo, lambda p: p["data"].update(tasks=[[3, 2], [1], [0]]))
    run([str(BIN / "lifelong"), "repro", "prepare"], repo)
    stale = _stale(repo)
    for r in LABEL_RUNS:
        assert f"train_label_{r.split('-')[0]}@{r}-task3" in stale, stale


def test_plain_dvc_repro_replans_a_changed_task_sequence(clone):
    params = tiny_params()
    params["scenarios"] = {"label": {"runs": ["gan-finetune"]}, "image": {"runs": []}}
    repo = clone(params)
    _edit(repo, lambda p: p["data"].update(tasks=[[0], [1], [2]]))
    first = run([str(BIN / "dvc"), "repro"], repo, check=False)
    assert first.returncode != 0
    assert "run `dvc repro` again" in first.stdout + first.stderr
    assert "Running stage 'train_" not in first.stdout  # nothing ran on the stale plan
    # the next `dvc repro` reads the rewritten plan: task 3 is a stage now
    assert "train_label_gan@gan-finetune-task3" in _stale(repo)
    assert "lifelong_gan" not in (repo / "pipeline/stages.yaml").read_text()
