"""Stage `report`: results/metrics.json (DVC metrics), plots (DVC plots, also logged to MLflow), report.md.

metrics.json holds, per method, exactly: fid_final_mean, kid_final_mean, acc_final_mean,
forgetting_fid_mean, bwt_fid, train_seconds, params, matrix {fid, kid, acc}.
"""

from __future__ import annotations

import sys

import numpy as np

from pipeline.layout import run_stage, layout, read_json, write_json
from pipeline.params import load_params
from pipeline.registry import setup_mlflow

METRIC_KEYS = ("fid_final_mean", "kid_final_mean", "acc_final_mean", "forgetting_fid_mean", "bwt_fid",
               "train_seconds", "params", "matrix")


def build_metrics(results: dict[str, dict]) -> dict:
    return {method: {key: r[key] for key in METRIC_KEYS} for method, r in results.items()}


def plot_all(metrics: dict, samples: dict[str, dict], out_dir) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
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

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))  # mean FID over seen tasks / FID of task 1, after each task
    for method, m in metrics.items():
        fid = m["matrix"]["fid"]
        steps = range(1, len(fid) + 1)
        axes[0].plot(steps, [np.mean([v for v in row if v is not None]) for row in fid], marker="o", label=method)
        axes[1].plot(steps, [row[0] for row in fid], marker="o", label=method)
    axes[0].set(title="mean FID over seen tasks", xlabel="after task", ylabel="FID")
    axes[1].set(title="FID of task 1 (forgetting)", xlabel="after task", ylabel="FID")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    written.append(out_dir / "fid-after-each-task.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    for method, per_class in samples.items():  # one row per class, final model
        if not per_class:
            continue
        rows = [np.concatenate(list(v), axis=1) for _, v in sorted(per_class.items(), key=lambda kv: int(kv[0].split("_")[1]))]
        width = max(r.shape[1] for r in rows)
        grid = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]))) for r in rows], axis=0)
        fig, ax = plt.subplots(figsize=(width / 24, grid.shape[0] / 24 + 0.4))
        ax.imshow(grid, cmap="gray", vmin=0, vmax=255)
        ax.set_axis_off()
        ax.set_title(f"{method}: samples after the last task (row = class)", fontsize=7)
        written.append(out_dir / f"samples-{method}.png")
        fig.savefig(written[-1], dpi=100, bbox_inches="tight")
        plt.close(fig)
    return written


def report_markdown(metrics: dict, feature_extractor: str) -> str:
    lines = [
        "# Continual learning report",
        "",
        f"FID/KID features: `{feature_extractor}`. FID/KID: lower is better; accuracy: the classifier's on generated samples.",
        "Forgetting = final FID minus best earlier FID, mean over tasks 1..T-1 (higher = more forgetting).",
        "",
        "| method | FID final (mean) | KID final (mean) | acc final (mean) | forgetting FID | BWT FID | train s | params |",
        "|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v, p=2: "n/a" if v is None else f"{v:.{p}f}"  # noqa: E731
    for method, m in metrics.items():
        lines.append(f"| {method} | {fmt(m['fid_final_mean'])} | {fmt(m['kid_final_mean'], 4)} | "
                     f"{fmt(m['acc_final_mean'], 3)} | {fmt(m['forgetting_fid_mean'])} | {fmt(m['bwt_fid'])} | "
                     f"{m['train_seconds']:.0f} | {m['params']:,} |")
    lines += ["", "Plots: `results/plots/` (`dvc plots show`), also logged to MLflow run `report`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import mlflow

    params = load_params()
    lay = layout()
    results = {m: read_json(lay.eval_result(m), what=f"evaluation of {m}", fix=f"run `dvc repro evaluate@{m}`")
               for m in params.methods}
    metrics = build_metrics(results)
    write_json(lay.metrics, metrics)
    samples = {}
    for m in params.methods:
        npz = lay.eval_result(m).with_name(f"{m}-samples.npz")
        if npz.exists():
            with np.load(npz, allow_pickle=False) as f:
                samples[m] = {k: f[k] for k in f.files}
    extractor = next(iter(results.values()))["feature_extractor"]
    written = plot_all(metrics, samples, lay.plots)
    lay.report.write_text(report_markdown(metrics, extractor))

    experiment_id = setup_mlflow(params, lay)
    with mlflow.start_run(experiment_id=experiment_id, run_name="report", tags={"dvc_stage": "report"}):
        for p in written:
            mlflow.log_artifact(str(p), artifact_path="plots")
        mlflow.log_artifact(str(lay.report))
        mlflow.log_artifact(str(lay.metrics))
        for m, r in metrics.items():
            mlflow.log_metrics({f"{m}/{k}": r[k] for k in METRIC_KEYS[:6] if r[k] is not None})
    print(lay.report.read_text(), flush=True)
    return 0


if __name__ == "__main__":
    run_stage(main)
