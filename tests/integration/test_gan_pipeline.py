"""Both GAN methods (and the GAN baselines) through the real stages on tiny data: `lifelong repro` in a
fresh git + DVC clone, Ray Train (local mode), MLflow sqlite registry, WebDataset shards of both
scenarios (label-conditioned classes in grayscale, image-conditioned A -> B pairs in RGB)."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
import torch

from tests.integration.conftest import BIN, run, tiny_params

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

# No gan-finetune chain: it runs the same stages as gan-lifelong_gan (a GAN method whose old tasks come
# from the task-k model) with nothing of its own to check here; Lifelong GAN with beta 0 is finetune
# (tests/lifelong/methods/test_gan_methods.py). Six chains, two at a time: three rounds, not four.
LABEL_RUNS = ["gan-standalone", "gan-lifelong_gan", "gan-piggyback_gan"]
IMAGE_RUNS = ["gan-joint", "gan-lifelong_gan", "gan-piggyback_gan"]


def _registered(repo, name: str, version: str):
    """The model of a registered version, downloaded from the registry and loaded as the stages do."""
    import mlflow

    from lifelong.training import load_model_file

    # models:/ URIs resolve through the global tracking URI (download_artifacts' tracking_uri= does not
    # reach the registry lookup), and set_tracking_uri also exports MLFLOW_TRACKING_URI, which later
    # stage subprocesses would inherit: set it for the download only.
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    try:
        path = mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=str(repo / "dl" / version))
    finally:
        mlflow.set_tracking_uri(None)  # back to the default; unsets MLFLOW_TRACKING_URI
    return load_model_file(f"{path}/artifacts/model.pt").eval()  # a pyfunc generator's weights


def test_gan_methods_in_both_scenarios(clone):
    """Slow (about 2 min): 6 GAN chains x 2 tasks (both scenarios, RGB images), then the registered
    versions loaded back, in this process and in a fresh one."""
    params = tiny_params()
    params["scenarios"]["label"]["runs"] = LABEL_RUNS
    params["scenarios"]["image"]["runs"] = IMAGE_RUNS
    params["data"].update(image_size_px=16, tasks=[[0, 1], [2, 3]])
    params["image_data"]["channels"] = 3  # RGB end to end: shards, BicycleGAN nets, evaluation, grids, pyfunc
    repo = clone(params)
    run([str(BIN / "lifelong"), "repro"], repo)

    # metrics.json: nested by scenario, then run; the image scenario adds L1; parameter counts.
    metrics = json.loads((repo / "results/metrics.json").read_text())
    assert set(metrics) == {"label", "image"}
    assert set(metrics["label"]) == set(LABEL_RUNS) and set(metrics["image"]) == set(IMAGE_RUNS)
    for scenario, runs in metrics.items():
        for name, m in runs.items():
            keys = {"fid", "kid", "acc", "div"} | ({"l1"} if scenario == "image" else set())
            assert set(m["matrix"]) == keys
            for key in keys:
                mat = m["matrix"][key]
                assert mat[0][1] is None and all(v is not None for v in (mat[0][0], mat[1][0], mat[1][1])), (name, key)
            if scenario == "image":
                assert 0 < m["l1_final_mean"] < 1 and m["forgetting_l1_mean"] is not None
    for runs in metrics.values():
        pig = runs["gan-piggyback_gan"]
        assert pig["params"] < pig["params_standalone"]  # the filter bank is cheaper than a model per task
    assert metrics["label"]["gan-standalone"]["params"] == metrics["label"]["gan-standalone"]["params_standalone"]
    report = (repo / "results/report.md").read_text()
    assert "## Scenario `image`" in report and "params standalone" in report
    assert (repo / "results/plots/samples-image-gan-lifelong_gan.png").stat().st_size > 0

    # Piggyback: after both tasks, task 1's generator (rebuilt from the bank in the final registered
    # version) gives bit-identical outputs to the version registered right after task 1.
    from lifelong.models import piggyback

    for scenario in ("label", "image"):
        receipts = [json.loads((repo / f"results/receipts/{scenario}/gan-piggyback_gan/task-{k}.json").read_text())
                    for k in (1, 2)]
        after1 = _registered(repo, receipts[0]["model_name"], receipts[0]["version"])
        after2 = _registered(repo, receipts[1]["model_name"], receipts[1]["version"])
        assert piggyback.num_tasks(after2["G"]) == 2
        piggyback.set_task(after2["G"], 1)
        g = torch.Generator().manual_seed(0)
        z = torch.randn(6, after1.cfg.z_dim, generator=g)
        with torch.no_grad():
            if scenario == "label":
                y = torch.tensor([0, 1, 0, 1, 0, 1])
                out1, out2 = after1.sample(y=y, z=z), after2.sample(y=y, z=z)
            else:
                assert after1.cfg.in_channels == 3
                a = torch.rand(6, 3, 16, 16, generator=g) * 2 - 1
                out1, out2 = after1.sample(a=a, z=z), after2.sample(a=a, z=z)
        assert torch.equal(out1, out2), scenario
        piggyback.set_task(after2["G"], 2)
        with torch.no_grad():
            out_task2 = after2.sample(y=y, z=z) if scenario == "label" else after2.sample(a=a, z=z)
        assert not torch.equal(out1, out_task2)  # task 2 has filters of its own

    # The registered versions are pyfunc generators, loaded in a fresh process with only the project:
    # Piggyback's task 1 (alias task-1) is bit-identical to what the evaluation generates for task 1
    # from the final version's filter bank; a Lifelong GAN label and image version generate too.
    from pipeline.evaluate import generate_task
    from pipeline.params import parse_params

    per_class = params["eval"]["samples_per_class"]
    code = textwrap.dedent(f"""
        import json, mlflow, numpy as np, pandas as pd
        mlflow.set_tracking_uri("sqlite:///{repo / 'mlflow.db'}")
        pig = mlflow.pyfunc.load_model("models:/it-label-gan-piggyback_gan@task-1")
        out = {{"piggyback": pig.predict(pd.DataFrame({{"class": [0] * {per_class} + [1] * {per_class}}})).tolist()}}
        lgan = mlflow.pyfunc.load_model("models:/it-label-gan-lifelong_gan@task-2")
        out["lifelong_label"] = list(lgan.predict(pd.DataFrame({{"class": [3, 3, 1]}})).shape)
        img = mlflow.pyfunc.load_model("models:/it-image-gan-lifelong_gan@task-1")
        x = img.predict(pd.DataFrame({{"condition": [np.zeros((16, 16, 3)).tolist()] * 2}}))
        out["lifelong_image"] = [list(x.shape), str(x.dtype), float(x.min()), float(x.max())]
        print(json.dumps(out))
    """)
    fresh = run([sys.executable, "-c", code], repo)
    got = json.loads(fresh.stdout.strip().splitlines()[-1])
    final = json.loads((repo / "results/receipts/label/gan-piggyback_gan/task-2.json").read_text())
    net = _registered(repo, final["model_name"], final["version"])
    piggyback.set_task(net["G"], 1)
    expected, _, _ = generate_task(parse_params(params), "label", "gan", net, net.cfg, 1, 1, None, "cpu")
    pyfunc_images = np.asarray(got["piggyback"], dtype=np.float32)
    assert pyfunc_images.shape == (2 * per_class, 1, 16, 16)
    assert np.array_equal(np.rint(pyfunc_images[:, 0] * 255).astype(np.uint8), expected)
    assert got["lifelong_label"] == [3, 1, 16, 16]
    assert got["lifelong_image"][:2] == [[2, 3, 16, 16], "float32"] and 0 <= got["lifelong_image"][2] <= got["lifelong_image"][3] <= 1

    # Lifelong GAN task 2 loaded exactly the version task 1 registered, through the registry.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}", registry_uri=f"sqlite:///{repo / 'mlflow.db'}")
    r1, r2 = (json.loads((repo / f"results/receipts/image/gan-lifelong_gan/task-{k}.json").read_text()) for k in (1, 2))
    v2 = client.get_model_version_by_alias("it-image-gan-lifelong_gan", "task-2")
    assert v2.tags["parent_version"] == r1["version"] and str(v2.version) == r2["version"]
    assert v2.tags["family"] == "gan" and v2.tags["scenario"] == "image"
    params_logged = client.get_run(r2["run_id"]).data.params
    assert json.loads(params_logged["hyper"])["options"]["beta"] == params["lifelong_gan"]["beta"]

    # The sample grid of the image scenario holds A | generated | B per task.
    with np.load(repo / "results/eval/image/gan-lifelong_gan-samples.npz") as f:
        assert set(f.files) == {"task_1", "task_2"} and f["task_1"].shape == (3, 8, 16, 16, 3)  # RGB
