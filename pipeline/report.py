"""Stage `report`: results/metrics.json (DVC metrics), plots (DVC plots, also logged to MLflow), report.md.

metrics.json is nested by scenario, then run (<family>-<method>); a run's figures are the mean over its
chains (one per training seed, eval.seeds), with `n_seeds` and `ci95` (the half-width of each scalar's 95%
confidence interval over the seeds; null with one seed). It holds for each run exactly:
fid_final_mean, kid_final_mean, acc_final_mean, div_final_mean, forgetting_fid_mean, bwt_fid,
forgetting_acc_mean, bwt_acc, noise_floor_fid, noise_floor_kid, class_kl_final (an unconditional diffusion
model's class balance after the last task, else null), train_seconds, teacher_passes (diffusion:
the teacher's forward passes per training step, in batches, over tasks 2..T), params, params_standalone,
n_seeds, ci95, matrix {fid, kid, acc, div} (cell means) and noise_floor {fid, kid, n} (per task); the image scenario adds l1_final_mean,
forgetting_l1_mean and matrix.l1.
"""

from __future__ import annotations

import numpy as np

from pipeline.layout import layout, read_json, write_json
from pipeline.params import load_params, split_chain
from pipeline.registry import setup_mlflow
from pipeline.stage import run_stage

METRIC_KEYS = ("fid_final_mean", "kid_final_mean", "acc_final_mean", "div_final_mean", "forgetting_fid_mean", "bwt_fid",
               "forgetting_acc_mean", "bwt_acc", "noise_floor_fid", "noise_floor_kid",
               "class_kl_final", "train_seconds", "teacher_passes", "params", "params_standalone", "n_seeds", "ci95", "matrix", "noise_floor")
IMAGE_METRIC_KEYS = METRIC_KEYS + ("l1_final_mean", "forgetting_l1_mean")
SCALARS = [k for k in IMAGE_METRIC_KEYS if k not in ("matrix", "noise_floor", "n_seeds", "ci95")]
COUNTS = ("params", "params_standalone")  # the same for every seed


def aggregate(evaluations: list[dict], keys: tuple[str, ...]) -> dict:
    """One run's figures from its chains' evaluations (one per training seed): each scalar's mean and
    95% CI half-width (`ci95`; None with one seed or where a chain has no value), each matrix cell's and
    each noise-floor entry's mean, and `n_seeds`."""
    from lifelong.metrics import mean_ci95

    out: dict = {"n_seeds": len(evaluations), "ci95": {}}
    for key in keys:
        if key in ("n_seeds", "ci95"):
            continue
        values = [e.get(key) for e in evaluations]  # a key newer than an evaluation file: None
        if key in COUNTS:
            out[key] = values[0]
        elif key in ("matrix", "noise_floor"):
            out[key] = {name: _mean_nested([v[name] for v in values]) for name in values[0]}
        else:
            mean, half = (None, None) if any(v is None for v in values) else mean_ci95(values)
            out[key] = mean
            out["ci95"][key] = half
    return out


def _mean_nested(values: list):
    """The elementwise mean of equally shaped nested lists of numbers; None where any of them is None."""
    if isinstance(values[0], list):
        return [_mean_nested(list(parts)) for parts in zip(*values)]
    return None if any(v is None for v in values) else float(np.mean(values))


def build_metrics(results: dict[str, dict[str, list[dict]]]) -> dict:
    """{scenario: {run: [evaluation of each chain]}} -> {scenario: {run: the run's figures}} with exactly
    the reported keys (`aggregate`)."""
    return {scenario: {run: aggregate(evals, IMAGE_METRIC_KEYS if scenario == "image" else METRIC_KEYS)
                       for run, evals in runs.items()}
            for scenario, runs in results.items()}


def plot_all(nested: dict, samples: dict[str, dict], out_dir, features: dict[str, str] | None = None) -> list:
    """The heatmaps, the FID-after-each-task curves (their axis names the scenario's `features`, see
    `feature_spaces`) and the sample grids, as PNGs in out_dir; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    metrics = {f"{sc}-{run}": m for sc, runs in nested.items() for run, m in runs.items()}
    for method, m in metrics.items():  # forgetting heatmap: FID of task j (columns) after task i (rows)
        fid = np.array([[np.nan if v is None else v for v in row] for row in m["matrix"]["fid"]])
        fig, ax = plt.subplots(figsize=(4, 3.4))
        im = ax.imshow(fid, cmap="viridis_r")
        ax.set(title=f"{method}: FID", xlabel="evaluated task j", ylabel="after task i",
               xticks=range(len(fid)), xticklabels=range(1, len(fid) + 1),
               yticks=range(len(fid)), yticklabels=range(1, len(fid) + 1))
        for (i, j), v in np.ndenumerate(fid):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="w")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        written.append(out_dir / f"heatmap-{method}.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)

    for scenario, runs in nested.items():  # mean FID over seen tasks / FID of task 1, after each task
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        for run, m in runs.items():
            fid = m["matrix"]["fid"]
            steps = range(1, len(fid) + 1)
            axes[0].plot(steps, [np.mean([v for v in row if v is not None]) for row in fid], marker="o", label=run)
            axes[1].plot(steps, [row[0] for row in fid], marker="o", label=run)
        ylabel = f"FID ({features[scenario]})" if features and scenario in features else "FID"
        axes[0].set(title=f"{scenario}: mean FID over seen tasks", xlabel="after task", ylabel=ylabel)
        axes[1].set(title=f"{scenario}: FID of task 1 (forgetting)", xlabel="after task", ylabel=ylabel)
        axes[0].legend(fontsize=6)
        fig.tight_layout()
        written.append(out_dir / f"fid-after-each-task-{scenario}.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)

    for method, per_class in samples.items():  # final model; label: one row per class, image: A | gen | B
        if not per_class:
            continue
        triple = method.startswith("image-")  # each entry: A, generated, B
        rows = [_sample_row(v, triple) for _, v in sorted(per_class.items(), key=lambda kv: int(kv[0].split("_")[1]))]
        width = max(r.shape[1] for r in rows)
        grid = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1])) + ((0, 0),) * (r.ndim - 2))
                               for r in rows], axis=0)  # (rows, width) gray or (rows, width, 3) RGB
        fig, ax = plt.subplots(figsize=(width / 24, grid.shape[0] / 24 + 0.4))
        ax.imshow(grid, cmap="gray", vmin=0, vmax=255)  # an RGB grid is shown in colour (cmap unused)
        ax.set_axis_off()
        what = ("rows per task: A, generated, B" if triple else
                "row = task: the samples most like it" if next(iter(per_class)).startswith("task_") else "row = class")
        ax.set_title(f"{method}: samples after the last task ({what})", fontsize=7)
        written.append(out_dir / f"samples-{method}.png")
        fig.savefig(written[-1], dpi=100, bbox_inches="tight")
        plt.close(fig)
    return written


def _sample_row(v: np.ndarray, triple: bool) -> np.ndarray:
    """(n, H, W) -> one strip (H, n*W); an image-scenario `triple` (3, n, H, W) (A, generated, B) -> three
    strips stacked (3H, n*W). RGB images (a trailing axis of 3) keep it: (H, n*W, 3), (3H, n*W, 3)."""
    if triple:
        return np.concatenate([np.concatenate(list(part), axis=1) for part in v], axis=0)
    return np.concatenate(list(v), axis=1)


def within_floor(forgetting: float | None, floor: float | None) -> bool:
    """A forgetting figure no larger (in size) than the noise floor: not distinguishable from two
    samples of the same distribution."""
    return forgetting is not None and floor is not None and abs(forgetting) <= floor


def feature_spaces(results: dict[str, dict[str, list[dict]]]) -> dict[str, str]:
    """Per scenario, the features its FID and KID are in, from its evaluations (each records the extractor
    it used, eval.feature_extractor `auto` resolved): one name, or, when they differ (`auto` on machines
    with and without the Inception weights), each run's, e.g. "gan-a: lifelong-cnn; gan-b: inception-v3-compat"
    (then the runs' FIDs do not compare)."""
    out = {}
    for scenario, runs in results.items():
        per_run = {run: ", ".join(sorted({e["feature_extractor"] for e in evals})) for run, evals in runs.items()}
        names = set(per_run.values())
        out[scenario] = names.pop() if len(names) == 1 else "; ".join(f"{run}: {x}" for run, x in per_run.items())
    return out


def report_markdown(nested: dict, features: str | dict[str, str], settings: dict | None = None) -> str:
    """`features`: the FID/KID feature extractor, one for every scenario or {scenario: its features}
    (`feature_spaces`); `settings`: {(scenario, run): "class-conditional" | "unconditional" | "gan"}; an
    unconditional run is marked in its row."""
    settings = settings or {}
    features = features if isinstance(features, dict) else {scenario: features for scenario in nested}
    n_seeds = sorted({m["n_seeds"] for runs in nested.values() for m in runs.values()})
    seeds = " or ".join(map(str, n_seeds))
    spaces = set(features.values())
    where = f"the features of `{spaces.pop()}`" if len(spaces) == 1 else "the features each scenario names"
    lines = [
        "# Continual learning report",
        "",
        f"FID and KID in {where} (lower is better; KID shown x10^3); acc: the",
        "classifier's accuracy on generated samples (fraction, higher is better); div: their diversity, the mean",
        "pairwise feature distance within a class over the real images' (about 1: as varied as the data; near 0:",
        "mode collapse); the classifier is grayscale and judges RGB images by their luminance.",
        "Forgetting: final minus best earlier value, mean over tasks 1..T-1 (FID: positive =",
        "worse; acc: positive = lost accuracy). BWT: final minus just-trained value, mean over tasks 1..T-1",
        "(FID: positive = worse; acc: negative = worse).",
        "",
        "**Noise floor**: FID between two disjoint halves of a task's real test images, each the size of the",
        "generated sample (n per task below). Two samples of one distribution differ this much by chance, so a",
        "forgetting figure marked `~` (within the floor) is not evidence of forgetting. Every evaluation row draws",
        "fresh noise, for every method, so forgetting is measured the same way for all of them.",
        f"**n = {seeds} training seed(s) per run** (`eval.seeds`): every figure is the mean over them, `± x` the",
        "half-width of its 95% confidence interval (Student's t). "
        + ("With one seed there is no interval: treat differences between runs that are smaller than the floor "
           "as noise." if n_seeds == [1] else "Two runs differ beyond the noise where their intervals do not overlap."),
        "",
        "Diffusion runs are class-conditional unless marked *(unconditional)* (`model.conditional: false`, the",
        "generative-distillation paper's setting): such a model samples one pool for all seen classes, task j's",
        "sample is the n pool images the classifier finds most like task j (acc: n/a), and `class KL` is the",
        "KL divergence of the pool's predicted classes from uniform over the seen classes (0: balanced; nats).",
        "",
        "Params: what serving every task takes after the last one (generator only for GANs); standalone:",
        "one separate model per task, for comparison (Piggyback GAN's claim: on par at fewer parameters).",
    ]

    def fmt(m: dict, key: str, p: int = 2, scale: float = 1.0) -> str:
        v, half = m[key], m["ci95"].get(key)
        if v is None:
            return "n/a"
        return f"{scale * v:.{p}f}" + ("" if half is None else f" ± {scale * half:.{p}f}")

    for scenario, runs in nested.items():
        image = scenario == "image"
        lines += ["", f"## Scenario `{scenario}`" + (" (image-conditioned: A -> B)" if image else
                                                    " (label-conditioned, class-incremental)"), "",
                  f"FID/KID features: `{features[scenario]}`.", ""]
        floor = next(iter(runs.values()))["noise_floor"]  # the same test images for every run
        lines += ["Noise floor per task: " + ", ".join(
            f"task {j}: FID {f:.2f}, KID x10^3 {1e3 * kd:.2f} (n = {n:.0f})"
            for j, (f, kd, n) in enumerate(zip(floor["fid"], floor["kid"], floor["n"]), start=1)), ""]
        lines += ["| run | seeds | FID final | KID final (x10^3) | acc final | div final | forgetting FID (floor) "
                  "| BWT FID | forgetting acc | BWT acc |" + (" L1 final | forgetting L1 |" if image else "")
                  + " class KL final | train (s) | teacher passes/step | params | params standalone |",
                  "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if image else "") + "---|---|---|---|---|"]
        for run, m in runs.items():
            mark = " ~" if within_floor(m["forgetting_fid_mean"], m["noise_floor_fid"]) else ""
            floor_fid = "n/a" if m["noise_floor_fid"] is None else f"{m['noise_floor_fid']:.2f}"
            name = run + (" *(unconditional)*" if settings.get((scenario, run)) == "unconditional" else "")
            lines.append(f"| {name} | {m['n_seeds']} | {fmt(m, 'fid_final_mean')} | {fmt(m, 'kid_final_mean', scale=1e3)} | "
                         f"{fmt(m, 'acc_final_mean', 3)} | {fmt(m, 'div_final_mean')} | "
                         f"{fmt(m, 'forgetting_fid_mean')} ({floor_fid}){mark} | {fmt(m, 'bwt_fid')} | "
                         f"{fmt(m, 'forgetting_acc_mean', 3)} | {fmt(m, 'bwt_acc', 3)} | "
                         + (f"{fmt(m, 'l1_final_mean', 4)} | {fmt(m, 'forgetting_l1_mean', 4)} | " if image else "")
                         + f"{fmt(m, 'class_kl_final', 3)} | {fmt(m, 'train_seconds', 0)} | "
                         f"{fmt(m, 'teacher_passes', 2)} | {m['params']:,} | {m['params_standalone']:,} |")
    lines += ["", "`~`: forgetting within the noise floor (|forgetting| <= the mean floor of tasks 1..T-1).",
              "Teacher passes/step: the previous model's forward passes per training step in units of the batch, "
              "mean over tasks 2..T (diffusion; GD with S DDIM steps: S, 2S with guidance, + 1), the replay's cost.",
              "Plots: `results/plots/` (`dvc plots show`), also logged to MLflow run `report`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import mlflow

    params = load_params()
    lay = layout()
    results: dict[str, dict[str, list[dict]]] = {}
    samples = {}
    for scenario, chain in params.chains():
        run = split_chain(chain)[0]
        results.setdefault(scenario, {}).setdefault(run, []).append(read_json(
            lay.eval_result(scenario, chain), what=f"evaluation of {scenario}/{chain}",
            fix=f"run `dvc repro evaluate_{scenario}@{chain}`"))
        npz = lay.eval_samples(scenario, chain)
        if chain == run and npz.exists():  # the grids: the first seed's
            with np.load(npz, allow_pickle=False) as f:
                samples[f"{scenario}-{run}"] = {k: f[k] for k in f.files}
    metrics = build_metrics(results)
    write_json(lay.metrics, metrics)
    features = feature_spaces(results)
    written = plot_all(metrics, samples, lay.plots, features)
    settings = {(scenario, run): evals[0].get("setting") for scenario, runs in results.items()
                for run, evals in runs.items()}
    lay.report.write_text(report_markdown(metrics, features, settings))

    experiment_id = setup_mlflow(params, lay)
    with mlflow.start_run(experiment_id=experiment_id, run_name="report", tags={"dvc_stage": "report"}):
        for p in written:
            mlflow.log_artifact(str(p), artifact_path="plots")
        mlflow.log_artifact(str(lay.report))
        mlflow.log_artifact(str(lay.metrics))
        for scenario, runs in metrics.items():
            for run, r in runs.items():
                mlflow.log_metrics({f"{scenario}/{run}/{k}": r[k] for k in SCALARS if r.get(k) is not None})
    print(lay.report.read_text(), flush=True)
    return 0


if __name__ == "__main__":
    run_stage(main)
