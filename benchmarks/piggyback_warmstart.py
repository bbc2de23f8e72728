"""Piggyback GAN's warm start (issue 11, item 3), measured: standalone vs piggyback_gan with the new
task's filters drawn fresh (warm_start=False, the behaviour before) vs started at task t-1's weights.

    .venv/bin/python benchmarks/piggyback_warmstart.py [--steps 150] [--tasks 3] [--seed 0]

In one process, with the library's learners (lifelong.learners.GANLearner, as the train stage builds
them, no Ray) on scikit-learn's digits at 16 px, params.yaml's `gan:` budget (width 16, batch 32,
lr 2e-4, the same steps per task for every method). Two sequences:
- image-conditioned (BicycleGAN), A -> B derived as lifelong.data.paired does:
  edges -> digits 0-2, silhouette -> digits 3-5, 4x downsample -> digits 6-9;
- label-conditioned (DCGAN), class-incremental: digits {0,1}, {2,3}, {4,5}.
Per task, on its test split, with each method's weights for that task after the last task (piggyback:
the final generator switched to task j's filters; standalone: task j's own model):
- image: L1 = mean |G(A, z) - B| in [-1, 1] units, z ~ N(0, I) (the sampling path FID scores);
  L1@0 is the same right after `prepare`, before task j's first step;
- both: FD = Frechet distance of the generated vs real images in the feature space of a small CNN
  classifier trained on the digits' train split (the project's `lifelong-cnn` FID, computed directly);
- label: acc = that classifier's accuracy on G(z, y) w.r.t. y.
Parameter counts are the generator's (E and D are training aids), as pipeline/evaluate.py counts them:
what serving tasks 1..T takes, piggyback / standalone.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import linalg  # noqa: E402

from lifelong.data.paired import derive_pairs  # noqa: E402
from lifelong.data.sources import load_split  # noqa: E402
from lifelong.evaluation import ClassifierConfig, SmallCNN, train_classifier  # noqa: E402
from lifelong.learners import GANLearner  # noqa: E402
from lifelong.models import load_model, piggyback  # noqa: E402
from lifelong.models.gan import GANConfig  # noqa: E402
from lifelong.training import TaskTrainConfig  # noqa: E402

SIZE_PX = 16
GAN = {"width": 16, "batch_size": 32, "lr": 2e-4, "grad_clip": 1.0}  # params.yaml gan: and train.grad_clip
IMAGE_TASKS = [("edges", [0, 1, 2]), ("silhouette", [3, 4, 5]), ("downsample", [6, 7, 8, 9])]
LABEL_TASKS = [[0, 1], [2, 3], [4, 5]]
RUNS = [  # (name, method, options)
    ("standalone", "standalone", {}),
    ("piggyback cold", "piggyback_gan", {"filter_ratio": 0.25, "warm_start": False}),
    ("piggyback warm", "piggyback_gan", {"filter_ratio": 0.25, "warm_start": True}),
]
CPU = torch.device("cpu")
NO_AUTOCAST = torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=False)


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) -> float (N, 1, H, W) in [-1, 1], as the loader gives batches."""
    return torch.from_numpy(images).float().unsqueeze(1) / 127.5 - 1.0


def to_classifier_input(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] model range -> [0, 1] classifier range, through uint8 as evaluation does."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().div(255.0)


# --- data ------------------------------------------------------------------------------------
def image_tasks(train, test, num_tasks: int) -> list[dict]:
    tasks = []
    for condition, classes in IMAGE_TASKS[:num_tasks]:
        split = {}
        for name, (images, labels) in (("train", train), ("test", test)):
            a, b, y = derive_pairs(images, labels, classes, condition)
            split[name] = (to_model_range(a), to_model_range(b), torch.from_numpy(y))
        tasks.append({"classes": classes, **split})
    return tasks


def label_tasks(train, test, num_tasks: int) -> list[dict]:
    tasks = []
    for classes in LABEL_TASKS[:num_tasks]:
        split = {}
        for name, (images, labels) in (("train", train), ("test", test)):
            keep = np.isin(labels, classes)
            split[name] = (to_model_range(images[keep]), torch.from_numpy(labels[keep]))
        tasks.append({"classes": classes, **split})
    return tasks


# --- metrics ---------------------------------------------------------------------------------
@torch.no_grad()
def frechet_distance(clf: SmallCNN, fake: torch.Tensor, real: torch.Tensor) -> float:
    """||mu_f - mu_r||^2 + Tr(S_f + S_r - 2 (S_f S_r)^(1/2)) of classifier features (FID's formula)."""
    f = clf.features(to_classifier_input(fake)).double().numpy()  # (N, feature_dim)
    r = clf.features(to_classifier_input(real)).double().numpy()
    mu_f, mu_r = f.mean(0), r.mean(0)
    s_f, s_r = np.cov(f, rowvar=False), np.cov(r, rowvar=False)
    eps = 1e-6 * np.eye(len(mu_f))  # as pytorch-fid: ReLU features of a collapsed generator are rank-deficient
    covmean = linalg.sqrtm((s_f + eps) @ (s_r + eps)).real
    return float(((mu_f - mu_r) ** 2).sum() + np.trace(s_f + s_r - 2 * covmean))


@torch.no_grad()
def evaluate(nets, task: dict, clf: SmallCNN, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)  # the same z for every method
    nets.eval()
    if nets.cfg.condition == "image":
        a, b, _ = task["test"]
        z = torch.randn(len(a), nets.cfg.z_dim, generator=g)
        fake = nets.sample(a=a, z=z)
        out = {"L1": (fake - b).abs().mean().item(), "FD": frechet_distance(clf, fake, b)}
    else:
        x, y = task["test"]
        z = torch.randn(len(y), nets.cfg.z_dim, generator=g)
        fake = nets.sample(y=y, z=z)
        acc = (clf(to_classifier_input(fake)).argmax(1) == y).float().mean().item()
        out = {"FD": frechet_distance(clf, fake, x), "acc": acc}
    nets.train()
    return out


# --- one run: a method through the task sequence ------------------------------------------------
def batches(task: dict, steps: int, batch_size: int, seed: int):
    """The same batches for every method: (A, B, label) or (x, label), like the loader yields."""
    g = torch.Generator().manual_seed(seed)
    data = task["train"]
    for _ in range(steps):
        idx = torch.randint(len(data[-1]), (batch_size,), generator=g)
        yield tuple(t[idx] for t in data)


def run_sequence(method: str, options: dict, gan_cfg: GANConfig, tasks: list[dict], clf: SmallCNN,
                 steps: int, seed: int, workdir: Path) -> dict:
    paired = gan_cfg.condition == "image"
    previous_classes: list[int] = []
    init_state = None
    exported: dict[int, str] = {}
    rows: dict[int, dict] = {}
    for k, task in enumerate(tasks, start=1):
        cfg = TaskTrainConfig(
            method=method, model_config=gan_cfg.to_dict(), task_index=k, task_classes=task["classes"],
            previous_classes=previous_classes, shards=[], checkpoint_dir=str(workdir), init_state=init_state,
            steps=steps, batch_size=GAN["batch_size"], lr=GAN["lr"], grad_clip=GAN["grad_clip"], seed=seed,
            family="gan", paired=paired, options=options,
        )
        learner = GANLearner(cfg, cfg.task_info(), CPU, rank=0)
        rows[k] = {"start": evaluate(learner.nets, task, clf, seed=seed + 100 + k)}
        losses = [learner.step(batch, NO_AUTOCAST) for batch in batches(task, steps, GAN["batch_size"], seed + k)]
        key = "loss_G_L1" if paired else "loss_g"
        rows[k]["train_loss"] = float(np.mean([parts[key].item() for parts in losses[-20:]]))
        path = workdir / f"{method}-{options.get('warm_start', '')}-{gan_cfg.condition}-task{k}.pt"
        torch.save(learner.export(), path)
        exported[k] = init_state = str(path)
        previous_classes = sorted(set(previous_classes) | set(task["classes"]))

    # each task with the weights that serve it after the last task
    final = load_model(torch.load(exported[len(tasks)], weights_only=True))
    for j, task in enumerate(tasks, start=1):
        if piggyback.is_piggyback(final["G"]):
            piggyback.set_task(final["G"], j)
            nets = final
        else:
            nets = load_model(torch.load(exported[j], weights_only=True))
        rows[j]["end"] = evaluate(nets, task, clf, seed=seed + 100 + j)
    G = final["G"]
    if piggyback.is_piggyback(G):
        params = {"params": piggyback.total_parameter_count(G),
                  "per_task": [piggyback.task_parameter_count(G, t) for t in range(1, len(tasks) + 1)]}
    else:
        single = sum(p.numel() for p in G.parameters())
        params = {"params": len(tasks) * single, "per_task": [single] * len(tasks)}
    return {"rows": rows, "params": params}


def print_table(scenario: str, results: dict[str, dict]) -> None:
    metrics = ["L1@0", "L1", "FD"] if scenario == "image" else ["FD@0", "FD", "acc"]
    loss = "train L1" if scenario == "image" else "train loss_g"
    header = (f"| {'method':15s} | task | {loss:12s} | " + " | ".join(f"{m:7s}" for m in metrics)
              + " | G params: piggyback / standalone |")
    print(f"\n{scenario}-conditioned\n{header}")
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    single = results["standalone"]["params"]["per_task"][0]  # one generator
    for name, res in results.items():
        for j, row in res["rows"].items():
            values = {"L1@0": row["start"].get("L1"), "L1": row["end"].get("L1"), "FD@0": row["start"]["FD"],
                      "FD": row["end"]["FD"], "acc": row["end"].get("acc")}
            cells = [f"{values[m]:7.1f}" if m.startswith("FD") else f"{values[m]:7.3f}" for m in metrics]
            n = res["params"]["per_task"][j - 1]
            print(f"| {name:15s} | {j:4d} | {row['train_loss']:12.3f} | " + " | ".join(cells)
                  + f" | {n:>9,d} / {single:,d} = {n / single:.2f} |")
        total, standalone = res["params"]["params"], len(res["rows"]) * single
        print(f"| {name:15s} | all  | {'':12s} | " + " | ".join(" " * 7 for _ in metrics)
              + f" | {total:>9,d} / {standalone:,d} = {total / standalone:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="steps per task (params.yaml gan.steps_per_task)")
    parser.add_argument("--tasks", type=int, default=3, choices=[2, 3])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()

    train = load_split("digits", "train", image_size_px=SIZE_PX)
    test = load_split("digits", "test", image_size_px=SIZE_PX)
    clf = train_classifier(*train, ClassifierConfig(image_size_px=SIZE_PX, channels=(16, 32), feature_dim=64),
                           epochs=8, batch_size=64, seed=0)
    with torch.no_grad():
        clf_acc = (clf(to_classifier_input(to_model_range(test[0]))).argmax(1).numpy() == test[1]).mean()
    print(f"feature classifier: test accuracy {clf_acc:.3f} ({time.time() - t0:.0f} s)", flush=True)

    def gan_cfg(condition: str, z_dim: int) -> GANConfig:  # z_dim: params.yaml gan.latent_dim / gan.z_dim
        return GANConfig(condition=condition, image_size_px=SIZE_PX, num_classes=10, z_dim=z_dim, width=GAN["width"])

    scenarios = {"image": (gan_cfg("image", 8), image_tasks(train, test, args.tasks)),
                 "label": (gan_cfg("label", 16), label_tasks(train, test, args.tasks))}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scenario, (gan_cfg, tasks) in scenarios.items():
            for name, method, options in RUNS:
                t = time.time()
                results[scenario, name] = run_sequence(method, options, gan_cfg, tasks, clf, args.steps,
                                                       args.seed, Path(tmp))
                print(f"{scenario:5s} {name:15s} {time.time() - t:5.0f} s", flush=True)

    print(f"\n{args.tasks} tasks x {args.steps} steps, batch {GAN['batch_size']}, lr {GAN['lr']}, "
          f"width {GAN['width']}, {SIZE_PX} px digits, seed {args.seed}; metrics on each task's test split, "
          "with the weights serving it after the last task")
    for scenario in scenarios:
        print_table(scenario, {name: results[scenario, name] for name, _, _ in RUNS})
    print(f"\ntotal {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
