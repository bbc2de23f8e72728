"""The evaluation summary and the report (pure functions, no stage): forgetting of FID and accuracy,
the noise floor next to forgetting, units on the columns."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluate import summarize
from pipeline.report import METRIC_KEYS, build_metrics, report_markdown, within_floor

FID = [[40.0, None, None], [46.0, 30.0, None], [44.0, 38.0, 35.0]]
ACC = [[0.9, None, None], [0.7, 0.8, None], [0.6, 0.8, 0.7]]
KID = [[0.020, None, None], [0.025, 0.010, None], [0.021, 0.015, 0.012]]
DIV = [[0.9, None, None], [0.8, 1.0, None], [0.3, 0.6, 0.9]]
FLOOR = {"fid": [5.0, 3.0, 4.0], "kid": [0.001, 0.002, 0.003], "n": [200, 200, 200]}


def test_summary_has_accuracy_forgetting_bwt_and_the_floor_of_the_forgetting_tasks():
    s = summarize({"fid": FID, "kid": KID, "acc": ACC, "div": DIV}, FLOOR)
    assert s["forgetting_fid_mean"] == pytest.approx(((44 - 40) + (38 - 30)) / 2)
    assert s["forgetting_acc_mean"] == pytest.approx(((0.9 - 0.6) + (0.8 - 0.8)) / 2)
    assert s["bwt_acc"] == pytest.approx(((0.6 - 0.9) + (0.8 - 0.8)) / 2)
    assert s["noise_floor_fid"] == pytest.approx(4.0)  # tasks 1..T-1: (5 + 3) / 2, task 3's floor left out
    assert s["noise_floor_kid"] == pytest.approx(0.0015)
    assert s["div_final_mean"] == pytest.approx(0.6)
    one = summarize({"fid": [[40.0]], "kid": [[0.02]], "acc": [[None]], "div": [[1.0]]}, FLOOR)
    assert one["noise_floor_fid"] is None and one["forgetting_acc_mean"] is None and one["acc_final_mean"] is None


def _evaluation(fid_matrix, seed=0, train_seconds=12.0, teacher_passes=None):
    s = summarize({"fid": fid_matrix, "kid": KID, "acc": ACC, "div": DIV}, FLOOR)
    return {**s, "matrix": {"fid": fid_matrix, "kid": KID, "acc": ACC, "div": DIV}, "noise_floor": FLOOR,
            "train_seconds": train_seconds, "teacher_passes": teacher_passes, "params": 1000,
            "params_standalone": 3000, "seed": seed}


STEADY = [[40.0, None, None], [41.0, 30.0, None], [42.0, 31.0, 35.0]]  # forgetting 1.5 < floor 4


def test_report_marks_forgetting_within_the_floor_and_says_the_units():
    assert within_floor(3.9, 4.0) and within_floor(-3.9, 4.0) and not within_floor(4.1, 4.0)
    assert not within_floor(None, 4.0) and not within_floor(1.0, None)

    nested = build_metrics({"label": {"gan-forgets": [_evaluation(FID)], "gan-steady": [_evaluation(STEADY)]}})
    assert set(nested["label"]["gan-steady"]) == set(METRIC_KEYS)
    assert nested["label"]["gan-steady"]["n_seeds"] == 1 and nested["label"]["gan-steady"]["ci95"]["fid_final_mean"] is None
    text = report_markdown(nested, "lifelong-cnn")
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| gan-")}
    assert "| 0.60 | 6.00 (4.00) |" in rows["gan-forgets"]  # div final, then forgetting (floor)
    assert "| 1.50 (4.00) ~ |" in rows["gan-steady"]
    assert "KID final (x10^3)" in text and "| 16.00 |" in rows["gan-steady"]  # mean final KID 0.016 -> 16.00
    assert "forgetting acc" in text and "BWT acc" in text and "train (s)" in text
    assert "task 1: FID 5.00, KID x10^3 1.00 (n = 200)" in text
    assert "n = 1 training seed(s) per run" in text and "±" not in "".join(rows.values())


def test_teacher_passes_per_step_are_reported_for_diffusion_and_na_for_gans():
    from pipeline.evaluate import teacher_passes

    receipts = [{"teacher_passes": 0.0}, {"teacher_passes": 5.0}, {"teacher_passes": 4.0}]
    assert teacher_passes(receipts) == pytest.approx(4.5)  # tasks 2..T: task 1 has no teacher
    assert teacher_passes([{}, {}]) is None and teacher_passes(receipts[:1]) is None
    nested = build_metrics({"label": {"diffusion-gd": [_evaluation(STEADY, teacher_passes=5.0)],
                                      "gan-steady": [_evaluation(STEADY)]}})
    text = report_markdown(nested, "lifelong-cnn")
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ")}
    assert "teacher passes/step" in text
    assert "| 5.00 | 1,000 |" in rows["diffusion-gd"] and "| n/a | 1,000 |" in rows["gan-steady"]


def test_a_runs_seeds_are_averaged_with_a_95_percent_interval():
    worse = [[v if v is None else v + 2.0 for v in row] for row in STEADY]
    nested = build_metrics({"label": {"gan-steady": [_evaluation(STEADY, 0, 10.0), _evaluation(worse, 1, 14.0)]}})
    m = nested["label"]["gan-steady"]
    assert m["n_seeds"] == 2 and m["params"] == 1000
    assert m["fid_final_mean"] == pytest.approx((36.0 + 38.0) / 2)  # seed means 36 and 38
    assert m["ci95"]["fid_final_mean"] == pytest.approx(12.706 * 2 ** 0.5 / 2 ** 0.5)  # s = sqrt(2), n = 2
    assert m["train_seconds"] == pytest.approx(12.0) and m["ci95"]["train_seconds"] == pytest.approx(12.706 * 2)
    assert m["matrix"]["fid"][2] == [43.0, 32.0, 36.0] and m["matrix"]["fid"][0][1] is None
    assert m["noise_floor"]["fid"] == FLOOR["fid"]
    text = report_markdown(nested, "lifelong-cnn")
    assert "| gan-steady | 2 | 37.00 ± 12.71 |" in text
    assert "n = 2 training seed(s) per run" in text and "intervals do not overlap" in text


def test_diffusion_piggyback_counts_its_bank_against_one_unet_per_task():
    import torch

    from lifelong.models import piggyback
    from lifelong.models.diffusion import DiffusionConfig, build_unet
    from pipeline.evaluate import parameter_counts

    cfg = DiffusionConfig(image_size_px=8, num_classes=4, block_out_channels=(8, 16))
    plain = sum(p.numel() for p in build_unet(cfg).parameters())
    torch.manual_seed(0)
    unet = piggyback.piggyback_(build_unet(cfg), 0.25)
    for _ in range(2):
        piggyback.add_task(unet)
    counts = parameter_counts(False, unet, 3)
    assert counts["params_standalone"] == 3 * plain
    assert plain < counts["params"] < counts["params_standalone"]
    assert counts["params"] == piggyback.total_parameter_count(unet)


def test_the_report_names_each_scenarios_resolved_feature_extractor():
    from pipeline.report import feature_spaces

    def evaluation(extractor):
        return {**_evaluation(STEADY), "feature_extractor": extractor}

    results = {"label": {"gan-a": [evaluation("lifelong-cnn")], "gan-b": [evaluation("lifelong-cnn")]},
               "image": {"gan-a": [evaluation("inception-v3-compat")]}}
    features = feature_spaces(results)
    assert features == {"label": "lifelong-cnn", "image": "inception-v3-compat"}
    text = report_markdown(build_metrics(results), features)
    assert "FID and KID in the features each scenario names" in text
    label, image = text.split("## Scenario `image`")
    assert "FID/KID features: `lifelong-cnn`." in label and "FID/KID features: `inception-v3-compat`." in image
    # `auto` resolved differently for two runs (weights file on one machine only): both named, per run
    results["label"]["gan-b"] = [evaluation("inception-v3-compat")]
    assert feature_spaces(results)["label"] == "gan-a: lifelong-cnn; gan-b: inception-v3-compat"
    assert "the features of `lifelong-cnn`" in report_markdown(build_metrics(results), "lifelong-cnn")


def test_an_rgb_sample_triple_is_one_colour_strip_per_row():
    from pipeline.report import _sample_row

    rgb = np.zeros((3, 2, 4, 4, 3), np.uint8)  # A, generated, B: 2 images each, 4 px, RGB
    rgb[1, ..., 0] = 255  # the generated row is red
    strip = _sample_row(rgb, triple=True)
    assert strip.shape == (12, 8, 3) and (strip[4:8, :, 0] == 255).all() and not strip[:4].any()
    assert _sample_row(rgb[0, ..., 0], triple=False).shape == (4, 8)  # a grayscale row of samples
