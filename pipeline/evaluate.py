"""Stage `evaluate_<scenario>@<chain>`: the task x task quality matrices of one chain (a run trained
with one training seed; the report aggregates a run's chains).

After each task k (the version its train stage registered), for each seen task j <= k, the model
generates task j:
- label scenario: `eval.samples_per_class` images per class of task j (DDIM for diffusion, random z
  for GANs), against task j's real test images;
- image scenario: G(A, z) for every test condition A of task j, against the real targets B, plus
  the mean L1 distance to B.
Every cell (k, j) draws fresh noise (`lifelong.evaluation.eval_seed`), for every method alike.
FID/KID use the same offline feature extractor everywhere: eval.feature_extractor, `auto` resolved once
per stage (Inception when its weights file is present, else the classifier), and the evaluation file
records the one used; acc is the classifier's on the samples; div their diversity next to the real
images' (per class; ~1 as varied as the data, ~0 mode collapse). RGB images (image_data.channels 3) are
generated and compared in RGB (L1, Inception features); the grayscale classifier sees their luminance.
Which weights generate task j after task k is the method's (lifelong.catalog `old_task_weights`): the
task-k model, task j's own model (standalone), or the task-k model switched to task j's filters
(piggyback_gan); `lifelong.evaluation.weights_for_task` picks them.
The noise floor of each task: FID/KID between two disjoint halves of its real test images, each the
size of the generated sample (`lifelong.evaluation.noise_floor`); forgetting within it is noise.
Row k of every matrix is logged to task k's MLflow run; the forgetting summary is set as tags on the
last task's model version.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from lifelong.catalog import run_spec
from pipeline.layout import layout, read_json, write_json
from pipeline.params import check_chain, load_params, split_chain
from pipeline.plan import stage_name
from pipeline.registry import check_model_version, download_model_version, setup_mlflow
from pipeline.stage import run_stage

MATRIX_KEYS = ("fid", "kid", "acc", "div")
IMAGE_MATRIX_KEYS = MATRIX_KEYS + ("l1",)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", required=True, choices=["label", "image"])
    ap.add_argument("--run", required=True, help="a chain: <family>-<method>[-seed<i>]")
    args = ap.parse_args(argv)
    import mlflow
    from mlflow import MlflowClient

    from lifelong.data import read_all, read_all_pairs, task_shard_paths, verify_shards

    params = load_params()
    lay = layout()
    scenario, chain = args.scenario, args.run
    check_chain(params, scenario, chain)
    run, seed_index = split_chain(chain)
    params = params.with_seed_index(seed_index)  # the chain's seed: its evaluation noise too
    spec = run_spec(run)
    family, method = spec.family, spec.name
    T = params.num_tasks_of(scenario)
    if not lay.classifier.exists():
        raise SystemExit(f"{lay.classifier} not found; run `dvc repro classifier` first")
    setup_mlflow(params, lay)
    client = MlflowClient()
    shard_dir = lay.scenario_shards(scenario)
    real = {}  # task j -> label: (B,) ; image: (A, B, labels)
    for j in range(1, T + 1):
        verify_shards(shard_dir, task=j)
        paths = task_shard_paths(shard_dir, j, "test")
        real[j] = read_all(paths) if scenario == "label" else read_all_pairs(paths)

    stage_of = lambda k: stage_name(scenario, chain, k)  # noqa: E731
    receipts = [read_json(lay.receipt(scenario, chain, k), what=f"receipt of {scenario}/{chain} task {k}",
                          fix=f"run `dvc repro {stage_of(k)}`") for k in range(1, T + 1)]
    for k, receipt in enumerate(receipts, start=1):  # a missing version fails here, before any generation
        check_model_version(receipt["model_name"], receipt["version"], stage_hint=stage_of(k))
    t0 = time.time()
    # The matrices: in this process on CPU; with train.use_gpu, as one Ray task on a GPU node of the
    # cluster (the driver of a cluster is typically a head node without one).
    job = dict(params=params, scenario=scenario, run=chain, receipts=receipts, real=real,
               classifier=lay.classifier.read_bytes(), tracking_uri=mlflow.get_tracking_uri())
    ev = on_gpu_worker(params, job) if params.train.use_gpu else evaluate_run(**job)
    matrix, rows, floor = ev["matrix"], ev["rows"], ev["noise_floor"]
    for k, (receipt, row) in enumerate(zip(receipts, rows), start=1):
        _log(client, receipt["run_id"], row, step=k)  # never reopens the run: its duration stays the task's
        print(f"[evaluate] {scenario}/{chain} after task {k}: FID " +
              " ".join(f"{matrix['fid'][k - 1][j]:.1f}" for j in range(k)), flush=True)

    summary = summarize(matrix, floor)
    last = receipts[-1]
    for key, value in summary.items():  # "register forgetting metrics" on the final model version
        client.set_model_version_tag(last["model_name"], last["version"], key, "" if value is None else f"{value:.6g}")
    final = {k: v for k, v in summary.items() if v is not None}
    for run_id in {last["run_id"], last.get("parent_run_id")} - {None}:  # the last task's run and the chain's
        _log(client, run_id, final)

    out = {
        "scenario": scenario, "run": run, "chain": chain, "seed": params.seed, "family": family, "method": method,
        "matrix": matrix, **summary,
        "train_seconds": float(sum(r.get("train_seconds", 0.0) for r in receipts)),
        "teacher_passes": teacher_passes(receipts),
        "class_kl_final": ev["class_kl"][-1], "class_kl": ev["class_kl"], "setting": ev["setting"],
        **ev["counts"], "noise_floor": floor,
        "feature_extractor": ev["feature_extractor"], "eval_seconds": time.time() - t0,
        "versions": [r["version"] for r in receipts], "model_name": last["model_name"],
    }
    write_json(lay.eval_result(scenario, chain), out)
    np.savez_compressed(lay.eval_samples(scenario, chain), **ev["samples"])
    return 0


def evaluate_run(*, params, scenario: str, run: str, receipts: list[dict], real: dict, classifier: bytes,
                 tracking_uri: str) -> dict:
    """The task x task matrices of one chain (`run`: a run or `<run>-seed<i>`): {"matrix", "rows" (the MLflow row of each task k), "samples"
    (the final grid), "counts" (parameters), "noise_floor" (per task), "feature_extractor" (the one every
    FID/KID here is in)}. Fetches each task's registered version itself, so it runs the same in the stage's
    process or as a Ray task on any node; eval.feature_extractor `auto` is resolved here, once, on the
    node that measures (where the Inception weights file must be)."""
    import mlflow
    import torch

    from lifelong.evaluation import noise_floor, quality, resolve_feature_extractor, weights_for_task
    from lifelong.models import load_model, model_config

    mlflow.set_tracking_uri(tracking_uri)
    extractor = resolve_feature_extractor(params.eval.feature_extractor)
    print(f"[evaluate] FID/KID features: {extractor} (eval.feature_extractor: {params.eval.feature_extractor})",
          flush=True)
    spec = run_spec(split_chain(run)[0])
    T = len(receipts)
    device = torch.device("cuda" if params.train.use_gpu and torch.cuda.is_available() else "cpu")
    keys = MATRIX_KEYS if scenario == "label" else IMAGE_MATRIX_KEYS
    matrix = {key: [[None] * T for _ in range(T)] for key in keys}
    models: dict[int, torch.nn.Module] = {}
    rows, samples = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        classifier_path = Path(tmp) / "classifier.pt"
        classifier_path.write_bytes(classifier)
        measure = dict(classifier_path=str(classifier_path), feature_extractor=extractor,
                       kid_subset_size=params.eval.kid_subset_size, device=device.type)
        floor = {key: [] for key in ("fid", "kid", "n")}
        class_kl: list[float | None] = [None] * T  # per row: an unconditional model's class balance
        for j in range(1, T + 1):
            images, labels = (real[j][0], real[j][1]) if scenario == "label" else (real[j][1], None)
            size = params.eval.samples_per_class * len(params.task_classes(scenario, j)) if scenario == "label" \
                else len(images)  # the size of the generated sample of task j
            for key, v in noise_floor(images, size, labels=labels, seed=params.seed, **measure).items():
                floor[key].append(v)
        for k, receipt in enumerate(receipts, start=1):
            model_file = download_model_version(receipt["model_name"], receipt["version"], Path(tmp) / f"task-{k}",
                                                stage_hint=stage_name(scenario, run, k))
            state = torch.load(model_file, map_location="cpu", weights_only=True)  # read once: config + weights
            cfg = model_config(state)
            models[k] = load_model(state).to(device).eval()
            unconditional = spec.family == "diffusion" and not cfg.conditional
            row, pools = {}, {}
            for j in range(1, k + 1):
                net = weights_for_task(spec.old_task_weights, models, k, j)
                if unconditional:  # task j's sample: the pool's samples most like task j (no labels to ask for)
                    images, labels, extra = unconditional_task(params, scenario, net, cfg, k, j, classifier_path,
                                                               pools, device)
                    if j == k and spec.old_task_weights == "final_model":  # one model for every class: its balance
                        class_kl[k - 1] = extra["class_kl"]
                else:
                    images, labels, extra = generate_task(params, scenario, spec.family, net, cfg, k, j, real[j],
                                                          device)
                real_images, real_labels = (real[j][0], real[j][1]) if scenario == "label" else (real[j][1], labels)
                q = quality(images, labels, real_images, real_labels=real_labels, **measure)
                q.update(extra)
                for key in keys:
                    matrix[key][k - 1][j - 1] = None if q[key] is None else float(q[key])
                    if q[key] is not None:
                        row[f"eval/{key}/task-{j}"] = float(q[key])
                if k == T:  # a few final samples per task (label: per class) for the report's grid
                    samples.update(grid_samples(scenario, j, images, labels, real[j]))
            row.update({f"eval/{key}_mean_seen": float(np.mean(vals)) for key in keys
                        if (vals := [v for v in matrix[key][k - 1][:k] if v is not None])})
            rows.append(row)
            if spec.old_task_weights != "own_model":
                models = {k: models[k]}  # only a model per task (standalone) needs the earlier ones again
    return {"matrix": matrix, "rows": rows, "samples": samples, "noise_floor": floor, "class_kl": class_kl,
            "setting": setting_of(spec.family, cfg), "feature_extractor": extractor,
            "counts": parameter_counts(spec.old_task_weights == "own_model", models[T], T)}


def setting_of(family: str, cfg) -> str:
    """What a run's figures measure, for the report: a class-conditional or unconditional diffusion model,
    or a GAN."""
    if family == "diffusion":
        return "class-conditional" if cfg.conditional else "unconditional"
    return "gan"


def unconditional_task(params, scenario: str, net, cfg, k: int, j: int, classifier_path, pools: dict, device):
    """Task j's images after task k from an unconditional model (lifelong.evaluation.unconditional): one
    pool of eval.samples_per_class x (classes seen) samples per network, drawn once per row and shared by
    its tasks; task j's sample is the pool's n most task-j-like images (n as a conditional model's).
    Returns images, None (no labels to score accuracy against) and {"class_kl": the pool's balance}."""
    import torch

    from lifelong.evaluation import load_classifier
    from lifelong.evaluation.generate import banked_net, eval_seed, generate
    from lifelong.evaluation.unconditional import class_balance_kl, class_probabilities, most_like_task
    from lifelong.models import piggyback

    seen = sorted(c for t in range(1, k + 1) for c in params.task_classes(scenario, t))
    bank = banked_net(net)
    own = piggyback.active_task(bank) if piggyback.is_piggyback(bank) else 0  # piggyback: task j's own network
    key = (id(net), own)  # one pool per network the row generates with
    if key not in pools:
        n = params.eval.samples_per_class * len(seen)
        images = generate(net, torch.zeros(n, dtype=torch.long), cfg=cfg, steps=params.eval.ddim_steps,
                          seed=eval_seed(params.seed, k, own), batch_size=params.eval.batch_size, device=device)
        pools[key] = (images, class_probabilities(load_classifier(classifier_path).to(device), images))
    images, probs = pools[key]
    classes = params.task_classes(scenario, j)
    idx = most_like_task(probs, classes, params.eval.samples_per_class * len(classes))
    return images[idx], None, {"class_kl": class_balance_kl(probs, seen)}


def on_gpu_worker(params, job: dict, num_gpus: float = 1):
    """`evaluate_run(**job)` as one Ray task holding `num_gpus` GPUs, on whichever node has them."""
    import ray

    from pipeline.cluster import connect_ray

    connect_ray(params)
    task = ray.remote(num_gpus=num_gpus, num_cpus=1, max_retries=1)(evaluate_run)
    return ray.get(task.remote(**job))


def _log(client, run_id: str, metrics: dict, step: int = 0) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, float(v), now, step) for key, v in metrics.items()])


def generate_task(params, scenario: str, family: str, net, cfg, k: int, j: int, real_j, device):
    """Task j's images generated after task k (uint8 (N, H, W); the image scenario in RGB: (N, H, W, 3)),
    the labels they stand for (None: no classes), extra metrics."""
    from lifelong.evaluation.generate import eval_seed, gan_generate_per_class, gan_translate, generate_per_class

    seed = eval_seed(params.seed, k, j)
    if scenario == "image":
        a, b, labels = real_j
        images = gan_translate(net, a, seed=seed, batch_size=params.eval.batch_size, device=device)
        l1 = float(np.abs(images.astype(np.float32) - b.astype(np.float32)).mean() / 255.0)  # in [0, 1]
        return images, (labels if (labels >= 0).all() else None), {"l1": l1}
    classes = params.task_classes(scenario, j)
    per_class = params.eval.samples_per_class
    if family == "gan":
        images, labels = gan_generate_per_class(net, classes, per_class=per_class, seed=seed,
                                                batch_size=params.eval.batch_size, device=device)
    else:
        images, labels = generate_per_class(net, classes, per_class=per_class, cfg=cfg, steps=params.eval.ddim_steps,
                                            seed=seed, batch_size=params.eval.batch_size, device=device)
    return images, labels, {}


def grid_samples(scenario: str, j: int, images, labels, real_j, n: int = 8) -> dict[str, np.ndarray]:
    """label: 8 samples per class (`class_<c>`); image: rows A | generated | B of task j (`task_<j>`)."""
    if scenario == "image":
        a, b, _ = real_j
        return {f"task_{j}": np.stack([a[:n], images[:n], b[:n]])}  # (3, n, H, W), RGB (3, n, H, W, 3)
    if labels is None:  # an unconditional model: task j's most task-j-like samples
        return {f"task_{j}": images[:n]}
    return {f"class_{c}": images[labels == c][:n] for c in np.unique(labels)}


def parameter_counts(model_per_task: bool, final_model, num_tasks: int) -> dict:
    """`params`: what serving every task takes after the last one; `params_standalone`: T separate models.

    Generator only for GANs (E and D are training aids); the whole network for diffusion.
    """
    from lifelong.models import piggyback

    net = final_model["G"] if hasattr(final_model, "cfg") and "G" in final_model else final_model
    if piggyback.is_piggyback(net):
        # task 1 has only free filters: its count is that of the plain generator, one standalone model
        single = piggyback.task_parameter_count(net, 1)
        return {"params": int(piggyback.total_parameter_count(net)), "params_standalone": int(num_tasks * single)}
    single = int(sum(p.numel() for p in net.parameters()))
    total = num_tasks * single if model_per_task else single
    return {"params": total, "params_standalone": num_tasks * single}


def teacher_passes(receipts: list[dict]) -> float | None:
    """The teacher's forward passes per training step (in batches), mean over tasks 2..T (task 1 has no
    teacher); None for a family whose learner does not count them (GANs) or a one-task run."""
    values = [r.get("teacher_passes") for r in receipts[1:]]
    if not values or any(v is None for v in values):
        return None
    return float(np.mean(values))


def summarize(matrix: dict, floor: dict) -> dict:
    """The run's summary figures from its matrices and the noise floor of each task.

    forgetting / BWT of FID and of the classifier's accuracy (the steadiest signal of class-conditional
    models at small sizes); `noise_floor_fid`: the mean floor over the tasks forgetting averages
    (1..T-1), the scale below which a forgetting figure is not distinguishable from sampling noise."""
    from lifelong import metrics

    fid, kid, acc, div = matrix["fid"], matrix["kid"], matrix["acc"], matrix["div"]
    T = len(fid)
    has_acc = all(v is not None for row_i, row in enumerate(acc) for v in row[:row_i + 1])
    out = {
        "fid_final_mean": metrics.final_mean(fid),
        "kid_final_mean": metrics.final_mean(kid),
        "acc_final_mean": metrics.final_mean(acc) if has_acc else None,
        "div_final_mean": metrics.final_mean(div),
        "forgetting_fid_mean": metrics.forgetting_mean(fid, lower_is_better=True),
        "bwt_fid": metrics.bwt(fid),
        "forgetting_acc_mean": metrics.forgetting_mean(acc, lower_is_better=False) if has_acc else None,
        "bwt_acc": metrics.bwt(acc) if has_acc else None,
        "noise_floor_fid": float(np.mean(floor["fid"][:T - 1])) if T > 1 else None,
        "noise_floor_kid": float(np.mean(floor["kid"][:T - 1])) if T > 1 else None,
    }
    if "l1" in matrix:
        out["l1_final_mean"] = metrics.final_mean(matrix["l1"])
        out["forgetting_l1_mean"] = metrics.forgetting_mean(matrix["l1"], lower_is_better=True)
    return out


if __name__ == "__main__":
    run_stage(main)
