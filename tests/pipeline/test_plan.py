"""What invalidates what: the train stages of dvc.yaml depend on exactly pipeline/plan.py's keys, and
the derived stage plan follows data.tasks / image_data.tasks / scenarios.*.runs."""

import copy

import pytest
import yaml

from lifelong.catalog import CATALOG
from pipeline.params import Params, TrainParams, parse_params
from pipeline.plan import OPERATIONAL_KEYS, PLAN_FILE, RESULT_KEYS, render, result_keys, result_values, stage_plan
from pipeline.task import budget


@pytest.fixture
def raw():
    with open("params.yaml") as f:
        return yaml.safe_load(f)


def _dvc_stages():
    with open("dvc.yaml") as f:
        return yaml.safe_load(f)["stages"]  # anchors (&gan_keys) are resolved by the YAML loader


@pytest.mark.parametrize("stage, family", [("train_label_diffusion", "diffusion"), ("train_label_gan", "gan"),
                                           ("train_image_gan", "gan")])
def test_train_stages_declare_exactly_the_result_keys(stage, family):
    do = _dvc_stages()[stage]["do"]
    assert do["params"] == [*RESULT_KEYS[family], "${item.options}"]
    assert stage.split("_")[1] in _dvc_stages()[stage]["foreach"]  # ${plan.<scenario>.<family>}


def test_every_train_key_is_either_a_result_or_operational():
    train_result = {k for keys in RESULT_KEYS.values() for k in keys if k.startswith("train.")}
    operational = {k for k in OPERATIONAL_KEYS if k.startswith("train.")}
    assert not train_result & operational
    # use_tuned reaches the train stages through results/tune/applied/<run>.json
    assert train_result | operational | {"train.use_tuned"} == {f"train.{k}" for k in TrainParams.model_fields}
    assert {k.split(".")[0] for k in OPERATIONAL_KEYS if "." not in k} <= set(Params.model_fields)


def test_a_run_depends_on_its_own_method_section_only():
    assert "lifelong_gan" in result_keys("gan-lifelong_gan")
    assert not {"piggyback_gan", "distill", "model", "train.lr"} & set(result_keys("gan-lifelong_gan"))
    assert "distill" in result_keys("diffusion-generative_distillation")
    assert not {"gan", "lifelong_gan", "distill"} & set(result_keys("diffusion-finetune"))
    for family, methods in CATALOG.items():
        for spec in methods.values():
            for key in result_keys(spec.run):
                assert key.split(".")[0] in Params.model_fields


def test_result_values_ignore_operational_keys(raw):
    before = result_values(parse_params(raw), "gan-lifelong_gan")
    edited = copy.deepcopy(raw)
    edited["train"].update(log_every_steps=3, checkpoint_every_steps=7, max_failures=5, loader_workers=2,
                           cpus_per_worker=2)
    edited["storage"] = {"uri": "s3://bucket/lifelong"}
    edited["piggyback_gan"]["filter_ratio"] = 0.5
    edited["distill"]["weight"] = 9.0
    assert result_values(parse_params(edited), "gan-lifelong_gan") == before
    edited["lifelong_gan"]["beta"] = 2.0
    assert result_values(parse_params(edited), "gan-lifelong_gan")["lifelong_gan"]["beta"] == 2.0


def test_budget_passes_the_method_knobs_under_their_params_names(raw):
    p = parse_params(raw)
    assert budget(p, "gan-lifelong_gan")["options"] == {"beta": 1.0, "auxiliary": "both"}
    assert budget(p, "gan-piggyback_gan")["options"] == {"filter_ratio": 0.25, "warm_start": True}
    assert budget(p, "diffusion-generative_replay")["options"] == {"weight": 1.0, "replay_ddim_steps": 2}
    assert budget(p, "gan-finetune")["options"] == {}
    assert budget(p, "gan-finetune")["steps"] == p.gan.steps_per_task
    assert budget(p, "diffusion-finetune")["steps"] == p.train.steps_per_task


def test_the_plan_follows_data_tasks_alone(raw):
    raw["data"]["tasks"] = [[9, 8, 7], [6, 5], [4, 3, 2, 1, 0]]
    raw["scenarios"] = {"label": {"runs": "all"}, "image": {"runs": "all"}}  # the full method matrix
    plan = stage_plan(parse_params(raw))["plan"]
    label = plan["label"]["gan"]
    assert [k for k in label if k.startswith("gan-lifelong_gan")] == [f"gan-lifelong_gan-task{k}" for k in (1, 2, 3)]
    assert label["gan-lifelong_gan-task3"] == {"chain": "gan-lifelong_gan", "run": "gan-lifelong_gan", "task": 3,
                                               "prev": 2, "options": "lifelong_gan"}
    assert plan["label"]["diffusion"]["diffusion-finetune-task1"]["options"] == "model"
    assert len(plan["image"]["gan"]) == 5 * 4  # image_data.tasks unchanged
    raw["scenarios"]["image"]["runs"] = []
    assert parse_params(raw) and stage_plan(parse_params(raw))["plan"]["image"] == {"gan": {}}


def test_each_training_seed_is_a_chain_of_its_own_named_after_the_run(raw):
    from pipeline.params import chain_name, split_chain
    from pipeline.plan import chain_stages, stage_name

    raw["data"]["tasks"] = [[0, 1], [2, 3]]
    raw["scenarios"] = {"label": {"runs": ["gan-lifelong_gan"]}, "image": {"runs": []}}
    raw["eval"]["seeds"] = 3
    params = parse_params(raw)
    plan = stage_plan(params)
    assert plan["chains"] == {"label": ["gan-lifelong_gan", "gan-lifelong_gan-seed1", "gan-lifelong_gan-seed2"],
                              "image": []}
    assert plan["plan"]["label"]["gan"]["gan-lifelong_gan-seed2-task2"] == {
        "chain": "gan-lifelong_gan-seed2", "run": "gan-lifelong_gan", "task": 2, "prev": 1, "options": "lifelong_gan"}
    assert len(plan["plan"]["label"]["gan"]) == 3 * 2
    assert [split_chain(c) for c in plan["chains"]["label"]] == [("gan-lifelong_gan", i) for i in range(3)]
    assert chain_name("gan-lifelong_gan", 0) == "gan-lifelong_gan" and split_chain("diffusion-joint") == ("diffusion-joint", 0)
    assert stage_name("label", "gan-lifelong_gan-seed1", 2) == "train_label_gan@gan-lifelong_gan-seed1-task2"
    assert chain_stages(params, "label", "gan-lifelong_gan-seed1")[0] == "start_label@gan-lifelong_gan-seed1"
    # the chain of seed index i trains with seed + i, and so is keyed apart from the others
    assert params.with_seed_index(2).seed == params.seed + 2
    assert result_values(params.with_seed_index(1), "gan-lifelong_gan") != result_values(params, "gan-lifelong_gan")


def test_the_committed_plan_is_current(raw):
    with open(PLAN_FILE) as f:
        assert f.read() == render(parse_params(raw)), "run `lifelong plan` and commit pipeline/stages.yaml"
