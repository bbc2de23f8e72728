"""params.yaml validation: every bad input is one error naming the key path and what is allowed."""

import copy

import pytest
import yaml

from pipeline.params import METHOD_NAMES, ParamsError, chain_for, load_params, parse_params


@pytest.fixture
def raw():
    with open("params.yaml") as f:
        return yaml.safe_load(f)


def test_repository_params_are_valid():
    p = load_params("params.yaml")
    assert p.num_tasks == 5 and p.num_classes == 10
    assert [m for m in p.methods] == list(METHOD_NAMES)


def test_method_names_match_the_library_registry():
    from lifelong.methods import METHODS

    assert set(METHOD_NAMES) == set(METHODS)


def _error(raw) -> str:
    with pytest.raises(ParamsError) as exc:
        parse_params(raw)
    return str(exc.value)


@pytest.mark.parametrize(
    "edit, path, words",
    [
        (lambda r: r.update(methods=["finetune", "distilation"]), "methods", "finetune, joint"),
        (lambda r: r["data"].update(tasks=[[0, 1], [1, 2]]), "data.tasks", "more than one task"),
        (lambda r: r["data"].update(tasks=[[0, 1], []]), "data.tasks", "empty"),
        (lambda r: r["data"].update(tasks=[[0, -1]]), "data.tasks", "non-negative"),
        (lambda r: r["train"].update(steps_per_task=0), "train.steps_per_task", "greater than 0"),
        (lambda r: r["train"].update(stepz_per_task=10), "train.stepz_per_task", "unknown key"),
        (lambda r: r.update(trian={}), "trian", "unknown key"),
        (lambda r: r["train"].update(storage_path="runs"), "train.storage_path", "absolute"),
        (lambda r: r["eval"].update(feature_extractor="vgg"), "eval.feature_extractor", "lifelong-cnn"),
        (lambda r: r.update(task_chain=chain_for(4)), "task_chain", "lifelong chain"),
    ],
)
def test_bad_params_name_the_key(raw, edit, path, words):
    bad = copy.deepcopy(raw)
    edit(bad)
    msg = _error(bad)
    assert f"  {path}" in msg, msg
    assert words in msg, msg


def test_out_of_range_class_is_reported_by_prepare_not_silently_dropped(raw, tmp_path, monkeypatch):
    # Classes beyond the dataset are only knowable with the data: prepare names them (see test_prepare).
    bad = copy.deepcopy(raw)
    bad["data"]["tasks"] = [[0, 1], [2, 12]]
    bad["task_chain"] = chain_for(2)
    assert parse_params(bad).num_classes == 13
