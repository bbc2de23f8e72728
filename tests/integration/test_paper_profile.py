"""The paper profile (params-paper.yaml) shrunk to CPU size and run end to end: the GD paper's
unconditional setting (class-balance KL next to FID), and the cheaper distillation's teacher passes
measured next to GD's, through the real pipeline (DVC, Ray Train, MLflow registry)."""

import json
import math

import pytest

from tests.integration.conftest import BIN, run, tiny_params

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

RUNS = ["diffusion-generative_distillation", "diffusion-intermediate_distillation"]


def test_paper_profile_shrunk_runs_unconditional_gd_and_its_cheaper_variant(clone):
    """Slow (about 1 min): 2 unconditional diffusion chains x 2 tasks through the real stages."""
    params = tiny_params("params-paper.yaml")
    params["scenarios"] = {"label": {"runs": RUNS}, "image": {"runs": []}}
    assert params["model"]["conditional"] is False and params["distill"]["replay_ddim_steps"] == 2
    repo = clone(params)
    run([str(BIN / "lifelong"), "repro"], repo)

    metrics = json.loads((repo / "results/metrics.json").read_text())["label"]
    assert set(metrics) == set(RUNS)
    for m in metrics.values():
        assert 0.0 <= m["class_kl_final"] <= math.log(4)  # 4 seen classes after task 2
        assert m["acc_final_mean"] is None  # nothing to score an unconditional sample against
        assert all(v is not None for v in (m["matrix"]["fid"][1][0], m["matrix"]["fid"][1][1]))
    # teacher passes per step, counted in the training loop: GD pays S = 2 DDIM steps + 1 target pass;
    # stopping each sample at its own noise level costs about S/2 + 1 on average
    gd = metrics["diffusion-generative_distillation"]["teacher_passes"]
    cheap = metrics["diffusion-intermediate_distillation"]["teacher_passes"]
    assert gd == pytest.approx(3.0) and 1.0 <= cheap < gd
    report = (repo / "results/report.md").read_text()
    assert "diffusion-generative_distillation *(unconditional)*" in report and "class KL final" in report
