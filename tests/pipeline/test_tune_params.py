"""tune: in params.yaml: a bad search space is one error naming its key path, before anything starts."""

import pytest
import yaml

from pipeline.params import ParamsError, parse_params


@pytest.fixture
def raw():
    with open("params.yaml") as f:
        return yaml.safe_load(f)


def _error(raw) -> str:
    with pytest.raises(ParamsError) as exc:
        parse_params(raw)
    return str(exc.value)


def test_repository_tune_section_is_valid(raw):
    p = parse_params(raw)
    assert p.tune.method == "generative_distillation" and p.train.use_tuned is False
    assert set(p.tune.space) == {"distill.weight", "distill.replay_ddim_steps"}


@pytest.mark.parametrize(
    "space, method, path, words",
    [
        ({"distill.wieght": {"type": "uniform", "low": 0.1, "high": 1}}, None, "tune.space.distill.wieght",
         "unknown parameter"),
        ({"distill.weight": {"type": "uniform", "low": 2, "high": 1}}, None, "tune.space.distill.weight", "empty range"),
        ({"distill.weight": {"type": "loguniform", "low": 0, "high": 1}}, None, "tune.space.distill.weight", "low > 0"),
        ({"distill.replay_ddim_steps": {"type": "choice", "values": []}}, None,
         "tune.space.distill.replay_ddim_steps", "empty choice"),
        ({"distill.replay_ddim_steps": {"type": "uniform", "low": 1, "high": 5}}, None,
         "tune.space.distill.replay_ddim_steps", "integer parameter"),
        ({"distill.replay_ddim_steps": {"type": "choice", "values": [0, 2]}}, None,
         "tune.space.distill.replay_ddim_steps", "not allowed"),
        ({"distill.weight": {"type": "loguniform", "low": 0.1, "high": 10}}, "finetune", "tune.space.distill.weight",
         "does not use"),
        ({"distill.weight": {"type": "gaussian", "low": 0.1, "high": 10}}, None, "tune.space.distill.weight.type",
         "loguniform"),
        ({}, None, "tune.space", "empty"),
        ({"train.lr": {"type": "grid", "values": [0.1, 0.2]}}, None, "tune.space.train.lr", "search_alg: random"),
    ],
)
def test_bad_space_names_the_key(raw, space, method, path, words):
    raw["tune"]["space"] = space
    if method:
        raw["tune"]["method"] = method
    msg = _error(raw)
    assert f"{path}:" in msg and words in msg, msg


def test_lr_is_tunable_for_every_method(raw):
    raw["tune"].update(method="joint", space={"train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}})
    assert parse_params(raw).tune.method == "joint"


@pytest.mark.parametrize(
    "edit, path",
    [
        (dict(method="distilation"), "tune.method"),
        (dict(tasks=9), "tune.tasks"),
        (dict(eval_every_steps=500), "tune.eval_every_steps"),
        (dict(scheduler="hyperband"), "tune.scheduler"),
        (dict(search_alg="grid"), "tune.search_alg"),
        (dict(objective="weighted", tasks=1), "tune.objective"),
    ],
)
def test_bad_tune_settings_name_the_key(raw, edit, path):
    raw["tune"].update(edit)
    assert f"{path}:" in _error(raw)


def test_a_method_outside_methods_can_be_tuned(raw):
    raw["scenarios"]["label"]["runs"] = ["diffusion-finetune"]
    assert parse_params(raw).tune.method == "generative_distillation"
