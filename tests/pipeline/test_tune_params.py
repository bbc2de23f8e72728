"""tune: in params.yaml: a bad search space is one error naming its key path, before anything starts."""

import pytest
import yaml

from pipeline.params import TUNABLE, ParamsError, parse_params, tune_run, with_values


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
    assert set(p.tune.method_space) == {"distill.weight", "distill.replay_ddim_steps"}
    # every GAN method with something to tune has a space ready: `-S tune.method=gan-lifelong_gan` just works
    for method in ("gan-lifelong_gan", "gan-piggyback_gan", "generative_replay"):
        raw["tune"]["method"] = method
        assert parse_params(raw).tune.method_space


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
        ({}, None, "tune.space", "no search space"),
        ({"lifelong_gan.beta": {"type": "loguniform", "low": 0.1, "high": 10}}, "gan-piggyback_gan",
         "tune.space.lifelong_gan.beta", "does not use"),
        ({"train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}, "gan-lifelong_gan", "tune.space.train.lr",
         "does not use"),  # GANs have their own lr: gan.lr
        ({"piggyback_gan.filter_ratio": {"type": "uniform", "low": 0.1, "high": 1.5}}, "gan-piggyback_gan",
         "tune.space.piggyback_gan.filter_ratio", "not allowed"),
        ({"train.lr": {"type": "grid", "values": [0.1, 0.2]}}, None, "tune.space.train.lr", "search_alg: random"),
    ],
)
def test_bad_space_names_the_key(raw, space, method, path, words):
    method = method or raw["tune"]["method"]
    raw["tune"].update(method=method, space={method: space})
    msg = _error(raw)
    path = path.replace("tune.space", f"tune.space.{method}", 1) if path != "tune.space" else f"tune.space.{method}"
    assert f"{path}:" in msg and words in msg, msg


def test_lr_is_tunable_for_every_method(raw):
    raw["tune"].update(method="joint", space={"joint": {"train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}})
    assert parse_params(raw).tune.run == "diffusion-joint"
    raw["tune"].update(method="gan-joint", space={"gan-joint": {"gan.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}})
    assert parse_params(raw).tune.run == "gan-joint"


def test_method_names_and_untunable_runs(raw):
    assert tune_run("generative_distillation") == "diffusion-generative_distillation"
    assert tune_run("finetune") == "diffusion-finetune"  # the bare name is diffusion's
    assert tune_run("lifelong_gan") == "gan-lifelong_gan"  # no diffusion method of that name
    raw["tune"].update(method="gan-standalone", space={"gan-standalone": {"gan.lr": {"type": "uniform", "low": 1e-4,
                                                                                      "high": 1e-3}}})
    msg = _error(raw)
    assert "tune.method:" in msg and "one model per task" in msg, msg
    raw["tune"].update(method="gan-lifelong_gann")
    assert "tune.method: unknown method 'gan-lifelong_gann'" in _error(raw)


def test_another_methods_space_is_validated_too(raw):
    raw["tune"]["space"]["gan-lifelong_gan"] = {"lifelong_gan.beta": {"type": "uniform", "low": 1, "high": 1}}
    assert "tune.space.gan-lifelong_gan.lifelong_gan.beta: empty range" in _error(raw)


def test_with_values_sets_each_key_with_its_type(raw):
    p = parse_params(raw)
    q = with_values(p, {"lifelong_gan.beta": 3, "distill.replay_ddim_steps": 5.0, "piggyback_gan.filter_ratio": 0.5})
    assert q.lifelong_gan.beta == 3.0 and isinstance(q.distill.replay_ddim_steps, int)
    assert q.distill.replay_ddim_steps == 5 and q.piggyback_gan.filter_ratio == 0.5
    assert p.lifelong_gan.beta == raw["lifelong_gan"]["beta"]  # the original is untouched
    with pytest.raises(ValueError, match="unknown tuned parameter"):
        with_values(p, {"gan.beta": 1.0})
    assert set(TUNABLE) >= {"lifelong_gan.beta", "piggyback_gan.filter_ratio", "gan.lr"}


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


def test_train_stage_applies_the_tuned_config_to_its_own_label_run_only(raw, tmp_path):
    from pipeline.layout import Layout
    from pipeline.task import apply_tuned
    from pipeline.tuned import result_path, write_applied

    raw["train"]["use_tuned"] = True
    raw["tune"]["method"] = "gan-lifelong_gan"
    params, lay = parse_params(raw), Layout(tmp_path)
    result_path(lay, "gan-lifelong_gan").parent.mkdir(parents=True)
    result_path(lay, "gan-lifelong_gan").write_text(
        '{"best": {"config": {"lifelong_gan.beta": 4.0}, "objective": 1.0}}')
    write_applied(params, lay)  # the `tuned` stage: one file per label run
    assert sorted(p.stem for p in lay.applied_dir.iterdir()) == sorted(params.scenarios.label.runs)
    tuned, values = apply_tuned(params, "label", "gan-lifelong_gan", lay)
    assert tuned.lifelong_gan.beta == 4.0 and values == {"lifelong_gan.beta": 4.0}
    for scenario, run in (("image", "gan-lifelong_gan"), ("label", "gan-finetune")):
        assert apply_tuned(params, scenario, run, lay) == (params, {})
    # every other run's file is {} and stays byte-identical when the search moves to another method
    before = {p.name: p.read_bytes() for p in lay.applied_dir.iterdir()}
    raw["tune"]["method"] = "gan-piggyback_gan"
    result_path(lay, "gan-piggyback_gan").write_text(
        '{"best": {"config": {"piggyback_gan.filter_ratio": 0.3}, "objective": 1.0}}')
    write_applied(parse_params(raw), lay)
    after = {p.name: p.read_bytes() for p in lay.applied_dir.iterdir()}
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"gan-lifelong_gan.json", "gan-piggyback_gan.json"}


def test_tuned_stage_writes_its_output_folder_with_the_label_scenario_off(raw, tmp_path):
    """`scenarios.label.runs: []` (an image-only run): the `tuned` stage still leaves its declared
    output, an empty results/tune/applied, so `dvc repro` does not fail on a missing output."""
    from pipeline.layout import Layout
    from pipeline.tuned import write_applied

    raw["scenarios"]["label"]["runs"] = []
    lay = Layout(tmp_path)
    write_applied(parse_params(raw), lay)
    assert lay.applied_dir.is_dir() and list(lay.applied_dir.iterdir()) == []
