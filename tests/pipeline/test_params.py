"""params.yaml validation: every bad input is one error naming the key path and what is allowed."""

import copy

import pytest
import yaml

from lifelong.catalog import CATALOG
from pipeline.params import Params, ParamsError, load_params, parse_params


@pytest.fixture
def raw():
    with open("params.yaml") as f:
        return yaml.safe_load(f)


def test_repository_params_are_valid():
    p = load_params("params.yaml")
    assert p.num_tasks == 5 and p.num_classes == 10
    assert p.num_tasks_of("image") == 4
    runs = dict.fromkeys(sc for sc, _ in p.runs())
    assert list(runs) == ["label", "image"]
    # the default: each family's joint upper bound and its continual method(s), on the 2-core budget
    label = {run for sc, run in p.runs() if sc == "label"}
    assert {"diffusion-joint", "diffusion-generative_distillation", "gan-joint", "gan-lifelong_gan"} <= label


def test_runs_all_is_the_full_method_matrix(raw):
    raw["scenarios"] = {"label": {"runs": "all"}, "image": {"runs": "all"}}
    p = parse_params(raw)
    assert [run for sc, run in p.runs() if sc == "label"] == [
        f"{family}-{m}" for family, methods in CATALOG.items() for m in methods]
    assert [run for sc, run in p.runs() if sc == "image"] == [f"gan-{m}" for m in CATALOG["gan"]]
    raw["scenarios"]["image"] = {"runs": "every"}  # any other string is still one error naming the key
    assert "scenarios.image.runs" in _error(raw)


def test_the_method_catalog_matches_the_library_registry():
    from lifelong.methods import METHODS

    assert {f: set(m) for f, m in CATALOG.items()} == {f: set(m) for f, m in METHODS.items()}
    for family, methods in CATALOG.items():
        for name, spec in methods.items():
            assert (spec.family, spec.name) == (family, name)
            assert spec.options is None or spec.options in Params.model_fields  # a section of params.yaml


def _error(raw) -> str:
    with pytest.raises(ParamsError) as exc:
        parse_params(raw)
    return str(exc.value)


@pytest.mark.parametrize(
    "edit, path, words",
    [
        (lambda r: r["scenarios"]["label"].update(runs=["diffusion-finetune", "diffusion-distilation"]),
         "scenarios.label.runs", "diffusion-finetune, diffusion-joint"),
        (lambda r: r["scenarios"]["image"].update(runs=["diffusion-generative_distillation"]),
         "scenarios.image.runs", "does not apply to the image scenario"),
        (lambda r: r["scenarios"]["image"].update(runs=["gan-generative_replay"]),
         "scenarios.image.runs", "gan-lifelong_gan"),
        (lambda r: r["scenarios"]["label"].update(runs=["gan-finetune", "gan-finetune"]),
         "scenarios.label.runs", "twice"),
        (lambda r: r["image_data"]["tasks"].append({"name": "x", "condition": "edges"}),
         "image_data.tasks.4", "condition"),
        (lambda r: r["image_data"]["tasks"].append({"name": "x", "root": "/d", "classes": [1], "condition": "edges"}),
         "image_data.tasks.4", "not both"),
        (lambda r: r["lifelong_gan"].update(auxiliary="collage"), "lifelong_gan.auxiliary", "montage"),
        (lambda r: r["piggyback_gan"].update(filter_ratio=0), "piggyback_gan.filter_ratio", "greater than 0"),
        (lambda r: r["data"].update(image_size_px=24), "data.image_size_px", "power of two"),
        (lambda r: r["data"].update(tasks=[[0, 1], [1, 2]]), "data.tasks", "more than one task"),
        (lambda r: r["data"].update(tasks=[[0, 1], []]), "data.tasks", "empty"),
        (lambda r: r["data"].update(tasks=[[0, -1]]), "data.tasks", "non-negative"),
        (lambda r: r["train"].update(steps_per_task=0), "train.steps_per_task", "greater than 0"),
        (lambda r: r["train"].update(stepz_per_task=10), "train.stepz_per_task", "unknown key"),
        (lambda r: r.update(trian={}), "trian", "unknown key"),
        (lambda r: r.update(storage={"uri": "runs"}), "storage.uri", "absolute"),
        (lambda r: r.update(storage={"uri": "gs://b/p"}), "storage.uri", "s3://bucket/prefix"),
        (lambda r: r["train"].update(storage_path="/mnt/x"), "train.storage_path", "`storage.uri`"),
        (lambda r: r["eval"].update(feature_extractor="vgg"), "eval.feature_extractor", "lifelong-cnn"),
        # task chains are derived now: a leftover one says so
        (lambda r: r["scenarios"]["label"].update(task_chain=[{"task": 1, "prev": 0}]), "scenarios.label.task_chain",
         "derives each scenario's task chain from data.tasks"),
        (lambda r: r["scenarios"]["image"].update(task_chain=[]), "scenarios.image.task_chain",
         "image_data.tasks; delete this key"),
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
    bad["scenarios"]["image"] = {"runs": []}  # its tasks' classes would be missing from data.tasks (own test)
    assert parse_params(bad).num_classes == 13


def test_a_scenario_with_no_runs_is_off(raw):
    raw["scenarios"]["image"] = {"runs": []}
    assert [sc for sc, _ in parse_params(raw).runs()] == ["label"] * len(raw["scenarios"]["label"]["runs"])
    raw["scenarios"]["label"] = {"runs": []}
    assert "no scenario has runs" in _error(raw)


@pytest.mark.parametrize("profile", ["params-gpu.yaml", "params-gpu-pix2pix.yaml", "params-paper.yaml"])
def test_gpu_profiles_are_valid(profile):
    p = load_params(profile)
    assert p.train.use_gpu and p.runs()


@pytest.mark.parametrize("profile", ["params-gpu.yaml", "params-gpu-pix2pix.yaml", "params-paper.yaml"])
def test_a_profile_has_every_key_of_params_yaml(profile):
    """DVC reads a stage's params from the file itself, not from the validated defaults: a key that
    params.yaml has and a profile lacks fails `dvc repro` after `cp <profile> params.yaml`."""
    def leaves(d, prefix=""):
        return {key for k, v in d.items()
                for key in (leaves(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "space" else {prefix + k})}

    with open("params.yaml") as f:
        want = leaves(yaml.safe_load(f))
    with open(profile) as f:
        have = leaves(yaml.safe_load(f))
    assert sorted(want - have) == []


def test_paper_profile_is_the_gd_papers_setting():
    p = load_params("params-paper.yaml")
    assert p.data.image_size_px == 32 and p.data.tasks == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert (p.train.batch_size, p.train.lr, p.distill.weight, p.distill.replay_ddim_steps) == (128, 2e-4, 1.0, 2)
    assert p.model.block_out_channels == [64, 128, 256, 512] and p.eval.ddim_steps == 10
    assert (p.eval.seeds, p.eval.samples_per_class) == (3, 1000)
    assert (p.model.label_dropout, p.model.guidance_scale, p.train.ema_decay) == (0.0, 0.0, 0.0)  # as the paper
    assert p.model.conditional is False  # the official code's unconditional UNet
    runs = {run for _, run in p.runs()}
    assert {"diffusion-generative_distillation", "diffusion-intermediate_distillation", "diffusion-piggyback"} <= runs


def test_image_task_classes_the_classifier_never_learns_are_one_error(raw):
    """The classifier is trained on data.tasks' classes; an image task of other classes used to train every
    image run and then fail in evaluation."""
    raw["data"]["tasks"] = [[0, 1], [2, 3], [4, 5]]
    err = _error(raw)
    assert "image_data.tasks[0].classes" in err and "[7, 9]" in err and "data.tasks" in err
    raw["scenarios"]["image"] = {"runs": []}  # no image runs: nothing to measure
    assert parse_params(raw).num_classes == 6


def test_an_unconditional_model_cannot_drop_or_guide_labels(raw):
    raw["model"].update(conditional=False)  # the default's label_dropout 0.1, guidance 1.0 stay
    err = _error(raw)
    assert "model" in err and "label_dropout: 0" in err and "guidance_scale: 0" in err
    raw["model"].update(label_dropout=0.0, guidance_scale=0.0)
    assert parse_params(raw).model.conditional is False


def test_image_data_channels_size_the_image_scenarios_gan_only(raw):
    """image_data.channels: 1 or 3, one error naming the key otherwise; 3 makes the image scenario's GAN
    take RGB A and B; the label scenario (and its classifier) stays grayscale."""
    from pipeline.task import model_config

    assert load_params("params.yaml").image_data.channels == 1
    assert load_params("params-gpu-pix2pix.yaml").image_data.channels == 3
    raw["image_data"]["channels"] = 2
    err = _error(raw)
    assert "  image_data.channels" in err and "1 or 3" in err
    raw["image_data"]["channels"] = 3
    p = parse_params(raw)
    assert model_config(p, "image", "gan")["in_channels"] == 3
    assert model_config(p, "label", "gan")["in_channels"] == 1
    assert model_config(p, "label", "diffusion")["in_channels"] == 1


def test_feature_extractor_auto_is_allowed(raw):
    raw["eval"]["feature_extractor"] = "auto"
    assert parse_params(raw).eval.feature_extractor == "auto"
    assert load_params("params-gpu-pix2pix.yaml").eval.feature_extractor == "auto"
